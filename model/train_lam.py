"""Stage 1 trainer: the latent world model, straight from a pinned store version.

    card = train_lam("data/demo/store", "runs/lam", LamConfig())        # one process
    card = train_lam(..., workers=2)                                     # same loop, Ray Train DDP

Promises:
- **Pinned data.** The run resolves the store's newest commit once, at the start, and every
  worker reopens exactly that `(uri, version)`; the card records it.
- **One loop.** `workers > 1` runs the very same `_loop` under Ray Train's `TorchTrainer`
  (DDP: gloo on CPU, NCCL on GPU); there is no hand-made distributed code. Each rank reads
  its own shard of every epoch (`model.data`).
- **Exact resume.** A checkpoint holds weights, optimizer, scheduler, every rank's torch RNG
  and its data position (batches consumed): `resume=True` continues as if never stopped.
  SIGINT/SIGTERM in a one-process run checkpoints at the end of the current step and returns.
- **Outputs** in `out_dir`: `model.safetensors` + `card.json` (lineage: store uri + version,
  encoder identity, config, feature statistics, metrics, weights hash, label-set id),
  `metrics.jsonl`, TensorBoard events in `tb/`, `metrics.png` and `curves.png`.

AdamW with linear warm-up and cosine decay, gradient clipping, bf16 autocast on CUDA and
float32 on CPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import (
    RESUME,
    CheckpointError,
    lawam_version,
    load_resume_state,
    load_weights,
    read_card,
    save_resume_state,
    save_weights,
    write_card,
)
from model.data import PairDataset, collect, pair_loader, rank_and_world
from model.lawm import LaWM
from pipeline.store import FeatureStore
from pipeline.store.labels import label_set_id
from pipeline.store.pairs import PairQuery, PairReader
from schemas.training import LamConfig

log = logging.getLogger(__name__)

KIND = "lawm"
EVAL_PAIRS = 4096  # held-out pairs per evaluation (and train pairs for the probe's fit)


os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # if Ray Train starts Ray: loopback only

ProgressFactory = Callable[..., AbstractContextManager]  # (description, total=, unit=) -> bar with advance/note


class _NoBar:
    def advance(self, n: int = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass


def _bar(progress: ProgressFactory | bool | None, total: int) -> AbstractContextManager:
    """The caller's progress bar (flows pass `pipeline.progress.progress_bar`), or none."""
    if not callable(progress):
        return nullcontext(_NoBar())
    return progress("train-lam", total=total, unit="steps")


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs to run the loop; picklable (sent to Ray Train workers)."""

    store_uri: str
    version: str
    cfg: LamConfig
    out_dir: str
    resume: bool = False
    progress: ProgressFactory | None = None
    device: str = "auto"
    stop_at: int | None = None  # stop (resumably) after this step, as an interrupted run would
    workers: int = 1


def lr_lambda(cfg: LamConfig):
    o = cfg.optim

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = (step - o.warmup_steps) / max(1, o.steps - o.warmup_steps)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def build_model(cfg: LamConfig, store: FeatureStore, reader: PairReader) -> LaWM:
    """A fresh LaWM sized to the store's tokens, with feature (and state-change) statistics
    of the training split."""
    tokens, dim = store.token_shape
    model = LaWM(cfg.model, tokens=tokens, feature_dim=dim, state_dim=reader.state_dim)
    mean, std = reader.feature_stats(seed=cfg.pairs.seed)
    model.set_feature_stats(mean, std)
    if reader.state_dim:
        sample = collect(store, PairQuery.from_config(cfg.pairs, split="train", kinds=("robot",)), max_pairs=4096)
        if sample and sample["state_mask"].any():
            m = sample["state_mask"]
            model.set_state_stats((sample["state_tk"][m] - sample["state_t"][m]).std(0))
    return model


def load_lawm(lam_dir: str | Path) -> tuple[LaWM, dict[str, Any]]:
    """A trained LaWM (eval mode) and its card."""
    card = read_card(lam_dir, KIND)
    cfg = LamConfig.model_validate(card["config"])
    tokens, dim = card["token_shape"]
    model = LaWM(cfg.model, tokens=tokens, feature_dim=dim, state_dim=card.get("state_dim", 0))
    load_weights(model, lam_dir)
    return model.eval(), card


class _Stop:
    """SIGINT/SIGTERM -> finish the step, checkpoint, return (one-process runs only)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step; the checkpoint lets --resume continue")

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _loop(spec: RunSpec) -> dict[str, Any] | None:
    """The training loop of one rank. Returns the card on rank 0."""
    cfg, out = spec.cfg, Path(spec.out_dir)
    rank, world = rank_and_world()
    device = _device(spec.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(cfg.optim.seed)
    store = FeatureStore.open(spec.store_uri, spec.version)
    train_q = PairQuery.from_config(cfg.pairs, split="train")
    reader = PairReader(store, train_q)
    state = load_resume_state(out, rank) if spec.resume else None
    if spec.resume and state is None:
        raise CheckpointError(f"{out}: nothing to resume (no {RESUME}/rank{rank}.pt); run without --resume")
    if state is not None:
        tokens, dim = store.token_shape
        model = LaWM(cfg.model, tokens=tokens, feature_dim=dim, state_dim=reader.state_dim)
        load_weights(model, out / RESUME)
    else:
        model = build_model(cfg, store, reader)
    core = model.to(device)
    if world > 1:
        from ray.train.torch import prepare_model

        model = prepare_model(core, move_to_device=False)
    opt = torch.optim.AdamW(core.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    step, wall = 0, 0.0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step, wall = int(state["step"]), float(state["wall"])
        if state["version"] != spec.version:
            raise CheckpointError(f"{out}: the checkpoint read store version {state['version']}, this run "
                                  f"{spec.version}; resume with --version {state['version']}")
    ds = PairDataset(store, train_q, cfg.optim.batch_size, start_batch=step)
    batches = iter(pair_loader(ds, workers=cfg.optim.loader_workers))
    heldout = train_probe = None
    if rank == 0:
        heldout = collect(store, PairQuery.from_config(cfg.pairs, split="heldout"), EVAL_PAIRS)
        train_probe = collect(store, train_q, EVAL_PAIRS)
        out.mkdir(parents=True, exist_ok=True)
    tb = _tensorboard(out) if rank == 0 else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    log_every = max(1, min(50, cfg.optim.steps // 100))
    metrics: dict[str, float] = {}
    t_start, pairs_seen, data_wait = time.monotonic(), 0, 0.0
    stopped = False
    with _Stop() as stop, _bar(spec.progress if rank == 0 else None, cfg.optim.steps) as bar:
        bar.advance(step)
        model.train()
        while step < cfg.optim.steps:
            t0 = time.monotonic()
            batch = next(batches)
            data_wait += time.monotonic() - t0
            f_t, f_tk = batch["f_t"].to(device), batch["f_tk"].to(device)
            delta = mask = None
            if core.state_dim:
                delta = (batch["state_tk"] - batch["state_t"]).to(device)
                mask = batch["state_mask"].to(device)
            with autocast:
                res = model(f_t, f_tk, delta, mask)
            opt.zero_grad(set_to_none=True)
            res.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(core.parameters(), cfg.optim.grad_clip)
            opt.step()
            sched.step()
            step += 1
            pairs_seen += len(f_t)
            bar.advance()
            if rank == 0 and (step % log_every == 0 or step == cfg.optim.steps):
                elapsed = time.monotonic() - t_start
                row = {"step": step, "loss": res.loss.item(), **{k: float(v) for k, v in res.parts.items()},
                       "grad_norm": float(grad_norm), "lr": sched.get_last_lr()[0],
                       "pairs_per_s": pairs_seen * world / max(elapsed, 1e-9),
                       "data_wait_frac": data_wait / max(elapsed, 1e-9), "epoch": int(batch["epoch"][0])}
                _log_row(out, tb, row)
                bar.note(f"loss {row['loss']:.4f} (copy {row['copy']:.3f}), {row['pairs_per_s']:.0f} pairs/s")
            last = step == cfg.optim.steps
            if rank == 0 and not last and cfg.optim.eval_every and step % cfg.optim.eval_every == 0:
                metrics = _evaluate(core, heldout, train_probe, out, tb, step)
            interrupt = stop.requested or (spec.stop_at is not None and step >= spec.stop_at)
            if last or interrupt or (cfg.optim.checkpoint_every and step % cfg.optim.checkpoint_every == 0):
                _checkpoint(core, opt, sched, out, rank, step, wall + time.monotonic() - t_start, spec.version)
            if interrupt and not last:
                stopped = True
                break
    wall += time.monotonic() - t_start
    if rank != 0:
        return None
    if stopped:
        log.warning("stopped at step %d of %d: continue with --resume", step, cfg.optim.steps)
        if tb is not None:
            tb.close()
        return {"kind": KIND, "interrupted": True, "steps": step}
    metrics = _evaluate(core, heldout, train_probe, out, tb, step)
    if tb is not None:
        tb.close()
    return _finish(core, spec, store, out, step, wall, metrics, pairs_seen * world / max(wall, 1e-9))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; a trimmed install still trains
        log.warning("tensorboard is not installed: curves go to metrics.jsonl only (pip install tensorboard)")
        return None
    return SummaryWriter(str(out / "tb"))


def _log_row(out: Path, tb, row: dict[str, float]) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    if tb is not None:
        for k, v in row.items():
            if k != "step":
                tb.add_scalar(f"train/{k}", v, row["step"])


def _evaluate(core: LaWM, heldout, train_probe, out: Path, tb, step: int) -> dict[str, float]:
    from model.metrics import lawm_metrics

    if not heldout:
        log.warning("no held-out episodes in this selection (pairs.heldout_fraction): metrics use training pairs")
        heldout = train_probe
    metrics = lawm_metrics(core, heldout, train_probe)
    metrics = {k: float(v) for k, v in metrics.items()}
    metrics["heldout_is_train"] = float(heldout is train_probe)
    _log_row(out, tb, {"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
    return metrics


def _checkpoint(core: LaWM, opt, sched, out: Path, rank: int, step: int, wall: float, version: str) -> None:
    if rank == 0:
        save_weights(core, out / RESUME)
    save_resume_state(out, rank, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                  "rng": torch.get_rng_state(), "step": step, "wall": wall, "version": version})


def _finish(core: LaWM, spec: RunSpec, store: FeatureStore, out: Path, step: int, wall: float,
            metrics: dict[str, float], pairs_per_s: float) -> dict[str, Any]:
    from model.metrics import curves_png, plot_metrics

    core = core.cpu()
    sha = save_weights(core, out)
    card = {
        "kind": KIND, "lawam_version": lawam_version(), "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "store": {"uri": store.uri, "version": store.version}, "encoder": store.encoder,
        "token_shape": list(store.token_shape), "state_dim": core.state_dim, "latent_dim": core.latent_dim,
        "k_seconds": spec.cfg.pairs.k_seconds, "config": spec.cfg.model_dump(mode="json"),
        "feature_mean": core.feat_mean.tolist(), "feature_std": core.feat_std.tolist(),
        "steps": step, "wall_time_s": round(wall, 2), "pairs_per_s": round(pairs_per_s, 1),
        "workers": spec.workers, "device": str(_device(spec.device)), "metrics": metrics,
        "weights_sha256": sha, "label_set": label_set_id(sha),
    }
    write_card(out, card)
    try:
        plot_metrics(metrics, out / "metrics.png")
        curves_png(out / "metrics.jsonl", out / "curves.png")
    except Exception as e:  # noqa: BLE001 - a plot must never cost a trained model
        log.warning("could not draw the PNGs: %s", e)
    return card


def _ray_loop(config: dict) -> None:
    import ray.train

    card = _loop(config["spec"])
    ray.train.report({"steps": card["steps"]} if card else {})


def resolve_version(store_uri: str, version: str | None) -> str:
    """The commit id a run reads: `version`, or the newest commit now (pinned from here on)."""
    return FeatureStore.open(store_uri, version).version


def train_lam(store_uri: str, out_dir: str | Path, cfg: LamConfig | None = None, *, version: str | None = None,
              steps: int | None = None, resume: bool = False, workers: int = 1,
              progress: ProgressFactory | bool | None = None, device: str = "auto",
              stop_at: int | None = None) -> dict[str, Any]:
    """Train a LaWM on the store at `version` (default: its newest commit) and return its card.

    `progress` is a progress-bar factory such as `pipeline.progress.progress_bar` (the CLI
    passes it); `workers > 1` runs on the Ray instance already started (or starts a local one)."""
    cfg = cfg or LamConfig()
    if steps is not None:
        cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"steps": steps})})
    out = Path(out_dir)
    if resume:
        trainer_json = out / RESUME / "trainer.json"
        if not trainer_json.is_file():
            raise CheckpointError(f"{out}: nothing to resume (no {RESUME}/trainer.json); run without --resume")
        saved = json.loads(trainer_json.read_text())
        version = version or saved["version"]
        if saved.get("workers", 1) != workers:
            # Each rank's data position and RNG belong to its shard of the epoch: another
            # number of workers would re-read some pairs and skip others.
            raise CheckpointError(f"{out}: the run used --workers {saved.get('workers', 1)}; resume it with the same")
        if steps is None:
            cfg = LamConfig.model_validate(saved["config"])
        else:
            cfg = LamConfig.model_validate({**saved["config"], "optim": {**saved["config"]["optim"], "steps": steps}})
    elif (out / "card.json").exists() or (out / RESUME).exists():
        raise CheckpointError(f"{out}: holds a training run already; use --resume or another --out")
    spec = RunSpec(store_uri, resolve_version(store_uri, version), cfg, str(out), resume,
                   progress if callable(progress) else None, device, stop_at, workers)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESUME).mkdir(exist_ok=True)
    (out / RESUME / "trainer.json").write_text(json.dumps(
        {"version": spec.version, "store": store_uri, "config": cfg.model_dump(mode="json"), "workers": workers}))
    if workers <= 1:
        return _loop(spec)
    return _train_on_ray(spec)


def _train_on_ray(spec: RunSpec) -> dict[str, Any]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = _device(spec.device).type == "cuda"
    trainer = TorchTrainer(
        _ray_loop, train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(num_workers=spec.workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="train-lam", storage_path=str(Path(spec.out_dir).resolve() / "ray")),
    )
    trainer.fit()
    card = read_card(spec.out_dir, KIND) if (Path(spec.out_dir) / "card.json").exists() else None
    if card is None:
        return {"kind": KIND, "interrupted": True}
    return card


__all__ = ["RunSpec", "build_model", "load_lawm", "lr_lambda", "resolve_version", "train_lam"]
