"""`rlds` sources: RLDS datasets as Open X-Embodiment and DROID ship them, read without TensorFlow.

A dataset version folder (`.../bridge/0.1.0`) holds `dataset_info.json`, `features.json` and
TFRecord shards `<name>-<split>.tfrecord-NNNNN-of-MMMMM`; each record is one episode, a
`tf.train.Example` whose steps are flattened (`pipeline.sources.rlds_features`). `uri` is that
folder, or its parent (the newest version is taken, and a warning says which).

- **Enumeration** walks a new or changed shard once, record by record (`pipeline.sources.tfrecord`:
  framing and both CRCs checked), and keeps per record its offset, length, episode id, step count
  and instruction; those rows are remembered with the shard's digest (`pipeline.sources.shards`),
  so a refresh over unchanged shards opens none of them. A new shard is read whole anyway: its
  digest needs every byte.
- **Episode id**: `episode_metadata/file_path`, else `episode_metadata/recording_folderpath`
  (DROID), else `<shard file>/<record index>`; stable across runs (a repeated id gets
  `#<shard>/<index>` appended, so none is lost).
- **Frames**: RLDS has no timestamps; step i is at `i / action_rate` (required: a SourceSpec
  rule). The corpus fps picks steps by timestamp as for any video, and only those steps' images
  are decoded (Pillow, JPEG or PNG), then resized by `pipeline.decode.arrays` — the swscale path
  of a video frame, so one encoder identity means one preprocessing.
- **Actions** keep the full rate: `action_fields` (keys under `steps/`, e.g. `action`, or
  `action/world_vector` + `action/rotation_delta` ... concatenated in the order given, their
  column names recorded), `state_fields` likewise (default `observation/state` when present).
- **Memory**: an episode is read as its one record (offset, length), so decoding holds one
  episode whatever the shard's size; actions reuse the record the frames just read.

Bad input: a record whose CRC fails ("checksum mismatch"), a shard cut inside a record (the
records before it ingest; the cut one is quarantined, naming shard and index), a file that is
not a TFRecord (quarantined as one episode named after the shard), an undecodable image step
(its episode) — each quarantined with one line. A missing `features.json`, an unknown camera or
field (the message lists what exists), a missing `action_rate` stop the run before anything
runs (SourceError / ConfigError, exit 2).
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np

from pipeline.sources.base import ActionTrack, EpisodeError, EpisodeRef, SourceError, reraise_if_infrastructure
from pipeline.sources.hashing import combine, file_digest
from pipeline.sources.rlds_features import ID_KEYS, STEPS, Feature, read_features, select
from pipeline.sources.shards import Shard, list_shards, shard_rows
from pipeline.sources.tfrecord import RecordError, iter_records, parse_example, read_record
from pipeline.uri import join_uri, open_uri
from schemas.config import SourceSpec

log = logging.getLogger(__name__)

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_GONE = "the shard does not exist (listed, then deleted?)"
_SHARD = re.compile(r"^(?P<name>.+)-(?P<split>[^-.]+)\.tfrecord")


def dataset_folder(uri: str) -> str:
    """The version folder holding features.json: `uri` itself, or its newest version subfolder."""
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.isfile(path.rstrip("/") + "/features.json"):
        return uri
    if not fs.isdir(path):
        raise SourceError(f"{uri}: no such folder; set `uri` to an RLDS dataset version folder (.../bridge/0.1.0)")
    versions = []
    for child in fs.ls(path, detail=False):
        name = child.rstrip("/").rsplit("/", 1)[-1]
        if _VERSION.match(name) and fs.isfile(f"{child.rstrip('/')}/features.json"):
            versions.append(name)
    if not versions:
        raise SourceError(f"{uri}: no features.json here nor in a version folder under it; point `uri` at the "
                          "dataset version folder TFDS wrote (.../bridge/0.1.0)")
    newest = max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))
    if len(versions) > 1:
        log.warning("%s: reading version %s, the newest of %s; set uri to .../%s to pin it", uri, newest,
                    sorted(versions), newest)
    return join_uri(uri, newest)


def _text(values: Any) -> str | None:
    for v in values or ():
        s = bytes(v).decode("utf-8", "replace").strip()
        if s:
            return s
    return None


def _steps(ex: dict[str, Any], features: dict[str, Feature]) -> int:
    """The episode's step count from a per-step feature (is_first when present)."""
    key = f"{STEPS}/is_first" if f"{STEPS}/is_first" in ex else next(
        (k for k, f in features.items() if f.per_step and k in ex and f.kind in ("tensor", "image", "text")), None)
    if key is None:
        return 0
    f = features[key]
    n = len(ex[key])
    return n // f.width if f.kind == "tensor" else n


