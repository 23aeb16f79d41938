"""Guards for what a command writes (torch-free, layer 0): an output never swallows an input, one writer per
output (``.<name>.lock`` files beside it, flock'ed), outputs checked writable before long work."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

LOCK_SUFFIX = ".lock"


@contextlib.contextmanager
def atomic_file(path: str | Path, tmp: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (default ``.<name>.tmp<pid>``) to write into; when the block ends it
    replaces ``path`` in one rename, and when the block fails (disk full, interrupt) it is removed: a reader never
    sees a torn file and no temporary file is left behind."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON at ``path``, fsync'ed and renamed into place (``atomic_file``)."""
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


class LockError(ValueError):
    """Another live process is writing the same output."""


def refuse_inputs_inside(out: str | Path, inputs: Iterable[str | Path | None], option: str = "--out") -> None:
    """Raise ValueError when an input is ``out`` or lies inside it: replacing ``out`` would delete the input.
    Inputs that are not local paths (URLs, None) are ignored."""
    target = Path(out).resolve()
    for item in inputs:
        if item is None or "://" in str(item):
            continue
        path = Path(item).resolve()
        if path == target or path.is_relative_to(target):
            raise ValueError(f"{item} lies inside {option} {out}: writing there could delete it; choose another "
                             f"{option} or move the input out of it")


_HELD: dict[Path, int] = {}  # locked directory -> the descriptor holding its flock


def lock_path(directory: str | Path) -> Path:
    """The lock file of an output directory: ``<parent>/.<name>.lock``, beside it (the directory itself may not
    exist yet, and a run directory must stay empty until the run writes into it)."""
    directory = Path(directory).resolve()
    return directory.with_name(f".{directory.name}{LOCK_SUFFIX}")


def lock_output(directory: str | Path) -> bool:
    """Make this process the only writer of ``directory``: its lock file (``lock_path``, parent created if
    missing) is flock'ed and names the owner (pid, host, command). Re-entrant within a process; the kernel drops
    the lock when the owner dies, so a lock file left by a dead process is simply taken over. Raises LockError
    naming the live owner. Returns False when this process already held it, True when it was taken now."""
    directory, path = Path(directory).resolve(), lock_path(directory)
    if directory in _HELD:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown owner"
            os.close(fd)
            raise LockError(f"{directory} is being written by another jowa process ({owner}); wait for it to "
                            f"finish or stop it (a lock left by a dead process is taken over)") from None
        try:  # the file may have been released (unlinked) between our open and flock: lock the current one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "command": " ".join(sys.argv[:3])}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner).encode(), 0)
    _HELD[directory] = fd
    return True


def lock_owner(directory: str | Path) -> str | None:
    """The owner written in ``directory``'s lock file while a live process holds it; None when no process does (no
    lock file, or one left by a dead process). Takes nothing: a free lock is released again at once."""
    path = lock_path(directory)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown owner"
    finally:
        os.close(fd)  # closing drops a lock taken here
    return None


def release_output(directory: str | Path) -> None:
    """Give up this process's lock on ``directory`` (removing the lock file); nothing when it holds none."""
    directory = Path(directory).resolve()
    fd = _HELD.pop(directory, None)
    if fd is None:
        return
    try:
        lock_path(directory).unlink(missing_ok=True)
    finally:
        os.close(fd)


def check_writable(path: str | Path | None, option: str = "--out") -> None:
    """Raise ValueError unless a file can be written at ``path``: not a directory, and its nearest existing
    ancestor a writable folder (missing folders are created by the writer). Checked before long work so its
    result is never lost at the end. None, '' and '-' (stdout) pass."""
    if not path or str(path) == "-":
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a directory; give a file name")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ValueError(f"{option} {path} is not writable")
        return
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{option} {path}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK):
        raise ValueError(f"{option} {path}: folder {ancestor} is not writable")
