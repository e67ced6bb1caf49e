"""What is referenced: one walk of the store's facts, and the pure plan of what collection takes.

A blob is referenced while a tree or a replica links it (its link count is above one), or
a link in replica/ leads to it, or a copy in replica/ holds its content. A tree is
referenced while a link in replica/ leads into it. A kept tree keeps its sources: the blob
of its archive (the tree's name is that blob's checksum) and every compressed blob noted
in decompressed/ as decompressing to that archive; and the blobs of its files that are
copies, not links (made past the hard-link limit, or by a copy or restore of the store
that lost hard links). A kept compressed blob keeps what it decompresses to. Nothing else
refers to anything: a tree's own links stay inside it.

Unreferenced time is judged from the change time (ctime): a link or unlink moves a blob's,
an upload that relies on content marks it (store/holds.py), and removing a tree's replica
marks the tree (store/expire.py). Content goes once it is unreferenced and its change time
is before the cutoff, the start of the run less BUCKETDAV_GC_UNREFERENCED_DAYS.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import lzma
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, BinaryIO, NamedTuple

from bucketdav.store.blobs import Store

DAY = 86400
_HEX = frozenset("0123456789abcdef")
_READ = 1 << 20
# No gzip, bzip2 or xz file is shorter (an empty bzip2 stream is 14 bytes).
SMALLEST_COMPRESSED = 14
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_OPENERS: dict[bytes, Callable[[BinaryIO], IO[bytes]]] = {
    b"\x1f\x8b": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    b"BZh": bz2.BZ2File,
    b"\xfd7zXZ\x00": lzma.LZMAFile,
}


# What collection needs to know of one blob: (link count, change time, size). A plain tuple,
# not an object: a walk makes one per blob, and the garbage collector stops looking at
# tuples of numbers, so a big store's walk does not stall every thread with its passes.
BlobFacts = tuple[int, float, int]


@dataclass
class Snapshot:
    """The facts of one walk: blobs, trees, notes, and what replica/ refers to."""

    blobs: dict[str, BlobFacts] = field(default_factory=dict)
    trees: dict[str, float] = field(default_factory=dict)  # digest -> ctime
    notes: dict[str, str] = field(default_factory=dict)  # compressed -> decompressed
    tree_refs: set[str] = field(default_factory=set)
    blob_refs: set[str] = field(default_factory=set)
    # Per tree, the content of its files that are copies (not links) of a blob.
    tree_copies: dict[str, set[str]] = field(default_factory=dict)
    # Fan-out folders (top, ab, cd) found empty: an interrupted run left them, or uploads did.
    empty: list[tuple[str, str, str]] = field(default_factory=list)
    walked: int = 0


class Doomed(NamedTuple):
    """One blob or tree the plan removes, and why."""

    kind: str  # "tree" or "blob"
    digest: str
    size: int
    why: str


def is_digest(name: str, length: int) -> bool:
    """True when `name` is `length` lower-case hex digits."""
    return len(name) == length and _HEX.issuperset(name)


def plan(snapshot: Snapshot, *, cutoff: float, now: float) -> list[Doomed]:
    """What collection removes, in the order it must go: trees, compressed blobs, the rest.

    A tree goes before its archive's blob and a compressed blob before what it decompresses
    to, so a crash between two removals never leaves a tree without its sources or a note
    without its blob.
    """
    trees = snapshot.trees
    gone_trees = {t for t, ctime in trees.items() if t not in snapshot.tree_refs and ctime < cutoff}
    kept_trees = trees.keys() - gone_trees
    kept = {
        digest
        for digest, (nlink, ctime, _size) in snapshot.blobs.items()
        if nlink > 1 or ctime >= cutoff or digest in snapshot.blob_refs
    }
    kept |= kept_trees
    for digest in kept_trees:
        kept |= snapshot.tree_copies.get(digest, set())
    kept |= {source for source, target in snapshot.notes.items() if target in kept_trees}
    changed = True
    while changed:
        changed = False
        for source, target in snapshot.notes.items():
            if source in kept and target not in kept:
                kept.add(target)
                changed = True
    doomed = [Doomed("tree", digest, 0, _why(trees[digest], now)) for digest in sorted(gone_trees)]
    blobs = [
        Doomed("blob", digest, size, _why(ctime, now))
        for digest, (_nlink, ctime, size) in sorted(snapshot.blobs.items())
        if digest not in kept
    ]
    doomed += [d for d in blobs if d.digest in snapshot.notes]
    doomed += [d for d in blobs if d.digest not in snapshot.notes]
    return doomed


def _why(ctime: float, now: float) -> str:
    days = max(0, int((now - ctime) // DAY))
    return f"unreferenced {days} day" if days == 1 else f"unreferenced {days} days"


# -- the walk -----------------------------------------------------------------------------


def scan(store: Store, *, pause: Callable[[], None] = lambda: None, every: int = 200) -> Snapshot:
    """Walk replica/, explode/ (its trees' files), blob/ and decompressed/ once.

    Every folder is opened relative to its parent and never through a link, and every entry
    is looked at relative to its folder (as `find` does): no path is resolved from the root
    again for each of them. `pause()` is called every `every` entries, so that a server's
    requests get their turn.
    """
    snapshot = Snapshot()
    length = 2 * store.digest_size
    counter = _Counter(pause, every)
    _walk_replicas(store, snapshot, counter)
    for digest, entry, fd in _fanned(str(store.trees), length, counter, snapshot.empty):
        if entry.is_dir(follow_symlinks=False):
            snapshot.trees[digest] = entry.stat(follow_symlinks=False).st_ctime
            copies = _copies_in(fd, digest, store.algorithm, counter)
            if copies:
                snapshot.tree_copies[digest] = copies
    blobs = snapshot.blobs
    for digest, entry, _fd in _fanned(str(store.blobs), length, counter, snapshot.empty):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            blobs[digest] = (st.st_nlink, st.st_ctime, st.st_size)
    for digest, entry, fd in _fanned(str(store.notes), length, counter, snapshot.empty):
        if entry.is_symlink():
            try:
                text = os.readlink(digest, dir_fd=fd)
            except OSError:
                continue
            target = note_text_target(text, length)
            if target is not None:
                snapshot.notes[digest] = target
    snapshot.walked = counter.count
    return snapshot


def note_target(store: Store, path: str) -> str | None:
    """The blob a note at `path` names, when it is the relative path uploads write; else None."""
    try:
        text = os.readlink(path)
    except OSError:
        return None
    return note_text_target(text, 2 * store.digest_size)


def note_text_target(text: str, length: int) -> str | None:
    """The digest a note's text names (`../../../blob/ab/cd/<digest>`), else None."""
    parts = text.split("/")
    if len(parts) != 7 or parts[:4] != ["..", "..", "..", "blob"]:
        return None
    name = parts[6]
    if not is_digest(name, length) or (parts[4], parts[5]) != (name[:2], name[2:4]):
        return None
    return name


class _Counter:
    def __init__(self, pause: Callable[[], None], every: int) -> None:
        self.pause = pause
        self.every = every
        self.count = 0

    def add(self, count: int) -> None:
        before = self.count // self.every
        self.count += count
        if self.count // self.every != before:
            self.pause()


def _fanned(
    top: str, length: int, counter: _Counter, empty: list[tuple[str, str, str]]
) -> Iterator[tuple[str, os.DirEntry[str], int]]:
    """(digest, DirEntry, fd of its folder) for each well-named entry at top/ab/cd/<digest>.

    The fd is open only until the next item. Fan-out folders found empty are added to
    `empty` as (top, ab, cd), or (top, ab, "").
    """
    root = _open_dir(top)
    if root is None:
        return
    try:
        for first in _listed(root):
            name1 = first.name
            if not _is_fanout(first, name1):
                continue
            fd1 = _open_dir(name1, root)
            if fd1 is None:
                continue
            try:
                seconds = _listed(fd1)
                if not seconds:
                    empty.append((top, name1, ""))
                for second in seconds:
                    name2 = second.name
                    if not _is_fanout(second, name2):
                        continue
                    fd2 = _open_dir(name2, fd1)
                    if fd2 is None:
                        continue
                    try:
                        entries = _listed(fd2)
                        if not entries:
                            empty.append((top, name1, name2))
                        counter.add(len(entries))
                        prefix = name1 + name2
                        for entry in entries:
                            name = entry.name
                            if name.startswith(prefix) and is_digest(name, length):
                                yield name, entry, fd2
                    finally:
                        os.close(fd2)
            finally:
                os.close(fd1)
    finally:
        os.close(root)


def _is_fanout(entry: os.DirEntry[str], name: str) -> bool:
    return len(name) == 2 and _HEX.issuperset(name) and entry.is_dir(follow_symlinks=False)


def _open_dir(name: str, parent: int | None = None) -> int | None:
    """An fd of the folder `name` (in `parent`), never through a link; None when it is not one."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise


def _listed(fd: int) -> list[os.DirEntry[str]]:
    with os.scandir(fd) as entries:
        return list(entries)


def _folders_below(
    name: str, parent: int | None, counter: _Counter
) -> Iterator[tuple[str, int, list[os.DirEntry[str]]]]:
    """(path relative to `name`, fd, entries) for `name` in `parent` and each folder below it.

    Every folder is opened relative to the one above it and never through a link; each fd
    is open only until the next item.
    """
    top = _open_dir(name, parent)
    if top is None:
        return
    try:
        pending = [""]
        while pending:
            relative = pending.pop()
            fd = _open_dir(relative or ".", top)
            if fd is None:
                continue
            try:
                entries = _listed(fd)
                counter.add(len(entries))
                pending += [
                    os.path.join(relative, e.name)
                    for e in entries
                    if e.is_dir(follow_symlinks=False)
                ]
                yield relative, fd, entries
            finally:
                os.close(fd)
    finally:
        os.close(top)


def _single(entry: os.DirEntry[str]) -> bool:
    """A file of one link: a copy made past the hard-link limit, or one put there by hand."""
    return entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_nlink == 1


def _walk_replicas(store: Store, snapshot: Snapshot, counter: _Counter) -> None:
    """Every link in replica/ that leads to a tree or a blob, and the content of copies."""
    root = str(store.root) + os.sep
    trees = str(store.trees) + os.sep
    blobs = str(store.blobs) + os.sep
    length = 2 * store.digest_size
    for relative, fd, entries in _folders_below(str(store.replicas), None, counter):
        folder = os.path.join(str(store.replicas), relative)
        for entry in entries:
            if entry.is_symlink():
                try:
                    target = os.readlink(entry.name, dir_fd=fd)
                except OSError:
                    continue
                # Read as text from where the link is: nothing on the way is followed.
                where = os.path.normpath(os.path.join(folder, target))
                if not where.startswith(root):
                    continue
                if where.startswith(trees):
                    parts = where[len(trees) :].split(os.sep)
                    if len(parts) >= 3 and is_digest(parts[2], length):
                        snapshot.tree_refs.add(parts[2])
                elif where.startswith(blobs):
                    name = os.path.basename(where)
                    if is_digest(name, length):
                        snapshot.blob_refs.add(name)
            elif _single(entry):
                # The blob of its content stays while it does.
                digest = _hash(entry.name, fd, store.algorithm)
                if digest is not None:
                    snapshot.blob_refs.add(digest)


def _copies_in(parent: int, tree: str, algorithm: str, counter: _Counter) -> set[str]:
    """The content of the files in a tree that are not links of a blob (copies), by digest.

    Copies are made past the file system's hard-link limit, or come from a copy or a
    restore of the store that did not keep hard links; their blob stays with the tree.
    """
    found: set[str] = set()
    for _relative, fd, entries in _folders_below(tree, parent, counter):
        for entry in entries:
            if _single(entry):
                digest = _hash(entry.name, fd, algorithm)
                if digest is not None:
                    found.add(digest)
    return found


def _hash(name: str, folder: int, algorithm: str) -> str | None:
    hasher = hashlib.new(algorithm)
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=folder)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        while block := handle.read(_READ):
            hasher.update(block)
    return hasher.hexdigest()


def looks_compressed(path: str) -> bool:
    """True when the file at `path` starts as gzip, bzip2 or xz data does."""
    try:
        fd = os.open(path, _FILE_FLAGS)
    except OSError:
        return False
    try:
        head = os.read(fd, 6)
    except OSError:
        return False
    finally:
        os.close(fd)
    return any(head.startswith(magic) for magic in _OPENERS)


def decompressed_digest(path: str | os.PathLike[str], algorithm: str, limit: int) -> str | None:
    """The checksum of what the blob at `path` decompresses to (gzip, bzip2, xz), or None.

    None as well when it is not compressed, is damaged, or expands past `limit` bytes.
    """
    try:
        with open(path, "rb") as raw:
            head = raw.read(6)
            opener = next((o for magic, o in _OPENERS.items() if head.startswith(magic)), None)
            if opener is None:
                return None
            raw.seek(0)
            hasher = hashlib.new(algorithm)
            size = 0
            with opener(raw) as stream:
                while block := stream.read(_READ):
                    size += len(block)
                    if size > limit:
                        return None
                    hasher.update(block)
    except (OSError, EOFError, ValueError, lzma.LZMAError):
        return None
    return hasher.hexdigest()
