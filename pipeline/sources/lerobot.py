"""`lerobot` sources: LeRobot datasets, codebase v2.0/v2.1 and v3.0, as the `lerobot` library writes them.

Layouts (checked against files written by lerobot 0.4.4 / `tests/fixtures_lerobot`):

- v3.0: `meta/info.json`, `meta/tasks.parquet`, `meta/episodes/chunk-*/file-*.parquet`
  (one row per episode: `episode_index, tasks, length, dataset_from_index,
  dataset_to_index, data/chunk_index, data/file_index, videos/<key>/chunk_index,
  videos/<key>/file_index, videos/<key>/from_timestamp, videos/<key>/to_timestamp`, plus
  `stats/*` which we never read). Many episodes share one data parquet and one mp4; an
  episode is the `[from_timestamp, to_timestamp)` span of its video file.
- v2.x: `meta/episodes.jsonl`, `meta/tasks.jsonl`, one parquet and one mp4 per episode at
  `info["data_path"]` / `info["video_path"]` with `episode_chunk = index // chunks_size`.

Enumeration reads `meta/` only (plus the hashes of the files each episode points at).
Actions are read later by `load_lerobot_actions`: the episode's own rows of the data file
(filtered on `episode_index`), timed by the `timestamp` column, which LeRobot resets to 0
at every episode start. Rows may run at a higher control rate than the video (a robot
logging control at 80 Hz under a 20 fps camera; lerobot itself writes one row per frame,
as do our Meta-World samples): nothing here assumes one row per frame.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.sources.base import ActionTrack, EpisodeError, EpisodeRef, SourceError, reraise_if_infrastructure
from pipeline.sources.hashing import combine, file_digest, stat_key
from pipeline.uri import is_remote, join_uri, open_uri
from schemas.config import SourceSpec

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")


# --- meta/ ---------------------------------------------------------------------------------


def read_info(root: str) -> dict[str, Any]:
    """`meta/info.json`, validated enough to enumerate: a dict with a supported version."""
    path = join_uri(root, "meta/info.json")
    try:
        with open_uri(path, "rb") as f:
            info = json.loads(f.read())
    except FileNotFoundError:
        raise SourceError(f"{path}: not found; `uri` must be a LeRobot dataset root (holding meta/)") from None
    except (OSError, ValueError) as e:
        reraise_if_infrastructure(e)
        raise SourceError(f"{path}: unreadable ({e}); re-download or re-convert the dataset") from None
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
        raise SourceError(f"{path}: no `features` mapping; not a LeRobot info.json")
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        raise SourceError(
            f"{path}: codebase_version {version!r} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)}); "
            "convert it with lerobot's convert_dataset_v21_to_v30"
        )
    return info


def pick_camera(spec: SourceSpec, info: dict[str, Any], info_path: str) -> str:
    """`spec.cameras[0]`, else the first feature stored as video."""
    features = info["features"]
    videos = [k for k, v in features.items() if isinstance(v, dict) and v.get("dtype") == "video"]
    if spec.cameras:  # iter_episodes hands each camera of a multi-camera spec over on its own
        cam = spec.cameras[0]
        if cam not in videos:
            raise SourceError(f"{info_path}: camera {cam!r} is not a video feature; video features: {videos!r}")
        return cam
    if videos:
        return videos[0]
    if any(isinstance(v, dict) and v.get("dtype") == "image" for v in features.values()):
        raise SourceError(
            f"{info_path}: image features stored in parquet are not supported yet; "
            "re-encode the dataset with use_videos=True"
        )
    raise SourceError(f"{info_path}: no video feature; a LeRobot source needs at least one camera")


def _fields(spec: SourceSpec, info: dict[str, Any], info_path: str) -> tuple[list[str], list[str]]:
    """Action and state columns: validated against info.json so a typo fails at enumeration."""
    if spec.kind != "robot":
        return [], []
    features = info["features"]
    actions = spec.action_fields or ["action"]
    missing = [a for a in actions if a not in features]
    if missing:
        raise SourceError(f"{info_path}: action field(s) {missing!r} not in features {sorted(features)!r}")
    if spec.state_fields:
        state = list(spec.state_fields)
        missing = [s for s in state if s not in features]
        if missing:
            raise SourceError(f"{info_path}: state field(s) {missing!r} not in features {sorted(features)!r}")
    else:
        state = ["observation.state"] if "observation.state" in features else []
    return actions, state


def _number(value: Any, what: str, where: str, cast: type = float) -> Any:
    """`value` as a positive number; SourceError naming the field when it is not one."""
    try:
        out = cast(value)
    except (TypeError, ValueError, OverflowError):
        out = None
    if out is None or not out > 0 or (cast is float and not math.isfinite(out)):
        raise SourceError(f"{where}: {what} is {value!r}, not a positive number; the dataset's meta/ is damaged")
    return out


def _split_of(info: dict[str, Any], info_path: str) -> Any:
    """`info["splits"]` such as {"train": "0:40", "val": "40:50"} → episode index → split."""
    splits = info.get("splits") or {}
    if not isinstance(splits, dict):
        raise SourceError(f"{info_path}: splits is {type(splits).__name__}, expected a mapping like "
                          '{"train": "0:40"}')
    ranges = []
    for name, span in splits.items():
        try:
            lo, hi = (int(x) for x in str(span).split(":"))
        except ValueError:
            continue
        ranges.append((lo, hi, name))
    return lambda ep: next((name for lo, hi, name in ranges if lo <= ep < hi), None)


def _instruction(spec: SourceSpec, tasks: Any, row: dict[str, Any], where: str) -> str | None:
    if spec.instruction_field:
        if spec.instruction_field not in row:
            raise SourceError(f"{where}: instruction_field {spec.instruction_field!r} not in {sorted(row)!r}")
        v = row[spec.instruction_field]
        return None if v is None else str(v)
    if isinstance(tasks, str):
        tasks = [tasks]
    texts = [str(t) for t in (tasks if tasks is not None else []) if t is not None and str(t).strip()]
    return "; ".join(texts) if texts else spec.instruction


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    try:
        with open_uri(path, "rb") as f:
            lines = f.read().decode().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except FileNotFoundError:
        raise SourceError(f"{path}: not found; the dataset's meta/ is incomplete, re-download it") from None
    except (OSError, ValueError) as e:
        reraise_if_infrastructure(e)
        raise SourceError(f"{path}: unreadable ({e}); re-download the dataset") from None


def _list_episode_files(root: str) -> list[str]:
    """meta/episodes/chunk-*/file-*.parquet, sorted; lists only the dataset's meta/ folder."""
    base = join_uri(root, "meta/episodes")
    fs, path = fsspec.core.url_to_fs(base)
    try:
        found = fs.glob(path.rstrip("/") + "/chunk-*/file-*.parquet")
    except FileNotFoundError:
        found = []
    if not found:
        raise SourceError(f"{base}: no chunk-*/file-*.parquet; the dataset's meta/ is incomplete")
    if is_remote(root):
        return [fs.unstrip_protocol(p) for p in sorted(found)]
    return sorted(found)


