"""Closed-loop Meta-World evaluation of a trained policy, and its action-chunk latency.

    from functools import partial
    from model.policy import load_policy
    view = training_view(card.store.uri, card.store.version)   # camera, size, training scenes
    report = evaluate(partial(load_policy, "runs/policy"), tasks=["reach-v3"], episodes=20, seed=0,
                      out_dir=Path("runs/policy/eval"), camera=view.camera, image_size=view.image_size,
                      training_layouts=view.layouts)

The job knows nothing of the model: `load_runner` is any picklable callable returning an
object with `card`, `horizon`, `action_dim`, `control_hz` and `act(features, instruction,
proprio) -> (horizon, action_dim)` (model.policy's `PolicyRunner`). It is called once on the
driver (card, shapes, latency) and once in every worker.

What a result promises:

* **Held-out scenes.** Episode i of a task is reset to `layouts(task, seed=seed,
  stream="eval", count=episodes)[i]`; the run is refused before anything is rolled out or
  written when any of them equals a layout of the training data (same task and the same
  (mt1_seed, slot), or the same `rand_vec`).
* **The training view.** Frames are rendered with the corpus's camera and size, then go
  through the pixel path of ingest (`resize_like_decode`: yuv420p, swscale AREA, crop) into
  the encoder named by the policy card's encoder identity: the policy sees features made
  exactly like the ones it was trained on (video compression aside).
* **Receding horizon.** Each `act` call's chunk is executed for its first `execute_steps`
  actions (default horizon // 2), then the policy is asked again on a fresh frame. An episode
  ends at the first control step that reports success (success) or after `max_steps`.
* **Reproducible.** Workers run one thread each and every episode is seeded from (seed, task,
  index): the same seed gives the same episodes whatever the number of workers.

Stages, top-down: 1. plan (layouts, overlap check, policy card) on the driver; 2. roll out on
Ray actors (`EvalWorker`: one encoder, one policy, one environment each), results gathered as
they finish; 3. report (`pipeline.evaluation.results`: results.json, success.png, one MP4 per task);
4. latency (`pipeline.evaluation.latency`) on the driver, once the workers are gone.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.decode import resize_like_decode
from pipeline.encode import FrozenEncoder, encoder_config_from_identity
from pipeline.evaluation.latency import Runner, latency_report, measure_latency
from pipeline.evaluation.results import RESULTS, EpisodeResult, EvalReport, write_report
from pipeline.progress import progress_bar
from schemas import EncoderConfig
from schemas.cards import PolicyCard
from schemas.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.samples.metaworld_env import Layout, TaskEnv

log = logging.getLogger(__name__)

__all__ = ["EvalError", "EvalReport", "LayoutOverlapError", "Runner", "SamplesRecord", "TrainingView",
           "check_disjoint", "evaluate", "latency_report", "measure_latency", "run_episode", "training_samples",
           "training_view"]


class EvalError(ConfigError):
    """The evaluation cannot run as asked (policy and environment disagree, bad argument)."""


class LayoutOverlapError(EvalError):
    """An evaluation layout is one the policy was trained on: its success would say nothing."""


# -- 0. what the training data was ------------------------------------------------------------------


@dataclass(frozen=True)
class SamplesRecord:
    """What rendered the robot episodes a store holds (`meta/lawam_samples.json` of their datasets)."""

    cameras: tuple[str, ...]  # cameras of the store's robot episodes (observation.images.<camera>)
    image_size: int  # rendered frame side, pixels
    control_hz: float  # rate of the stored actions
    datasets: tuple[str, ...]  # the LeRobot dataset roots the record was read from

    @property
    def camera(self) -> str:
        """The one camera the store's robot episodes were ingested from."""
        if len(self.cameras) != 1:
            raise EvalError(f"the store's robot episodes come from cameras {list(self.cameras)}: "
                            "name the one the policy should see (--camera)")
        return self.cameras[0]


def _dataset_root(video_uri: str) -> Path | None:
    """The LeRobot dataset holding `video_uri`: the nearest parent with meta/lawam_samples.json."""
    from pipeline.samples.metaworld_robot import LAYOUTS_FILE
    from pipeline.uri import is_remote, local_path

    if is_remote(video_uri):
        return None
    for parent in Path(local_path(video_uri)).parents:
        if (parent / LAYOUTS_FILE).is_file():
            return parent
    return None


