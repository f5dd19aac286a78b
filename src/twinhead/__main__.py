"""`python -m twinhead ...` is the `twinhead` command (for an environment whose scripts are not on PATH)."""

from twinhead.cli import entry

entry()
