"""What a closed-loop evaluation leaves in its folder, and the success statistics.

    results.json    settings, the policy's lineage, per-task success rate with a 95% Wilson
                    interval, every episode (task, layout, seed, steps, success), latency
    success.png     success rate per task, the interval as error bars, the overall rate as a line
    rollout-<task>.mp4   the task's first episode, every control step's frame, h264

results.json is written last and atomically: a folder without it holds no finished evaluation.
Another name for it (`lawam eval --out other.json`) prefixes its plot and videos with the name's
stem (other-success.png, other-rollout-<task>.mp4), so evaluations sharing a folder keep theirs;
results.json names its plot and videos either way.
The Wilson interval (not the normal approximation) because evaluations are small and rates
near 0 or 1 are common, where the normal interval collapses to a point.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from schemas.cards import PolicyCard

log = logging.getLogger(__name__)

RESULTS_FORMAT = 1  # bump when results.json changes incompatibly
Z95 = 1.959963984540054  # two-sided 95% normal quantile
# What results.json keeps of the policy card: enough to walk back to the data, not the config.
LINEAGE_KEYS = ("kind", "lawam_version", "created_at", "weights_sha256", "store", "encoder", "label_set",
                "subgoal", "action_fraction", "steps")


@dataclass
class EpisodeResult:
    """One closed-loop episode, as a worker returns it."""

    task: str
    index: int  # episode index within the task
    mt1_seed: int  # the layout: MT1 seed ...
    slot: int  # ... and slot
    seed: int  # torch / numpy seed of the episode
    steps: int  # control steps executed
    success: bool  # success reported at some step
    act_calls: int  # policy calls (chunks asked for)
    final_reward: float  # Meta-World's shaped reward after the last step
    seconds: float  # wall time of the episode on its worker
    frames: np.ndarray | None = field(default=None, repr=False)  # (steps + 1, H, W, 3) when recorded

    def to_json(self) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if k != "frames"}
        row["final_reward"], row["seconds"] = round(self.final_reward, 6), round(self.seconds, 3)
        return row


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: no rounding past 0 or 1
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def _rate(rows: list[EpisodeResult]) -> dict[str, Any]:
    k, n = sum(r.success for r in rows), len(rows)
    lo, hi = wilson_interval(k, n)
    return {"episodes": n, "successes": k, "success_rate": k / n if n else 0.0, "ci95": [lo, hi],
            "mean_steps": float(np.mean([r.steps for r in rows])) if rows else 0.0}


RESULTS = "results.json"


def side_file(results_name: str, name: str) -> str:
    """The name of a file written beside the results file `results_name` (see the module doc)."""
    return name if results_name == RESULTS else f"{Path(results_name).stem}-{name}"


@dataclass
class EvalReport:
    out_dir: Path
    results: dict[str, Any]  # what results.json holds
    name: str = RESULTS  # the results file's name in out_dir

    @property
    def path(self) -> Path:
        return self.out_dir / self.name

    @property
    def success_rate(self) -> float:
        return self.results["overall"]["success_rate"]

    @property
    def per_task(self) -> dict[str, dict[str, Any]]:
        return self.results["tasks"]

    def summary(self) -> str:
        o = self.results["overall"]
        lo, hi = o["ci95"]
        return (f"{o['successes']}/{o['episodes']} episodes succeeded ({o['success_rate']:.0%}, "
                f"95% CI {lo:.0%}-{hi:.0%}) in {self.results['seconds']:.0f} s")

    def to_markdown(self) -> str:
        rows = [f"| {task} | {t['successes']}/{t['episodes']} | {t['success_rate']:.0%} | "
                f"{t['ci95'][0]:.0%}–{t['ci95'][1]:.0%} | {t['mean_steps']:.1f} |\n"
                for task, t in self.per_task.items()]
        text = (f"## Evaluation in `{self.out_dir}`\n\n{self.summary()}\n\n"
                "| task | succeeded | rate | 95% CI | mean steps |\n|---|---|---|---|---|\n" + "".join(rows))
        for device, lat in (self.results.get("latency") or {}).items():
            text += (f"\nlatency ({device}, {lat['torch_threads']} threads): policy "
                     f"{lat['policy_ms']['median']:.2f} ms median / {lat['policy_ms']['p95']:.2f} ms p95; "
                     f"encoder + policy {lat['encoder_policy_ms']['median']:.2f} / "
                     f"{lat['encoder_policy_ms']['p95']:.2f} ms\n")
        return text


def lineage(card: PolicyCard) -> dict[str, Any]:
    data = card.to_json()
    out = {k: data[k] for k in LINEAGE_KEYS if k in data}
    if card.lawm is not None:
        out["lawm"] = card.lawm.model_dump(mode="json", include={"dir", "weights_sha256", "store"})
    return out


def plot_success(tasks: dict[str, dict[str, Any]], overall: dict[str, Any], path: Path, title: str) -> Path:
    """`success_figure` as a PNG at `path`."""
    success_figure(tasks, overall, title).savefig(path, dpi=100)
    return path


def success_figure(tasks: dict[str, dict[str, Any]], overall: dict[str, Any], title: str) -> Any:
    """Bar per task (success rate, Wilson 95% interval as error bars), each labelled with its
    rate (a 0% bar has no height to see), and the overall rate as a line."""
    from matplotlib.figure import Figure

    names = list(tasks)
    rates = np.array([tasks[t]["success_rate"] for t in names])
    lo = np.array([tasks[t]["ci95"][0] for t in names])
    hi = np.array([tasks[t]["ci95"][1] for t in names])
    fig = Figure(figsize=(max(4.0, 1.2 * len(names) + 2), 3.6), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(names, rates, yerr=[rates - lo, hi - rates], capsize=4, color="tab:blue")
    ax.bar_label(bars, labels=[f"{r:.0%}" for r in rates], fontsize=8, padding=2)
    ax.axhline(overall["success_rate"], color="tab:red", linestyle="--", linewidth=1,
               label=f"all tasks {overall['success_rate']:.0%} (n={overall['episodes']})")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% Wilson CI)")
    ax.tick_params(axis="x", labelsize=8, rotation=20)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title, fontsize=10)
    return fig


def write_video(path: Path, frames: np.ndarray, fps: int) -> Path:
    """h264 MP4 of RGB frames at `fps`, playable anywhere (yuv420p)."""
    from pipeline.samples.lerobot_v3 import VideoEncoding, encode_video_frames

    encode_video_frames(path, frames, fps, VideoEncoding(vcodec="libx264", g=None, crf=23))
    return path


def write_report(out_dir: Path, results: list[EpisodeResult], *, settings: dict[str, Any], card: PolicyCard,
                 policy: str | None, latency: dict[str, Any] | None, video_fps: int, seconds: float,
                 rollout_seconds: float, name: str = RESULTS) -> EvalReport:
    """Write the videos, the plot and (last, atomically) the results file `name` into `out_dir`."""
    by_task: dict[str, list[EpisodeResult]] = {}
    for r in results:
        by_task.setdefault(r.task, []).append(r)
    tasks = {task: _rate(rows) for task, rows in by_task.items()}
    overall = _rate(results)
    videos = {}
    for task, rows in by_task.items():
        first = next((r for r in rows if r.frames is not None), None)
        if first is not None and settings.get("video", True):
            video = side_file(name, f"rollout-{task}.mp4")
            write_video(out_dir / video, first.frames, video_fps)
            videos[task] = video
            tasks[task]["video"] = video
    plot = side_file(name, "success.png")
    plot_success(tasks, overall, out_dir / plot,
                 f"{Path(policy).name if policy else 'policy'}: {overall['episodes']} held-out episodes")
    doc = {
        "format": RESULTS_FORMAT, "policy": {"path": policy, **lineage(card)}, "settings": settings, "plot": plot,
        "overall": overall, "tasks": tasks, "episodes": [r.to_json() for r in results],
        "latency": latency, "seconds": round(seconds, 2),
        "seconds_per_episode": round(sum(r.seconds for r in results) / max(1, len(results)), 3),
        "rollout_seconds": round(rollout_seconds, 2),
    }
    tmp = out_dir / f".{name}.{os.getpid()}"
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    os.replace(tmp, out_dir / name)
    return EvalReport(out_dir, doc, name)


def read_results(path: Path) -> dict[str, Any]:
    """A results file as written by `write_report`; ConfigError naming the file when it is not
    one (damaged, truncated, or another file)."""
    from schemas.errors import ConfigError

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable results file ({type(e).__name__}); evaluate again to "
                          "rewrite it") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("overall"), dict) or not isinstance(doc.get("tasks"), dict):
        raise ConfigError(f"{path}: not a results file of `lawam eval` (no overall/tasks); evaluate again to "
                          "rewrite it")
    return doc
