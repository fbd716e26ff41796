"""What one source adds to a LaWM: the same budget trained with and without it, side by side.

    report = source_value("data/demo/store", "human-standin", steps=300, out_dir="runs/value")
    print(report.to_table()); report.to_json()

Promise: both runs read one pinned store version, start from the same seed, train the same
number of steps with the same config, and are scored by `model.lam_eval.corpus_metrics` on
the *same* held-out episodes of every source (the left-out source's included: the split is
by a hash of the episode key, whichever sources a run trains on). What differs is only
whether the source's training episodes were in the mix, so a difference is the source's
value at that budget — per source kind, because a human-video source can help robot
episodes, human episodes, both or neither.

The two runs are kept under `out_dir` (`with/`, `without-<source>/`) and reused by a second
call with the same store version and config: asking again costs only the scoring.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model.checkpoint import read_card
from model.lam_eval import Yardstick, corpus_metrics
from model.loop import ProgressFactory
from model.train_lam import KIND, load_lawm, train_lam
from pipeline.store import FeatureStore
from schemas.errors import ConfigError
from schemas.records import ActionTrack
from schemas.training import LamConfig, with_steps

log = logging.getLogger(__name__)

# The figures shown per kind, in order: (key in corpus_metrics' per-kind dict, label, lower is better).
FIGURES = (("forward_mse", "held-out forward error", True), ("copy_mse", "copying f_t", True),
           ("forward_over_copy", "forward / copy", True), ("z_explains", "z explains", False),
           ("probe_r2_z", "probe R² z -> actions", False), ("probe_r2_pca", "probe R² PCA-32 of f_t", False))


@dataclass
class SourceValue:
    """Held-out metrics per source kind, trained with and without one source."""

    store: str
    version: str
    source: str
    kind: str  # the left-out source's kind
    steps: int
    with_source: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> metrics
    without_source: dict[str, dict[str, float]] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)  # "with" / "without" -> LaWM folder
    unmeasured: dict[str, str] = field(default_factory=dict)  # kind in the store -> why it has no figures

    def rows(self) -> list[dict[str, Any]]:
        """One row per (kind, figure) present on both sides: with, without, and the change
        with the source (positive = the source helps)."""
        out = []
        for kind in ("robot", "human"):
            a, b = self.with_source.get(kind, {}), self.without_source.get(kind, {})
            for key, label, lower_better in FIGURES:
                if key in a and key in b:
                    gain = (b[key] - a[key]) if lower_better else (a[key] - b[key])
                    out.append({"kind": kind, "figure": label, "key": key, "with": a[key], "without": b[key],
                                "gain": gain})
        return out

    def to_table(self):
        from rich.table import Table

        table = Table(title=f"value of source {self.source!r} ({self.kind}): LaWM {self.steps} steps, "
                            f"store version {self.version[:12]}, held-out episodes")
        for col, justify in (("episodes", "left"), ("figure", "left"), ("with", "right"),
                             ("without", "right"), ("gain with it", "right")):
            table.add_column(col, justify=justify)
        for r in self.rows():
            table.add_row(r["kind"], r["figure"], f"{r['with']:.4f}", f"{r['without']:.4f}", f"{r['gain']:+.4f}")
        if self.unmeasured:
            table.caption = "; ".join(f"{kind}: {why}" for kind, why in self.unmeasured.items())
        return table

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rows": self.rows()}


def source_value(store_uri: str, source: str, *, out_dir: str | Path, cfg: LamConfig | None = None,
                 steps: int | None = 300, version: str | None = None,
                 truth: Mapping[str, ActionTrack] | None = None,
                 progress: ProgressFactory | bool | None = None) -> SourceValue:
    """Train a LaWM with and without `source` (same budget, seed and store version) and score
    both on the held-out episodes of every source. `truth` (actions of human clips by
    episode key, kept outside the store) adds probes on human episodes."""
    cfg = with_steps(cfg or LamConfig(), steps)
    store = FeatureStore.open(store_uri, version)
    table = store.episodes()
    sources = dict(zip(table["source"].to_pylist(), table["kind"].to_pylist(), strict=True))
    if source not in sources:
        raise ConfigError(f"--source {source!r}: store version {store.version} has no such source; "
                          f"it has {sorted(sources)!r}")
    chosen = list(cfg.pairs.sources) or sorted(sources)
    if source not in chosen:
        raise ConfigError(f"--source {source!r} is not among the config's pairs.sources {chosen!r}: "
                          "nothing to leave out")
    rest = [s for s in chosen if s != source]
    if not rest:
        raise ConfigError(f"--source {source!r} is the only source trained on: without it nothing is left")
    out = Path(out_dir)
    # "with" trains on the config's sources as given (empty = every source, so a LaWM trained
    # with the default config is the "with" arm as it stands); "without" names the rest.
    arms = {"with": (out / "with", list(cfg.pairs.sources)), "without": (out / f"without-{source}", rest)}
    ys = Yardstick(horizon=cfg.pairs.horizon, action_rate=cfg.pairs.action_rate or 10.0,
                   heldout_fraction=cfg.pairs.heldout_fraction, seed=cfg.pairs.seed)
    report = SourceValue(store.uri, store.version, source, sources[source], cfg.optim.steps)
    for arm, (run_dir, arm_sources) in arms.items():
        arm_cfg = cfg.model_copy(update={"pairs": cfg.pairs.model_copy(update={"sources": arm_sources})})
        _train_or_reuse(store_uri, run_dir, arm_cfg, store.version, progress)
        model, card = load_lawm(run_dir)
        metrics = corpus_metrics(model, store, arm_cfg.pairs.k_seconds, ys=ys, truth=truth)
        kinds = {k: v for k, v in metrics.items() if k in ("robot", "human")}
        setattr(report, f"{arm}_source", kinds)
        report.runs[arm] = str(run_dir)
    measured = {r["kind"] for r in report.rows()}
    for kind in dict.fromkeys(sources[s] for s in chosen):
        if kind not in measured:
            report.unmeasured[kind] = (f"no held-out episodes at pairs.heldout_fraction {cfg.pairs.heldout_fraction:g} "
                                       "(a larger one in --config holds some out)")
    (out / "value.json").write_text(json.dumps(report.to_json(), indent=2, default=float))
    return report


def _train_or_reuse(store_uri: str, run_dir: Path, cfg: LamConfig, version: str,
                    progress: ProgressFactory | bool | None) -> None:
    """Train into `run_dir`, or keep the LaWM there when it read `version` with `cfg`."""
    if (run_dir / "card.json").exists():
        card = read_card(run_dir, KIND)
        # through the schema: a card written before a field existed reads with its default
        if card.store.version == version and LamConfig.model_validate(card.config) == cfg:
            log.info("%s: reusing the LaWM trained with the same config on the same store version", run_dir)
            return
        raise ConfigError(f"{run_dir} holds a LaWM of another config or store version: choose another --out")
    train_lam(store_uri, run_dir, cfg, version=version, progress=progress)


__all__ = ["SourceValue", "source_value"]
