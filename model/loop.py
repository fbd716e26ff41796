"""The one training loop both trainers run: a `Recipe` says what is trained, the loop says how.

    card = run(recipe, store_uri, out_dir, version=None, resume=False, workers=1)

Promises (shared by `lawam train-lam` and `lawam distill`):
- **Pinned data.** The run resolves the store's newest commit once, at the start, and every
  worker reopens exactly that `(uri, version)`; the card records it. The run holds that
  version against `lawam gc` while it runs (a lease, `pipeline.store.leases`), and a finished
  run tags it (`<kind>-<weights sha256[:12]>`, in the card's `store.tag`) unless
  `keep_version=False`: the card's version always reopens.
- **Always re-runnable.** A run that fails with no checkpoint to resume from leaves nothing
  behind in its folder; one with a checkpoint is continued (`resume`) or replaced (`force`).
- **One loop.** `workers > 1` runs the very same `_loop` under Ray Train's `TorchTrainer`
  (DDP: gloo on CPU, NCCL on GPU); there is no hand-made distributed code. Each rank reads
  its own shard of every epoch (`model.data`).
- **Exact resume.** A checkpoint holds weights, optimizer, scheduler, every rank's torch RNG
  and its data position (batches consumed): `resume=True` continues as if never stopped.
  SIGINT/SIGTERM in a one-process run checkpoints at the end of the current step and returns.
- **Outputs** in `out_dir`: `model.safetensors` + `card.json`, `metrics.jsonl` and
  TensorBoard events in `tb/` (the recipe adds its own plots).

AdamW with linear warm-up and cosine decay, gradient clipping, bf16 autocast on CUDA and
float32 on CPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from model.checkpoint import (
    CARD,
    RESUME,
    WEIGHTS,
    CheckpointError,
    load_resume_state,
    load_weights,
    read_card,
    save_resume_state,
    save_weights,
)
from model.data import PairDataset, pair_loader, rank_and_world
from pipeline.store import FeatureStore
from pipeline.store.leases import hold_version
from pipeline.store.maintenance import keep_version
from pipeline.store.pairs import PairQuery, PairReader
from schemas.cards import CARD_TYPES, Card, StoppedRun, StoreRef
from schemas.training import OptimConfig

log = logging.getLogger(__name__)

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # if Ray Train starts Ray: loopback only

ProgressFactory = Callable[..., AbstractContextManager]  # (description, total=, unit=) -> bar with advance/note


class Recipe(Protocol):
    """What one trainer trains. Picklable: it travels to Ray Train workers inside `RunSpec`."""

    kind: str  # card kind, e.g. "lawm", "lawam-policy"
    cfg: Any  # a pydantic config with `.optim` (OptimConfig) and `.pairs`

    def with_config(self, cfg: Any) -> Recipe:
        """The same recipe with another config (a resumed run takes its saved one)."""

    def query(self, split: str) -> PairQuery:
        """The pairs of `split` ("train" | "heldout") this trainer reads."""

    def build(self, store: FeatureStore, query: PairQuery, fresh: bool) -> torch.nn.Module:
        """The model; `fresh=False` only needs the right shapes (resume loads the weights)."""

    def loss(self, model: torch.nn.Module, core: torch.nn.Module, batch: dict,
             device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One batch -> (loss, named parts for the log). `model` may be DDP-wrapped; `core` never is."""

    def note(self, row: dict[str, float]) -> str:
        """A short progress-bar note from a log row."""

    def eval_data(self, store: FeatureStore) -> Any:
        """Held-out data read once on rank 0."""

    def evaluate(self, core: torch.nn.Module, data: Any) -> dict[str, float]:
        """Held-out metrics of the model now."""

    def card(self, core: torch.nn.Module, store: FeatureStore, weights_sha256: str) -> dict[str, Any]:
        """The card's recipe-specific fields (store, config, metrics are added by the loop)."""

    def plots(self, out: Path, metrics: dict[str, float]) -> None:
        """PNGs beside the card (failures are logged, never fatal)."""


