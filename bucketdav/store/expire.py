"""Removing replica entries: retention's walk over replica/, and `bucketdav rm`.

Folders are opened one segment at a time without following symlinks and everything is done
by name relative to an open folder, so a folder swapped for a link or a file mid-run leads
nowhere outside the store. Each folder is changed under the exclusive lock uploads take to
claim names and swap `latest` (uploads/replicas.py). Before a tree's replica goes, the tree
is marked as used now: its unreferenced time starts there (store/references.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import NamedTuple

from bucketdav.store.blobs import Store
from bucketdav.store.entries import parse_entry
from bucketdav.store.findings import latest_series, newest_replica
from bucketdav.store.holds import touch
from bucketdav.store.references import is_digest
from bucketdav.store.retention import Policy, expired

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Removed(NamedTuple):
    """One path a run removed (or would remove): what it was, the bytes freed, and why.

    A tuple: a run may list a great many, which the garbage collector then leaves alone.
    """

    path: str
    kind: str  # "entry", "tree" or "blob"
    size: int
    why: str


class RefusedPath(ValueError):
    """A path `bucketdav rm` does not take; the message says why."""


# -- retention ----------------------------------------------------------------------------


def apply_retention(
    store: Store,
    policy: Policy,
    *,
    now: datetime,
    dry_run: bool,
    pause: Callable[[], None] = lambda: None,
) -> list[Removed]:
    """Remove (or, dry, list) the replica entries no rule keeps, folder by folder."""
    removed: list[Removed] = []
    if not policy.active:
        return removed
    pending: list[tuple[str, ...]] = [()]
    while pending:
        segments = pending.pop()
        # Opened from replica/ down, one real folder at a time, when its turn comes.
        fd = _open_path(str(store.replicas), segments)
        if fd is None:
            continue
        try:
            pending += [(*segments, name) for name in _subfolders(fd)]
            if segments:
                removed += _expire_folder(
                    store, fd, segments, policy=policy, now=now, dry_run=dry_run
                )
        finally:
            os.close(fd)
        pause()
    return removed


def _expire_folder(
    store: Store,
    fd: int,
    segments: tuple[str, ...],
    *,
    policy: Policy,
    now: datetime,
    dry_run: bool,
) -> list[Removed]:
    rules = policy.rules_for(segments)
    if not all(r.active for r in rules):
        return []
    folder = "/".join(("replica", *segments))
    out = []
    with _locked(fd, fcntl.LOCK_SH if dry_run else fcntl.LOCK_EX):
        kinds, targets = _read_folder(store, fd)
        for name, why in expired(kinds, rules=rules, now=now, latest_targets=targets):
            size, tree = kinds[name]
            if not dry_run and not _remove_entry(store, fd, name, tree):
                continue
            out.append(Removed(f"{folder}/{name}", "entry", size, why))
        if out and not dry_run:
            os.fsync(fd)
    return out


def _read_folder(store: Store, fd: int) -> tuple[dict[str, tuple[int, str | None]], set[str]]:
    """The folder's entries (name -> (bytes freed, tree digest)), and what links point at.

    Entries are files and links into explode/; any other link is not an entry, and a name
    a link in the folder points at (what `latest` names) is always kept.
    """
    entries: dict[str, tuple[int, str | None]] = {}
    targets: set[str] = set()
    length = 2 * store.digest_size
    for entry in _scan(fd):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(entry.name, dir_fd=fd)
            except OSError:
                continue
            if "/" not in target:
                targets.add(target)
            digest = _tree_of(target, length)
            if digest is not None:
                entries[entry.name] = (0, digest)
        elif stat.S_ISREG(st.st_mode):
            entries[entry.name] = (st.st_size if st.st_nlink == 1 else 0, None)
    return entries, targets


def _tree_of(target: str, length: int) -> str | None:
    """The tree digest of a replica link's text (`../../explode/ab/cd/<digest>`), or None."""
    parts = target.split("/")
    while parts and parts[0] == "..":
        parts.pop(0)
    if len(parts) != 4 or parts[0] != "explode" or not is_digest(parts[3], length):
        return None
    return parts[3] if (parts[1], parts[2]) == (parts[3][:2], parts[3][2:4]) else None


def _remove_entry(store: Store, fd: int, name: str, tree: str | None) -> bool:
    """Unlink one entry; a tree it led to is marked used first. False when it was gone."""
    if tree is not None:
        touch_tree(store, tree)
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        return False
    return True


def touch_tree(store: Store, digest: str) -> None:
    """Mark the tree `digest` as used now (its last replica may have just gone)."""
    fd = _open_path(str(store.trees), (digest[:2], digest[2:4], digest))
    if fd is not None:
        try:
            touch(fd)
        finally:
            os.close(fd)


# -- bucketdav rm -------------------------------------------------------------------------