# --- enumeration --------------------------------------------------------------------------


def _column_names(info: dict[str, Any], keys: list[str]) -> list[str] | None:
    """The names `info.json` gives the columns of `keys`' features, concatenated in order
    (a list, or LeRobot v2's {"motors": [...]}); None unless every column is named."""
    out: list[str] = []
    for key in keys:
        feature = info["features"].get(key)
        names = feature.get("names") if isinstance(feature, dict) else None
        if isinstance(names, dict) and len(names) == 1:
            names = next(iter(names.values()))
        shape = feature.get("shape") if isinstance(feature, dict) else None
        if (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
                or (isinstance(shape, list) and len(shape) == 1 and shape[0] != len(names))):
            return None
        out.extend(names)
    return out or None


def iter_lerobot(spec: SourceSpec) -> Iterator[EpisodeRef]:
    """One EpisodeRef per episode (camera `pick_camera`), in episode_index order."""
    root = spec.uri
    info = read_info(root)
    info_path = join_uri(root, "meta/info.json")
    cam = pick_camera(spec, info, info_path)
    actions, state = _fields(spec, info, info_path)
    feature = info["features"][cam]
    video_fps = ((feature.get("info") or {}).get("video.fps") or feature.get("fps") or info.get("fps")
                 if isinstance(feature, dict) else None)
    common = {
        "source": spec.id,
        "kind": spec.kind,
        "camera": cam,
        "fps": _number(video_fps, f"{cam} fps", info_path) if video_fps else None,
        "action_rate": _number(info["fps"], "fps", info_path) if info.get("fps") else None,
    }
    split_of = _split_of(info, info_path)
    names = {"action_names": _column_names(info, actions), "state_names": _column_names(info, state)}
    if info["codebase_version"] == "v3.0":
        rows = _episodes_v30(root, cam, spec.instruction_field)
    else:
        rows = _episodes_v2(root, info)
    digests: dict[str, str] = {}  # v3.0 files hold many episodes: hash each once per enumeration

    def digest(uri: str) -> str:
        if uri not in digests:
            digests[uri] = file_digest(uri)
        return digests[uri]

    for row in rows:
        ep = row["episode_index"]
        where = f"{root} episode {ep}"
        video = join_uri(root, _fill(info, "video_path", info_path, video_key=cam, **row["_fmt_video"]))
        data = join_uri(root, _fill(info, "data_path", info_path, **row["_fmt_data"]))
        span = row.get("_span", {})
        selector = {"format": "lerobot", "episode_index": ep, "actions": actions, "state": state, **span,
                    **{k: v for k, v in names.items() if v}}
        yield EpisodeRef(
            **common,
            episode_id=f"episode_{ep:06d}",
            uri=video,
            content_hash=combine(digest(video), digest(data), ep, sorted(span.items())),
            start_s=float(row.get("_start", 0.0)),
            end_s=row.get("_end"),
            instruction=_instruction(spec, row.get("tasks"), row, where),
            actions_uri=data if spec.kind == "robot" else None,
            actions_selector=json.dumps(selector, sort_keys=True) if spec.kind == "robot" else None,
            split=split_of(ep),
        )


