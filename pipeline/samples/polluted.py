"""A polluted copy of the rendered sample corpora, with the truth about every pollution: what
curation (`pipeline.curation`) must find, and what it must leave alone.

    corpus = make_polluted(samples_dir, out_dir)      # samples_dir: what `make_samples` wrote
    corpus.sources                                    # SourceSpecs to ingest
    corpus.truth[key]                                 # pathology, idle spans (s), duplicate group

Real corpora are dirty in known ways; each is injected into copies of the rendered episodes
and recorded, one pathology per benchmark row:

- `idle_head` / `idle_tail` (robot): the episode starts (ends) with seconds of its first (last)
  picture held under sensor noise, the robot commanded still (zero motion, gripper and state
  as they were) — the seconds before an operator starts, or after the task is done;
- `static` (scraped): a clip that is one picture held (a frozen stream);
- `exact` (a byte copy) and `container` (the same coded stream remuxed into Matroska): exact duplicates;
- `crf` (re-encoded at another CRF), `rescale` (another resolution), `shift` (moved by a few
  pixels): near duplicates;
- `unrelated` (scraped): clips nothing else shows — human episodes kept out of the human
  source, and a robot episode seen by another camera — to be kept whole and in no group.

Duplicates of robot episodes land in the scraped source, a human-kind video folder: the same
clip in two collections, so duplicates are found across sources. Idle spans are recorded in
seconds on the episode's clock; the picture held is the original's first (last) frame, so the
still stretch is the injected frames *and* that frame.

The rendered samples hold duplicates of their own: Meta-World draws some layouts twice (two
drawer-open episodes 0.1 mm apart), and the scripted expert then repeats itself frame for
frame. The truth records them (`natural`): same task, layout within `SAME_LAYOUT` metres.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from pipeline.samples.lerobot_v3 import LeRobotEpisode, VideoEncoding, encode_video_frames, write_lerobot_v3
from schemas import SourceSpec

NEAR_DUPLICATES = ("crf", "rescale", "shift")
EXACT_DUPLICATES = ("exact", "container")
IDLE = ("idle_head", "idle_tail")
_H264 = VideoEncoding(vcodec="libx264", pix_fmt="yuv420p", g=None, crf=23)
TRUTH_FILE = "truth.json"
SAME_LAYOUT = 2e-3  # metres: layouts closer than this are the same demonstration (the expert is deterministic)


@dataclass
class Truth:
    """What one episode of the polluted corpus is."""

    pathology: str  # clean | idle_head | idle_tail | idle_head+idle_tail | static | exact | container | crf | ...
    idle: list[tuple[float, float, str]] = field(default_factory=list)  # [start_s, end_s) held, reason
    group: str | None = None  # key of the original a duplicate copies (originals name themselves)


@dataclass
class PollutedCorpus:
    root: Path
    sources: list[SourceSpec]
    truth: dict[str, Truth]  # episode key -> truth

    def keys(self, pathology: str) -> list[str]:
        return sorted(k for k, t in self.truth.items() if pathology in t.pathology.split("+"))


def read_clip(path: Path, start_s: float = 0.0, end_s: float | None = None) -> tuple[np.ndarray, int]:
    """Every frame of `path` with start_s <= pts < end_s, as (N, H, W, 3) uint8, and its rate."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = int(round(float(stream.average_rate or stream.base_rate)))
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base) if frame.pts is not None else 0.0
            if t < start_s - 1e-3 or (end_s is not None and t >= end_s - 1e-3):
                continue
            frames.append(frame.to_ndarray(format="rgb24"))
    return np.stack(frames), fps


def write_clip(path: Path, frames: np.ndarray, fps: int, crf: int = 23) -> None:
    """H.264 into `path` (the container follows the suffix: .mp4, .mkv, ...)."""
    encode_video_frames(path, list(frames), fps, VideoEncoding(vcodec="libx264", pix_fmt="yuv420p", g=None, crf=crf))