def _scan(shard: Shard, features: dict[str, Feature], instruction: str | None) -> list[list[Any]]:
    """Walk the shard: one row [index, offset, length, id, steps, instruction, fault] per record;
    index -1 when the fault is the whole file's (not a TFRecord file, gone, unreadable)."""
    rows: list[list[Any]] = []
    try:
        with open_uri(shard.uri, "rb") as f:
            for rec in iter_records(f):
                if rec.data is None:
                    rows.append([-1 if rec.whole_file else rec.index, rec.offset, rec.length, None, 0, None, rec.fault])
                    continue
                where = f"{shard.name} record {rec.index}"
                try:
                    ex = parse_example(rec.data, where)
                except RecordError as e:
                    rows.append([rec.index, rec.offset, rec.length, None, 0, None, str(e).split(": ", 1)[-1]])
                    continue
                eid = next((_text(ex[k]) for k in ID_KEYS if k in ex and _text(ex[k])), None)
                text = _text(ex.get(instruction)) if instruction else None
                rows.append([rec.index, rec.offset, rec.length, eid, _steps(ex, features), text, None])
    except FileNotFoundError:
        rows = [[-1, 0, 0, None, 0, None, _GONE]]
    except OSError as e:
        reraise_if_infrastructure(e)
        rows = [[-1, 0, 0, None, 0, None, f"unreadable ({e.strerror or e})"]]
    return rows


def iter_rlds(spec: SourceSpec) -> Iterator[EpisodeRef]:
    """One EpisodeRef per record of every shard, shards in name order, records in file order."""
    assert isinstance(spec.uri, str)
    folder = dataset_folder(spec.uri)
    features = read_features(folder)
    where = join_uri(folder, "features.json")
    sel = select(features, cameras=spec.cameras, kind=spec.kind, action_fields=list(spec.action_fields),
                 state_fields=list(spec.state_fields), instruction_field=spec.instruction_field, where=where)
    rate = float(spec.action_rate or 0)
    if not rate:  # SourceSpec already refuses this; a ref built by hand still gets the message
        raise SourceError(f"source {spec.id!r}: format rlds needs `action_rate: <Hz>` (RLDS has no timestamps)")
    selector = {"format": "rlds", "image": sel.camera, "rate": rate,
                "actions": [[f.key, f.width] for f in sel.actions], "state": [[f.key, f.width] for f in sel.state],
                "action_names": sel.names(sel.actions), "state_names": sel.names(sel.state)}
    params = combine(sel.instruction, ID_KEYS)
    shards = list_shards(folder, match=lambda n: ".tfrecord" in n, what="TFRecord shards (*.tfrecord-*)")
    seen: set[str] = set()
    for shard in shards:
        digest = file_digest(shard.uri, shard.info)
        m = _SHARD.match(shard.name)
        split = m.group("split") if m else None
        if digest == "missing":
            rows = [[-1, 0, 0, None, 0, None, _GONE]]
        else:
            rows = shard_rows(shard, digest, params, lambda s=shard: _scan(s, features, sel.instruction))
        for index, offset, length, eid, steps, text, fault in rows:
            if index == -1:  # the whole shard is bad: one episode named after it, quarantined
                episode_id, why = shard.name, f"{shard.name}: {fault}"
            else:
                episode_id = eid.lstrip("/") if eid else f"{shard.name}/{index}"
                why = None if fault is None else f"{shard.name} record {index} (byte {offset}): {fault}"
            if episode_id in seen:
                episode_id = f"{episode_id}#{shard.name}/{index}"
            seen.add(episode_id)
            yield EpisodeRef(
                source=spec.id, episode_id=episode_id, kind=spec.kind, uri=shard.uri,
                content_hash=combine(digest, index, sel.camera), camera=sel.camera.rsplit("/", 1)[-1],
                fps=rate, instruction=text or spec.instruction, image_key=sel.camera,
                byte_range=(int(offset), int(length)), format="rlds",
                actions_uri=shard.uri if spec.kind == "robot" else None,
                actions_selector=json.dumps({**selector, "steps": steps}, sort_keys=True),
                action_rate=rate, split=split, refused=why,
            )


