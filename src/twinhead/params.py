"""params.yaml, read as DVC reads it (YAML 1.2), into one typed, range-checked config per section.

Every section is a `@section` dataclass (pydantic, strict): a wrong type, an out-of-range value or an
unknown key is refused with one line naming `params.yaml: <section>.<key>`. The dataclass defaults
equal params.yaml's values (tests/test_params.py checks), so deleting a key changes nothing.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass

from twinhead.errors import TwinheadError

# strict: no silent coercion ("3e-4" stays a string and is refused; an int is still a valid float)
section = dataclass(config=ConfigDict(extra="forbid", strict=True))

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]  # a probability that must leave something (dropout)
Name = Annotated[str, Field(min_length=1)]


@section
class BaseConfig:
    seed: NonNegInt = 42  # seeds the dev hold-out, weights, batch order, dropout


def read_params_file(path: str | os.PathLike = "params.yaml") -> dict:
    """The whole params file as YAML 1.2 (what DVC reads: `lr: 3e-4` is a number, `on` a string)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise TwinheadError(f"{path}: params file not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise TwinheadError(f"{path}: cannot read params file ({e})") from e
    try:
        data = YAML(typ="safe", pure=True).load(text)
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise TwinheadError(f"{where}: invalid YAML: {problem}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TwinheadError(f"{path}: expected a mapping of sections at the top level")
    return data


def _describe(err: dict) -> str:
    if err["type"] == "missing":
        return "missing (required)"
    msg = err["msg"]
    msg = msg[0].lower() + msg[1:]
    if msg.startswith("value error, "):
        msg = msg[len("value error, "):]
    return f"{msg} (got {err['input']!r})" if err["loc"] else msg


def parse_section(cls, values: Any, name: str, path: str | os.PathLike = "params.yaml"):
    """cls(**values), or one TwinheadError `params.yaml: <name>.<key>: <why>` naming each bad key."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise TwinheadError(f"{path}: {name}: expected a mapping of keys, got {type(values).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise TwinheadError(f"{path}: {name}.{unknown[0]}: unknown key (known: {', '.join(known)})")
    try:
        return cls(**values)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            parts.append(f"{name}.{loc}: {_describe(err)}" if loc else f"{name}: {_describe(err)}")
        raise TwinheadError(f"{path}: " + "; ".join(parts)) from None


def load_config(sections: dict[str, type], path: str | os.PathLike = "params.yaml") -> dict[str, Any]:
    """Only the sections a stage declares, each parsed into its config class."""
    data = read_params_file(path)
    missing = [s for s in sections if s not in data]
    if missing:
        raise TwinheadError(f"{path}: missing params section(s): {', '.join(missing)}")
    return {name: parse_section(cls, data[name], name, path) for name, cls in sections.items()}


def as_dict(cfg) -> dict:
    """A config (or a dict of configs) as plain dicts, for logging and recording."""
    if isinstance(cfg, dict):
        return {k: as_dict(v) for k, v in cfg.items()}
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
