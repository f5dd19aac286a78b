"""Named fail points for crash tests: the process SIGKILLs itself at a chosen moment.

A test sets ``TWINHEAD_FAILPOINT=<name>`` (die at the first hit) or ``<name>@N`` (die at the N-th hit
in this process) instead of racing a kill against a timer, and ``TWINHEAD_FAILPOINT_LOG=<file>`` to
learn that the point was reached: a line ``<name> <pid>`` is appended and fsynced there before the kill.
Unset, a hit costs one dictionary lookup.

The names are a contract (tests and docs use them):

``write:<target>``
    ``fileio.atomic_path`` / ``fileio.atomic_dir``: the new content of the file or folder named
    ``<target>`` (its base name: ``processed``, ``export``, ``checkpoint.pt``, ``state.pt``...) is
    complete and fsynced in its temp name, not yet moved into place.
``swap:<target>``
    ``fileio.atomic_dir`` replacing an existing folder: the new folder is in place and the old one
    sits under a temp name (the atomic exchange), or, where the exchange is unavailable, the old
    folder has been moved aside and the new one not yet moved in.
``train:step``
    ``train.train``: after each optimizer step (``train:step@K`` dies mid-epoch).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "TWINHEAD_FAILPOINT"
LOG_ENV = "TWINHEAD_FAILPOINT_LOG"

_hits: Counter[str] = Counter()  # hits per name in this process, for `name@N`


def _armed(name: str) -> bool:
    spec = os.environ.get(ENV)
    if not spec:
        return False
    target, at, nth = spec.rpartition("@")
    if at and nth.isdigit():
        if target != name:
            return False
        _hits[name] += 1
        return _hits[name] == int(nth)
    return spec == name


def hit(name: str) -> None:
    """Die here (SIGKILL, no cleanup, no atexit) if TWINHEAD_FAILPOINT names this point."""
    if not _armed(name):
        return
    log = os.environ.get(LOG_ENV)
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            os.write(fd, f"{name} {os.getpid()}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)  # no SIGKILL (Windows): the closest thing, an exit that skips all cleanup
