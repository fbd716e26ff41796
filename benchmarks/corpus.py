"""The learning benchmarks' corpus: rendered once, cached, ingested into one store per token
mode and encoder numerics.

Promise: `bench_lam`, `bench_policy` and `bench_value` measure on the same episodes. The
corpus is rendered by `make_samples` under `data/bench-corpus/samples` (cached: a second
call with the same arguments renders nothing) and ingested with the default encoder into
`data/bench-corpus/store-<tokens>[-<runtime>-<precision>]` (cached too: a re-ingest of
unchanged files is a no-op), one store per token mode, so a finer token grid is the same
frames through the same encoder, pooled differently; and one per encoder numerics, so the
features of torch fp32 (the reference: no suffix, the name every store and cached run had
before runtimes were named) and those of OpenVINO bf16 (`--runtime auto` on a CPU) sit side
by side and never mix. A benchmark's cached runs carry the same suffix (`numerics_suffix`).

- Robot: `ROBOT_TASKS`, the five tasks of the closed-loop benchmark plus four with other
  motions (grasp and lift, an upward arc, a sideways slide, a rotation), 30 scripted episodes
  each, every one slowed to last >= 2 s where the slowed expert still succeeds.
- Human stand-in: `HUMAN_TASKS` from another camera, no actions in the source; what the
  hand did is kept beside it (`read_human_truth`) for evaluation only.
- Sampled at 20 fps (every video frame), so a gap k in seconds is exact to 0.05 s.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from pipeline.samples import make_samples, read_human_truth, sample_sources
from schemas import CorpusConfig, EncoderConfig, StoreConfig
from schemas.errors import ConfigError
from schemas.records import ActionTrack

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "data" / "bench-corpus"
POLICY_TASKS = ("reach-v3", "push-v3", "drawer-open-v3", "button-press-topdown-v3", "door-open-v3")
ROBOT_TASKS = (*POLICY_TASKS, "pick-place-v3", "lever-pull-v3", "window-close-v3", "faucet-open-v3")
HUMAN_TASKS = ("drawer-close-v3", "window-open-v3", "button-press-v3")
SAMPLE_ARGS = {"tasks": ROBOT_TASKS, "episodes_per_task": 30, "human_tasks": HUMAN_TASKS,
               "human_episodes_per_task": 14, "seed": 0, "image_size": 128, "min_seconds": 2.0}
FPS = 20.0
HUMAN_SOURCE = "human-standin"
# The numerics of the stores and cached runs made before runtimes were named: named without a suffix.
REFERENCE_NUMERICS = ("torch", "fp32")


@dataclass(frozen=True)
class Corpus:
    samples: Path  # make_samples folder (robot/, human/, human_truth.parquet)
    store: str  # store uri for the token mode and numerics asked for
    numerics: str = ""  # `numerics_suffix` of that store: "" (torch fp32) or "-openvino-bf16", ...

    def human_truth(self) -> dict[str, ActionTrack]:
        """Episode key -> what the hand did in that human stand-in clip (evaluation only)."""
        return {f"{HUMAN_SOURCE}/{name}": ActionTrack(t.timestamps, t.actions, t.state)
                for name, t in read_human_truth(self.samples).items()}


def resolved_numerics(runtime: str = "torch", precision: str = "fp32") -> tuple[str, str]:
    """(runtime, precision) with `auto` made concrete as for a new store on this machine
    (OpenVINO, and bf16 where the CPU computes it natively: `pipeline.encode.identity`)."""
    from pipeline.encode.identity import resolve_numerics

    cfg = resolve_numerics(EncoderConfig(runtime=runtime, precision=precision))
    return cfg.runtime, cfg.precision


def numerics_suffix(runtime: str = "torch", precision: str = "fp32") -> str:
    """What names a store and a cached run of these numerics: "" for torch fp32 (so the names
    made before runtimes were named keep their meaning), else "-<runtime>-<precision>"."""
    numerics = resolved_numerics(runtime, precision)
    return "" if numerics == REFERENCE_NUMERICS else "-" + "-".join(numerics)


def add_numerics_args(p: argparse.ArgumentParser) -> None:
    """`--runtime` / `--precision` of the corpus's encoder, for every benchmark on the corpus."""
    fields = EncoderConfig.model_fields
    p.add_argument("--runtime", default=REFERENCE_NUMERICS[0], choices=get_args(fields["runtime"].annotation),
                   help="encoder runtime of the corpus's store (default torch: the reference the cached runs "
                        "were trained on; auto = a new store's default here, OpenVINO on a CPU)")
    p.add_argument("--precision", default=REFERENCE_NUMERICS[1], choices=get_args(fields["precision"].annotation),
                   help="encoder precision (default fp32; auto = bf16 where the hardware computes it natively)")


def bench_corpus(tokens: str = "grid:4x4", work: Path = WORK, *, runtime: str = "torch", precision: str = "fp32",
                 progress: bool = True, refresh: bool = True) -> Corpus:
    """Render (cached) and ingest (cached) the benchmark corpus; the store of `tokens` whose
    features `runtime` / `precision` computed (`auto`: this machine's default for a new store).
    `refresh=False` takes a store that exists as it stands (no render, no ingest): runs
    compared with runs cached before a change of the ingest's change detection stay on the
    very features those were trained on."""
    samples = work / "samples"
    runtime, precision = resolved_numerics(runtime, precision)
    suffix = numerics_suffix(runtime, precision)
    name = tokens.replace(":", "") + suffix
    if not refresh and (work / f"store-{name}").exists():
        return _as_stored(samples, str(work / f"store-{name}"), suffix)
    t = time.perf_counter()
    summary = make_samples(samples, **SAMPLE_ARGS, progress=progress)
    if not summary.cached:
        frames = sum(s.frames for s in summary.sources)
        print(f"rendered {frames} frames in {time.perf_counter() - t:.0f} s "
              f"({frames / (time.perf_counter() - t):.1f} frames/s)")
    sources = [s.model_copy(update={"fps": FPS}) for s in sample_sources(samples)]
    cfg = CorpusConfig(name=f"bench-{name}", sources=sources, store=StoreConfig(uri=str(work / f"store-{name}")),
                       encoder=EncoderConfig(tokens=tokens, runtime=runtime, precision=precision))
    from pipeline.ingest import ingest_corpus

    report = ingest_corpus(cfg, progress=progress)
    if report.added:
        print(f"ingested {report.added} episodes ({tokens}, {runtime} {precision}) in {report.seconds:.0f} s")
    return Corpus(samples, cfg.store.uri, suffix)


def _as_stored(samples: Path, uri: str, suffix: str) -> Corpus:
    """The store as it stands, refused when it lacks rendered episodes (an ingest cut short)."""
    from pipeline.sources import iter_episodes
    from pipeline.store import FeatureStore

    rendered = {ref.key for spec in sample_sources(samples) for ref in iter_episodes(spec)}
    stored = FeatureStore.open(uri)
    missing = rendered - set(stored.keys)
    if missing:
        raise ConfigError(f"store {uri!r} holds {len(rendered) - len(missing)} of the {len(rendered)} rendered "
                          f"episodes (an ingest cut short?): run without --no-refresh to ingest the rest")
    return Corpus(samples, uri, suffix)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="render and ingest the learning benchmarks' corpus (cached)")
    p.add_argument("--tokens", default="grid:4x4,grid:8x8")
    add_numerics_args(p)
    args = p.parse_args()
    for mode in args.tokens.split(","):
        print(bench_corpus(mode, runtime=args.runtime, precision=args.precision))
