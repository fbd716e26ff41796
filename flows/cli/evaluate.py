"""Evaluation commands: closed-loop success (`eval`) and batch-1 latency (`latency`)."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.cli.app import app, out
from pipeline.evaluation.results import RESULTS


def results_place(policy: Path, out: Path | None) -> tuple[Path, str]:
    """(folder, results file name) of `--out`: a folder (one that exists, or a name without a
    suffix) takes results.json; any other name is the results file itself."""
    if out is None:
        return policy / "eval", RESULTS
    if out.is_dir() or not out.suffix:
        return out, RESULTS
    return out.parent, out.name


@app.command("eval")
def eval_cmd(
    policy: Path = typer.Option(..., help="A `lawam distill` output folder."),
    tasks: str = typer.Option(None, help="Comma-separated Meta-World tasks (default: the training corpus's)."),
    episodes: int = typer.Option(20, min=1, help="Held-out episodes per task."),
    seed: int = typer.Option(0, help="Seed of the held-out layouts (stream 'eval'; an overlap with the "
                                     "training layouts is refused)."),
    results: Path = typer.Option(None, "--out", help="A folder for results.json, success.png and one rollout "
                                 "MP4 per task (default: POLICY/eval), or the results file's name (a name with a "
                                 "suffix, e.g. runs/eval/seed1.json: its plot and MP4s go beside it, prefixed "
                                 "seed1-)."),
    execute_steps: int = typer.Option(None, min=1, help="Actions executed per chunk before asking again "
                                                        "(default: half the chunk)."),
    max_steps: int = typer.Option(None, min=1, help="Control steps per episode (default and cap: "
                                                    "Meta-World's 125)."),
    workers: int = typer.Option(None, min=1, help="Ray workers, one environment each (default: one per core)."),
    camera: str = typer.Option(None, help="Camera, when the store does not record the training corpus's."),
    image_size: int = typer.Option(None, help="Rendered size, when the store does not record it."),
    encoder_checkpoint: Path = typer.Option(None, help="The encoder's weights file, when the card names "
                                                       "real weights (sha256-checked)."),
    video: bool = typer.Option(True, help="Write one rollout MP4 per task."),
    latency_calls: int = typer.Option(200, min=0, help="Chunks timed for the latency figures (0 = skip)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Closed-loop success in Meta-World on held-out layouts, through the ingest's own pixel path
    (same camera, size, resize and frozen encoder), receding horizon; episodes fan out over Ray.

    Writes results.json (per-task success with 95% intervals, every episode's seeds and steps,
    latency, the policy's lineage), success.png and rollout-<task>.mp4.
    """
    from model.evaluate import evaluate_policy_dir

    out_dir, name = results_place(policy, results)
    report = evaluate_policy_dir(policy, tasks=[t.strip() for t in tasks.split(",") if t.strip()] if tasks else None,
                                 episodes=episodes, seed=seed, out_dir=out_dir, results_name=name, camera=camera,
                                 image_size=image_size, execute_steps=execute_steps, max_steps=max_steps,
                                 workers=workers, video=video, progress=progress,
                                 encoder_checkpoint=encoder_checkpoint, latency_calls=latency_calls)
    out.print(report.summary(), highlight=False)
    _print_latency(report.results.get("latency"))
    videos = [t["video"] for t in report.per_task.values() if t.get("video")]
    out.print(f"wrote {report.path}, {report.results['plot']}" + (f" and {len(videos)} rollout MP4s" if videos else ""),
              highlight=False)


def _print_latency(latency: dict | None) -> None:
    for device, lat in (latency or {}).items():
        out.print(f"latency ({device}, batch 1, {lat.get('calls', '?')} calls): policy alone "
                  f"{lat['policy_ms']['median']:.2f} ms median / {lat['policy_ms']['p95']:.2f} ms p95; "
                  f"encoder ({lat.get('encoder_runtime', 'torch')} {lat.get('encoder_precision', 'fp32')}) + policy "
                  f"{lat['encoder_policy_ms']['median']:.1f} ms / {lat['encoder_policy_ms']['p95']:.1f} ms",
                  highlight=False)


@app.command()
def latency(
    policy: Path = typer.Option(..., help="A `lawam distill` output folder."),
    calls: int = typer.Option(200, min=1, help="Timed chunks per figure, after warm-up."),
    warmup: int = typer.Option(20, min=0, help="Untimed chunks first."),
    threads: int = typer.Option(None, min=1, help="torch threads (default: torch's)."),
    encoder_checkpoint: Path = typer.Option(None, help="The encoder's weights file, when the card names real weights."),
) -> None:
    """Milliseconds per action chunk at batch 1: the policy alone (features in, chunk out, the LaWM
    decoder included) and encoder + policy from a uint8 frame; on the CPU, and on CUDA when present.
    The encoder runs with the runtime and precision that computed the policy's training features."""
    from model.evaluate import policy_latency

    _print_latency(policy_latency(policy, calls=calls, warmup=warmup, threads=threads,
                                  encoder_checkpoint=encoder_checkpoint))
