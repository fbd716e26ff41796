"""Evaluation commands: closed-loop success (`eval`) and batch-1 latency (`latency`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.cli.app import _domain_errors, _fail, app, out
from schemas.cards import PolicyCard


def _policy_card(policy: Path) -> PolicyCard:
    from model.checkpoint import read_card
    from model.policy import KIND

    return read_card(policy, KIND)


@app.command("eval")
def eval_cmd(
    policy: Path = typer.Option(..., help="A `lawam distill` output folder."),
    tasks: str = typer.Option(None, help="Comma-separated Meta-World tasks (default: the training corpus's)."),
    episodes: int = typer.Option(20, min=1, help="Held-out episodes per task."),
    seed: int = typer.Option(0, help="Seed of the held-out layouts (stream 'eval'; an overlap with the "
                                     "training layouts is refused)."),
    results: Path = typer.Option(None, "--out", help="results.json to write (default: POLICY/eval/results.json); "
                                                    "success.png and one rollout MP4 per task go beside it."),
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
    from functools import partial

    from model.policy import load_policy
    from pipeline.evaluation.evaluate import EvalError, evaluate, training_view
    from pipeline.samples import SampleError
    from pipeline.samples.tasks import check_tasks

    try:
        card = _policy_card(policy)
        view = training_view(card.store.uri, card.store.version, camera=camera, image_size=image_size)
        names = check_tasks([t.strip() for t in tasks.split(",") if t.strip()], "--tasks") if tasks else \
            tuple(dict.fromkeys(lay.task for lay in view.layouts))
        if not names:
            raise EvalError("give --tasks: the store does not record which tasks the policy was trained on")
        out_dir = results.parent if results is not None else policy / "eval"
        if results is not None and results.name != "results.json":
            raise EvalError(f"--out {results}: name the results file results.json (the PNG and MP4s go beside it)")
        from pipeline.ray_runtime import ensure_ray

        ensure_ray()
        report = evaluate(partial(load_policy, str(policy.resolve())), tasks=names, episodes=episodes, seed=seed,
                          out_dir=out_dir, camera=view.camera, image_size=view.image_size,
                          training_layouts=view.layouts, execute_steps=execute_steps, workers=workers,
                          max_steps=max_steps, video=video, progress=progress,
                          encoder_checkpoint=encoder_checkpoint, latency_calls=latency_calls, policy=str(policy))
    except (*_domain_errors(), EvalError, SampleError) as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    out.print(report.summary(), highlight=False)
    result = json.loads((out_dir / "results.json").read_text())
    _print_latency(result.get("latency"))
    out.print(f"wrote {out_dir / 'results.json'}, success.png and {len(names) if video else 0} rollout MP4s",
              highlight=False)


def _print_latency(latency: dict | None) -> None:
    for device, lat in (latency or {}).items():
        out.print(f"latency ({device}, batch 1, {lat.get('calls', '?')} calls): policy alone "
                  f"{lat['policy_ms']['median']:.2f} ms median / {lat['policy_ms']['p95']:.2f} ms p95; "
                  f"encoder + policy {lat['encoder_policy_ms']['median']:.1f} ms / "
                  f"{lat['encoder_policy_ms']['p95']:.1f} ms", highlight=False)


@app.command()
def latency(
    policy: Path = typer.Option(..., help="A `lawam distill` output folder."),
    calls: int = typer.Option(200, min=1, help="Timed chunks per figure, after warm-up."),
    warmup: int = typer.Option(20, min=0, help="Untimed chunks first."),
    threads: int = typer.Option(None, min=1, help="torch threads (default: torch's)."),
    encoder_checkpoint: Path = typer.Option(None, help="The encoder's weights file, when the card names real weights."),
) -> None:
    """Milliseconds per action chunk at batch 1: the policy alone (features in, chunk out, the LaWM
    decoder included) and encoder + policy from a uint8 frame; on the CPU, and on CUDA when present."""
    from functools import partial

    import numpy as np

    from model.policy import load_policy
    from pipeline.encode import encoder_config_from_identity
    from pipeline.evaluation.latency import latency_report

    try:
        card = _policy_card(policy)
        cfg = encoder_config_from_identity(card.encoder, encoder_checkpoint)
        size = card.encoder.image_size
        frame = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        report = latency_report(partial(load_policy, str(policy.resolve())), cfg, frame, calls=calls, warmup=warmup,
                                threads=threads)
    except _domain_errors() as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    _print_latency(report)

