"""Read tar and zip archives member by member, streaming; every library error becomes a refusal."""

from __future__ import annotations

import bz2
import contextlib
import lzma
import os
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bucketdav.errors import UnsafeArchive
from bucketdav.uploads.archives.members import Kind, refuse

READ_SIZE = 1 << 20
# tarfile reads a pax or GNU long-name header whole; more than this is not a real header.
MAX_HEADER_READ = 1 << 20
# zipfile hands an LZMA member's decompressor one read of at least 4 KiB at a time,
# without an output bound; asking for no more keeps one call's output small.
LZMA_READ_SIZE = 4096
MAX_SYMLINK_TARGET = 4096
_TAR_BLOCK = 512

# What tarfile, zipfile and the decompressors raise on damaged or hostile input.
ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    ValueError,
    struct.error,
    UnicodeError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
    KeyError,
    IndexError,
)


@dataclass
class Member:
    """One archive member: its name as stored, what it is, and how to read its bytes."""

    name: str
    kind: Kind
    size: int
    link: str = ""
    chunks: Callable[[], Iterator[bytes]] | None = None


@contextlib.contextmanager
def malformed(name: str, *, what: str = "archive member") -> Iterator[None]:
    """Turn an archive library's error while reading `name` into UnsafeArchive."""
    try:
        yield
    except UnsafeArchive:
        raise
    except ARCHIVE_ERRORS as exc:
        raise refuse(
            name, f"cannot be read: it is truncated or malformed ({exc})", what=what
        ) from None


class _CappedReader:
    """A file for tarfile that refuses single reads too big to be a header.

    It keeps its own position, so tarfile's frequent tell() costs no system call, and
    waits through `follow` for bytes that a decompressing thread has yet to write.
    """

    def __init__(self, raw: BinaryIO, archive: str, follow: Callable[[int], None]) -> None:
        self.raw = raw
        self.archive = archive
        self.follow = follow
        self.position = 0
        self.mode = "rb"

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > MAX_HEADER_READ:
            raise refuse(
                self.archive, f"has a header of more than {MAX_HEADER_READ} bytes", what="archive"
            )
        self.follow(self.position + size)
        data = self.raw.read(size)
        self.position += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = self.raw.seek(offset, whence)
        return self.position

    def tell(self) -> int:
        return self.position


def _tar_kind(info: tarfile.TarInfo) -> Kind:
    if info.isreg():
        return Kind.FILE
    if info.isdir():
        return Kind.DIR
    if info.issym():
        return Kind.SYMLINK
    if info.islnk():
        return Kind.HARDLINK
    if info.ischr() or info.isblk():
        return Kind.DEVICE
    if info.isfifo():
        return Kind.FIFO
    return Kind.OTHER


def _present(end: int) -> None:
    """The follow() of a finished file: every byte is there already."""


def tar_members(
    path: Path, archive: str, follow: Callable[[int], None] = _present
) -> Iterator[Member]:
    """The members of the plain tar at `path`, in order, each readable while it is current.

    `follow(end)` returns once the file holds `end` bytes or will not grow any more; it
    lets the members be read while the file is still being written.
    """
    with open(path, "rb") as raw:
        fd = raw.fileno()
        with malformed(archive, what="archive"):
            tar = tarfile.open(  # noqa: SIM115 - closed with `raw`, read member by member
                fileobj=_CappedReader(raw, archive, follow),
                mode="r:",
                encoding="utf-8",
                errors="surrogateescape",
            )
        last, what = archive, "archive"
        while True:
            with malformed(last, what=what):
                info = tar.next()
            if info is None:
                break
            last, what = info.name, "archive member"
            if info.sparse is not None:
                chunks = _tar_extracted(tar, info)
            else:
                chunks = _tar_span(fd, info.name, info.offset_data, info.size, follow)
            yield Member(info.name, _tar_kind(info), info.size, info.linkname, chunks)
        follow(tar.offset + _TAR_BLOCK)
        _check_tar_end(fd, tar.offset, last)


def _tar_span(
    fd: int, name: str, offset: int, size: int, follow: Callable[[int], None]
) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        position, left = offset, size
        while left:
            follow(position + min(left, READ_SIZE))
            data = os.pread(fd, min(left, READ_SIZE), position)
            if not data:
                raise refuse(name, "is cut short: the archive is truncated")
            position += len(data)
            left -= len(data)
            yield data

    return chunks