def _camera_of(video_uri: str) -> str | None:
    """`observation.images.<camera>` in a LeRobot video path, as the sample corpora write it."""
    for part in Path(video_uri).parts:
        if part.startswith("observation.images."):
            return part.removeprefix("observation.images.")
    return None


def training_samples(store_uri: str, version: str | None) -> tuple[list[Layout], SamplesRecord | None]:
    """The layouts of every sample dataset the store's robot episodes came from, and what
    rendered them; ([], None) when none of those datasets records it (then overlap with the
    training scenes cannot be checked, and camera and image size must be given by hand)."""
    import json

    from pipeline.samples.metaworld_robot import LAYOUTS_FILE, read_sample_layouts
    from pipeline.store import FeatureStore
    from pipeline.store.leases import hold_version

    with hold_version(store_uri, version, "eval") as lease:  # gc keeps the version while it is read
        eps = FeatureStore.open(store_uri, lease.version).episodes(["uri", "kind"])
    uris = sorted({u for u, kind in zip(eps["uri"].to_pylist(), eps["kind"].to_pylist(), strict=True)
                   if kind == "robot"})
    roots: dict[Path, None] = {}
    unrecorded = 0
    for uri in uris:
        root = _dataset_root(uri)
        if root is None:
            unrecorded += 1
        else:
            roots[root] = None
    if unrecorded:
        log.warning("%d robot video(s) of store %s are not in a dataset with %s: their scenes cannot be "
                    "checked against the evaluation's", unrecorded, store_uri, LAYOUTS_FILE)
    if not roots:
        return [], None
    layouts, sizes, rates = [], set(), set()
    for root in roots:
        generator = json.loads((root / LAYOUTS_FILE).read_text()).get("generator", {})
        sizes.add(int(generator["image_size"]))
        rates.add(float(generator["control_hz"]))
        layouts.extend(read_sample_layouts(root))
    if len(sizes) != 1 or len(rates) != 1:
        raise EvalError(f"the store's robot datasets were rendered differently (image sizes {sorted(sizes)}, "
                        f"control rates {sorted(rates)} Hz): evaluate a policy trained on one of them")
    cameras = tuple(sorted({c for u in uris if (c := _camera_of(u)) is not None}))
    return layouts, SamplesRecord(cameras, sizes.pop(), rates.pop(), tuple(str(r) for r in roots))


@dataclass(frozen=True)
class TrainingView:
    """What an evaluation must reproduce of the training data, and the scenes it must avoid."""

    layouts: list[Layout]  # the training scenes; [] when unknown
    camera: str
    image_size: int
    checked: bool  # False: no record was found, overlap cannot be checked


def training_view(store_uri: str, version: str | None, *, camera: str | None = None,
                  image_size: int | None = None) -> TrainingView:
    """`training_samples` of the store a policy was trained on, with the CLI's rule: the record's
    camera and image size unless given (given ones must agree with it); without a record both
    must be given, and a warning says that overlap with the training scenes cannot be checked."""
    from pipeline.samples.metaworld_env import CONTROL_HZ

    layouts, record = training_samples(store_uri, version)
    if record is None:
        if camera is None or image_size is None:
            raise EvalError(f"store {store_uri!r} does not say how its robot episodes were rendered: "
                            "give --camera and --image-size (those of the training corpus)")
        log.warning("no sample record for the robot episodes of %s: overlap of the evaluation scenes with the "
                    "training scenes cannot be checked", store_uri)
        return TrainingView([], camera, image_size, checked=False)
    if not math.isclose(record.control_hz, CONTROL_HZ):
        raise EvalError(f"the training corpus was controlled at {record.control_hz:g} Hz, the evaluation steps at "
                        f"{CONTROL_HZ} Hz: re-render the corpus with this lawam")
    if image_size is not None and image_size != record.image_size:
        raise EvalError(f"--image-size {image_size} but the training corpus was rendered at {record.image_size} px")
    if camera is not None and camera not in record.cameras:
        raise EvalError(f"--camera {camera!r} but the policy was trained on camera(s) {list(record.cameras)}")
    return TrainingView(layouts, camera or record.camera, record.image_size, checked=True)


