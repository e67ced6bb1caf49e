"""File operations the store is built on: flushing folders, removing deep trees, comparing."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from bucketdav.errors import StoreFull

log = logging.getLogger(__name__)

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
COPY_CHUNK = 1 << 20
_TREE_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def disk_full_as_store_full() -> Iterator[None]:
    """Turn ENOSPC/EDQUOT from any file operation into StoreFull."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL_ERRNOS:
            raise StoreFull("the store's disk is full; nothing of this upload was kept") from exc
        raise


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a link or rename in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_up(folder: Path, top: Path) -> None:
    """Flush `folder` and every folder above it up to `top`: each entry on the way survives.

    An answer that names a file relies on every entry from `top` down to it, also those
    another request made and may not have flushed yet (it can be between its link and its
    flush), so the whole way is flushed, not only what this call changed.
    """
    levels = len(folder.relative_to(top).parts)
    for _ in range(levels + 1):
        fsync_dir(folder)
        folder = folder.parent


def same_bytes(a: Path, b: Path) -> bool:
    """True when the two files hold the same bytes."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        if os.fstat(fa.fileno()).st_size != os.fstat(fb.fileno()).st_size:
            return False
        while True:
            ca, cb = fa.read(COPY_CHUNK), fb.read(COPY_CHUNK)
            if ca != cb:
                return False
            if not ca:
                return True


def newest_mtime(path: str | Path) -> float | None:
    """The newest modification time of `path` and anything below it; None once it is gone.

    What tells a staging entry in use (an upload writing it, a tree being built) from one
    left by a process that died: nothing in a leftover changes any more.
    """
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return None
    newest = top.st_mtime
    pending = [os.fspath(path)] if stat.S_ISDIR(top.st_mode) else []
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                newest = max(newest, st.st_mtime)
                if stat.S_ISDIR(st.st_mode):
                    pending.append(entry.path)
    return newest


def remove_quietly(path: str | Path) -> None:
    """remove_tree, logging instead of raising: a clean-up must not hide the real outcome."""
    try:
        remove_tree(path)
    except OSError as exc:
        log.warning("could not remove %s from staging/: %s", path, exc)


def remove_tree(path: str | Path) -> None:
    """Remove a directory tree of any depth, making read-only folders writable on the way.

    An archive may be thousands of folders deep: shutil.rmtree and os.walk recurse (Python
    3.11) and full paths can pass PATH_MAX, so this walks with one open folder and names.
    """
    try:
        fd = os.open(path, _TREE_FLAGS)
    except FileNotFoundError:
        return
    names: list[str] = []  # the folders from `path` down to `fd`
    pending: list[list[str]] = []  # per level: subfolders still to remove
    try:
        while True:
            with contextlib.suppress(OSError):
                os.fchmod(fd, 0o755)
            subfolders = []
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        subfolders.append(entry.name)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.name, dir_fd=fd)
            pending.append(subfolders)
            while not pending[-1]:
                pending.pop()
                if not names:
                    break
                parent = os.open("..", _TREE_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = parent
                os.rmdir(names.pop(), dir_fd=fd)
            if not pending:
                break
            child = pending[-1].pop()
            descend = os.open(child, _TREE_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = descend
            names.append(child)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)