def remux(src: Path, dst: Path) -> None:
    """The same coded stream in another container (`dst`'s suffix): no frame is re-encoded."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:  # the demuxer's flush packet
                continue
            packet.stream = copy
            out.mux(packet)


def _resize(frames: np.ndarray, scale: float) -> np.ndarray:
    h, w = frames.shape[1:3]
    nh, nw = 2 * round(h * scale / 2), 2 * round(w * scale / 2)
    return np.stack([av.VideoFrame.from_ndarray(f, format="rgb24").reformat(width=nw, height=nh, format="rgb24")
                     .to_ndarray() for f in frames])


def _shift(frames: np.ndarray, px: int) -> np.ndarray:
    """Moved `px` pixels right and down, the uncovered edge repeated (a crop-and-pad)."""
    out = np.concatenate([np.repeat(frames[:, :, :1], px, axis=2), frames[:, :, :-px]], axis=2)
    return np.concatenate([np.repeat(out[:, :1], px, axis=1), out[:, :-px]], axis=1)


def _held(frame: np.ndarray, n: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """`frame` repeated n times under Gaussian sensor noise of `noise` grey levels."""
    base = np.repeat(frame[None].astype(np.float32), n, axis=0)
    return np.clip(base + rng.normal(scale=noise, size=base.shape), 0, 255).astype(np.uint8) if noise else \
        base.astype(np.uint8)


def _robot_episodes(robot_root: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, int]]:
    """(instruction, frames of the first camera, actions, state, rate) per episode of a
    rendered LeRobot v3.0 sample dataset, read through the project's own source adapter."""
    from pipeline.sources import iter_episodes, load_actions

    spec = SourceSpec(id="robot", kind="robot", format="lerobot", uri=str(robot_root), action_fields=["action"],
                      state_fields=["observation.state"])
    out = []
    for ref in iter_episodes(spec):
        frames, fps = read_clip(Path(ref.uri), ref.start_s, ref.end_s)
        track = load_actions(ref)
        n = min(len(frames), len(track.actions))
        out.append((ref.instruction or "", frames[:n], track.actions[:n], track.state[:n], fps))
    return out


