"""One error hierarchy: what a failure *means* decides what the run does next.

- `BadInputError`: one episode's input is bad (a corrupt video, a path outside its source,
  actions that do not parse). That episode is quarantined with a one-line reason; the run
  goes on.
- `ConfigError`: a config file, flag or store choice is wrong. Nothing runs; exit 2, the
  file and field named.
- `InfrastructureError`: the network, an object store (5xx, timeout), a lost Ray worker.
  The run stops after committing finished episodes; retryable (Prefect retries it, and a
  re-run skips what was committed). Nothing is quarantined for it.
- `ResourceError`: the disk is full, the store is read-only or not ours to write. The run
  stops with the previous version kept and one line; never retried (a retry cannot free
  a disk).
- anything else is a bug: it fails loudly; nothing is quarantined, nothing retried.

Foreign exceptions (OSError errno, Ray's, Icechunk's, botocore's) are sorted into these
by `pipeline.errors.classify`; this module imports nothing, so every room can raise them.
"""

from __future__ import annotations


class LawamError(Exception):
    """Base of every error lawam raises on purpose."""


class BadInputError(LawamError, ValueError):
    """One episode's input is bad: quarantine the episode, go on with the run."""


class ConfigError(LawamError, ValueError):
    """A config file is missing, is not YAML, or does not validate; a flag or a store choice
    is wrong. The message names the file and the field, so it can be shown as it is."""


class StoreMismatchError(ConfigError):
    """The store (or a model trained on one) was made by another encoder or store layout:
    features of two encoders never mix. A config error (exit 2): choose another store."""


class InfrastructureError(LawamError, RuntimeError):
    """A fault of the machinery, not of the input (network, object store, lost worker): the
    same run can succeed when retried, and nothing is quarantined for it."""


class ResourceError(LawamError, OSError):
    """The machine cannot take the write (disk full, read-only or forbidden store): stop,
    keep the previous version, say so in one line; a retry would fail the same way."""


__all__ = ["BadInputError", "ConfigError", "InfrastructureError", "LawamError", "ResourceError", "StoreMismatchError"]