def check_disjoint(eval_layouts: Sequence[Layout], training_layouts: Sequence[Layout]) -> None:
    """Raise `LayoutOverlapError` naming the first evaluation layout that is a training one."""
    by_task: dict[str, list[Layout]] = {}
    for t in training_layouts:
        by_task.setdefault(t.task, []).append(t)
    seen = {task: {(t.mt1_seed, t.slot) for t in ts} for task, ts in by_task.items()}
    vecs = {task: [np.asarray(t.rand_vec, np.float64) for t in ts] for task, ts in by_task.items()}
    for e in eval_layouts:
        same = (e.mt1_seed, e.slot) in seen.get(e.task, ())
        v = np.asarray(e.rand_vec, np.float64)
        if same or any(t.shape == v.shape and np.allclose(t, v, rtol=0, atol=1e-6) for t in vecs.get(e.task, ())):
            raise LayoutOverlapError(
                f"evaluation layout {e.task} mt1_seed={e.mt1_seed} slot={e.slot} is one the policy was trained on; "
                "evaluate on unseen scenes: another --seed or stream 'eval'")


# -- 1. one episode -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutSettings:
    camera: str  # rendered camera, as in the training corpus
    image_size: int  # rendered frame side, as in the training corpus
    resize: str  # how frames were fitted to the encoder at ingest (square frames: no difference)
    execute_steps: int  # actions of each chunk executed before asking again
    max_steps: int | None  # control steps per episode; None = the environment's limit


@dataclass(frozen=True)
class EpisodeJob:
    task: str
    index: int  # episode index within the task
    layout: Layout
    seed: int  # seeds torch and numpy before the episode
    record: bool  # keep every control step's frame (the task's rollout video)


def episode_seed(seed: int, task: str, index: int) -> int:
    """Stable across processes (crc32, not the salted `hash()`)."""
    return zlib.crc32(f"{seed}:eval:{task}:{index}".encode())


def run_episode(env: TaskEnv, encoder: FrozenEncoder, runner: Runner, job: EpisodeJob,
                settings: RolloutSettings) -> EpisodeResult:
    """Reset `env` to the job's layout and run the policy in closed loop until success or the step limit."""
    import torch

    from pipeline.samples.metaworld_env import proprio
    from pipeline.samples.tasks import TASK_INSTRUCTIONS

    t0 = time.perf_counter()
    torch.manual_seed(job.seed)
    np.random.seed(job.seed)  # a runner drawing from numpy's global generator is seeded too
    instruction = TASK_INSTRUCTIONS[job.task]
    limit = env.max_steps if settings.max_steps is None else min(settings.max_steps, env.max_steps)
    size = encoder.cfg.image_size
    obs = env.reset(job.layout)
    frame = env.render()
    frames = [frame] if job.record else []
    steps = calls = 0
    success = done = False
    while not done:
        features = encoder.encode(resize_like_decode(frame[None], size, settings.resize))[0]  # (T, D)
        chunk = np.asarray(runner.act(features, instruction, proprio(obs)))
        calls += 1
        if chunk.ndim != 2 or chunk.shape[0] < settings.execute_steps:
            raise EvalError(f"policy returned a chunk of shape {chunk.shape}; expected ({runner.horizon}, "
                            f"{runner.action_dim}) with at least {settings.execute_steps} actions")
        for i, action in enumerate(chunk[: settings.execute_steps]):
            obs, ok = env.step(action)
            steps += 1
            success = success or ok
            done = success or steps >= limit
            if job.record or (not done and i == settings.execute_steps - 1):
                frame = env.render()  # the next decision's view (every step's, for the video)
                if job.record:
                    frames.append(frame)
            if done:
                break
    return EpisodeResult(
        task=job.task, index=job.index, mt1_seed=job.layout.mt1_seed, slot=job.layout.slot, seed=job.seed,
        steps=steps, success=success, act_calls=calls, final_reward=float(env.last_reward),
        seconds=time.perf_counter() - t0, frames=np.stack(frames) if job.record else None)


# -- 2. fan-out over Ray --------------------------------------------------------------------------------


