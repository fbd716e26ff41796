"""What a store holds, per source: the catalog summary behind `lawam catalog`, curation sets
included (hours kept and dropped per source, and why: `pipeline.curation.decisions`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.curation.decisions import decisions_table, examples, source_hours
from pipeline.store import FeatureStore, list_label_sets
from pipeline.store.curation import CurationSet, list_curation_sets
from schemas import ConfigError, EpisodeStatus
from schemas.identity import EncoderIdentity


@dataclass
class SourceSummary:
    source: str
    kind: str
    episodes: int
    frames: int
    hours: float
    quarantined: int


@dataclass
class CatalogSummary:
    store: str
    version: str
    encoder: EncoderIdentity | None  # None while the store is empty
    sources: list[SourceSummary] = field(default_factory=list)
    # source, episode_id, uri, reason, failed_since (first failure, UTC), failures (attempts that failed)
    quarantined: list[dict] = field(default_factory=list)
    label_sets: list[dict] = field(default_factory=list)  # id, labelled, stale, episodes, coverage, lam_dir, ...
    # id, curated, stale, episodes, sources (per source: hours, kept_h, duplicate_h, static_h, idle_h,
    # uncurated_h, dropped_episodes), examples (reason, episode, what)
    curation_sets: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(uri: str, version: str | None = None) -> CatalogSummary:
    store = FeatureStore.open(uri, version)
    cat = store.catalog(["source", "kind", "status", "frames", "duration_s"])  # the columns summed, no more
    summary = CatalogSummary(uri, store.version, store.encoder)
    ok = pc.equal(cat["status"], EpisodeStatus.OK)
    sums = pa.table({  # one grouped pass (a million rows), the sums over ok episodes only
        "source": cat["source"], "kind": cat["kind"], "ok": ok.cast(pa.int64()),
        "frames": pc.if_else(ok, cat["frames"], 0), "hours": pc.if_else(ok, cat["duration_s"], 0.0),
    }).group_by("source", use_threads=False).aggregate(
        [("kind", "first"), ("ok", "sum"), ("ok", "count"), ("frames", "sum"), ("hours", "sum")])
    for r in sorted(sums.to_pylist(), key=lambda r: r["source"]):
        summary.sources.append(SourceSummary(
            source=r["source"], kind=r["kind_first"], episodes=r["ok_sum"], frames=int(r["frames_sum"] or 0),
            hours=float(r["hours_sum"] or 0) / 3600, quarantined=r["ok_count"] - r["ok_sum"],
        ))
    if any(s.quarantined for s in summary.sources):
        cols = ["source", "episode_id", "uri", "reason", "failed_since", "failures"]
        summary.quarantined = store.catalog(cols).filter(pc.equal(cat["status"], EpisodeStatus.QUARANTINED)).to_pylist()
    summary.label_sets = [
        {"id": ls.id, "labelled": ls.labelled, "stale": ls.stale, "episodes": ls.episodes, "coverage": ls.coverage,
         "lam_dir": ls.attrs.get("lam", {}).get("dir"), "k_seconds": ls.attrs.get("k_seconds"),
         "dim": ls.attrs.get("dim")}
        for ls in list_label_sets(store)
    ]
    for cs in list_curation_sets(store):
        decisions = decisions_table(store, cs)
        summary.curation_sets.append({"id": cs.id, "curated": len(cs.keys), "stale": cs.stale, "episodes": len(store),
                                      "sources": source_hours(decisions), "examples": examples(decisions)})
    return summary


def export_decisions(uri: str, version: str, path: str | Path, set_id: str | None = None) -> int:
    """Write the per-episode decisions of curation set `set_id` (default: the store's only one)
    at `version` to Parquet (CURATION_DECISIONS_SCHEMA); returns the number of rows."""
    store = FeatureStore.open(uri, version)
    sets = list_curation_sets(store)
    if set_id is None:
        if len(sets) != 1:
            have = [s.id for s in sets] or "none; run `lawam curate` first"
            raise ConfigError(f"store {uri!r} has {len(sets)} curation sets ({have}): name one with --curation")
        cset = sets[0]
    else:
        cset = CurationSet.open(store, set_id)
    table = decisions_table(store, cset)
    pq.write_table(table, path)
    return table.num_rows
