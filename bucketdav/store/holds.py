"""Keeping content from collection while an upload relies on it: shared locks on blobs and trees.

The collector removes a blob or a tree only under an exclusive flock on it, after checking
that nothing refers to it, by renaming it out of its public tree (store/collect.py). An
upload that relies on stored content first takes a shared flock on it and checks that the
path still names the locked file: then either it holds the content until it lets go, or it
finds the content gone and makes its own. flock locks belong to the open file in the kernel
(or the shared file system), so they hold between threads, processes and nodes alike;
on folders JuiceFS keeps them per mount, so a tree is also guarded by its archive's blob
(store/collect.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# What opening a path that is gone, or is no longer what it was, fails with.
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})


def open_shared(path: str | Path, *, directory: bool = False) -> int | None:
    """An fd of `path` under a shared flock, while `path` still names it; None when gone."""
    try:
        fd = os.open(path, _DIR_FLAGS if directory else _FILE_FLAGS)
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        held = os.fstat(fd)
        try:
            now = os.lstat(path)
        except FileNotFoundError:
            now = None
        # The collector may have renamed it away between our open and our lock.
        if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            os.close(fd)
            return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def shared(path: str | Path) -> Iterator[int | None]:
    """open_shared() of a file for the length of a `with` block (None inside when gone)."""
    fd = open_shared(path)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def touch(fd: int) -> None:
    """Mark what `fd` is as used now: collection judges unreferenced time by the change time."""
    # A new access time moves the change time (ctime) and nothing else a reader sees. chmod
    # to the same mode, or utime to the same times, would too on a local disk, but JuiceFS
    # takes both as no-ops and keeps the old ctime (measured).
    with contextlib.suppress(OSError):
        os.utime(fd, ns=(time.time_ns(), os.fstat(fd).st_mtime_ns))


class Holds:
    """The blobs and trees one upload relies on, held until it is done, then marked used."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}

    def blob(self, path: Path) -> bool:
        """Hold the blob at `path`; False when it is gone (collected)."""
        return self._hold(path, directory=False)

    def tree(self, path: Path) -> bool:
        """Hold the tree at `path`; False when it is gone (collected)."""
        return self._hold(path, directory=True)

    def adopt(self, path: Path, fd: int) -> None:
        """Keep an fd already under a shared lock, as the hold of what `path` will name."""
        old = self.fds.pop(str(path), None)
        if old is not None:
            os.close(old)
        self.fds[str(path)] = fd

    def touch(self, path: Path) -> None:
        """Mark the held `path` as used now (a replica was just made of it)."""
        fd = self.fds.get(str(path))
        if fd is not None:
            touch(fd)

    def release(self) -> None:
        """Mark everything held as used, then let go of it."""
        while self.fds:
            _, fd = self.fds.popitem()
            touch(fd)
            os.close(fd)

    def __enter__(self) -> Holds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        # A step that was never followed by the last one must not keep locks for ever.
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def _hold(self, path: Path, *, directory: bool) -> bool:
        if str(path) in self.fds:
            return True
        fd = open_shared(path, directory=directory)
        if fd is None:
            return False
        self.fds[str(path)] = fd
        return True