def make_polluted(samples: Path, out: Path, *, idle_seconds: float = 2.0, noise: float = 3.0, seed: int = 0,
                  shift_px: int = 2, crf: int = 28, scale: float = 1.5) -> PollutedCorpus:
    """Write the polluted corpus under `out` (replaced if present) from the sample corpora in
    `samples` (`make_samples` output with a robot and a human corpus), and return its truth.

    Robot episodes cycle through idle head and tail, clean, idle head, idle tail; their videos get one
    copy each in the scraped source (re-encoded, rescaled, shifted, in turn). Human
    clips alternate: the even ones are the human source, each copied exactly, into Matroska,
    re-encoded, rescaled and shifted; the odd ones (the same tasks, other episodes) go to the
    scraped source alone (`unrelated`); the first clip's first picture held is a `static` clip.
    Every copy is an episode key of its own; `truth` names its original."""
    samples, out = Path(samples), Path(out)
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(seed)
    truth: dict[str, Truth] = {}
    scraped = out / "scraped"
    scraped_rows: list[dict] = []

    def scrape(name: str, t: Truth, frames: np.ndarray | None = None, fps: int = 20, src: Path | None = None,
               crf_: int = 23) -> None:
        rel = f"videos/{name}"
        (scraped / "videos").mkdir(parents=True, exist_ok=True)
        if src is not None:
            shutil.copyfile(src, scraped / rel)
        else:
            write_clip(scraped / rel, frames, fps, crf_)
        scraped_rows.append({"file": rel, "instruction": ""})
        truth[f"scraped/{rel}"] = t

    def near_copy(kind: str, name: str, frames: np.ndarray, fps: int, original: str) -> None:
        t = Truth(kind, list(truth[original].idle), group=original)  # a copy shows the original's idle spans too
        if kind == "crf":
            scrape(f"{name}.crf{crf}.mp4", t, frames, fps, crf_=crf)
        elif kind == "rescale":
            scrape(f"{name}.x{scale:g}.mp4", t, _resize(frames, scale), fps)
        elif kind == "shift":
            scrape(f"{name}.shift{shift_px}.mp4", t, _shift(frames, shift_px), fps)
        else:
            raise ValueError(kind)

    # Robot: idle heads and tails, and near-duplicate copies of each episode's video.
    episodes = _robot_episodes(samples / "robot")
    robot_eps: list[LeRobotEpisode] = []
    for i, (task, frames, actions, state, fps) in enumerate(episodes):
        key = f"robot/episode_{i:06d}"
        kind = ("idle_head+idle_tail", "clean", "idle_head", "idle_tail")[i % 4]
        n = int(round(idle_seconds * fps))
        head = n if "idle_head" in kind else 0
        tail = n if "idle_tail" in kind else 0
        still = actions.copy()
        still[:, :3] = 0.0  # commanded still: no motion, the gripper as it was
        parts_f, parts_a, parts_s = [frames], [actions], [state]
        if head:
            parts_f.insert(0, _held(frames[0], head, noise, rng))
            parts_a.insert(0, np.repeat(still[:1], head, 0))
            parts_s.insert(0, np.repeat(state[:1], head, 0))
        if tail:
            parts_f.append(_held(frames[-1], tail, noise, rng))
            parts_a.append(np.repeat(still[-1:], tail, 0))
            parts_s.append(np.repeat(state[-1:], tail, 0))
        f, a, s = np.concatenate(parts_f), np.concatenate(parts_a), np.concatenate(parts_s)
        done = np.zeros(len(a), bool)
        done[-1] = True
        robot_eps.append(LeRobotEpisode(task=task, data={"action": a, "observation.state": s, "next.done": done},
                                        videos={"observation.images.main": f}))
        # The held picture is the original's first (last) frame: the still stretch includes it.
        idle = ([(0.0, (head + 1) / fps, "idle")] if head else []) + \
               ([((len(f) - tail - 1) / fps, len(f) / fps, "idle")] if tail else [])
        truth[key] = Truth(kind, idle, group=key)
        near_copy(NEAR_DUPLICATES[i % 3], f"robot_{i:03d}", f, fps, key)
    write_lerobot_v3(out / "robot", robot_eps, fps=episodes[0][4], names={})
    _natural_duplicates(samples / "robot", truth)

    # Human clips: originals with exact and near copies, held-back clips as unrelated, a static clip.
    with open(samples / "human" / "manifest.csv", newline="") as handle:
        manifest = list(csv.DictReader(handle))
    human = out / "human"
    (human / "videos").mkdir(parents=True)
    rows = []
    for j, row in enumerate(manifest):
        src = samples / "human" / row["file"]
        name = Path(row["file"]).stem
        if j % 2:  # every other clip: in the scraped source alone, a neighbour of the originals' task
            scrape(f"{name}.mp4", Truth("unrelated"), src=src)
            continue
        frames, fps = read_clip(src)
        shutil.copyfile(src, human / row["file"])
        rows.append(row)
        key = f"human/{row['file']}"
        truth[key] = Truth("clean", group=key)
        scrape(f"{name}.copy.mp4", Truth("exact", group=key), src=src)
        rel = f"videos/{name}.mkv"
        remux(src, scraped / rel)
        scraped_rows.append({"file": rel, "instruction": ""})
        truth[f"scraped/{rel}"] = Truth("container", group=key)
        for kind in NEAR_DUPLICATES:
            near_copy(kind, name, frames, fps, key)
        if j == 0:
            duration = len(frames) / fps
            scrape(f"{name}.static.mp4", Truth("static", [(0.0, duration, "static")]),
                   _held(frames[0], len(frames), 0.0, rng), fps)
    # Another camera of a robot episode: the same moment, another view — not a duplicate.
    if len(episodes) and (samples / "robot" / "videos").is_dir():
        cams = sorted(p.name for p in (samples / "robot" / "videos").iterdir())
        if len(cams) > 1:
            from pipeline.sources import iter_episodes

            spec = SourceSpec(id="robot", kind="robot", format="lerobot", uri=str(samples / "robot"),
                              cameras=[cams[1]], action_fields=["action"])
            ref = next(iter(iter_episodes(spec)))
            frames, fps = read_clip(Path(ref.uri), ref.start_s, ref.end_s)
            scrape("robot_000.other_camera.mp4", Truth("unrelated"), frames, fps)
    _write_manifest(human, rows)
    _write_manifest(scraped, scraped_rows)
    sources = polluted_sources(out)
    (out / TRUTH_FILE).write_text(json.dumps({k: vars(t) for k, t in sorted(truth.items())}, indent=1))
    return PollutedCorpus(out, sources, truth)


