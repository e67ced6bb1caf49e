"""Read tar and zip archives member by member, streaming; every library error becomes a refusal."""

from __future__ import annotations

import bz2
import contextlib
import lzma
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from isal import isal_zlib

from bucketdav.errors import UnsafeArchive
from bucketdav.uploads.archives.members import Kind, refuse
from bucketdav.uploads.archives.tarformat import (
    BLOCK,
    LONG_TYPES,
    PAX_TYPES,
    HeaderFault,
    Pax,
    blocks,
    check_sparse,
    checksum_fault,
    extension_pairs,
    parse_header,
    pax_records,
    sparse_lines,
    sparse_map_1_0,
    text,
)
from bucketdav.uploads.archives.zipformat import (
    ENTRY_SIZE,
    TAIL_SIZE,
    DirectoryFault,
    entry_lengths,
    find_directory,
    member_name,
)

READ_SIZE = 1 << 20
# A tar is read ahead this much at a time (headers and small members come from memory).
WINDOW = 1 << 20
# Pax records, GNU long names and sparse maps of one member are read whole; more than
# this is not a real header.
MAX_HEADER_READ = 1 << 20
# zipfile reads the central directory whole; real ones take well under 1 KiB an entry.
MAX_DIRECTORY_BYTES = 64 << 20
# zipfile hands an LZMA member's decompressor one read of at least 4 KiB at a time,
# without an output bound; asking for no more keeps one call's output small.
LZMA_READ_SIZE = 4096
MAX_SYMLINK_TARGET = 4096

# What zipfile and the decompressors raise on damaged or hostile input.
ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    isal_zlib.error,
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


_TAR_KINDS = {
    ord("0"): Kind.FILE,
    0: Kind.FILE,
    ord("7"): Kind.FILE,
    ord("S"): Kind.FILE,
    ord("1"): Kind.HARDLINK,
    ord("2"): Kind.SYMLINK,
    ord("3"): Kind.DEVICE,
    ord("4"): Kind.DEVICE,
    ord("5"): Kind.DIR,
    ord("6"): Kind.FIFO,
}


def _present(end: int) -> None:
    """The follow() of a finished file: every byte is there already."""


def tar_members(
    path: Path, archive: str, follow: Callable[[int], None] = _present
) -> Iterator[Member]:
    """The members of the plain tar at `path`, in order, each readable while it is current.

    Every header is checked strictly before anything is made of it. `follow(end)` returns
    once the file holds `end` bytes or will not grow any more; it lets the members be read
    while the file is still being written.
    """
    with open(path, "rb") as raw:
        reader = _TarReader(raw.fileno(), archive, follow)
        position = 0
        while True:
            # Every fault of a header is refused by name above; this is for the unforeseen.
            with malformed(
                reader.last or archive, what="archive member" if reader.last else "archive"
            ):
                found = reader.member(position)
            if found is None:
                return
            member, position = found
            yield member
            reader.last = member.name


class _ReadAhead:
    """Reads a file at offsets, WINDOW bytes ahead: most headers and small members are then
    a slice of memory instead of a system call each."""

    def __init__(self, fd: int, follow: Callable[[int], None] = _present) -> None:
        self.fd = fd
        self.follow = follow
        self.window = b""
        self.window_at = 0

    def read(self, at: int, size: int) -> bytes:
        """`size` bytes at `at`, or fewer where the file ends."""
        offset = at - self.window_at
        if offset >= 0 and offset + size <= len(self.window):
            return self.window[offset : offset + size]
        self.follow(at + size)
        # Whatever is there already: bytes once written never change.
        self.window = os.pread(self.fd, max(size, WINDOW), at)
        self.window_at = at
        return self.window[:size]