def _tar_extracted(tar: tarfile.TarFile, info: tarfile.TarInfo) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        with malformed(info.name):
            stream = tar.extractfile(info)
            assert stream is not None
            while data := stream.read(READ_SIZE):
                yield data

    return chunks


def _check_tar_end(fd: int, offset: int, last: str) -> None:
    """tarfile stops quietly at a damaged header: after the last member only zeros may follow."""
    block = os.pread(fd, _TAR_BLOCK, offset)
    if block.strip(b"\0"):
        raise refuse(last, "is followed by a damaged or truncated header: the archive is malformed")


def _zip_kind(info: zipfile.ZipInfo) -> Kind:
    # Only an archive made on Unix carries a file type in the high bits of external_attr.
    mode = info.external_attr >> 16 if info.create_system == 3 else 0
    if mode and stat.S_ISLNK(mode):
        return Kind.SYMLINK
    if mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
        return Kind.DEVICE
    if mode and stat.S_ISFIFO(mode):
        return Kind.FIFO
    if mode and stat.S_ISSOCK(mode):
        return Kind.SOCKET
    if info.filename.endswith("/"):
        return Kind.DIR
    return Kind.FILE


def zip_members(path: Path, archive: str) -> Iterator[Member]:
    """The members of the zip at `path`, in central-directory order."""
    with malformed(archive, what="archive"):
        archive_file = zipfile.ZipFile(path)
    with archive_file, open(path, "rb") as raw:
        for info in archive_file.infolist():
            # orig_filename keeps what follows a NUL; zipfile's filename silently drops it.
            name = info.orig_filename
            kind = _zip_kind(info)
            if info.compress_type == zipfile.ZIP_BZIP2:
                chunks = _zip_bzip2(raw.fileno(), info)
            else:
                chunks = _zip_stream(archive_file, info)
            link = ""
            if kind is Kind.SYMLINK:
                link = _zip_link_target(name, chunks)
            yield Member(name, kind, info.file_size, link, chunks)


def _zip_stream(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], Iterator[bytes]]:
    size = LZMA_READ_SIZE if info.compress_type == zipfile.ZIP_LZMA else READ_SIZE

    def chunks() -> Iterator[bytes]:
        with malformed(info.orig_filename), archive.open(info) as stream:
            while data := stream.read(size):
                yield data

    return chunks


def _zip_bzip2(fd: int, info: zipfile.ZipInfo) -> Callable[[], Iterator[bytes]]:
    """zipfile decompresses bzip2 without an output bound; read the raw stream with one."""

    def chunks() -> Iterator[bytes]:
        name = info.orig_filename
        if info.flag_bits & 0x1:
            raise refuse(name, "is encrypted; encrypted archives are not extracted")
        with malformed(name):
            header = os.pread(fd, zipfile.sizeFileHeader, info.header_offset)
            fields = struct.unpack(zipfile.structFileHeader, header)
            if fields[zipfile._FH_SIGNATURE] != zipfile.stringFileHeader:
                raise zipfile.BadZipFile("bad local file header")
            position = (
                info.header_offset
                + zipfile.sizeFileHeader
                + fields[zipfile._FH_FILENAME_LENGTH]
                + fields[zipfile._FH_EXTRA_FIELD_LENGTH]
            )
            left = info.compress_size
            decompressor = bz2.BZ2Decompressor()
            crc = size = 0
            while not decompressor.eof:
                data = b""
                if decompressor.needs_input:
                    data = os.pread(fd, min(left, 1 << 16), position)
                    if not data:
                        raise EOFError("compressed data ends early")
                    position += len(data)
                    left -= len(data)
                out = decompressor.decompress(data, READ_SIZE)
                crc = zlib.crc32(out, crc)
                size += len(out)
                if size > info.file_size:
                    raise zipfile.BadZipFile("more data than the central directory says")
                if out:
                    yield out
            if crc != info.CRC or size != info.file_size:
                raise zipfile.BadZipFile("CRC or size does not match the central directory")

    return chunks


def _zip_link_target(name: str, chunks: Callable[[], Iterator[bytes]]) -> str:
    data = bytearray()
    for chunk in chunks():
        data += chunk
        if len(data) > MAX_SYMLINK_TARGET:
            raise refuse(name, f"is a link with a target over {MAX_SYMLINK_TARGET} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse(name, "is a link whose target is not valid UTF-8") from None