class _NoBar:
    def advance(self, n: int = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass


def _bar(progress: ProgressFactory | None, name: str, total: int) -> AbstractContextManager:
    """The caller's progress bar (flows pass `pipeline.progress.progress_bar`), or none."""
    if not callable(progress):
        return nullcontext(_NoBar())
    return progress(name, total=total, unit="steps")


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs to run the loop; picklable (sent to Ray Train workers)."""

    recipe: Recipe
    store_uri: str
    version: str
    out_dir: str
    resume: bool = False
    progress: ProgressFactory | None = None
    device: str = "auto"
    stop_at: int | None = None  # stop (resumably) after this step, as an interrupted run would
    workers: int = 1
    name: str = "train"  # progress-bar label; the lease's purpose
    keep_version: bool = True  # tag the version a finished run read, so gc never expires it


def lr_lambda(o: OptimConfig):
    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = (step - o.warmup_steps) / max(1, o.steps - o.warmup_steps)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def device_for(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


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


def _loop(spec: RunSpec) -> Card | StoppedRun | None:
    """The training loop of one rank. Returns the card on rank 0."""
    recipe, out = spec.recipe, Path(spec.out_dir)
    optim: OptimConfig = recipe.cfg.optim
    rank, world = rank_and_world()
    device = device_for(spec.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(optim.seed)
    store = FeatureStore.open(spec.store_uri, spec.version)
    train_q = recipe.query("train")
    state = load_resume_state(out, rank) if spec.resume else None
    if spec.resume and state is None:
        raise CheckpointError(f"{out}: nothing to resume (no {RESUME}/rank{rank}.pt); run without --resume")
    core = recipe.build(store, train_q, fresh=state is None)
    if state is not None:
        load_weights(core, out / RESUME)
    core = core.to(device)
    model = core
    if world > 1:
        from ray.train.torch import prepare_model

        model = prepare_model(core, move_to_device=False)
    params = [p for p in core.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(optim))
    step, wall = 0, 0.0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step, wall = int(state["step"]), float(state["wall"])
        if state["version"] != spec.version:
            raise CheckpointError(f"{out}: the checkpoint read store version {state['version']}, this run "
                                  f"{spec.version}; resume with --version {state['version']}")
    ds = PairDataset(store, train_q, optim.batch_size, start_batch=step)
    batches = iter(pair_loader(ds, workers=optim.loader_workers))
    eval_data = None
    if rank == 0:
        eval_data = recipe.eval_data(store)
        out.mkdir(parents=True, exist_ok=True)
    tb = _tensorboard(out) if rank == 0 else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    log_every = max(1, min(50, optim.steps // 100))
    metrics: dict[str, float] = {}
    t_start, pairs_seen, data_wait = time.monotonic(), 0, 0.0
    stopped = False
    with _Stop() as stop, _bar(spec.progress if rank == 0 else None, spec.name, optim.steps) as bar:
        bar.advance(step)
        model.train()
        while step < optim.steps:
            t0 = time.monotonic()
            batch = next(batches)
            data_wait += time.monotonic() - t0
            with autocast:
                loss, parts = recipe.loss(model, core, batch, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
            opt.step()
            sched.step()
            step += 1
            pairs_seen += len(batch["t"])
            bar.advance()
            if rank == 0 and (step % log_every == 0 or step == optim.steps):
                elapsed = time.monotonic() - t_start
                row = {"step": step, "loss": loss.item(), **{k: float(v) for k, v in parts.items()},
                       "grad_norm": float(grad_norm), "lr": sched.get_last_lr()[0],
                       "pairs_per_s": pairs_seen * world / max(elapsed, 1e-9),
                       "data_wait_frac": data_wait / max(elapsed, 1e-9), "epoch": int(batch["epoch"][0])}
                log_row(out, tb, row)
                bar.note(recipe.note(row))
            last = step == optim.steps
            if rank == 0 and not last and optim.eval_every and step % optim.eval_every == 0:
                metrics = _evaluate(recipe, core, eval_data, out, tb, step)
            interrupt = stop.requested or (spec.stop_at is not None and step >= spec.stop_at)
            if last or interrupt or (optim.checkpoint_every and step % optim.checkpoint_every == 0):
                _checkpoint(core, opt, sched, out, rank, step, wall + time.monotonic() - t_start, spec.version)
            if interrupt and not last:
                stopped = True
                break
    wall += time.monotonic() - t_start
    if rank != 0:
        return None
    if stopped:
        log.warning("stopped at step %d of %d: continue with --resume", step, optim.steps)
        if tb is not None:
            tb.close()
        return StoppedRun(recipe.kind, step)
    metrics = _evaluate(recipe, core, eval_data, out, tb, step)
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


def log_row(out: Path, tb, row: dict[str, float]) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    if tb is not None:
        for k, v in row.items():
            if k != "step":
                tb.add_scalar(k if "/" in k else f"train/{k}", v, row["step"])  # eval/* rows keep theirs


def _evaluate(recipe: Recipe, core: torch.nn.Module, data: Any, out: Path, tb, step: int) -> dict[str, float]:
    was_training = core.training
    core.eval()
    try:
        metrics = {k: float(v) for k, v in recipe.evaluate(core, data).items()}
    finally:
        core.train(was_training)
    log_row(out, tb, {"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
    return metrics


def _checkpoint(core: torch.nn.Module, opt, sched, out: Path, rank: int, step: int, wall: float,
                version: str) -> None:
    if rank == 0:
        save_weights(core, out / RESUME)
    save_resume_state(out, rank, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                  "rng": torch.get_rng_state(), "step": step, "wall": wall, "version": version})


def _finish(core: torch.nn.Module, spec: RunSpec, store: FeatureStore, out: Path, step: int, wall: float,
            metrics: dict[str, float], pairs_per_s: float) -> Card:
    from datetime import UTC, datetime

    from model.checkpoint import lawam_version, write_card

    core = core.cpu()
    sha = save_weights(core, out)
    tag = keep_version(store.uri, store.version, f"{spec.recipe.kind}-{sha[:12]}") if spec.keep_version else None
    card = CARD_TYPES[spec.recipe.kind](
        lawam_version=lawam_version(), created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        store=StoreRef(uri=store.uri, version=store.version, tag=tag), encoder=store.encoder,
        token_shape=store.token_shape, config=spec.recipe.cfg.model_dump(mode="json"),
        steps=step, wall_time_s=round(wall, 2), pairs_per_s=round(pairs_per_s, 1), workers=spec.workers,
        device=str(device_for(spec.device)), metrics=metrics, weights_sha256=sha,
        **spec.recipe.card(core, store, sha))
    write_card(out, card)
    try:
        spec.recipe.plots(out, metrics)
    except Exception as e:  # noqa: BLE001 - a plot must never cost a trained model
        log.warning("could not draw the PNGs: %s", e)
    return card


def _ray_loop(config: dict) -> None:
    import ray.train

    card = _loop(config["spec"])
    ray.train.report({"steps": card.steps} if card is not None else {})


def resolve_version(store_uri: str, version: str | None) -> str:
    """The commit id a run reads: `version`, or the newest commit now (pinned from here on)."""
    return FeatureStore.open(store_uri, version).version


# What a run writes into its folder; `_clear` removes these and nothing else.
RUN_FILES = (RESUME, WEIGHTS, CARD, "metrics.jsonl", "tb", "metrics.png", "curves.png", "ray")


def _has_checkpoint(out: Path) -> bool:
    """Whether `out` holds a checkpoint `--resume` can continue from."""
    return (out / RESUME / "trainer.json").is_file() and (out / RESUME / "rank0.pt").is_file()


def _clear(out: Path, remove_dir: bool = False) -> None:
    """Remove a run's files from `out` (the folder itself too when `remove_dir` and it is left empty)."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    if remove_dir and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def run(recipe: Recipe, store_uri: str, out_dir: str | Path, *, version: str | None = None,
        resume: bool = False, force: bool = False, keep_version: bool = True, workers: int = 1,
        progress: ProgressFactory | bool | None = None, device: str = "auto", stop_at: int | None = None,
        name: str = "train", saved_config: Callable[[dict], Any] | None = None,
        steps: int | None = None) -> Card | StoppedRun:
    """Train `recipe` on the store at `version` (default: its newest commit) and return its card.

    The run holds that version against `lawam gc` while it runs (a lease), and a finished run
    tags it for good (`keep_version`), so its card's version always reopens.

    On `resume`, the run's saved config (rebuilt by `saved_config`, with `steps` overriding
    its step count when given) replaces the recipe's: the same run continues. A folder with
    nothing to resume starts a fresh run (with a warning); `force` replaces the run the folder
    holds. A run that fails with no checkpoint to resume from leaves nothing behind, so the
    same command can always be run again."""
    out = Path(out_dir)
    finished, resumable = (out / CARD).exists(), _has_checkpoint(out)
    if force and (finished or resumable):
        log.warning("%s: replacing the training run it holds (--force)", out)
        _clear(out)
    elif resume and not resumable and finished:  # a finished model is never wiped without --force
        raise CheckpointError(f"{out}: holds a finished run (card.json) with no checkpoint in {RESUME}/ to continue "
                              "from; --force replaces it, or use another --out")
    elif resume and not resumable:
        log.warning("%s: nothing to resume (no checkpoint in %s/): starting a fresh run", out, RESUME)
        resume = False
        _clear(out)
    elif not resume and (finished or resumable):
        what = "a finished run (card.json)" if finished else f"a stopped run (a checkpoint in {RESUME}/)"
        raise CheckpointError(f"{out}: holds {what}; --resume continues it, --force replaces it, or use another --out")
    elif not resume and any((out / f).exists() for f in RUN_FILES):
        log.info("%s: removing what a run that died before its first checkpoint left", out)
        _clear(out)
    if resume:
        saved = json.loads((out / RESUME / "trainer.json").read_text())
        if saved.get("kind", recipe.kind) != recipe.kind:
            raise CheckpointError(f"{out}: holds a {saved['kind']!r} run, not a {recipe.kind!r} one")
        version = version or saved["version"]
        if saved.get("workers", 1) != workers:
            # Each rank's data position and RNG belong to its shard of the epoch: another
            # number of workers would re-read some pairs and skip others.
            raise CheckpointError(f"{out}: the run used --workers {saved.get('workers', 1)}; resume it with the same")
        if saved_config is not None:
            config = saved["config"]
            if steps is not None:
                config = {**config, "optim": {**config["optim"], "steps": steps}}
            recipe = recipe.with_config(saved_config(config))
    created = not out.exists()
    with hold_version(store_uri, version, name) as lease:
        # an impossible k (longer than every episode) fails before anything is written
        PairReader(FeatureStore.open(store_uri, lease.version), recipe.query("train")).require_pairs()
        spec = RunSpec(recipe, store_uri, lease.version, str(out), resume,
                       progress if callable(progress) else None, device, stop_at, workers, name, keep_version)
        out.mkdir(parents=True, exist_ok=True)
        (out / RESUME).mkdir(exist_ok=True)
        (out / RESUME / "trainer.json").write_text(json.dumps(
            {"kind": recipe.kind, "version": spec.version, "store": store_uri,
             "config": recipe.cfg.model_dump(mode="json"), "workers": workers}))
        try:
            return _loop(spec) if workers <= 1 else _train_on_ray(spec)
        except BaseException:
            if not _has_checkpoint(out):  # nothing to resume: leave nothing behind
                _clear(out, remove_dir=created)
            raise


def _train_on_ray(spec: RunSpec) -> Card | StoppedRun:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = device_for(spec.device).type == "cuda"
    trainer = TorchTrainer(
        _ray_loop, train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(num_workers=spec.workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=spec.name, storage_path=str(Path(spec.out_dir).resolve() / "ray")),
    )
    trainer.fit()
    if not (Path(spec.out_dir) / "card.json").exists():
        return StoppedRun(spec.recipe.kind)
    return read_card(spec.out_dir, spec.recipe.kind)


__all__ = ["Recipe", "RunSpec", "device_for", "log_row", "lr_lambda", "resolve_version", "run"]
