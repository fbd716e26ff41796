"""The base of every config model users write, and how every config file is read: an unknown
field fails at load time (a typo never silently falls back to a default), a loaded config is
frozen, and an unreadable file or an invalid field is one ConfigError naming the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from schemas.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)


def format_errors(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        field = field if field.isprintable() else repr(field)  # a key "\n" keeps the message one line
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif "input" in e and e["type"] not in ("missing",):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{path}: {field}: {msg}")
    return "; ".join(lines)


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:  # a binary file given as config
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); a config is a YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        what = str(getattr(e, "problem", None) or e).splitlines()[0]  # a ReaderError has no `problem`
        raise ConfigError(f"{path}: not valid YAML{at}: {what}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top, got {type(data).__name__}")
    return data


def validate_file(model: type[M], data: dict, path: Path) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(path, e)) from None