class EvalWorker:
    """One encoder, one policy and one environment (rebuilt when the task changes); models load
    here, on the worker, never pickled. One torch thread: workers share the machine's cores."""

    def __init__(self, load_runner: Callable[[], Runner], encoder_cfg: EncoderConfig,
                 settings: RolloutSettings) -> None:
        import torch
        import torch._dynamo  # noqa: F401 - triton before MuJoCo's EGL: the other order segfaults (Mesa's LLVM)

        torch.set_num_threads(1)
        self.encoder = FrozenEncoder(encoder_cfg)
        self.runner = load_runner()
        self.settings = settings
        self.env: TaskEnv | None = None

    def run(self, job: EpisodeJob) -> EpisodeResult:
        from pipeline.samples.metaworld_env import TaskEnv

        if self.env is None or self.env.task != job.task:
            if self.env is not None:
                self.env.close()
            self.env = TaskEnv(job.task, camera=self.settings.camera, image_size=self.settings.image_size)
        return run_episode(self.env, self.encoder, self.runner, job, self.settings)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


def _rollouts(jobs: list[EpisodeJob], load_runner: Callable[[], Runner], encoder_cfg: EncoderConfig,
              settings: RolloutSettings, workers: int | None, progress: bool) -> list[EpisodeResult]:
    """Every job on Ray actors, gathered as they finish; returned in job order."""
    import ray

    from pipeline.ray_runtime import ensure_ray

    ensure_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    n = max(1, min(len(jobs), workers or cpus))
    actor_cls = ray.remote(num_cpus=1)(EvalWorker)
    actors = [actor_cls.remote(load_runner, encoder_cfg, settings) for _ in range(n)]
    queue = list(reversed(jobs))  # popped from the end: task order, so workers seldom switch task
    running: dict[Any, Any] = {}
    results: list[EpisodeResult] = []
    try:
        with progress_bar("eval", total=len(jobs), enabled=progress, unit="episodes") as bar:
            for actor in actors:
                if queue:
                    running[actor.run.remote(queue.pop())] = actor
            while running:
                [ref], _ = ray.wait(list(running), num_returns=1)
                actor = running.pop(ref)
                results.append(ray.get(ref))
                if queue:
                    running[actor.run.remote(queue.pop())] = actor
                bar.advance()
                bar.note(f"{sum(r.success for r in results)}/{len(results)} succeeded")
    finally:
        for actor in actors:
            ray.kill(actor)
    order = {(j.task, j.index): k for k, j in enumerate(jobs)}
    return sorted(results, key=lambda r: order[(r.task, r.index)])


# -- the job ----------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    jobs: list[EpisodeJob]
    settings: RolloutSettings
    encoder_cfg: EncoderConfig
    card: PolicyCard
    horizon: int
    notes: list[str] = field(default_factory=list)


