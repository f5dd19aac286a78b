"""Load only the params.yaml sections a stage declares, and flatten them for logging."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from twinhead.errors import TwinheadError


def load_params(sections: tuple[str, ...] | list[str], path: str | os.PathLike = "params.yaml") -> dict:
    """Return {section: values} for the named sections; a missing section is an error."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            allp = yaml.safe_load(fh) or {}
    except FileNotFoundError as e:
        raise TwinheadError(f"{path}: params file not found") from e
    except yaml.YAMLError as e:
        raise TwinheadError(f"{path}: invalid YAML: {e}") from e
    missing = [s for s in sections if s not in allp]
    if missing:
        raise TwinheadError(f"{path}: missing params section(s): {', '.join(missing)}")
    return {s: allp[s] for s in sections}


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


def build_dataclass(cls, values: dict, section: str):
    """cls(**values) with an error naming the unknown or missing field in params.yaml."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise TwinheadError(
            f"params.yaml: unknown field(s) in '{section}': {', '.join(unknown)} "
            f"(known: {', '.join(sorted(names))})"
        )
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise TwinheadError(f"params.yaml: section '{section}': {e}") from e