class _TarReader(_ReadAhead):
    """Reads one tar's header chains (pax, GNU long names, sparse maps) into members."""

    def __init__(self, fd: int, archive: str, follow: Callable[[int], None]) -> None:
        super().__init__(fd, follow)
        self.archive = archive
        self.last: str | None = None
        self.globals = Pax()

    def member(self, start: int) -> tuple[Member, int] | None:
        """The member whose headers begin at `start` and where the next begins; None at the end."""
        own = Pax()
        long_names: dict[int, str] = {}
        extra = 0
        at = start
        while True:
            block = self.read(at, BLOCK)
            if not block.strip(b"\0"):
                # Global records alone may end an archive (git archive of an empty tree).
                if not own.values and not long_names:
                    return None
                raise self._refuse_at(at, "ends where the member of its extended header should be")
            if len(block) < BLOCK:
                if at == start and self.last is not None:
                    raise refuse(
                        self.last,
                        "is followed by a damaged or truncated header: the archive is malformed",
                    )
                raise self._refuse_at(at, "ends inside a header: the archive is truncated")
            fault = checksum_fault(block)
            if fault is not None:
                if self.last is not None and at == start:
                    raise refuse(
                        self.last, f"is followed by a damaged header at offset {at} ({fault})"
                    )
                raise self._refuse_at(at, f"has a damaged header ({fault})")
            if block[156] not in PAX_TYPES and block[156] not in LONG_TYPES:
                break
            try:
                header = parse_header(block)
                extra += header.size
                if extra > MAX_HEADER_READ:
                    raise refuse(
                        self.archive,
                        f"has a header of more than {MAX_HEADER_READ} bytes (at offset {start})",
                        what="archive",
                    )
                data = self.read(at + BLOCK, header.size)
                if len(data) < header.size:
                    raise self._refuse_at(at, "is cut short in a header: the archive is truncated")
                if header.type == ord("g"):
                    self.globals.update(pax_records(data))
                elif header.type in PAX_TYPES:
                    own.update(pax_records(data))
                else:
                    long_names[header.type] = text(data)
            except HeaderFault as exc:
                raise self._refuse_at(at, f"has a malformed extended header: {exc}") from None
            at += BLOCK + blocks(header.size)
        pax = self.globals.merged(own)
        # A member's own pax record beats a GNU long name, which beats a global record.
        candidates = (
            pax.name("GNU.sparse.name"),
            own.name("path"),
            long_names.get(ord("L")),
            pax.name("path"),
            header_name(block),
        )
        name = next(c for c in candidates if c is not None)
        if not name:
            raise self._refuse_at(at, "has a member without a name")
        try:
            return self._member(block, at, name, pax, long_names, extra)
        except HeaderFault as exc:
            raise refuse(name, f"has a malformed tar header at offset {at}: {exc}") from None

    def _member(
        self, block: bytes, at: int, name: str, pax: Pax, long_names: dict[int, str], extra: int
    ) -> tuple[Member, int]:
        header = parse_header(block)
        links = (pax.name("linkpath"), long_names.get(ord("K")), header.linkname)
        link = next(c for c in links if c is not None)
        kind = _TAR_KINDS.get(header.type, Kind.OTHER)
        if header.type == 0 and name.endswith("/"):
            kind = Kind.DIR  # old tars mark a directory by its name alone
        if kind is Kind.DIR:
            # Named as tar lists it, so that messages and duplicates match: `a/` is `a`.
            name = name.rstrip("/") or name
        stored = pax.number("size")
        stored = header.size if stored is None else stored
        data_at = at + BLOCK
        if not header.has_data:
            return Member(name, kind, 0, link), data_at
        end = data_at + blocks(stored)
        sparse = None
        if header.type == ord("S"):
            sparse, realsize = header.sparse, header.realsize
            more = header.extended
            while more:
                extension = self.read(data_at, BLOCK)
                extra += BLOCK
                if len(extension) < BLOCK or extra > MAX_HEADER_READ:
                    raise HeaderFault("its sparse extension blocks are cut short or too many")
                pairs, more = extension_pairs(extension)
                sparse += pairs
                data_at += BLOCK
            end = data_at + blocks(stored)
        elif kind is Kind.FILE and pax.sparse_version is not None:
            sparse, realsize, used = self._pax_sparse(pax, data_at, stored, extra)
            data_at += used
            stored -= used
        if sparse is None:
            chunks = _tar_span(self.read, name, data_at, stored)
            return Member(name, kind, stored, link, chunks), end
        check_sparse(sparse, realsize=realsize, stored=stored)
        chunks = _sparse_span(self.read, name, data_at, sparse, realsize)
        return Member(name, kind, realsize, link, chunks), end

    def _pax_sparse(
        self, pax: Pax, data_at: int, stored: int, extra: int
    ) -> tuple[list[tuple[int, int]], int, int]:
        """The map, real size and map bytes of a pax sparse member (GNU 0.0, 0.1 or 1.0)."""
        if pax.sparse_version != "1.0":
            realsize = pax.number("GNU.sparse.size")
            assert realsize is not None  # the version says the keyword is there
            return pax.sparse_map(), realsize, 0
        realsize = pax.number("GNU.sparse.realsize")
        if realsize is None:
            raise HeaderFault("its pax sparse 1.0 records lack GNU.sparse.realsize")
        data = bytearray()
        newlines, lines = 0, 1
        while newlines < lines:
            chunk = self.read(data_at + len(data), BLOCK)
            taken = len(data) + BLOCK
            if len(chunk) < BLOCK or taken > stored or taken + extra > MAX_HEADER_READ:
                raise HeaderFault("its sparse map is cut short or too long")
            data += chunk
            # Newlines counted block by block: the map is never scanned whole more than once.
            newlines += chunk.count(b"\n")
            if lines == 1 and newlines:
                lines = sparse_lines(data)
        pairs, used = sparse_map_1_0(bytes(data), lines)
        if used > stored:
            raise HeaderFault("its sparse map is longer than its data")
        return pairs, realsize, used

    def _refuse_at(self, at: int, reason: str) -> UnsafeArchive:
        return refuse(self.archive, f"{reason} at offset {at}", what="archive")


