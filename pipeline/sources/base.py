"""What a source adapter hands to the rest of the pipeline, and the two ways a source is bad.

An `EpisodeRef` (defined in `schemas.records`, since the store and trainers use it too) is
small, picklable and cheap to make: enumerating a source reads metadata (file listings,
LeRobot `meta/`, HDF5 keys) and never decodes video. Actions are loaded later, next to the
decode, by `load_actions`.

Errors, by what they mean (`schemas.errors`):

- `SourceError` (a `ConfigError`): the *source* cannot be read at all: a missing folder, an
  unreadable LeRobot `meta/info.json`, a field no demo has. Raised while enumerating, before
  anything runs; the run stops with exit 2 and the file and field named.
- `EpisodeError` (a `BadInputError`): *one episode's* data is bad: its actions do not parse,
  its HDF5 image array is unreadable, enumeration refused it (`EpisodeRef.refused`). Raised
  next to the decode; the episode is quarantined and the run goes on.

A network or object-store fault while reading is neither: it is left as it is (an OSError,
a botocore error), `pipeline.errors.classify` calls it infrastructure, and the run stops,
retryable, with nothing quarantined.
"""

from __future__ import annotations

from schemas.errors import BadInputError, ConfigError
from schemas.records import ActionTrack, EpisodeRef

__all__ = ["ActionTrack", "EpisodeError", "EpisodeRef", "SourceError", "reraise_if_infrastructure"]


class SourceError(ConfigError):
    """A whole source cannot be read (missing folder, unreadable LeRobot `meta/info.json`).
    Per-episode problems are not raised as this: they are yielded as refused refs, or raise
    `EpisodeError` at decode, and either way are quarantined."""


class EpisodeError(BadInputError):
    """One episode's own data is bad (its actions, its image array, refused at enumeration):
    the episode is quarantined with this one-line reason; the rest of the run goes on."""


def reraise_if_infrastructure(e: BaseException) -> None:
    """Inside an `except OSError` that would call the file bad: re-raise `e` as it is when it is
    a network / object-store fault (ECONNRESET, a timeout, a 5xx), which is not the file's
    fault and must never quarantine an episode or fail a source."""
    from pipeline.errors import classify

    if classify(e) == "infrastructure":
        raise e
