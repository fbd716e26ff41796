"""`lawam verify`: read every chunk of one version of a store and check every episode.

    report = verify_store("data/store")          # newest commit; version=... for another
    report.ok, report.problems                   # [(episode key, shard, what is wrong), ...]

For each ingested episode: its arrays exist with the dtypes and shapes the index and the
root attrs promise (features float16 (frames, *token_shape), timestamps float64 (frames,),
actions / action_timestamps / state with `actions` rows), the frame and action counts fit
the shard, every value is finite, timestamps never go back, and every chunk it touches
decodes with a matching CRC32C checksum. Every row a derived set's index points to (label
sets and curation sets) is read too: it must decode and be finite (`derived_problems`; its
label part `label_problems` is what `lawam distill` and `lawam label --damaged` use as well).
Chunks are read in batches of about 64 MB; a batch that fails is re-read chunk by chunk to
name the damaged rows, hence the episodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from pipeline.errors import one_line
from pipeline.progress import progress_bar
from pipeline.store.format import has_no_state
from pipeline.store.migrate import index_table
from pipeline.store.reader import CHUNK_ERRORS, FeatureStore
from schemas import LABEL_INDEX_SCHEMA
from schemas.errors import LawamError
from schemas.tables import CURATION_INDEX_SCHEMA

_BATCH_BYTES = 64 << 20


@dataclass
class Problem:
    episode: str | None  # episode key; None for rows no episode of this version uses
    shard: str
    what: str

    def __str__(self) -> str:
        return f"{self.episode or '(no episode)'} (shard {self.shard}): {self.what}"


@dataclass
class VerifyReport:
    store: str
    version: str
    episodes: int = 0
    chunks: int = 0  # chunks read
    bytes: int = 0  # decoded bytes read
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_episodes(self) -> list[str]:
        return sorted({p.episode for p in self.problems if p.episode})


@dataclass
class _Scan:
    """One array read whole, chunk by chunk where a batch fails."""

    data: np.ndarray | None  # kept for small arrays; None for features
    bad: list[tuple[int, int, str]]  # unreadable row ranges [a, b) and why
    nonfinite: np.ndarray  # (rows,) bool: a row holding a NaN or an infinity
    chunks: int
    nbytes: int


def _scan(arr: zarr.Array, keep: bool) -> _Scan:
    rows = arr.shape[0] if arr.ndim else 0
    size = arr.chunks[0] if arr.ndim else 1
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize) if arr.ndim else 1
    step = max(size, (_BATCH_BYTES // row_bytes) // size * size)
    nonfinite = np.zeros(rows, bool)
    bad: list[tuple[int, int, str]] = []
    parts: list[np.ndarray] = []
    chunks = nbytes = 0
    floating = np.issubdtype(arr.dtype, np.floating)
    for a in range(0, rows, step):
        b = min(rows, a + step)
        try:
            pieces = [(a, arr[a:b])]
        except CHUNK_ERRORS:
            pieces = []
            for c in range(a, b, size):
                d = min(b, c + size)
                try:
                    pieces.append((c, arr[c:d]))
                except CHUNK_ERRORS as e:
                    bad.append((c, d, one_line(e)[:200]))
                    pieces.append((c, np.zeros((d - c, *arr.shape[1:]), arr.dtype)))
        for start, block in pieces:
            chunks += -(-len(block) // size)
            nbytes += block.nbytes
            if floating:
                nonfinite[start : start + len(block)] = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)
            if keep:
                parts.append(block)
    data = (np.concatenate(parts) if parts else np.zeros((0, *arr.shape[1:]), arr.dtype)) if keep else None
    return _Scan(data, bad, nonfinite, chunks, nbytes)


def _overlap(scan: _Scan, a: int, b: int) -> str | None:
    for lo, hi, why in scan.bad:
        if lo < b and a < hi:
            return f"rows {lo}-{hi} unreadable ({why})"
    return None


def verify_store(uri: str, version: str | None = None, *, progress: bool = True) -> VerifyReport:
    """Check every ingested episode of `version` (default: the newest commit) and read every
    chunk of its shards and label sets; the report names each bad episode and what is wrong.
    Reads the whole store once: time grows with its size (about a decode of every chunk)."""
    try:
        store = FeatureStore.open(uri, version)
    except LawamError:  # no such store or version (StoreError): not damage, the command names what is not there
        raise
    except CHUNK_ERRORS as e:  # the episode index itself does not decode
        report = VerifyReport(uri, version or "(branch tip)")
        report.problems.append(Problem(None, "index", f"the episode index cannot be read ({one_line(e)[:200]})"))
        return report
    report = VerifyReport(uri, store.version)
    eps = store.episodes(["shard", "frame_start", "frames", "action_start", "actions"])
    cols = {c: eps[c].to_numpy() for c in ("frame_start", "frames", "action_start", "actions")}
    shards = pc.dictionary_encode(eps["shard"]).combine_chunks() if len(store) else None
    token_shape = tuple(store.token_shape)
    with progress_bar("verify", total=len(store), enabled=progress, unit="episodes") as bar:
        for shard, rows in _by_shard(shards):
            _verify_shard(store, shard, rows, cols, token_shape, report)
            report.episodes += len(rows)
            bar.advance(len(rows))
    _verify_labels(store, report)
    return report


def _by_shard(shards: pa.DictionaryArray | None) -> list[tuple[str, list[int]]]:
    """(shard, its episode rows), shards in order of first appearance."""
    if shards is None:
        return []
    codes = shards.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    cuts = np.flatnonzero(np.diff(codes[order])) + 1
    groups = {int(codes[g[0]]): g.tolist() for g in np.split(order, cuts)}
    names = shards.dictionary.to_pylist()
    return [(names[c], groups[c]) for c in sorted(groups, key=lambda c: groups[c][0])]


def _verify_shard(store: FeatureStore, shard: str, rows: list[int], cols: dict, token_shape: tuple,
                  report: VerifyReport) -> None:
    def bad(i: int, what: str) -> None:
        report.problems.append(Problem(str(store.keys[i]), shard, what))

    path = f"shards/{shard}"
    if path not in store.root:
        for i in rows:
            bad(i, f"shard group /{path} is missing")
        return
    group = store.root[path]
    scans: dict[str, _Scan] = {}
    arrays: dict[str, zarr.Array] = {}
    for name, arr in group.arrays():
        arrays[name] = arr
        scans[name] = _scan(arr, keep=name != "features")
        report.chunks += scans[name].chunks
        report.bytes += scans[name].nbytes
    expect = {"features": np.float16, "timestamps": np.float64, "actions": np.float32,
              "action_timestamps": np.float64, "state": np.float32}
    for name, dtype in expect.items():
        if name in arrays and arrays[name].dtype != dtype:
            for i in rows:
                bad(i, f"{name} is {arrays[name].dtype}, expected {np.dtype(dtype)}")
            return
    used: dict[str, np.ndarray] = {n: np.zeros(a.shape[0], bool) for n, a in arrays.items()}

    def check_span(i: int, name: str, lo: int, n: int, unit: str) -> None:
        """Rows [lo, lo + n) of array `name` hold episode row i's `unit`s: there, readable, finite."""
        if lo + n > arrays[name].shape[0]:
            bad(i, f"{name} has {arrays[name].shape[0]} rows; the index puts {unit} {lo}-{lo + n} there")
            return
        used[name][lo : lo + n] = True
        why = _overlap(scans[name], lo, lo + n)
        if why:
            bad(i, f"{name} {why}")
        elif name == "state" and has_no_state(scans[name].data[lo : lo + n]):
            pass  # an episode without state among episodes with it: `format.no_state` rows
        elif scans[name].nonfinite[lo : lo + n].any():
            bad(i, f"{name}: {int(scans[name].nonfinite[lo : lo + n].sum())} {unit} hold NaN or inf")

    for i in rows:
        s, n = int(cols["frame_start"][i]), int(cols["frames"][i])
        a, m = int(cols["action_start"][i]), int(cols["actions"][i])
        problems_before = len(report.problems)
        for name in ("features", "timestamps"):
            if name not in arrays:
                bad(i, f"{name} array is missing")
            else:
                check_span(i, name, s, n, "frames")
        if "features" in arrays and token_shape and tuple(arrays["features"].shape[1:]) != token_shape:
            bad(i, f"features are {tuple(arrays['features'].shape[1:])} per frame; the store says {token_shape}")
        ts = scans["timestamps"].data if "timestamps" in scans else None
        if ts is not None and len(report.problems) == problems_before and n > 1 and np.any(np.diff(ts[s : s + n]) < 0):
            bad(i, "timestamps go back in time")
        if m:
            for name in ("actions", "action_timestamps", "state"):
                if name in arrays:
                    check_span(i, name, a, m, "rows")
                elif name != "state":
                    bad(i, f"{name} array is missing ({m} action rows in the index)")
    for name, scan in scans.items():  # damage in rows of redone episodes: older versions only
        for lo, hi, why in scan.bad:
            if not used[name][lo:hi].any():
                report.problems.append(Problem(None, shard, f"{name} rows {lo}-{hi} unreadable ({why})"))