def header_name(block: bytes) -> str:
    """The member name a header block holds, read without trusting its other fields."""
    name = text(block[0:100])
    prefix = text(block[345:500]) if block[257:263] == b"ustar\x00" else ""
    if prefix and block[156] != ord("S"):
        return prefix + "/" + name
    return name


def _tar_span(
    read: Callable[[int, int], bytes], name: str, offset: int, size: int
) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        position, left = offset, size
        while left:
            data = read(position, min(left, READ_SIZE))
            if not data:
                raise refuse(name, "is cut short: the archive is truncated")
            position += len(data)
            left -= len(data)
            yield data

    return chunks


def _sparse_span(
    read: Callable[[int, int], bytes],
    name: str,
    offset: int,
    pairs: list[tuple[int, int]],
    realsize: int,
) -> Callable[[], Iterator[bytes]]:
    """A sparse member's bytes: its stored pieces, with zeros in the holes between them."""

    def chunks() -> Iterator[bytes]:
        stored, position = offset, 0
        for start, size in [*pairs, (realsize, 0)]:
            hole = start - position
            while hole:
                yield bytes(min(hole, READ_SIZE))
                hole -= min(hole, READ_SIZE)
            yield from _tar_span(read, name, stored, size)()
            stored += size
            position = start + size

    return chunks


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


def zip_members(path: Path, archive: str, *, max_files: int | None = None) -> Iterator[Member]:
    """The members of the zip at `path`, in central-directory order.

    The directory's size and entry count are checked first, so that a zip declaring
    more than `max_files` entries costs no more than reading its directory's records.
    """
    with open(path, "rb") as raw:
        _check_directory(raw, archive, max_files)
    with malformed(archive, what="archive"):
        archive_file = zipfile.ZipFile(path)
    with archive_file, open(path, "rb") as raw:
        ahead = _ReadAhead(raw.fileno())
        for info in archive_file.infolist():
            with malformed(info.orig_filename):
                name = _zip_name(info)
            kind = _zip_kind(info)
            if info.compress_type in _RAW_METHODS:
                chunks = _zip_raw(ahead.read, info, name)
            else:
                chunks = _zip_stream(archive_file, info, name)
            link = ""
            if kind is Kind.SYMLINK:
                link = _zip_link_target(name, chunks)
            yield Member(name, kind, info.file_size, link, chunks)


def _zip_name(info: zipfile.ZipInfo) -> str:
    """The member's name from its raw bytes (orig_filename keeps what follows a NUL)."""
    if info.flag_bits & 0x800:
        return info.orig_filename
    # zipfile decoded the bytes as code page 437, which maps every byte: encoding gives them back.
    return member_name(info.orig_filename.encode("cp437"), info.flag_bits, info.extra)


def _check_directory(raw: BinaryIO, archive: str, max_files: int | None) -> None:
    """Refuse a zip whose central directory is implausible or has too many entries."""
    size = os.fstat(raw.fileno()).st_size
    fd = raw.fileno()
    try:
        tail = os.pread(fd, min(size, TAIL_SIZE), size - min(size, TAIL_SIZE))
        directory = find_directory(tail, size, lambda at, length: os.pread(fd, length, at))
        if directory.size > MAX_DIRECTORY_BYTES:
            raise refuse(
                archive,
                f"has a central directory of {directory.size} bytes, more than the "
                f"{MAX_DIRECTORY_BYTES} bytes extraction reads",
                what="archive",
            )
        if max_files is not None and directory.entries > max_files:
            raise _too_many(archive, f"declares {directory.entries} members", max_files)
        raw.seek(directory.start)
        entries = read = 0
        while read < directory.size:
            entries += 1
            if max_files is not None and entries > max_files:
                raise _too_many(archive, f"has more than {max_files} members", max_files)
            skip = entry_lengths(raw.read(ENTRY_SIZE))
            raw.seek(skip, os.SEEK_CUR)
            read += ENTRY_SIZE + skip
    except DirectoryFault as exc:
        raise refuse(
            archive, f"cannot be read: it is truncated or malformed ({exc})", what="archive"
        ) from None


