"""Ingest: episode refs → decode → frozen encoder → a new version of the feature store.

    from pipeline.ingest import ingest_corpus
    report = ingest_corpus(load_corpus("configs/corpus.yaml"))   # in a notebook, no Prefect

- `job`           — plan against the store, run, commit: `ingest_corpus`, `ingest_episodes`.
- `frames`        — one episode's frames at the corpus rate, in blocks (the decode step).
- `ray_executor`  — decode tasks, the encoder actor pool and the driver loop on Ray.

Names load on first use (PEP 562): a Ray decode worker imports `pipeline.ingest.frames`
without paying for the store, the sources' hashing or Ray's driver side.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "IngestReport": "job",
    "ensure_ray": "job",
    "ingest_corpus": "job",
    "ingest_episodes": "job",
    "remember_hashes": "job",
    "source_fps": "job",
    "source_roots": "job",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from pipeline.ingest.job import (  # noqa: F401
        IngestReport,
        ensure_ray,
        ingest_corpus,
        ingest_episodes,
        remember_hashes,
        source_fps,
        source_roots,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