def _verify_labels(store: FeatureStore, report: VerifyReport) -> None:
    problems, chunks, nbytes = derived_problems(store)
    report.problems.extend(problems)
    report.chunks += chunks
    report.bytes += nbytes


# group -> (index schema, word for its arrays in messages, unit of their rows)
_DERIVED = {"labels": (LABEL_INDEX_SCHEMA, "label", "pairs"), "curation": (CURATION_INDEX_SCHEMA, "curation", "rows")}


def derived_problems(store: FeatureStore, group: str | None = None,
                     set_ids: list[str] | None = None) -> tuple[list[Problem], int, int]:
    """(problems, chunks read, bytes read) of the derived sets of `store` (label and curation
    sets; or those of `group`, or only `set_ids`): every row a set's index points to must decode
    (checksums) and be finite (a NaN label trains a policy on nothing; a NaN motion drops or
    keeps frames at random). Rows no index row points to any more (replaced by a redo) are never
    served, and not reported."""
    problems: list[Problem] = []
    chunks = nbytes = 0
    for group_name, (schema, what, unit) in _DERIVED.items():
        if (group is not None and group_name != group) or group_name not in store.root:
            continue
        for set_name, derived in store.root[group_name].groups():
            if (set_ids is not None and set_name not in set_ids) or "shards" not in derived:
                continue
            index = index_table(derived, schema)
            live = index.live()
            shard_of = pc.dictionary_encode(index.take("shard", live))
            names, codes = shard_of.dictionary.to_pylist(), shard_of.indices.to_numpy(zero_copy_only=False)
            keys = None  # read only to name the episodes of a problem
            for shard_name, shard in derived["shards"].groups():
                where = f"{group_name}/{set_name}/{shard_name}"
                mine = live[codes == names.index(shard_name)] if shard_name in names else live[:0]
                for name, arr in shard.arrays():
                    scan = _scan(arr, keep=False)
                    chunks += scan.chunks
                    nbytes += scan.nbytes
                    if name == "embedding":
                        lo = index.take("emb_row", mine).to_numpy()
                        hi = lo + 1
                    else:
                        lo = index.take("row_start", mine).to_numpy()
                        hi = lo + index.take("rows", mine).to_numpy()
                    lo, hi = np.minimum(lo, len(scan.nonfinite)), np.minimum(hi, len(scan.nonfinite))
                    cum = np.concatenate([[0], np.cumsum(scan.nonfinite, dtype=np.int64)])
                    nonfinite = cum[hi] - cum[lo]  # rows of each holding NaN or inf
                    bad = np.zeros(len(mine), bool)
                    for a, b, _ in scan.bad:
                        bad |= (lo < b) & (a < hi)
                    for j in np.flatnonzero(bad | (nonfinite > 0)).tolist():
                        if keys is None:
                            keys = index.column("key")
                        key = keys[int(mine[j])].as_py()
                        why = _overlap(scan, int(lo[j]), int(hi[j]))
                        problems.append(Problem(key, where, f"{what} {name} {why}" if why else
                                                f"{what} {name}: {int(nonfinite[j])} {unit} hold NaN or inf"))
    return problems, chunks, nbytes


def label_problems(store: FeatureStore, set_ids: list[str] | None = None) -> tuple[list[Problem], int, int]:
    """`derived_problems` of the label sets of `store` (all, or `set_ids`)."""
    return derived_problems(store, "labels", set_ids)


def damaged_labels(store: FeatureStore, set_id: str) -> list[str]:
    """Keys of the episodes whose labels in set `set_id` are unreadable or not finite."""
    return sorted({p.episode for p in label_problems(store, [set_id])[0] if p.episode})
