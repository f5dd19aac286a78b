"""Atomic writes: every output goes to a temp file (or folder) beside it, then is moved into place.

A run killed at any moment leaves the previous output or the new one, never a truncated file that
DVC would then cache, and never a moment where an output folder is missing: on Linux a folder is
replaced by swapping the two atomically (renameat2 RENAME_EXCHANGE); elsewhere (or where the file
system refuses the exchange) by two renames, and a kill between them leaves the previous folder at
`.NAME.PID.old`, which the next write of NAME puts back before anything else.

Temp names carry the writer's pid (`.NAME.PID.XXXXXXXX.tmp`, `.NAME.PID.old`). What a killed
writer left behind is removed by the next write of the same target; temps of a writer that is still
alive are left alone, so two concurrent writers never disturb each other. Fail points
`write:NAME` and `swap:NAME` (twinhead.failpoints) let tests kill a writer at the moments that matter.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twinhead import failpoints

# After ".NAME.": a temp or a moved-aside old folder with the writer's pid, or the names older versions
# used (no pid: their writer is gone).
_LEFTOVER = re.compile(r"(?P<pid>\d+)\.[0-9a-f]{8}\.tmp|(?P<oldpid>\d+)\.old|old|[a-z0-9_]{8}\.tmp")


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":  # elsewhere os.kill(pid, 0) is not a harmless probe
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OverflowError:
        return False
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _leftovers(path: Path) -> list[tuple[Path, bool]]:
    """Temps of `path` whose writer is gone, as (entry, is a moved-aside old folder)."""
    prefix = f".{path.name}."
    found = []
    with os.scandir(path.parent) as entries:
        for e in entries:
            m = _LEFTOVER.fullmatch(e.name[len(prefix):]) if e.name.startswith(prefix) else None
            if not m:
                continue
            pid = m["pid"] or m["oldpid"]
            if pid is None or not _alive(int(pid)):
                found.append((Path(e.path), e.name.endswith(".old")))
    return found


def _tidy(path: Path) -> None:
    """Put back a folder a killed swap left aside, then remove what killed writers of `path` left."""
    left = _leftovers(path)
    olds = sorted((p for p, is_old in left if is_old), key=lambda p: p.stat().st_mtime, reverse=True)
    if olds and not os.path.lexists(path):
        with contextlib.suppress(OSError):  # a concurrent writer may have restored it first
            os.rename(olds[0], path)
    for p, _ in left:
        _remove(p)


def _new_temp(path: Path, folder: bool) -> Path:
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            if folder:
                os.mkdir(tmp, 0o777)  # the umask applies: outputs get the usual permissions
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp name beside {path}")


def _fsync(path: Path, folder: bool) -> None:
    if folder and os.name != "posix":  # folders cannot be opened for fsync there
        return
    fd = os.open(path, os.O_RDONLY if os.name == "posix" else os.O_RDWR)  # Windows syncs writable handles only
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


AT_FDCWD, RENAME_EXCHANGE = -100, 2
# The exchange is not there (old kernel, file system, seccomp): use the two renames instead.
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM}


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where this system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _tidy(path)
    tmp = _new_temp(path, folder=False)
    try:
        yield tmp
        _fsync(tmp, folder=False)
        failpoints.hit(f"write:{path.name}")
        os.replace(tmp, path)
        _fsync(path.parent, folder=True)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the folder `tmp` at `path`; an existing `path` ends up at `tmp` or is removed."""
    if not os.path.lexists(path):
        os.replace(tmp, path)
    elif _exchange(tmp, path):
        failpoints.hit(f"swap:{path.name}")  # new folder in place, the previous one under the temp name
    else:
        old = path.parent / f".{path.name}.{os.getpid()}.old"
        _remove(old)
        os.replace(path, old)
        try:
            failpoints.hit(f"swap:{path.name}")  # a kill here: the next write of `path` restores `old`
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            raise
        _remove(old)
    _fsync(path.parent, folder=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp folder beside `path`; on success swap it in place of `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _tidy(path)
    tmp = _new_temp(path, folder=True)
    try:
        yield tmp
        for f in sorted(tmp.rglob("*"), reverse=True):  # files, then the folders that name them
            if not f.is_symlink():
                _fsync(f, folder=f.is_dir())
        _fsync(tmp, folder=True)
        failpoints.hit(f"write:{path.name}")
        _swap_in(tmp, path)
    finally:
        _remove(tmp)  # what was yielded, or after the exchange the previous folder


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
