"""Labelling: an inverse-dynamics model over every pair of every episode, into a label set.

    from model.labeler import IdmLabeler
    report = label_store("data/demo/store", IdmLabeler("runs/lam"))

The job knows nothing of the model (datatrove's step/executor split): `labeler` is any
picklable object with `set_id`, `attrs`, `k_seconds`, `encoder` and, called on a worker,
returning a function `(f_t, f_tk) -> z` or `-> (z, codes)` over numpy batches.

1. plan    — under the store's writer lock, the episodes of the newest commit that lack
             current labels of this set (never labelled, or redone since), and those asked
             for again (`redo`, `damaged`: labels unreadable or not finite). Nothing to do:
             no Ray, no model, no commit. The version read is leased against `lawam gc`.
   probe   — the model runs on the pairs of the first episodes in this process; NaN or inf
             refuses it before any actor starts (and `LabelWriter.put` refuses any later z
             that is not finite: the run stops, nothing is committed).
2. infer   — `LabelActor`s (one per GPU, else one per node using its cores) reopen the store by
             `(uri, version)`, read whole episodes and run the model on batches of pairs
             (t, t + k) with k = k_seconds at the episode's rate. At most two tasks per actor
             are in flight (backpressure); features never pass through the driver. When Ray
             would add no hardware (one machine, at most one GPU, one actor) the same step
             runs in this process instead: an actor's start (a process importing torch and
             loading the model) was most of what labelling cost beyond a plain torch loop.
3. write   — the driver buffers the labels and publishes them in one commit at the end: a
             run killed mid-way leaves no label of that run visible.

A lost Ray node: the tasks of the actors that died with it go to the live actors; work that
does not resume within a bounded time stops the run retryably (`pipeline.ray_watch`), with
nothing of it committed. The report counts the episodes each node labelled.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pipeline.progress import progress_bar
from pipeline.ray_runtime import ensure_ray
from pipeline.store import FeatureStore
from pipeline.store.labels import LabelWriter, NonFiniteLabelsError
from pipeline.store.leases import hold_version
from pipeline.store.pairs import PairQuery, PairReader
from pipeline.store.verify import damaged_labels
from schemas.identity import EncoderIdentity

log = logging.getLogger(__name__)


class Labeler(Protocol):
    set_id: str  # label set id (keyed by the model's weights hash)
    attrs: dict[str, Any]  # stored with the set: what made it (lineage)
    k_seconds: float  # the model's frame gap
    encoder: EncoderIdentity  # the encoder identity of the features it was trained on

    def __call__(self): ...  # on the worker: load the model, return fn(f_t, f_tk) -> z | (z, codes)


@dataclass
class LabelReport:
    store: str
    set_id: str
    version_before: str
    version_after: str | None  # None when nothing was labelled
    episodes: int = 0  # labelled in this run
    pairs: int = 0
    skipped: int = 0  # already had current labels
    redone: int = 0  # asked to be labelled again (`redo`, `damaged`), among `episodes`
    seconds: float = 0.0
    nodes: dict[str, int] = field(default_factory=dict)  # Ray node address -> episodes labelled there

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds else 0.0

    def to_markdown(self) -> str:
        rows = [("label set", f"`{self.set_id}`"), ("episodes labelled", self.episodes),
                ("episodes skipped (labels current)", self.skipped),
                ("episodes relabelled on request", self.redone), ("pairs", self.pairs),
                ("throughput", f"{self.pairs_per_s:.0f} pairs/s"),
                ("store version", f"{self.version_before} → {self.version_after or '(unchanged)'}")]
        if len(self.nodes) > 1:
            rows.append(("episodes per Ray node", ", ".join(f"{n}: {c}" for n, c in sorted(self.nodes.items()))))
        return f"## Labels in `{self.store}`\n\n| | |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)


def _label_episodes(reader: PairReader, fn, keys: list[str],
                    batch_pairs: int) -> list[tuple[str, str, int, np.ndarray, np.ndarray | None]]:
    """(key, content_hash, k, z, codes) for each episode: the reader's pairs (t, t + k) of
    several episodes are batched together, so short clips still fill a forward pass."""
    eps = reader.indices(keys)
    hashes = reader.store.values("content_hash", reader.rows[eps]).to_pylist()  # these episodes' only
    metas, f_t, f_tk = [], [], []
    for key, e, h in zip(keys, eps.tolist(), hashes, strict=True):
        a, b = reader.episode_features(e)
        metas.append((key, h, int(reader.k[e]), len(a)))
        f_t.append(a)
        f_tk.append(b)
    a, b = np.concatenate(f_t), np.concatenate(f_tk)
    zs, codes = [], []
    for s in range(0, len(a), batch_pairs):
        out = fn(a[s : s + batch_pairs], b[s : s + batch_pairs])
        z, c = out if isinstance(out, tuple) else (out, None)
        zs.append(np.asarray(z, np.float32))
        if c is not None:
            codes.append(np.asarray(c, np.int32))
    z_all = np.concatenate(zs) if zs else np.zeros((0, 0), np.float32)
    c_all = np.concatenate(codes) if codes else None
    results, at = [], 0
    for key, h, k, n in metas:
        results.append((key, h, k, z_all[at : at + n], None if c_all is None else c_all[at : at + n]))
        at += n
    return results


def pair_reader(store: FeatureStore, k_seconds: float, rows: np.ndarray) -> PairReader:
    """The pairs of the episodes at `rows` at the labeler's gap: the trainers' pair path, all
    splits, over those episodes alone (labelling 1,000 new ones reads their index rows, not the
    corpus's)."""
    return PairReader(store, PairQuery(k_seconds=k_seconds, split="all"), rows=rows)


def _actor_class():
    import ray

    @ray.remote
    class LabelActor:
        """Holds one model (loaded here, on the worker) and a store handle reopened by version."""

        def __init__(self, store: FeatureStore, labeler: Labeler, rows: np.ndarray, threads: int, batch_pairs: int):
            import torch

            torch.set_num_threads(threads)
            self.reader, self.batch_pairs = pair_reader(store, labeler.k_seconds, rows), batch_pairs
            self.fn = labeler()

        def label(self, keys: list[str]):
            return _label_episodes(self.reader, self.fn, keys, self.batch_pairs)

    return LabelActor


def _tasks(keys: list[str], frames: np.ndarray, pairs_per_task: int) -> list[list[str]]:
    """Group episodes `keys` (of `frames` frames each) into tasks of about `pairs_per_task` frames each."""
    out, cur, n = [], [], 0
    for key, f in zip(keys, frames.tolist(), strict=True):
        cur.append(key)
        n += int(f)
        if n >= pairs_per_task:
            out.append(cur)
            cur, n = [], 0
    if cur:
        out.append(cur)
    return out


PROBE_EPISODES = 2  # episodes whose pairs make the probe batch


def _probe(store: FeatureStore, labeler: Labeler, keys: list[str], rows: np.ndarray, batch_pairs: int,
           made_by: str):
    """(reader, fn) of the labeler over the episodes to label (`keys`, at `rows`), once its
    output on the pairs of the first of them (a probe batch) is finite: a broken model is
    refused before any actor starts."""
    reader, fn = pair_reader(store, labeler.k_seconds, rows), labeler()
    for key, _, _, z, _ in _label_episodes(reader, fn, keys[:PROBE_EPISODES], batch_pairs):
        bad = int(z.size - np.isfinite(z).sum())
        if bad:
            raise NonFiniteLabelsError(
                f"{made_by} gives NaN or inf on a probe batch ({bad} of {z.size} latent values of episode {key}): "
                f"the model is broken (restore its weights or train it again); nothing was labelled")
    return reader, fn


def label_store(uri: str, labeler: Labeler, *, version: str | None = None, redo: Iterable[str] = (),
                damaged: bool = False, num_actors: int | None = None, batch_pairs: int = 1024,
                pairs_per_task: int = 8192, use_ray: bool | None = None, progress: bool = True) -> LabelReport:
    """Label every episode of the store (at `version`, default the newest) that lacks current
    labels of `labeler.set_id`, plus the episodes of `redo` and, with `damaged`, those whose
    labels are unreadable or not finite (relabelled into the same set); one new commit.
    `use_ray=False` runs in this process; None (the default) uses Ray only where it adds
    hardware (`ray_adds_hardware`)."""
    t0 = time.monotonic()
    with LabelWriter.open(uri, labeler.set_id, labeler.attrs) as writer, \
            hold_version(uri, version or writer.parent_version, "label") as lease:
        store = FeatureStore.open(uri, lease.version)
        if store.encoder is not None:
            store.encoder.require_same(labeler.encoder, ours=f"store {uri!r}",
                                       theirs=f"the LaWM of label set {labeler.set_id}",
                                       fix="labels would be meaningless; label a store of the LaWM's encoder")
        again = set(redo) | (set(damaged_labels(store, labeler.set_id)) if damaged else set())
        todo = writer.todo(store, again)
        report = LabelReport(uri, labeler.set_id, writer.parent_version, None, skipped=len(store) - len(todo))
        report.redone = len(again)
        if not todo:
            report.seconds = time.monotonic() - t0
            return report
        rows = store.rows(todo)  # every key of `todo` is an episode of `store` (`todo` says so)
        reader, fn = _probe(store, labeler, todo, rows, batch_pairs, writer.made_by)
        with progress_bar("label", total=len(todo), enabled=progress, unit="episodes") as bar:
            if ray_adds_hardware(num_actors) if use_ray is None else use_ray:
                del reader, fn  # the actors load their own
                results = _run_ray(store, labeler, todo, rows, num_actors, batch_pairs, pairs_per_task,
                                   report.nodes)
            else:
                results = (_label_episodes(reader, fn, keys, batch_pairs)
                           for keys in _tasks(todo, store.frames[rows], pairs_per_task))
            for batch in results:
                for key, h, k, z, codes in batch:
                    writer.put(key, h, z, k, codes)
                    report.episodes += 1
                    report.pairs += len(z)
                bar.advance(len(batch))
        report.version_after = writer.commit(f"label {labeler.set_id}: +{report.episodes} episodes",
                                             {"label_set": labeler.set_id, "read_version": store.version})
    report.seconds = time.monotonic() - t0
    return report


def ray_adds_hardware(num_actors: int | None) -> bool:
    """Whether actors would run on more than this process has: several actors asked for, a
    Ray cluster named (`RAY_ADDRESS`), or several GPUs here. Otherwise one actor on this
    machine only adds its start-up (measured: benchmarks/bench_label.py)."""
    if (num_actors or 1) > 1 or os.environ.get("RAY_ADDRESS"):
        return True
    import torch

    return torch.cuda.device_count() > 1


def _run_ray(store: FeatureStore, labeler: Labeler, todo: list[str], rows: np.ndarray, num_actors: int | None,
             batch_pairs: int, pairs_per_task: int, nodes: dict[str, int]):
    """Yield each task's labels, in submission order but for tasks redone after an actor was
    lost; count the episodes of each node into `nodes` (by address). Tasks are small enough
    for every actor to get four: a small store still spreads over a cluster's nodes."""
    import ray

    from pipeline.ray_watch import NodeWatch, actor_node, alive_nodes, node_names

    ensure_ray()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actor_cls = _actor_class()
    if gpus:
        actors = [actor_cls.options(num_gpus=1, num_cpus=1).remote(store, labeler, rows, 4, batch_pairs)
                  for _ in range(num_actors or gpus)]
    else:
        n_nodes = len(alive_nodes())
        n = num_actors or n_nodes
        threads = max(1, (os.cpu_count() or 1) * n_nodes // n)
        actors = [actor_cls.options(num_cpus=1, scheduling_strategy="SPREAD").remote(store, labeler, rows,
                                                                                     threads, batch_pairs)
                  for _ in range(n)]
    node_of = {a: actor_node(a) for a in actors}
    names = node_names()
    frames = store.frames[rows]
    queue = deque(_tasks(todo, frames, max(1, min(pairs_per_task, int(frames.sum()) // (4 * len(actors))))))
    pending: deque = deque()  # (actor, ref, keys) in submission order
    free = deque(actors * 2)  # two tasks in flight per actor: one running, one queued
    watch = NodeWatch("label")
    try:
        while queue or pending:
            while queue and free:
                actor, keys = free.popleft(), queue.popleft()
                pending.append((actor, actor.label.remote(keys), keys))
            actor, ref, keys = pending[0]
            ready, _ = ray.wait([ref], timeout=watch.poll_s)  # bounded: a lost node must not hang the run
            watch.delivered(ready)
            if not ready:
                watch.check(p[1] for p in pending)
                continue
            pending.popleft()
            try:
                batch = ray.get(ref)
            except ray.exceptions.RayActorError:
                # Its node was lost: its tasks go to the actors left (none left: the run stops).
                actors.remove(actor)
                log.warning("label: an actor was lost; %d left", len(actors))
                if not actors:
                    raise
                redo = [keys] + [k for a, _, k in pending if a is actor]
                pending = deque(p for p in pending if p[0] is not actor)
                free = deque(a for a in free if a is not actor)
                queue.extendleft(reversed(redo))
                continue
            free.append(actor)
            node = ray.get(node_of[actor])  # answered: its `actor_node` call ran before its tasks
            if node not in names:
                names = node_names()
            nodes[names.get(node, node[:12])] = nodes.get(names.get(node, node[:12]), 0) + len(batch)
            yield batch
    finally:
        for a in actors:
            ray.kill(a)
