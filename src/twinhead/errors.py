"""The one exception type users see for bad input: it names the file and line (or the field)."""

from __future__ import annotations


class TwinheadError(Exception):
    """A problem the user can fix (bad input, bad params, mismatched bundle)."""


class DataError(TwinheadError):
    """Malformed input data, located by file and line (1-based) or by field."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        self.reason = message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


def run_main(main) -> None:
    """Run a stage or CLI main(): a TwinheadError becomes one clear line on stderr and exit code 1."""
    import sys

    try:
        sys.exit(main())
    except TwinheadError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


REQUIRED = ("torch", "spacy", "pandas", "pyarrow", "pydantic", "ruamel.yaml", "safetensors")


def check_environment() -> None:
    """Exit with one line if this python lacks the project's dependencies (a stage run by DVC with the
    system `python` first on PATH), instead of a ModuleNotFoundError traceback from deep inside."""
    import importlib.util
    import sys

    for name in REQUIRED:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a dotted name whose parent package is missing
            found = False
        if not found:
            sys.exit(f"error: {sys.executable} cannot import {name}: it is not the project's environment; "
                     "activate it first (`source .venv/bin/activate`, see README) or use the make targets")