def _plan(runner: Runner, *, tasks: Sequence[str], episodes: int, seed: int, stream: str, camera: str,
          image_size: int, training_layouts: Sequence[Layout], execute_steps: int | None, max_steps: int | None,
          record: bool, resize: str, encoder_checkpoint: Path | None) -> _Plan:
    from pipeline.samples.metaworld_env import CONTROL_HZ, layouts
    from pipeline.samples.tasks import check_cameras, check_tasks

    tasks = check_tasks(tasks, "tasks")
    check_cameras((camera,), "camera")
    if not tasks:
        raise EvalError("no tasks to evaluate")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise EvalError(f"episodes must be an integer >= 1, got {episodes!r}")
    if max_steps is not None and max_steps < 1:
        raise EvalError(f"max_steps must be >= 1, got {max_steps!r}")
    horizon = int(runner.horizon)
    steps = max(1, horizon // 2) if execute_steps is None else execute_steps
    if not 1 <= steps <= horizon:
        raise EvalError(f"execute_steps must be in 1..{horizon} (the policy's horizon), got {execute_steps!r}")
    if int(runner.action_dim) != 4:
        raise EvalError(f"the policy acts in {runner.action_dim} dimensions; Meta-World takes 4 "
                        "(hand dx, dy, dz, gripper effort)")
    if not math.isclose(float(runner.control_hz or 0), CONTROL_HZ, rel_tol=1e-3):
        raise EvalError(f"the policy's actions are at {runner.control_hz} Hz; the environment is controlled at "
                        f"{CONTROL_HZ} Hz: evaluate a policy trained on a {CONTROL_HZ} Hz corpus")
    eval_layouts = [lay for task in tasks for lay in layouts(task, seed=seed, stream=stream, count=episodes)]
    notes = []
    if training_layouts:
        check_disjoint(eval_layouts, training_layouts)
        unseen = sorted(set(tasks) - {t.task for t in training_layouts})
        if unseen:
            notes.append(f"tasks absent from the training data: {', '.join(unseen)}")
    else:
        notes.append("training layouts unknown: overlap with the training scenes was not checked")
    for note in notes:
        log.warning("%s", note)
    encoder_cfg = encoder_config_from_identity(runner.card.encoder, encoder_checkpoint, device="cpu")
    jobs = [EpisodeJob(lay.task, i % episodes, lay, episode_seed(seed, lay.task, i % episodes),
                       record=record and i % episodes == 0) for i, lay in enumerate(eval_layouts)]
    settings = RolloutSettings(camera, image_size, resize, steps, max_steps)
    return _Plan(jobs, settings, encoder_cfg, runner.card, horizon, notes)


def evaluate(
    load_runner: Callable[[], Runner],
    *,
    tasks: Sequence[str],
    episodes: int,
    seed: int,
    out_dir: Path,
    camera: str,
    image_size: int,
    training_layouts: Sequence[Layout],
    execute_steps: int | None = None,
    stream: str = "eval",
    workers: int | None = None,
    max_steps: int | None = None,
    video: bool = True,
    progress: bool = True,
    resize: str = "center_crop",
    encoder_checkpoint: Path | None = None,
    latency_calls: int = 200,
    policy: str | None = None,
    results_name: str = RESULTS,
) -> EvalReport:
    """Roll the policy out on `episodes` held-out layouts of each task and write results.json,
    success.png and (`video`) one rollout MP4 per task into `out_dir`.

    `camera` and `image_size` are the training corpus's (`training_samples`); `training_layouts`
    the scenes the policy was trained on ([] when unknown: then nothing is checked). Raises
    `LayoutOverlapError` / `EvalError` before any rollout and before `out_dir` is touched.
    `latency_calls` > 0 also measures chunk latency (`latency_report`) on the driver; `policy`
    names the policy (its folder) in results.json; `results_name` is that file's name in
    `out_dir` (`pipeline.evaluation.results`: another name prefixes the plot and videos).
    """
    t0 = time.monotonic()
    runner = load_runner()  # on the driver: its card and shapes, and later its latency
    plan = _plan(runner, tasks=tasks, episodes=episodes, seed=seed, stream=stream, camera=camera,
                 image_size=image_size, training_layouts=training_layouts, execute_steps=execute_steps,
                 max_steps=max_steps, record=video or latency_calls > 0, resize=resize,
                 encoder_checkpoint=encoder_checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _rollouts(plan.jobs, load_runner, plan.encoder_cfg, plan.settings, workers, progress)
    rollout_s = time.monotonic() - t0
    latency = None
    if latency_calls > 0:
        from pipeline.samples.tasks import TASK_INSTRUCTIONS

        first = next(r for r in results if r.frames is not None)
        latency = latency_report(load_runner, plan.encoder_cfg, first.frames[0], calls=latency_calls,
                                 warmup=min(20, latency_calls), instruction=TASK_INSTRUCTIONS[first.task],
                                 resize=resize)
    settings = {
        "tasks": list(dict.fromkeys(j.task for j in plan.jobs)), "episodes_per_task": episodes, "seed": seed,
        "stream": stream, "camera": camera, "image_size": image_size, "resize": resize,
        "encoder_input": plan.encoder_cfg.image_size, "horizon": plan.horizon,
        "execute_steps": plan.settings.execute_steps, "max_steps": max_steps, "control_hz": runner.control_hz,
        "workers": workers, "training_layouts": len(training_layouts), "overlap_checked": bool(training_layouts),
        "video": video, "notes": plan.notes,
    }
    report = write_report(out_dir, results, settings=settings, card=plan.card, policy=policy, latency=latency,
                          video_fps=int(round(runner.control_hz)), seconds=time.monotonic() - t0,
                          rollout_seconds=rollout_s, name=results_name)
    log.info("eval: %s", report.summary())
    return report