def _natural_duplicates(robot_root: Path, truth: dict[str, Truth]) -> None:
    """Group robot episodes (and their copies) that replay one layout with one pollution."""
    from pipeline.samples.metaworld_robot import read_sample_layouts

    layouts = read_sample_layouts(robot_root)
    first: dict[int, int] = {}
    for i, a in enumerate(layouts):
        for j in range(i):
            b = layouts[j]
            same = (a.task == b.task and len(a.rand_vec) == len(b.rand_vec)
                    and max(abs(x - y) for x, y in zip(a.rand_vec, b.rand_vec, strict=True)) < SAME_LAYOUT
                    and truth[f"robot/episode_{i:06d}"].pathology == truth[f"robot/episode_{j:06d}"].pathology)
            if same:
                first[i] = first.get(j, j)
                break
    for i, j in first.items():
        original, dup = f"robot/episode_{j:06d}", f"robot/episode_{i:06d}"
        for t in truth.values():
            if t.group == dup:
                t.group = original
        truth[dup].pathology += "+natural"


def _write_manifest(root: Path, rows: list[dict]) -> None:
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "instruction"])
        writer.writeheader()
        writer.writerows({"file": r["file"], "instruction": r.get("instruction", "")} for r in rows)


def polluted_sources(out: Path) -> list[SourceSpec]:
    """The source specs of a polluted corpus written under `out`."""
    out = Path(out).resolve()
    return [
        SourceSpec(id="robot", kind="robot", format="lerobot", uri=str(out / "robot"), action_fields=["action"],
                   state_fields=["observation.state"]),
        SourceSpec(id="human", kind="human", format="video_dir", uri=str(out / "human"), manifest="manifest.csv",
                   instruction_field="instruction"),
        SourceSpec(id="scraped", kind="human", format="video_dir", uri=str(out / "scraped"), manifest="manifest.csv"),
    ]


def read_polluted(out: Path) -> PollutedCorpus:
    """The corpus `make_polluted` wrote under `out`, truth included."""
    raw = json.loads((Path(out) / TRUTH_FILE).read_text())
    truth = {k: Truth(v["pathology"], [tuple(s) for s in v["idle"]], v["group"]) for k, v in raw.items()}
    return PollutedCorpus(Path(out), polluted_sources(out), truth)


STILL = ("idle_head", "idle_tail", "static")


def _still_truth(t: Truth, ts: np.ndarray) -> dict[str, np.ndarray]:
    """Per still pathology, the frames (by timestamp) inside its truth spans."""
    out = {p: np.zeros(len(ts), bool) for p in STILL}
    duration = ts[-1] + (ts[1] - ts[0] if len(ts) > 1 else 0.0)
    for a, b, reason in t.idle:
        inside = (ts >= a - 1e-6) & (ts < b - 1e-6)
        kind = "static" if reason == "static" else ("idle_head" if a <= 1e-6 else "idle_tail")
        if kind != "static" and a <= 1e-6 and b >= duration - 1e-6:
            kind = "static"
        out[kind] |= inside
    return out