def _fill(info: dict[str, Any], key: str, info_path: str, **values: Any) -> str:
    """`info[key]` (a path template such as data_path) filled in; SourceError if it cannot be."""
    template = info.get(key)
    if not template:
        raise SourceError(f"{info_path}: no {key}; not a LeRobot v2/v3 info.json with videos")
    try:
        return str(template).format(**values)
    except (KeyError, IndexError, ValueError) as e:
        raise SourceError(f"{info_path}: {key} {template!r} has an unknown placeholder ({e})") from None


def _indexed(row: Any, where: str) -> dict[str, Any]:
    """The row with its `episode_index` as an int >= 0; SourceError naming the file when the
    row is not a mapping or the index is not such a number."""
    value = row.get("episode_index") if isinstance(row, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2**63 or value != int(value):
        raise SourceError(f"{where}: a row has episode_index {value!r}, not an integer >= 0; "
                          "the dataset's meta/ is damaged")
    return {**row, "episode_index": int(value)}


def _episodes_v2(root: str, info: dict[str, Any]) -> Iterator[dict[str, Any]]:
    chunks_size = _number(info.get("chunks_size") or 1000, "chunks_size", join_uri(root, "meta/info.json"), int)
    path = join_uri(root, "meta/episodes.jsonl")
    rows = [_indexed(row, path) for row in _read_jsonl(path)]
    for row in sorted(rows, key=lambda r: r["episode_index"]):
        ep = row["episode_index"]
        fmt = {"episode_chunk": ep // chunks_size, "episode_index": ep}
        yield {**row, "_fmt_data": fmt, "_fmt_video": fmt}


def _episodes_v30(root: str, cam: str, instruction_field: str | None) -> Iterator[dict[str, Any]]:
    vid = f"videos/{cam}/"
    wanted = [
        "episode_index",
        "tasks",
        "length",
        "dataset_from_index",
        "dataset_to_index",
        "data/chunk_index",
        "data/file_index",
        vid + "chunk_index",
        vid + "file_index",
        vid + "from_timestamp",
        vid + "to_timestamp",
    ]
    rows: list[dict[str, Any]] = []
    for path in _list_episode_files(root):
        try:
            with open_uri(path, "rb") as f:
                schema = pq.read_schema(f)
                missing = [c for c in wanted if c not in schema.names]
                extra = [instruction_field] if instruction_field in schema.names else []
                if missing:
                    raise SourceError(f"{path}: missing column(s) {missing!r}; not a LeRobot v3.0 episodes file")
                f.seek(0)
                rows.extend(pq.read_table(f, columns=wanted + extra).to_pylist())
        except (OSError, pa.ArrowException) as e:
            reraise_if_infrastructure(e)
            raise SourceError(f"{path}: unreadable ({e}); re-download the dataset") from None
    rows = [_indexed(row, join_uri(root, "meta/episodes")) for row in rows]
    for row in sorted(rows, key=lambda r: r["episode_index"]):
        yield {
            **row,
            "_fmt_data": {"chunk_index": row["data/chunk_index"], "file_index": row["data/file_index"]},
            "_fmt_video": {"chunk_index": row[vid + "chunk_index"], "file_index": row[vid + "file_index"]},
            "_start": float(row[vid + "from_timestamp"]),
            "_end": float(row[vid + "to_timestamp"]),
            "_span": {"from_index": int(row["dataset_from_index"]), "to_index": int(row["dataset_to_index"])},
        }


# --- actions ------------------------------------------------------------------------------


def _matrix(col: pa.ChunkedArray | pa.Array, name: str, where: str) -> np.ndarray:
    """A numeric column (scalars or fixed-length lists) as (M, K) float32."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        if n and flat.size % n:
            raise EpisodeError(f"{where}: column {name!r} has rows of different lengths")
        return flat.reshape(n, -1 if n else 0)
    return arr.to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, 1)


_TABLE_CACHE_SIZE = 2  # data files: v3.0 packs ~100 MB of rows per file, read once per file
_tables: OrderedDict[tuple[Any, ...], pa.Table] = OrderedDict()
_tables_lock = threading.Lock()


def _data_columns(uri: str, cols: tuple[str, ...]) -> pa.Table:
    """The action/state/time columns of a whole data file, memoised for the last few files.

    v3.0 packs hundreds of episodes per data file, usually in one row group, so a filtered
    read per episode would read the file once per episode; loading actions episode after
    episode of one file reads it once. Keyed on the file's stat, so a rewritten file is
    re-read."""
    key = (uri, cols, stat_key(uri))
    with _tables_lock:
        if key in _tables:
            _tables.move_to_end(key)
            return _tables[key]
    with open_uri(uri, "rb") as f:
        table = pq.read_table(f, columns=list(cols))
    with _tables_lock:
        _tables[key] = table
        while len(_tables) > _TABLE_CACHE_SIZE:
            _tables.popitem(last=False)
    return table


def load_lerobot_actions(ref: EpisodeRef) -> ActionTrack:
    """The episode's own rows of its data parquet: actions (M, A), state (M, S), timestamps (M,)."""
    assert ref.actions_uri is not None and ref.actions_selector is not None
    sel = json.loads(ref.actions_selector)
    ep = int(sel["episode_index"])
    where = f"{ref.actions_uri} episode {ep}"
    cols = ("timestamp", "episode_index", *sel["actions"], *sel["state"])
    try:
        table = _data_columns(ref.actions_uri, cols)
    except FileNotFoundError:
        raise EpisodeError(f"{where}: data file not found; re-download the dataset") from None
    except (OSError, pa.ArrowException) as e:
        reraise_if_infrastructure(e)
        raise EpisodeError(f"{where}: unreadable ({e})") from None
    table = table.filter(pc.equal(table.column("episode_index"), ep))
    if table.num_rows == 0:
        raise EpisodeError(f"{where}: no rows for this episode in its data file")
    if table.column("timestamp").null_count:
        raise EpisodeError(f"{where}: null timestamps; the data file is damaged")
    ts = table.column("timestamp").to_numpy().astype(np.float64)
    order = np.argsort(ts, kind="stable")
    table = table.take(pa.array(order)) if np.any(order != np.arange(len(order))) else table
    ts = np.round(ts[order], 6)  # float32 on disk: 0.1 is stored as 0.10000000149
    acts = np.concatenate([_matrix(table.column(a), a, where) for a in sel["actions"]], axis=1)
    state = np.concatenate([_matrix(table.column(s), s, where) for s in sel["state"]], axis=1) if sel["state"] else None
    names, state_names = sel.get("action_names"), sel.get("state_names")
    return ActionTrack(timestamps=ts, actions=acts, state=state,
                       names=tuple(names) if names and len(names) == acts.shape[1] else None,
                       state_names=tuple(state_names) if state_names and state is not None
                       and len(state_names) == state.shape[1] else None)
