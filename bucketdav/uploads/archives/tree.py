"""Build an archive's tree in staging/: members checked first, files hashed once and linked."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from bucketdav.errors import ChecksumCollision, UnsafeArchive
from bucketdav.store.blobs import Store, fanned, link_making_folders
from bucketdav.store.files import disk_full_as_store_full, same_bytes
from bucketdav.store.holds import shared
from bucketdav.uploads.archives.members import (
    Kind,
    Layout,
    MemberPath,
    check_symlink_text,
    member_path,
    refuse,
    shown,
)
from bucketdav.uploads.archives.readers import Member

log = logging.getLogger(__name__)
T = TypeVar("T")

_SPACE_CHECK_EVERY = 16 << 20
# Every so many bytes written, a flush of the file system starts in a thread of its own, so
# that the disk writes the tree while the archive is still being read, and the flush that
# orders the links (TreeBuilder.link) finds little left to do.
_WRITEBACK_EVERY = 16 << 20
# The kernel refuses paths of PATH_MAX bytes or more (ENAMETOOLONG), NUL included.
_PATH_MAX = 4096
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REFUSED_KINDS = frozenset({Kind.DEVICE, Kind.FIFO, Kind.SOCKET, Kind.OTHER})
# Files up to this size are read whole; larger ones are streamed. Everything runs in the
# request's thread: worker threads measured slower, each system call of theirs waiting
# for the interpreter lock that the parsing thread holds.
_SMALL_FILE = 1 << 20
# Rounds of a link that collection can undo under our feet (a blob it took, a folder it
# removed as empty); each failed round means collection acted meanwhile.
_ATTEMPTS = 8


class _File:
    """A regular file of the tree: where it was written, its digest once known, its blob."""

    __slots__ = ("blob", "digest", "path")

    def __init__(self, path: str, digest: str) -> None:
        self.path = path
        self.digest = digest
        self.blob = ""


class _Writeback:
    """Early flushes of the file system holding `root`, each in a thread of its own.

    Only a head start: the flush in TreeBuilder.link orders the links, so a failure here
    is left for that one to meet. One at a time; the builder waits for the last one.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Start a flush unless one is still running."""
        if self.thread is not None and self.thread.is_alive():
            return
        self.thread = threading.Thread(target=self._flush, name="flush", daemon=True)
        self.thread.start()

    def _flush(self) -> None:
        with contextlib.suppress(OSError):
            syncfs(self.root)

    def finish(self) -> None:
        """Wait for the flush under way, if any."""
        if self.thread is not None:
            self.thread.join()


class TreeBuilder:
    """Writes the members of one archive below `root`, a private directory in staging/."""

    def __init__(
        self,
        store: Store,
        root: Path,
        *,
        max_bytes: int,
        max_files: int,
        final: Path | None = None,
    ) -> None:
        self.store = store
        self.root = str(root)
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.layout = Layout()
        self.records: dict[MemberPath, _File] = {}
        self.written: list[_File] = []
        self.links: list[tuple[str, _File]] = []
        self.by_digest: dict[str, _File] = {}
        self.saturated: set[str] = set()
        self.dirs: list[str] = [self.root]
        self.members = 0
        self.bytes = 0
        self.space_check = _SPACE_CHECK_EVERY
        self.next_writeback = _WRITEBACK_EVERY
        self.writeback = _Writeback(self.root)
        self.blob_root = str(store.blobs)
        # Every path must fit PATH_MAX here in staging/ and where the tree will be renamed to.
        longer_there = len(os.fsencode(final)) - len(os.fsencode(root)) if final else 0
        self.path_room = _PATH_MAX - 1 - max(0, longer_there)

    @property
    def files(self) -> int:
        """How many regular files the tree holds (hard links included)."""
        return len(self.records)

    def build(self, members: Iterable[Member]) -> None:
        """Check and write every member below the root, in staging/; nothing is linked yet."""
        try:
            for member in members:
                self.add(member)
            self.layout.check_symlinks()
            for link in self.layout.symlinks:
                os.symlink(link.target, self._dest(link.path))
        finally:
            self.writeback.finish()

    def link(self, archive: Callable[[], T]) -> T:
        """Flush the tree, make every file its blob's inode, and flush again; returns archive().

        Two flushes of the whole file system (instead of an fsync per file and folder) make
        the order every crash must respect; staged files and trees are private until linked
        or renamed in, and the rename that publishes the tree is flushed by the caller:
        1. every byte written (the tree's files, and the archive's own staged file, which
           the caller completed before this) is on disk before any of it gets a public name
           as a blob: a blob is never exposed before its bytes;
        2. `archive()` links the archive's blob and its notes without flushes of their own,
           relying on 1 for its bytes and on 2 for its names;
        3. every blob name, the tree's second names and modes, and the archive's blob are on
           disk before the caller renames the tree in: a tree is never exposed before its
           files are blobs, nor before the archive it remembers as its source.
        """
        with disk_full_as_store_full():
            for directory in self.dirs:
                os.chmod(directory, 0o755)
            syncfs(self.root)
            for numbered in enumerate(self.written):
                self._link_blob(numbered)
            for link in self.links:
                self._place(link)
        blob = archive()
        with disk_full_as_store_full():
            syncfs(self.root)
        return blob

    def add(self, member: Member) -> None:
        """Decide `member` and, if it is safe, write it; UnsafeArchive otherwise."""
        self.members += 1
        if self.members > self.max_files:
            raise refuse(
                member.name,
                f"is one more member than BUCKETDAV_EXTRACT_MAX_FILES ({self.max_files}) allows",
            )
        if member.kind in _REFUSED_KINDS:
            raise refuse(
                member.name,
                f"is a {member.kind.value}; only files, directories and links are extracted",
            )
        path = member_path(member.name)
        if path and len(self._dest(path).encode("utf-8")) > self.path_room:
            raise refuse(
                member.name,
                f"is too deep to store: inside the store its path would pass the system's "
                f"limit of {_PATH_MAX} bytes",
            )
        if member.kind is Kind.HARDLINK:
            self._add_hardlink(member, path)
        elif member.kind is Kind.SYMLINK:
            check_symlink_text(member.name, member.link)
            self._mkdirs(self.layout.add(path, Kind.SYMLINK, member.name, target=member.link))
        elif member.kind is Kind.DIR:
            self._mkdirs(self.layout.add(path, Kind.DIR, member.name))
        else:
            self._mkdirs(self.layout.add(path, Kind.FILE, member.name))
            self._write(member, path)

    def _dest(self, path: MemberPath) -> str:
        return self.root + "/" + "/".join(path)

    def _mkdirs(self, paths: list[MemberPath]) -> None:
        if not paths:
            return
        with disk_full_as_store_full():
            for path in paths:
                target = self._dest(path)
                os.mkdir(target, 0o755)
                self.dirs.append(target)

    def _add_hardlink(self, member: Member, path: MemberPath) -> None:
        try:
            target = member_path(member.link)
        except UnsafeArchive:
            raise refuse(
                member.name, f"is a hard link to '{shown(member.link)}', which is not a safe name"
            ) from None
        entry = self.layout.get(target) if target else None
        if entry is None or target == path:
            raise refuse(
                member.name,
                f"is a hard link to '{shown(member.link)}', which is not an earlier member",
            )
        if entry.kind is Kind.DIR:
            raise refuse(member.name, "is a hard link to a directory")
        if entry.kind is Kind.SYMLINK:
            # A second name of a symlink reads its text from the new place: check it there.
            self._mkdirs(self.layout.add(path, Kind.SYMLINK, member.name, target=entry.target))
            return
        self._mkdirs(self.layout.add(path, Kind.FILE, member.name))
        record = self.records[target]
        self.records[path] = record
        self.links.append((self._dest(path), record))

    def _write(self, member: Member, path: MemberPath) -> None:
        if self.bytes + max(member.size, 0) > self.max_bytes:
            raise self._too_big(member.name)
        dest = self._dest(path)
        chunks = iter(member.chunks() if member.chunks else ())
        if member.size <= _SMALL_FILE:
            data = b"".join(self._counted(member.name, chunks))
            if len(data) <= _SMALL_FILE:
                self._write_small(path, dest, data)
                return
            chunks = iter((data,))
        hasher = self.store.new_hasher()
        with disk_full_as_store_full():
            self._write_file(dest, self._counted(member.name, chunks), hasher)
        self._record(path, _File(dest, hasher.hexdigest()))

    def _write_small(self, path: MemberPath, dest: str, data: bytes) -> None:
        hasher = self.store.new_hasher()
        hasher.update(data)
        digest = hasher.hexdigest()
        first = self.by_digest.get(digest)
        if first is not None and (self.store.trusts_digest or not data):
            # Known content (always so when empty): a link instead of another file to write.
            self.records[path] = first
            self.links.append((dest, first))
            return
        record = _File(dest, digest)
        self.by_digest.setdefault(digest, record)
        self._record(path, record)
        with disk_full_as_store_full():
            self._write_file(dest, (data,), None)

    def _record(self, path: MemberPath, record: _File) -> None:
        self.records[path] = record
        self.written.append(record)

    def _counted(self, name: str, chunks: Iterable[bytes]) -> Iterable[bytes]:
        """Pass chunks through, refusing as soon as the total crosses the bound."""
        for chunk in chunks:
            self.bytes += len(chunk)
            if self.bytes > self.max_bytes:
                raise self._too_big(name)
            if self.bytes >= self.space_check:
                self.space_check = self.bytes + _SPACE_CHECK_EVERY
                self.store.check_space(0)
            if self.bytes >= self.next_writeback:
                self.next_writeback = self.bytes + _WRITEBACK_EVERY
                self.writeback.start()
            yield chunk

    def _blob_of(self, digest: str) -> str:
        """store.blob_path() as a string: this runs once or twice per file."""
        return f"{self.blob_root}/{fanned(digest)}"

    @staticmethod
    def _write_file(dest: str, chunks: Iterable[bytes], hasher: hashlib._Hash | None) -> None:
        # Created read-only: the mode applies to later opens, this descriptor may write.
        fd = os.open(dest, _NEW_FILE, 0o444)
        try:
            for chunk in chunks:
                if hasher is not None:
                    hasher.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def _too_big(self, name: str) -> UnsafeArchive:
        return refuse(
            name,
            f"takes the extracted data past BUCKETDAV_EXTRACT_MAX_BYTES ({self.max_bytes} bytes)",
        )

    def _link_blob(self, numbered: tuple[int, _File]) -> None:
        index, record = numbered
        blob = record.blob = self._blob_of(record.digest)
        # Collection may take a stored blob between our look and our link: then our file
        # becomes the blob (or a twin's does); a few rounds settle it.
        for _ in range(_ATTEMPTS):
            try:
                link_making_folders(record.path, blob)
                return
            except FileExistsError:
                pass
            if self._share(index, record, blob):
                return
        raise OSError(errno.EAGAIN, "the blob kept appearing and vanishing", blob)

    def _share(self, index: int, record: _File, blob: str) -> bool:
        """Make our file the stored blob's inode (or keep it, a copy, past EMLINK).

        False when the blob is gone: under its shared lock, collection cannot take it
        between our check and our link (store/holds.py).
        """
        with shared(blob) as held:
            if held is None:
                return False
            if not self.store.trusts_digest and not same_bytes(Path(record.path), Path(blob)):
                log.error(
                    "checksum collision: %s %s in an archive differs from the stored blob",
                    self.store.algorithm,
                    record.digest,
                )
                raise ChecksumCollision(
                    f"{self.store.algorithm} {record.digest} is already stored with different "
                    "content; the stored blob is kept and this archive is not extracted"
                )
            if blob in self.saturated:
                return True
            swap = f"{self.root}.swap{index}"
            try:
                os.link(blob, swap)
            except OSError as exc:
                if exc.errno != errno.EMLINK:
                    raise
                # The blob has all the links the file system allows; ours stays, a copy.
                self.saturated.add(blob)
                return True
            os.replace(swap, record.path)
        return True

    def _place(self, link: tuple[str, _File]) -> None:
        """Another name of a file: a link of its blob, or a copy once the blob has EMLINK."""
        dest, record = link
        if record.blob not in self.saturated:
            try:
                os.link(record.blob, dest)
                return
            except OSError as exc:
                if exc.errno != errno.EMLINK:
                    raise
                self.saturated.add(record.blob)
        # Written in the tree, which the final flush covers before it is published.
        with open(record.blob, "rb") as source:
            self._write_file(dest, iter(lambda: source.read(_SMALL_FILE), b""), None)


def syncfs(path: str | Path) -> None:
    """Flush the whole file system holding `path`."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _LIBC_SYNCFS is None:
            os.sync()
        elif _LIBC_SYNCFS(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)


def _find_syncfs() -> ctypes._CFuncPtr | None:
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


_LIBC_SYNCFS = _find_syncfs()
