"""`hdf5` sources: robomimic / LIBERO files, `data/demo_N/{obs/<camera>, actions}`.

Images are uint8 arrays (N, H, W, 3) recorded once per control step, so frame i is at
`i / rate` seconds, where rate is `spec.action_rate`, else the file's own control rate
(`fps` / `control_freq` attributes, or robomimic/LIBERO `env_args.env_kwargs.control_freq`),
else `spec.fps` (with a warning: that field is the corpus sampling rate, not the
recording rate), else a SourceError asking for `action_rate`.

`uri` is one .hdf5/.h5 file (episode ids `demo_N`) or a folder of them, as LIBERO ships
(ids `<relative file>/demo_N`). Demos are ordered numerically (demo_2 before demo_10).
Instruction: `spec.instruction_field` attribute of the demo or `data` group, else LIBERO's
`data.attrs["problem_info"]["language_instruction"]`, else `spec.instruction` — the
dataset's own per-episode text wins over the source-wide default, as for the other formats.

Bad input is per demo: a demo without the configured action / state fields or without its
camera's images is yielded refused (`EpisodeRef.refused`), so the ingest quarantines it
without decoding it; only a field that no demo of the first file has is a SourceError
(a wrong field name fails before any work).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
import h5py
import numpy as np

from pipeline.sources.base import ActionTrack, EpisodeError, EpisodeRef, SourceError, reraise_if_infrastructure
from pipeline.sources.hashing import combine, file_digest
from pipeline.uri import is_remote, join_uri, open_uri
from schemas.config import SourceSpec

log = logging.getLogger(__name__)

HDF5_EXTENSIONS = (".hdf5", ".h5", ".he5")
_RATE_ATTRS = ("fps", "control_freq", "control_frequency", "action_rate", "frequency")


@contextmanager
def open_h5(uri: str) -> Iterator[h5py.File]:
    """Read-only h5py.File over a local path or an fsspec URL (via a file object)."""
    if not is_remote(uri):
        with h5py.File(uri.removeprefix("file://"), "r") as h5:
            yield h5
        return
    with open_uri(uri, "rb") as f, h5py.File(f, "r") as h5:
        yield h5


def _demo_number(name: str) -> tuple[int, str]:
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else -1, name)


def _files(root: str) -> list[tuple[str, str]]:
    """(relative name, uri) of every HDF5 file; rel is "" when `uri` is a single file."""
    fs, path = fsspec.core.url_to_fs(root)
    if fs.isfile(path):
        return [("", root)]
    if not fs.isdir(path):
        raise SourceError(f"{root}: no such file or folder; set `uri` to an .hdf5 file or a folder of them")
    base = path.rstrip("/")
    found = sorted(p for p in fs.find(base) if p.lower().endswith(HDF5_EXTENSIONS))
    if not found:
        raise SourceError(f"{root}: no .hdf5/.h5 files in this folder")
    out = []
    for p in found:
        rel = p[len(base) :].lstrip("/").replace(os.sep, "/")
        out.append((rel, join_uri(root, rel)))
    return out


def _attr_rate(h5: h5py.File) -> float | None:
    data = h5.get("data")
    for group in (h5, data) if data is not None else (h5,):
        for k in _RATE_ATTRS:
            if k in group.attrs:
                return float(group.attrs[k])
        if "env_args" in group.attrs:
            try:
                kwargs = json.loads(group.attrs["env_args"]).get("env_kwargs", {})
            except (TypeError, ValueError, AttributeError):
                continue
            if kwargs.get("control_freq"):
                return float(kwargs["control_freq"])
    return None


def _rate(spec: SourceSpec, h5: h5py.File, uri: str) -> float:
    if spec.action_rate:
        return float(spec.action_rate)
    rate = _attr_rate(h5)
    if rate:
        return rate
    if spec.fps:
        log.warning("%s: no recording rate in the file; assuming spec.fps=%s Hz (set action_rate)", uri, spec.fps)
        return float(spec.fps)
    raise SourceError(f"{uri}: the file does not say its control rate; add `action_rate: <Hz>` to the source YAML")


def _pick_camera(spec: SourceSpec, obs: h5py.Group, where: str) -> str:
    keys = list(obs.keys())
    if spec.cameras:
        if spec.cameras[0] not in obs:
            raise SourceError(f"{where}: camera {spec.cameras[0]!r} not in obs keys {keys!r}")
        return spec.cameras[0]
    for suffixes in (("_image", "image"), ("_rgb", "rgb")):
        for k in keys:
            if k.endswith(suffixes):
                return k
    for k in keys:  # any (N, H, W, 3) uint8 array
        d = obs[k]
        if isinstance(d, h5py.Dataset) and d.dtype == np.uint8 and d.ndim == 4 and d.shape[-1] == 3:
            return k
    raise SourceError(f"{where}: no image in obs keys {keys!r}; name the camera in `cameras`")


def _instruction(spec: SourceSpec, data: h5py.Group, demo: h5py.Group) -> str | None:
    if spec.instruction_field:
        for group in (demo, data):
            if spec.instruction_field in group.attrs:
                v = group.attrs[spec.instruction_field]
                return v.decode() if isinstance(v, bytes) else str(v)
    if "problem_info" in data.attrs:
        try:
            text = json.loads(data.attrs["problem_info"]).get("language_instruction")
        except (TypeError, ValueError, AttributeError):
            text = None
        if text:
            return str(text).strip().strip('"')
    return spec.instruction


def iter_hdf5(spec: SourceSpec) -> Iterator[EpisodeRef]:
    """One EpisodeRef per demo, files in path order, demos in numeric order."""
    files = _files(spec.uri)
    for i, (rel, uri) in enumerate(files):
        digest = file_digest(uri)
        try:
            yield from _iter_file(spec, rel, uri, digest, first_file=i == 0)
        except OSError as e:
            reraise_if_infrastructure(e)
            if len(files) == 1:
                raise SourceError(f"{uri}: not a readable HDF5 file ({e})") from None
            # One bad file among many: yield it so the ingest quarantines it, the rest go on.
            log.error("%s: not a readable HDF5 file (%s); yielded for quarantine", uri, e)
            why = (str(e).splitlines() or [type(e).__name__])[0]
            yield EpisodeRef(source=spec.id, episode_id=rel, kind=spec.kind, uri=uri, content_hash=combine(digest),
                             image_key="data", refused=f"{rel}: not a readable HDF5 file ({why})")


def _iter_file(spec: SourceSpec, rel: str, uri: str, digest: str, first_file: bool) -> Iterator[EpisodeRef]:
    """The file's demos. A robot field missing from every demo of the first file is a wrong
    field name (SourceError, at `check_source`); elsewhere, a demo lacking a field or its
    image is yielded refused, so it is quarantined and the rest of the source goes on."""
    with open_h5(uri) as h5:
        data = h5.get("data")
        if not isinstance(data, h5py.Group):
            raise SourceError(f"{uri}: no `data` group; expected robomimic/LIBERO data/demo_N layout")
        demos = sorted((k for k in data if isinstance(data[k], h5py.Group)), key=_demo_number)
        if not demos:
            log.warning("%s: no demos under data/", uri)
            return
        rate = _rate(spec, h5, uri)
        first = data[demos[0]]
        if "obs" not in first:
            raise SourceError(f"{uri}: data/{demos[0]} has no `obs` group")
        cam = _pick_camera(spec, first["obs"], f"{uri} data/{demos[0]}")
        actions = list(spec.action_fields or ["actions"])
        state = list(spec.state_fields)
        fields = actions + state if spec.kind == "robot" else []
        lacking = {demo: [f for f in fields if _field_path(data[demo], f) is None] for demo in demos}
        nowhere = [f for f in fields if all(f in missing for missing in lacking.values())]
        if nowhere and first_file:  # in no demo at all: a wrong field name, not one bad demo
            raise SourceError(f"{uri}: no demo has field(s) {nowhere!r} (looked in data/demo_N and its obs/); "
                              "fix action_fields / state_fields, or use kind: human")
        for demo in demos:
            group = f"data/{demo}"
            selector = {"format": "hdf5", "group": group, "actions": actions, "state": state}
            # One bad demo among good ones is bad input: quarantined, never decoded.
            refused = None
            if f"{group}/obs/{cam}" not in h5:
                refused = f"{group} has no image obs/{cam}"
            elif lacking[demo]:
                name = lacking[demo][0]
                what = "action" if name in actions else "state"
                refused = f"{group} has no {what} field {name!r} (looked in the demo and obs/)"
            yield EpisodeRef(
                source=spec.id,
                episode_id=f"{rel}/{demo}" if rel else demo,
                kind=spec.kind,
                uri=uri,
                content_hash=combine(digest, group, cam),
                camera=cam,
                fps=rate,
                instruction=_instruction(spec, data, data[demo]),
                image_key=f"{group}/obs/{cam}",
                actions_uri=uri if spec.kind == "robot" else None,
                actions_selector=json.dumps(selector, sort_keys=True) if spec.kind == "robot" else None,
                action_rate=rate,
                refused=refused,
            )


def _field_path(demo: h5py.Group, name: str) -> str | None:
    for path in (name, f"obs/{name}"):
        if path in demo and isinstance(demo[path], h5py.Dataset):
            return path
    return None


def _rate_of(ref: EpisodeRef) -> float:
    rate = ref.action_rate or ref.fps
    if not rate:
        raise EpisodeError(f"{ref.uri}: episode {ref.episode_id} has no rate; set `action_rate` in the YAML")
    return float(rate)


def _images(h5: h5py.File, ref: EpisodeRef) -> h5py.Dataset:
    d = h5.get(ref.image_key)
    if not isinstance(d, h5py.Dataset) or d.ndim != 4 or d.shape[-1] != 3:
        shape = getattr(d, "shape", None)
        raise EpisodeError(f"{ref.uri}: {ref.image_key} is not a (N, H, W, 3) image array (shape {shape})")
    return d


def read_image_timestamps(ref: EpisodeRef) -> np.ndarray:
    """(N,) float64 seconds of every stored image; reads only the array's shape."""
    try:
        with open_h5(ref.uri) as h5:
            n = _images(h5, ref).shape[0]
    except OSError as e:
        reraise_if_infrastructure(e)
        raise EpisodeError(f"{ref.uri}: not a readable HDF5 file ({e})") from None
    return np.arange(n, dtype=np.float64) / _rate_of(ref)


