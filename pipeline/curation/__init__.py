"""Curation from stored features: still spans and near-duplicate episodes, without decoding video.

    from pipeline.curation import curate_store
    report = curate_store("data/demo/store", load_curation_config("curate.yaml"))

- `motion`      — per-frame motion and the still (static / idle) spans it shows.
- `embedding`   — one vector per episode, for the duplicate search.
- `duplicates`  — the nearest-neighbour search (faiss) and duplicate groups.
- `job`         — plan, score, group, commit: `curate_store`.
- `decisions`   — what a curation set decides per episode and per source (catalog, export, reports).
"""

from pipeline.curation.decisions import decisions_table, source_hours
from pipeline.curation.job import CurationReport, curate_store

__all__ = ["CurationReport", "curate_store", "decisions_table", "source_hours"]
