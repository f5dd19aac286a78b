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
