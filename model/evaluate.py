"""A policy folder (`lawam distill`'s output) evaluated and timed: the one wiring that `lawam
eval` / `lawam latency` and the `evaluate_policy` flow share.

    report = evaluate_policy_dir("runs/policy", episodes=20)          # -> runs/policy/eval/results.json
    latency = policy_latency("runs/policy", calls=200)

Both read the policy's card and load its weights on the driver first, so a damaged folder
fails in one line naming the file before Ray starts or anything is written; the evaluation
then renders with the training corpus's camera and image size (`training_view`) and refuses
held-out scenes that are training ones (`pipeline.evaluation.evaluate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from model.checkpoint import read_card
from model.policy import KIND, load_policy
from pipeline.evaluation.evaluate import EvalError, EvalReport, evaluate, training_view
from pipeline.evaluation.results import RESULTS


def evaluate_policy_dir(policy_dir: str | Path, *, tasks: Sequence[str] | None = None, episodes: int = 20,
                        seed: int = 0, out_dir: str | Path | None = None, results_name: str = RESULTS,
                        camera: str | None = None, image_size: int | None = None,
                        execute_steps: int | None = None, max_steps: int | None = None, workers: int | None = None,
                        video: bool = True, progress: bool = True, encoder_checkpoint: Path | None = None,
                        latency_calls: int = 200) -> EvalReport:
    """Closed-loop success of the policy in `policy_dir` on held-out layouts of `tasks`
    (default: the tasks its training corpus recorded); results in `out_dir` (default
    POLICY/eval) under `results_name`. Raises EvalError / CheckpointError (ConfigError) before
    any rollout."""
    from pipeline.samples.tasks import check_tasks

    card = read_card(policy_dir, KIND)
    load = partial(load_policy, str(Path(policy_dir).resolve()))
    load()  # a damaged weights file fails here, in one line, before the store is read or Ray starts
    view = training_view(card.store.uri, card.store.version, camera=camera, image_size=image_size)
    names = check_tasks(list(tasks), "--tasks") if tasks else tuple(dict.fromkeys(lay.task for lay in view.layouts))
    if not names:
        raise EvalError("give --tasks: the store does not record which tasks the policy was trained on")
    return evaluate(load, tasks=names, episodes=episodes, seed=seed,
                    out_dir=Path(out_dir) if out_dir is not None else Path(policy_dir) / "eval", camera=view.camera,
                    image_size=view.image_size, training_layouts=view.layouts, execute_steps=execute_steps,
                    workers=workers, max_steps=max_steps, video=video, progress=progress,
                    encoder_checkpoint=encoder_checkpoint, latency_calls=latency_calls, policy=str(policy_dir),
                    results_name=results_name)


def policy_latency(policy_dir: str | Path, *, calls: int = 200, warmup: int = 20, threads: int | None = None,
                   encoder_checkpoint: Path | None = None) -> dict[str, dict[str, Any]]:
    """Milliseconds per action chunk at batch 1 (`latency_report`): the policy alone and the
    encoder its card names + the policy, on a frame of the encoder's input size."""
    import numpy as np

    from pipeline.encode import encoder_config_from_identity
    from pipeline.evaluation.latency import latency_report

    card = read_card(policy_dir, KIND)
    load = partial(load_policy, str(Path(policy_dir).resolve()))
    load()  # a damaged weights file fails here, in one line, before the encoder is built
    cfg = encoder_config_from_identity(card.encoder, encoder_checkpoint)
    size = card.encoder.image_size
    frame = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return latency_report(load, cfg, frame, calls=calls, warmup=warmup, threads=threads)


__all__ = ["evaluate_policy_dir", "policy_latency"]
