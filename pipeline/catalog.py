"""What a store holds, per source: the catalog summary behind `lawam catalog`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pyarrow.compute as pc

from pipeline.store import FeatureStore, list_label_sets
from schemas import EpisodeStatus
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

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(uri: str, version: str | None = None) -> CatalogSummary:
    store = FeatureStore.open(uri, version)
    cat = store.catalog(["source", "kind", "status", "frames", "duration_s"])  # the columns summed, no more
    summary = CatalogSummary(uri, store.version, store.encoder)
    for source in sorted(cat["source"].unique().to_pylist()):
        rows = cat.filter(pc.equal(cat["source"], source))
        ok = rows.filter(pc.equal(rows["status"], EpisodeStatus.OK))
        summary.sources.append(SourceSummary(
            source=source, kind=rows["kind"][0].as_py(), episodes=ok.num_rows,
            frames=int(pc.sum(ok["frames"]).as_py() or 0), hours=float(pc.sum(ok["duration_s"]).as_py() or 0) / 3600,
            quarantined=rows.num_rows - ok.num_rows,
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
    return summary
