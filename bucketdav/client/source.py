"""What `bucketdav push` sends for a path: a file's bytes, or a folder as a tar made on the fly.

Each file is read once, as it is sent: no temporary archive, memory bounded by one chunk.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

CHUNK = 1 << 20
# Every file's bytes are padded to whole blocks; the archive ends with two zero blocks and is
# padded to whole records, as tar(1) and Python's tarfile write it.
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


class SourceError(Exception):
    """A local file or folder could not be read, or changed while it was being sent."""


def file_digest(path: Path, size: int, algorithm: str, *, seen: Callable[[int], None]) -> str:
    """The hex digest of the first `size` bytes of a file (those that will be sent)."""
    digest = hashlib.new(algorithm)
    for chunk in file_chunks(path, size):
        digest.update(chunk)
        seen(len(chunk))
    return digest.hexdigest()


def file_chunks(path: Path, size: int) -> Iterator[bytes]:
    """Exactly `size` bytes of a file, as announced; a file that shrank is an error (one that
    grew is sent as it was when its size was taken, as tar does)."""
    try:
        with open(path, "rb") as handle:
            left = size
            while left:
                chunk = handle.read(min(CHUNK, left))
                if not chunk:
                    raise SourceError(f"{path} shrank while it was being sent")
                left -= len(chunk)
                yield chunk
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None


class FolderTar:
    """The tar archive of a folder's contents, names relative to it, produced while it is read.

    Folders, files and symlinks (kept as links) are archived with their modes and times, in name
    order; anything else (sockets, fifos, devices) is skipped and reported to `skipped`.
    """

    def __init__(self, folder: Path, *, skipped: Callable[[str], None], chunk: int = CHUNK) -> None:
        self.folder = folder
        self.skipped = skipped
        self.chunk = chunk
        self.files = 0

    def __iter__(self) -> Iterator[bytes]:
        self.files = 0
        batch: list[bytes] = []
        pending = written = 0
        for piece in self._pieces():
            # Small members are gathered into one chunk; a big file's chunks go out as read.
            if len(piece) >= self.chunk and not batch:
                written += len(piece)
                yield piece
                continue
            batch.append(piece)
            pending += len(piece)
            if pending >= self.chunk:
                written += pending
                yield b"".join(batch)
                batch.clear()
                pending = 0
        written += pending
        end = 2 * BLOCK
        batch.append(bytes(end + -(written + end) % RECORD))
        yield b"".join(batch)

    def _pieces(self) -> Iterator[bytes]:
        stack = [("", self._entries(self.folder))]
        while stack:
            prefix, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            name = prefix + entry.name
            try:
                if entry.is_symlink():
                    yield self._header(
                        name,
                        tarfile.SYMTYPE,
                        entry.stat(follow_symlinks=False),
                        linkname=os.readlink(entry.path),
                    )
                elif entry.is_dir(follow_symlinks=False):
                    yield self._header(name, tarfile.DIRTYPE, entry.stat(follow_symlinks=False))
                    stack.append((name + "/", self._entries(Path(entry.path))))
                elif entry.is_file(follow_symlinks=False):
                    yield from self._file(name, entry.path)
                else:
                    self.skipped(f"{name}: not a file, folder or symlink")
            except OSError as exc:
                raise SourceError(f"cannot read {entry.path}: {exc.strerror or exc}") from None

    def _entries(self, folder: Path) -> Iterator[os.DirEntry[str]]:
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            raise SourceError(f"cannot list {folder}: {exc.strerror or exc}") from None
        return iter(entries)

    def _file(self, name: str, path: str) -> Iterator[bytes]:
        # O_NOFOLLOW: a file swapped for a symlink since the listing is not followed out.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb", buffering=0) as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self.skipped(f"{name}: not a file, folder or symlink")
                return
            yield self._header(name, tarfile.REGTYPE, info, size=info.st_size)
            left = info.st_size
            while left:
                chunk = handle.read(min(self.chunk, left))
                if not chunk:
                    raise SourceError(f"{path} shrank while it was being sent")
                left -= len(chunk)
                yield chunk
            if info.st_size % BLOCK:
                yield bytes(BLOCK - info.st_size % BLOCK)
        self.files += 1

    @staticmethod
    def _header(
        name: str, kind: bytes, info: os.stat_result, *, size: int = 0, linkname: str = ""
    ) -> bytes:
        member = tarfile.TarInfo(name)
        member.type = kind
        member.mode = stat.S_IMODE(info.st_mode)
        # Whole seconds: a float would cost every member a pax record of its own.
        member.mtime = int(info.st_mtime)
        member.uid, member.gid = info.st_uid, info.st_gid
        member.size = size
        member.linkname = linkname
        return member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