def _too_many(archive: str, what: str, max_files: int) -> UnsafeArchive:
    return refuse(
        archive,
        f"{what}, more than BUCKETDAV_EXTRACT_MAX_FILES ({max_files}) allows",
        what="archive",
    )


def _zip_stream(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str
) -> Callable[[], Iterator[bytes]]:
    size = LZMA_READ_SIZE if info.compress_type == zipfile.ZIP_LZMA else READ_SIZE

    def chunks() -> Iterator[bytes]:
        with malformed(name), archive.open(info) as stream:
            while data := stream.read(size):
                yield data

    return chunks


# Methods read from the raw stream here, with an output bound; zipfile opens the others. Its
# own reader costs a file object, a seek and three reads per member, and decompresses bzip2
# without an output bound.
_RAW_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2})
_RAW_READ = 1 << 16


class _Stored:
    """The decompressor interface for a stored member: its bytes as they are."""

    eof = False

    def decompress(self, data: bytes, _max_length: int) -> bytes:
        return data


def _zip_raw(
    read: Callable[[int, int], bytes], info: zipfile.ZipInfo, name: str
) -> Callable[[], Iterator[bytes]]:
    """A stored, deflated or bzip2 member's bytes, checked against the central directory."""

    def chunks() -> Iterator[bytes]:
        if info.flag_bits & 0x1:
            raise refuse(name, "is encrypted; encrypted archives are not extracted")
        with malformed(name):
            header = read(info.header_offset, zipfile.sizeFileHeader)
            if len(header) < zipfile.sizeFileHeader:
                raise zipfile.BadZipFile("the local file header is cut short")
            fields = struct.unpack(zipfile.structFileHeader, header)
            if fields[zipfile._FH_SIGNATURE] != zipfile.stringFileHeader:
                raise zipfile.BadZipFile("bad local file header")
            # The refusals zipfile's own reader makes: a local name other than the central
            # directory's (tools that read either would see other files), patched data.
            length = fields[zipfile._FH_FILENAME_LENGTH]
            local = read(info.header_offset + zipfile.sizeFileHeader, length)
            utf8 = fields[zipfile._FH_GENERAL_PURPOSE_FLAG_BITS] & 0x800
            if local.decode("utf-8" if utf8 else "cp437") != info.orig_filename:
                raise zipfile.BadZipFile("its name in the directory and in its header differ")
            if info.flag_bits & (0x20 | 0x40):
                raise NotImplementedError("patched data or strong encryption")
            position = (
                info.header_offset
                + zipfile.sizeFileHeader
                + length
                + fields[zipfile._FH_EXTRA_FIELD_LENGTH]
            )
            left = info.compress_size
            if info.compress_type == zipfile.ZIP_STORED:
                if left != info.file_size:
                    raise zipfile.BadZipFile("a stored member's sizes differ")
                decompressor: _Stored | bz2.BZ2Decompressor = _Stored()
            elif info.compress_type == zipfile.ZIP_DEFLATED:
                decompressor = isal_zlib.decompressobj(-15)
            else:
                decompressor = bz2.BZ2Decompressor()
            crc = size = 0
            pending = b""
            starved = True
            while not decompressor.eof:
                if starved:
                    data = read(position, min(left, _RAW_READ)) if left else b""
                    if not data:
                        if isinstance(decompressor, _Stored):
                            break
                        raise EOFError("compressed data ends early")
                    position += len(data)
                    left -= len(data)
                    pending += data
                out = decompressor.decompress(pending, READ_SIZE)
                # zlib keeps what it did not take; bzip2 and stored take everything.
                pending = getattr(decompressor, "unconsumed_tail", b"")
                # Only a call that gave nothing needs more input (output may be held back).
                starved = not out
                crc = isal_zlib.crc32(out, crc)
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