def read_image_frames(ref: EpisodeRef, indices: np.ndarray | list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 (K, H, W, 3) and their timestamps (K,) float64; all frames, or `indices` in
    the order given (repeats allowed). Only the requested rows are read from disk."""
    try:
        with open_h5(ref.uri) as h5:
            d = _images(h5, ref)
            if indices is None:
                idx = np.arange(d.shape[0])
                frames = d[()]
            else:
                idx = np.asarray(indices, dtype=np.int64).reshape(-1)
                if idx.size and (idx.min() < 0 or idx.max() >= d.shape[0]):
                    raise EpisodeError(f"{ref.uri}: {ref.image_key} has {d.shape[0]} frames, asked for {idx.tolist()}")
                uniq, inverse = np.unique(idx, return_inverse=True)  # h5py wants increasing indices
                frames = d[uniq.tolist()][inverse] if uniq.size else np.empty((0, *d.shape[1:]), np.uint8)
    except OSError as e:
        reraise_if_infrastructure(e)
        raise EpisodeError(f"{ref.uri}: not a readable HDF5 file ({e})") from None
    return np.ascontiguousarray(frames, dtype=np.uint8), idx.astype(np.float64) / _rate_of(ref)


def load_hdf5_actions(ref: EpisodeRef) -> ActionTrack:
    """`data/demo_N/actions` (M, A) at the control rate, plus state columns if configured."""
    assert ref.actions_uri is not None and ref.actions_selector is not None
    sel: dict[str, Any] = json.loads(ref.actions_selector)
    try:
        with open_h5(ref.actions_uri) as h5:
            demo = h5.get(sel["group"])
            if demo is None:
                raise EpisodeError(f"{ref.actions_uri}: no group {sel['group']!r}")

            def read(name: str) -> np.ndarray:
                path = _field_path(demo, name)
                if path is None:
                    raise EpisodeError(f"{ref.actions_uri}: {sel['group']} has no field {name!r}")
                a = np.asarray(demo[path][()], dtype=np.float32)
                return a.reshape(len(a), -1)

            acts = np.concatenate([read(a) for a in sel["actions"]], axis=1)
            state = np.concatenate([read(s) for s in sel["state"]], axis=1) if sel["state"] else None
    except OSError as e:
        reraise_if_infrastructure(e)
        raise EpisodeError(f"{ref.actions_uri}: not a readable HDF5 file ({e})") from None
    ts = np.arange(len(acts), dtype=np.float64) / _rate_of(ref)
    return ActionTrack(timestamps=ts, actions=acts, state=state)
