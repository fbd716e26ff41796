"""Validated configuration models and table schemas.

This package imports nothing of ours: every other room imports field names from here
instead of redefining them.
"""

from schemas.config import (
    ConfigError,
    CorpusConfig,
    EncoderConfig,
    SamplingConfig,
    SourceSpec,
    StoreConfig,
    load_corpus,
    load_source,
)
from schemas.errors import BadInputError, InfrastructureError, LawamError, ResourceError
from schemas.tables import CATALOG_SCHEMA, INDEX_SCHEMA, LABEL_INDEX_SCHEMA, STORE_LAYOUT_VERSION, EpisodeStatus

__all__ = [
    "BadInputError",
    "InfrastructureError",
    "LawamError",
    "ResourceError",
    "CATALOG_SCHEMA",
    "INDEX_SCHEMA",
    "LABEL_INDEX_SCHEMA",
    "STORE_LAYOUT_VERSION",
    "ConfigError",
    "CorpusConfig",
    "EncoderConfig",
    "EpisodeStatus",
    "SamplingConfig",
    "SourceSpec",
    "StoreConfig",
    "load_corpus",
    "load_source",
]
