"""`curate_store`: score the episodes a curation set lacks, group duplicates, commit once.

1. plan      — under the store's writer lock, the episodes of the newest commit (or `version`)
               without current rows in the set: new ones, and ones redone since. None: no commit.
2. calibrate — when the set is new, the feature standardisation its embeddings use; when a
               source is new to the set, its typical motion. Both are kept in the set, so later
               runs score new episodes exactly as earlier ones were scored.
3. score     — per episode, from its stored features only (no video is opened): per-frame
               motion, still spans, an embedding. Episodes are read in storage order.
4. group     — the new embeddings against every current one, old and new
               (`duplicates.similar_pairs`); groups re-formed only where something changed.
5. commit    — motion, embeddings, index rows and spans in one commit naming the version read.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from pipeline.curation.duplicates import Groups, similar_pairs
from pipeline.curation.embedding import Embedder, feature_centre
from pipeline.curation.motion import frame_changes, gap_frames, source_scale, still_spans
from pipeline.progress import progress_bar
from pipeline.store import FeatureStore
from pipeline.store.curation import CurationWriter
from schemas.curation import CurationConfig
from schemas.identity import curation_set_id

log = logging.getLogger(__name__)


@dataclass
class CurationReport:
    store: str
    set_id: str
    version_before: str
    version_after: str | None  # None when nothing was curated (no commit)
    read_version: str = ""  # the store version scored
    episodes: int = 0  # scored in this run
    frames: int = 0
    skipped: int = 0  # already had current rows
    spans: int = 0  # still spans found in this run's episodes
    still_s: float = 0.0  # their seconds
    duplicates: int = 0  # this run's episodes that duplicate an episode kept
    regrouped: int = 0  # earlier episodes whose duplicate group changed
    seconds: float = 0.0

    def to_markdown(self) -> str:
        rows = [("curation set", f"`{self.set_id}`"), ("episodes scored", self.episodes),
                ("episodes skipped (current)", self.skipped), ("frames", self.frames),
                ("still spans found", f"{self.spans} ({self.still_s / 3600:.4f} h)"),
                ("new duplicates", self.duplicates), ("earlier episodes regrouped", self.regrouped),
                ("seconds", f"{self.seconds:.1f}"),
                ("store version", f"{self.version_before} → {self.version_after or '(unchanged)'}")]
        return f"## Curation of `{self.store}`\n\n| | |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)


def curate_store(uri: str, cfg: CurationConfig | None = None, *, version: str | None = None,
                 progress: bool = True) -> CurationReport:
    """Curate every episode of the store (at `version`, default the newest commit) that lacks
    current rows in the set of `cfg`; one new commit, or none when there is nothing to do."""
    cfg = cfg or CurationConfig()
    t0 = time.monotonic()
    probe = FeatureStore.open(uri, version)
    config = cfg.model_dump(mode="json")
    set_id = curation_set_id(config, probe.encoder)
    attrs = {"config": config, "encoder": probe.encoder.to_dict() if probe.encoder else None,
             "dim": cfg.duplicates.dim, "token_shape": list(probe.token_shape)}
    with CurationWriter.open(uri, set_id, attrs) as writer:
        same = version or probe.version == writer.parent_version
        store = probe if same else FeatureStore.open(uri, writer.parent_version)
        todo = writer.todo(store)
        report = CurationReport(uri, set_id, writer.parent_version, None, store.version, skipped=len(store) - len(todo))
        if not todo:
            report.seconds = time.monotonic() - t0
            return report
        if writer.centre is None:
            writer.set_centre(*feature_centre(store))
        embedder = Embedder(*writer.centre, cfg.duplicates)
        scored = _score(store, todo, cfg, embedder, progress)
        scales = _calibrate(writer, store, scored, cfg)
        sources = store.episodes()["source"].to_pylist()
        hashes = store.episodes()["content_hash"].to_pylist()
        for key, (change, rel, emb) in scored.items():
            row = store.row(key)
            fps = float(store.fps[row])
            motion = change / scales[sources[row]]
            spans = still_spans(motion, rel, fps, cfg.motion)
            writer.put_episode(key, hashes[row], np.minimum(motion, 6e4), emb, spans)
            report.episodes += 1
            report.frames += len(change)
            report.spans += len(spans)
            report.still_s += sum(e - s for s, e, _ in spans) / fps if fps else 0.0
        report.duplicates, report.regrouped = _group(writer, store, scored, cfg)
        writer.group.attrs["scored_version"] = store.version
        report.version_after = writer.commit(f"curate {set_id}: +{report.episodes} episodes",
                                             {"curation_set": set_id, "read_version": store.version})
    report.seconds = time.monotonic() - t0
    return report


def _score(store: FeatureStore, todo: list[str], cfg: CurationConfig, embedder: Embedder,
           progress: bool) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """key -> (change (N,), relative change (N,), embedding (E,)), read in storage order."""
    eps = store.episodes()
    shards, starts = eps["shard"].to_pylist(), eps["frame_start"].to_numpy()
    rows = sorted((store.row(k) for k in todo), key=lambda r: (shards[r], int(starts[r])))
    out = {}
    with progress_bar("curate", total=len(rows), enabled=progress, unit="episodes") as bar:
        for r in rows:
            f = store.features(r)
            change, rel = frame_changes(f, gap_frames(float(store.fps[r]), cfg.motion.gap_seconds))
            out[str(store.keys[r])] = (change, rel, embedder(f))
            bar.advance()
            bar.add_frames(len(f))
    return {k: out[k] for k in sorted(todo)}  # by key: `seq` follows it, whatever order the ingest committed in


def _calibrate(writer: CurationWriter, store: FeatureStore, scored: dict, cfg: CurationConfig) -> dict[str, float]:
    """Each source's typical change: kept from the set when it knows the source, else measured
    now on the source's episodes being scored (the whole source, on a set's first run)."""
    known = {s: dict(v) for s, v in dict(writer.group.attrs.get("sources", {})).items()}
    fresh: dict[str, list[np.ndarray]] = defaultdict(list)
    for key, (change, _, _) in scored.items():
        source = key.split("/", 1)[0]
        if source not in known:
            fresh[source].append(change[np.isfinite(change)])
    for source, changes in fresh.items():
        known[source] = {"scale": source_scale(changes, cfg.motion.reference_quantile),
                         "frames": int(sum(len(c) for c in changes)), "measured_at": store.version}
        log.info("curation: source %s moves %.4g per frame (its %.2f quantile, %d frames)", source,
                 known[source]["scale"], cfg.motion.reference_quantile, known[source]["frames"])
    if fresh:
        writer.group.attrs["sources"] = known
    return {s: float(v["scale"]) for s, v in known.items()}


def _group(writer: CurationWriter, store: FeatureStore, scored: dict, cfg: CurationConfig) -> tuple[int, int]:
    """Find the duplicates of this run's episodes among every current episode and re-form the
    groups they touch; returns (this run's episodes that duplicate a kept one, earlier episodes
    regrouped)."""
    d = cfg.duplicates
    index = writer.index
    hashes = dict(zip(store.keys.tolist(), store.episodes()["content_hash"].to_pylist(), strict=True))
    old_keys = index["key"].to_pylist()
    current = [k not in scored and hashes.get(k) == h for k, h in zip(old_keys, index["content_hash"].to_pylist(),
                                                                     strict=True)]
    old = index.filter(np.array(current, bool)) if len(old_keys) else index
    old_keys, old_groups = old["key"].to_pylist(), old["group"].to_pylist()
    old_sims = old["similarity"].to_pylist()
    new_keys = list(scored)
    # Episodes numbered in curation order (old rows by their seq, then this run's): a group's
    # union-find root is its earliest member, the one it keeps.
    order = np.argsort(old["seq"].to_numpy(), kind="stable")
    keys = [old_keys[i] for i in order] + new_keys
    number = {k: n for n, k in enumerate(keys)}
    n_old = len(old_keys)
    emb = np.concatenate([writer.embeddings(old.take(order)), np.stack([scored[k][2] for k in new_keys])])
    # A redone episode leaves its old group: that group is re-formed from fresh comparisons.
    was = dict(zip(index["key"].to_pylist(), index["group"].to_pylist(), strict=True))
    redone = [k for k in new_keys if k in was]
    broken = {was[k] for k in redone if was.get(k)}
    requery = [number[k] for k, g in zip(old_keys, old_groups, strict=True) if g in broken]
    queries = np.array(sorted(requery) + list(range(n_old, len(keys))), np.int64)
    qi, j, sims = similar_pairs(emb[queries], emb, d.threshold, neighbours=d.neighbours, exact_pairs=d.exact_pairs)
    groups = Groups(len(keys))
    for k, g in zip(old_keys, old_groups, strict=True):
        if g is not None and g not in broken and g in number:
            groups.union(number[k], number[g])
    touched = set(queries.tolist())
    for a, b, s in zip(queries[qi].tolist(), j.tolist(), sims.tolist(), strict=True):
        if a != b:
            groups.union(a, b, s)
            touched.update((a, b))
    before = {number[k]: (g, s) for k, g, s in zip(old_keys, old_groups, old_sims, strict=True)}
    roots = {groups.find(x) for x in touched}
    members = [x for x in range(len(keys)) if groups.find(x) in roots] if roots else []
    comps = groups.components(np.array(members, np.int64))
    duplicates = regrouped = 0
    for root, xs in comps.items():
        kept = keys[root] if len(xs) > 1 else None
        for x in xs:
            sim = None if kept is None or np.isnan(groups.best[x]) else float(groups.best[x])
            if x >= n_old:
                writer.set_group(keys[x], kept, sim)
                duplicates += kept is not None and x != root
                continue
            old_group, old_sim = before[x]
            sim = old_sim if sim is None and kept is not None else sim
            if old_group != kept:
                writer.set_group(keys[x], kept, sim)
                regrouped += 1
    return duplicates, regrouped
