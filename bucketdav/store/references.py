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
import gzip
import hashlib
import lzma
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, BinaryIO

from bucketdav.store.blobs import Store

DAY = 86400
_HEX = frozenset("0123456789abcdef")
_READ = 1 << 20
_OPENERS: dict[bytes, Callable[[BinaryIO], IO[bytes]]] = {
    b"\x1f\x8b": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    b"BZh": bz2.BZ2File,
    b"\xfd7zXZ\x00": lzma.LZMAFile,
}


@dataclass(frozen=True)
class BlobFacts:
    """What collection needs to know of one blob."""

    nlink: int
    ctime: float
    size: int


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


@dataclass(frozen=True)
class Doomed:
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
        for digest, facts in snapshot.blobs.items()
        if facts.nlink > 1 or facts.ctime >= cutoff or digest in snapshot.blob_refs
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
        Doomed("blob", digest, facts.size, _why(facts.ctime, now))
        for digest, facts in sorted(snapshot.blobs.items())
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
    """Walk replica/, explode/ (three levels), blob/ and decompressed/ once; never follows links.

    `pause()` is called every `every` entries, so a server's requests get their turn.
    """
    snapshot = Snapshot()
    length = 2 * store.digest_size
    counter = _Counter(pause, every)
    _walk_replicas(store, snapshot, counter)
    for digest, entry in _fanned(str(store.trees), length, counter, snapshot.empty):
        if entry.is_dir(follow_symlinks=False):
            snapshot.trees[digest] = entry.stat(follow_symlinks=False).st_ctime
            copies = _copies_in(entry.path, store.algorithm, counter)
            if copies:
                snapshot.tree_copies[digest] = copies
    for digest, entry in _fanned(str(store.blobs), length, counter, snapshot.empty):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            snapshot.blobs[digest] = BlobFacts(st.st_nlink, st.st_ctime, st.st_size)
    for digest, entry in _fanned(str(store.notes), length, counter, snapshot.empty):
        if entry.is_symlink():
            target = note_target(store, entry.path)
            if target is not None:
                snapshot.notes[digest] = target
    snapshot.walked = counter.count
    return snapshot


def note_target(store: Store, path: str) -> str | None:
    """The blob a note names, when it is the relative path uploads write; else None."""
    try:
        target = os.readlink(path)
    except OSError:
        return None
    name = os.path.basename(target)
    expected = os.path.relpath(store.blob_path(name), os.path.dirname(path))
    if not is_digest(name, 2 * store.digest_size) or target != expected:
        return None
    return name


class _Counter:
    def __init__(self, pause: Callable[[], None], every: int) -> None:
        self.pause = pause
        self.every = every
        self.count = 0

    def tick(self) -> None:
        self.count += 1
        if self.count % self.every == 0:
            self.pause()


def _fanned(
    top: str, length: int, counter: _Counter, empty: list[tuple[str, str, str]]
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(digest, DirEntry) for each well-named entry at top/ab/cd/<digest>.

    Fan-out folders found empty are added to `empty` as (top, ab, cd), or (top, ab, "").
    """
    for first in _entries(top):
        if not _is_fanout(first, first.name):
            continue
        seconds = _entries(first.path)
        if not seconds:
            empty.append((top, first.name, ""))
        for second in seconds:
            if not _is_fanout(second, second.name):
                continue
            entries = _entries(second.path)
            if not entries:
                empty.append((top, first.name, second.name))
            for entry in entries:
                counter.tick()
                name = entry.name
                if is_digest(name, length) and name[:2] == first.name and name[2:4] == second.name:
                    yield name, entry


def _is_fanout(entry: os.DirEntry[str], name: str) -> bool:
    return len(name) == 2 and _HEX.issuperset(name) and entry.is_dir(follow_symlinks=False)


def _entries(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def _walk_replicas(store: Store, snapshot: Snapshot, counter: _Counter) -> None:
    """Every link in replica/ that leads to a tree or a blob, and the content of copies."""
    root = str(store.root)
    trees = str(store.trees) + os.sep
    blobs = str(store.blobs) + os.sep
    length = 2 * store.digest_size
    pending = [str(store.replicas)]
    while pending:
        folder = pending.pop()
        for entry in _entries(folder):
            counter.tick()
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
            elif entry.is_symlink():
                try:
                    target = os.readlink(entry.path)
                except OSError:
                    continue
                # Read as text from where the link is: nothing on the way is followed.
                where = os.path.normpath(os.path.join(folder, target))
                if not where.startswith(root + os.sep):
                    continue
                if where.startswith(trees):
                    parts = where[len(trees) :].split(os.sep)
                    if len(parts) >= 3 and is_digest(parts[2], length):
                        snapshot.tree_refs.add(parts[2])
                elif where.startswith(blobs):
                    name = os.path.basename(where)
                    if is_digest(name, length):
                        snapshot.blob_refs.add(name)
            elif entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                if st.st_nlink == 1:
                    # A copy made past the hard-link limit, or a file put there by hand:
                    # the blob of its content stays while it does.
                    digest = _hash(entry.path, store.algorithm)
                    if digest is not None:
                        snapshot.blob_refs.add(digest)


def _copies_in(tree: str, algorithm: str, counter: _Counter) -> set[str]:
    """The content of the files in `tree` that are not links of a blob (copies), by digest.

    Copies are made past the file system's hard-link limit, or come from a copy or a
    restore of the store that did not keep hard links; their blob stays with the tree.
    """
    found = set()
    pending = [tree]
    while pending:
        for entry in _entries(pending.pop()):
            counter.tick()
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
            elif (
                entry.is_file(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_nlink == 1
            ):
                digest = _hash(entry.path, algorithm)
                if digest is not None:
                    found.add(digest)
    return found


def _hash(path: str, algorithm: str) -> str | None:
    hasher = hashlib.new(algorithm)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        while block := handle.read(_READ):
            hasher.update(block)
    return hasher.hexdigest()


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