def parse_rm_path(text: str, *, archive_uri: str | None = None) -> tuple[tuple[str, ...], str]:
    """(folder segments under replica/, entry name) of a path as an upload answer gives it."""
    path = text.strip()
    if archive_uri and path.startswith(archive_uri.rstrip("/") + "/"):
        path = path[len(archive_uri.rstrip("/")) + 1 :]
    parts = path.strip("/").split("/")
    if parts[0] != "replica":
        raise RefusedPath(f"{text}: not under replica/ (only replica entries can be removed)")
    if len(parts) < 3 or any(p in ("", ".", "..") or p.startswith(".") for p in parts[1:]):
        raise RefusedPath(f"{text}: not a replica entry path (replica/<folder>/<entry>)")
    if parse_entry(parts[-1]) is None:
        raise RefusedPath(f"{text}: {parts[-1]} is not a replica entry (<name>.<stamp>.<n>)")
    return tuple(parts[1:-1]), parts[-1]


def remove_entries(
    store: Store, paths: Sequence[tuple[tuple[str, ...], str]]
) -> tuple[list[Removed], list[str]]:
    """Remove the named entries and re-point their `latest`; (removed, problems).

    Every path is checked first; when any is not a replica entry, nothing is removed.
    """
    problems = []
    for segments, name in paths:
        problem = _entry_problem(store, segments, name)
        if problem:
            problems.append(f"replica/{'/'.join((*segments, name))}: {problem}")
    if problems:
        return [], problems
    by_folder: dict[tuple[str, ...], list[str]] = {}
    for segments, name in paths:
        by_folder.setdefault(segments, []).append(name)
    removed = []
    for segments, names in by_folder.items():
        fd = _open_path(str(store.replicas), segments)
        if fd is None:
            continue
        try:
            with _locked(fd, fcntl.LOCK_EX):
                removed += _remove_in_folder(store, fd, segments, sorted(set(names)))
                os.fsync(fd)
        finally:
            os.close(fd)
    return removed, []


def _entry_problem(store: Store, segments: tuple[str, ...], name: str) -> str | None:
    fd = _open_path(str(store.replicas), segments)
    if fd is None:
        return "no such folder"
    try:
        kinds, _targets = _read_folder(store, fd)
    finally:
        os.close(fd)
    return None if name in kinds else "no such entry"


def _remove_in_folder(
    store: Store, fd: int, segments: tuple[str, ...], names: list[str]
) -> list[Removed]:
    kinds, _targets = _read_folder(store, fd)
    names = [n for n in names if n in kinds]
    entries = [e for e in (parse_entry(n) for n in names) if e is not None]
    # `latest` moves first: a crash between the two steps leaves it on an entry that exists.
    left = [n for n in os.listdir(fd) if n not in names]
    for series in {e.series for e in entries}:
        _repoint_latest(store, fd, series.latest, newest_replica(series, left))
    folder = "/".join(("replica", *segments))
    out = []
    for entry in entries:
        size, tree = kinds[entry.name]
        if _remove_entry(store, fd, entry.name, tree):
            out.append(Removed(f"{folder}/{entry.name}", "entry", size, "removed by rm"))
    return out


def _repoint_latest(store: Store, fd: int, latest: str, newest: str | None) -> None:
    """Point `latest` at `newest` with one rename, or remove it; leave a foreign one alone."""
    try:
        current = os.readlink(latest, dir_fd=fd)
    except OSError:
        return
    if latest_series(latest, current, [current]) is None:
        return
    if newest is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(latest, dir_fd=fd)
        return
    if current == newest:
        return
    store.staging.mkdir(parents=True, exist_ok=True)
    temp = store.staging / f"rm-latest-{uuid.uuid4().hex}"
    os.symlink(newest, temp)
    try:
        os.replace(temp, latest, dst_dir_fd=fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


# -- folders ------------------------------------------------------------------------------


def _open_path(top: str, segments: Sequence[str]) -> int | None:
    """An fd of top/<segments>, each segment a real folder (never a link); None if not."""
    try:
        fd = os.open(top, _DIR_FLAGS)
    except OSError:
        return None
    for segment in segments:
        child = _open_child(fd, segment)
        os.close(fd)
        if child is None:
            return None
        fd = child
    return fd


def _open_child(fd: int, name: str) -> int | None:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        # Gone, a file, or a link where a folder was: not a folder to walk.
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES):
            return None
        raise


def _subfolders(fd: int) -> list[str]:
    return sorted(e.name for e in _scan(fd) if e.is_dir(follow_symlinks=False))


def _scan(fd: int) -> list[os.DirEntry[str]]:
    with os.scandir(fd) as entries:
        return list(entries)


@contextlib.contextmanager
def _locked(fd: int, how: int) -> Iterator[None]:
    fcntl.flock(fd, how)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