def score_curation(store, cset, truth: dict[str, Truth], tolerance: int = 1) -> list[dict]:
    """Precision and recall of a curation set against the truth, one row per pathology.

    Still spans are scored per frame; frames within `tolerance` frames of a truth span's edge
    inside an episode are not scored (where a held picture meets the original's first motion
    is a matter of a frame). A detected frame outside every truth span counts against the
    pathology its span sits at (an episode's head, tail, or whole). Duplicates are scored per
    pair (a copy and its original): found when the set puts both in one group; a pair the set
    groups that the truth does not counts against the pathology of its copy. `unrelated` and
    `clean` count episodes left whole and alone."""
    rows: dict[str, dict] = {p: {"pathology": p, "unit": "frames", "truth": 0, "tp": 0, "fp": 0} for p in STILL}
    for key in store.keys.tolist():
        t = truth.get(key)
        if t is None or key not in cset:
            continue
        ts = store.timestamps(key)
        n = len(ts)
        want = _still_truth(t, ts)
        got = {p: np.zeros(n, bool) for p in STILL}
        for s, e, _ in cset.spans(key):
            kind = "static" if (s == 0 and e == n) else ("idle_head" if s == 0 else "idle_tail")
            got[kind][s:e] = True
        any_want = np.logical_or.reduce(list(want.values()))
        scored = np.ones(n, bool)
        for edge in np.flatnonzero(np.diff(any_want.astype(np.int8))) + 1:  # first frame after a change
            scored[max(0, edge - tolerance) : edge + tolerance] = False
        any_got = np.logical_or.reduce(list(got.values()))
        for p in STILL:
            rows[p]["truth"] += int((want[p] & scored).sum())
            rows[p]["tp"] += int((want[p] & any_got & scored).sum())
            rows[p]["fp"] += int((got[p] & ~any_want & scored).sum())
    groups = {k: cset.group_of(k) for k in store.keys.tolist() if k in cset}
    kinds = (*EXACT_DUPLICATES, *NEAR_DUPLICATES, "natural")
    for p in kinds:
        rows[p] = {"pathology": p, "unit": "pairs", "truth": 0, "tp": 0, "fp": 0}
    for key, t in truth.items():
        if key not in groups or t.group is None or t.group == key:
            continue
        p = next((k for k in kinds if k in t.pathology.split("+")), None)
        if p is None or t.group not in groups:
            continue
        rows[p]["truth"] += 1
        rows[p]["tp"] += int(groups[key] is not None and groups[key] == groups[t.group])
    members: dict[str, list[str]] = {}
    for key, g in groups.items():
        if g is not None:
            members.setdefault(g, []).append(key)
    for ms in members.values():
        for i, a in enumerate(ms):
            for b in ms[i + 1 :]:
                ta, tb = truth.get(a), truth.get(b)
                if ta is None or tb is None or (ta.group is not None and ta.group == tb.group):
                    continue
                copy = ta if ta.group not in (None, a) else tb
                p = next((k for k in kinds if k in copy.pathology.split("+")), "natural")
                rows[p]["fp"] += 1
    for p in ("unrelated", "clean"):
        keys = [k for k, t in truth.items() if t.pathology == p and k in groups]
        alone = [k for k in keys if groups[k] in (None, k) and not cset.spans(k)]
        rows[p] = {"pathology": p, "unit": "episodes", "truth": len(keys), "tp": len(alone), "fp": 0}
    out = []
    for r in rows.values():
        found = r["tp"] + r["fp"]
        r["precision"] = r["tp"] / found if found else (1.0 if r["unit"] != "episodes" else None)
        r["recall"] = r["tp"] / r["truth"] if r["truth"] else None
        if r["unit"] == "episodes":
            r["precision"] = None
        out.append(r)
    return out