# --- one episode's record ---------------------------------------------------------------------

_last: tuple[tuple, dict[str, Any]] | None = None  # the record read last: frames, then its actions
_last_lock = threading.Lock()


def _record(ref: EpisodeRef) -> dict[str, Any]:
    """The episode's record, parsed; the one read last is kept (one episode of memory), so its
    actions, loaded right after its frames, cost no second read."""
    global _last
    key = (ref.uri, ref.byte_range, ref.content_hash)
    with _last_lock:
        if _last is not None and _last[0] == key:
            return _last[1]
    assert ref.byte_range is not None
    offset, length = ref.byte_range
    where = f"{ref.uri} record at byte {offset}"
    try:
        with open_uri(ref.uri, "rb") as f:
            ex = parse_example(read_record(f, offset, length, where), where)
    except FileNotFoundError:
        raise EpisodeError(f"{ref.uri}: the shard is gone; re-download it or drop it") from None
    except OSError as e:
        reraise_if_infrastructure(e)
        raise EpisodeError(f"{where}: unreadable ({e})") from None
    with _last_lock:
        _last = (key, ex)
    return ex


def _selector(ref: EpisodeRef) -> dict[str, Any]:
    return json.loads(ref.actions_selector or "{}")


def read_rlds_timestamps(ref: EpisodeRef) -> np.ndarray:
    """(steps,) float64 seconds: step i at i / action_rate. Reads nothing."""
    sel = _selector(ref)
    return np.arange(int(sel["steps"]), dtype=np.float64) / float(sel["rate"])


def _decode_image(blob: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise EpisodeError(f"{where}: not a decodable JPEG/PNG ({type(e).__name__}: {e}); the episode's "
                           "images are damaged") from None


def iter_rlds_frames(ref: EpisodeRef, indices: np.ndarray, block_frames: int) -> Iterator[tuple[list, np.ndarray]]:
    """Decoded images (a list of (H, W, 3) uint8 arrays per block) and their timestamps, of the
    steps `indices` only, `block_frames` at a time; the record is read once."""
    ex = _record(ref)
    images = ex.get(ref.image_key)
    if images is None:
        have = sorted(k for k in ex if k.startswith(STEPS + "/observation/"))
        raise EpisodeError(f"{ref.uri} record at byte {ref.byte_range[0] if ref.byte_range else 0}: no "
                           f"{ref.image_key} (has {have!r})")
    stamps = read_rlds_timestamps(ref)
    if len(images) != len(stamps):
        raise EpisodeError(f"{ref.uri}: {ref.image_key} holds {len(images)} images for {len(stamps)} steps")
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    for i in range(0, len(idx), block_frames):
        chunk = idx[i : i + block_frames]
        frames = [_decode_image(images[int(j)], f"{ref.key}: step {int(j)} of {ref.image_key}") for j in chunk]
        yield frames, stamps[chunk]


def load_rlds_actions(ref: EpisodeRef) -> ActionTrack:
    """The episode's actions (and state) at every step, concatenated in the configured order."""
    sel = _selector(ref)
    ex = _record(ref)
    steps = int(sel["steps"])

    def columns(fields: list[list]) -> np.ndarray | None:
        if not fields:
            return None
        out = []
        for key, width in fields:
            if key not in ex:
                raise EpisodeError(f"{ref.key}: the record has no {key}")
            a = np.asarray(ex[key], dtype=np.float32)
            if a.size != steps * width:
                raise EpisodeError(f"{ref.key}: {key} holds {a.size} values for {steps} steps x {width}")
            out.append(a.reshape(steps, width))
        return np.concatenate(out, axis=1)

    acts = columns(sel["actions"])
    assert acts is not None
    state = columns(sel["state"])
    names, state_names = sel.get("action_names"), sel.get("state_names")
    return ActionTrack(timestamps=np.arange(steps, dtype=np.float64) / float(sel["rate"]), actions=acts,
                       state=state, names=tuple(names) if names else None,
                       state_names=tuple(state_names) if state_names and state is not None else None)
