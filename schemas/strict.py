"""The base of every config model users write: an unknown field fails at load time (a typo
never silently falls back to a default) and a loaded config is frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
