"""A folder's members written as a tar or zip archive, piece by piece as the files are read."""

from __future__ import annotations

import logging
import os
import stat
import struct
import tarfile
import zlib
from collections.abc import Iterable, Iterator

from bucketdav.dav.walk import FILE, FOLDER, LINK, Member
from bucketdav.dav.zipstream import ZipWriter

log = logging.getLogger(__name__)

DEFLATE_CHOICES = ("auto", "always", "never")
# Files are read in blocks this big; small pieces are joined into chunks of about this size,
# so Cheroot sends few large chunks however small the files are.
BLOCK = 256 << 10
# A deflate setting of 1 is several times faster than the default 6 for a few percent more
# bytes; a server sending many folders at once is short of CPU before it is short of network.
DEFLATE_LEVEL = 1
# How much of a file of unknown kind is compressed to see whether deflating it is worth it.
PROBE = 16 << 10
_NUL = bytes(BLOCK)
_RECORD = tarfile.RECORDSIZE
# name, mode, uid, gid, size, mtime, checksum, type, link, magic+version, user, group,
# device major and minor (empty but for devices), prefix (unused: long names get a pax
# record), padding.
_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12x")
_USTAR_SIZE = 8**11
_TAR_TYPES = {FILE: tarfile.REGTYPE, FOLDER: tarfile.DIRTYPE, LINK: tarfile.SYMTYPE}
# Suffixes of content that is compressed already (deflating it again gains nothing).
_SUFFIX_TEXT = (
    "7z aac aar apk avif br bz2 crx deb docx epub flac gif gz heic ipa jar jpeg jpg lz lz4 "
    "lzma m4a m4v mkv mov mp3 mp4 nupkg odp ods odt oga ogg ogv opus png pptx rar rpm snap "
    "squashfs tbz tbz2 tgz txz tzst war webm webp whl woff woff2 xlsx xpi xz zip zst"
)
COMPRESSED_SUFFIXES = frozenset(_SUFFIX_TEXT.split())
# Leading bytes of compressed formats, for files whose names do not say.
COMPRESSED_MAGIC = (
    b"\x1f\x8b",  # gzip
    b"BZh",  # bzip2
    b"\xfd7zXZ\x00",  # xz
    b"\x28\xb5\x2f\xfd",  # zstd
    b"\x04\x22\x4d\x18",  # lz4
    b"PK\x03\x04",  # zip, jar, docx, ...
    b"7z\xbc\xaf\x27\x1c",
    b"Rar!\x1a\x07",
    b"\x89PNG",
    b"\xff\xd8\xff",  # jpeg
    b"GIF8",
    b"OggS",
    b"fLaC",
    b"wOF2",
    b"wOFF",
    b"ID3",  # mp3
)


def deflates(name: str, first: bytes, size: int) -> bool:
    """Whether a file is worth deflating: not compressed already by its name or content."""
    if size < 64:
        return False
    suffix = name.rpartition(".")[2].lower() if "." in name else ""
    if suffix in COMPRESSED_SUFFIXES or first.startswith(COMPRESSED_MAGIC):
        return False
    if first[8:12] == b"WEBP" or first[4:8] == b"ftyp":  # webp; mp4, mov, heic, avif
        return False
    sample = first[:PROBE]
    return len(zlib.compress(sample, DEFLATE_LEVEL)) < len(sample) * 0.9


def tar_header(name: str, member: Member) -> bytes:
    """The tar header (pax where ustar cannot say it) of `member` archived as `name`."""
    kind = _TAR_TYPES[member.kind]
    encoded = name.encode("utf-8", "surrogateescape") + (b"/" if member.kind == FOLDER else b"")
    target = member.target.encode("utf-8", "surrogateescape")
    mtime = int(member.mtime)
    if (
        len(encoded) <= 100
        and len(target) <= 100
        and encoded.isascii()
        and target.isascii()
        and member.size < _USTAR_SIZE
        and 0 <= mtime < _USTAR_SIZE
    ):
        return _ustar(encoded, stat.S_IMODE(member.mode), member.size, mtime, kind, target)
    # tarfile writes the pax records these need, at about 50 µs a header (a plain ustar
    # header above takes 3 µs, which is what most trees need).
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(member.mode)
    info.mtime = mtime
    info.uid = info.gid = 0
    info.size = member.size
    info.type = kind
    info.linkname = member.target
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _ustar(name: bytes, mode: int, size: int, mtime: int, kind: bytes, target: bytes) -> bytes:
    """A ustar header as tarfile writes it for these fields (uid and gid 0, no user names)."""
    header = _USTAR.pack(
        name,
        b"%07o\0" % mode,
        b"0000000\0",
        b"0000000\0",
        b"%011o\0" % size,
        b"%011o\0" % mtime,
        b"        ",
        kind,
        target,
        tarfile.POSIX_MAGIC,
        b"",
        b"",
        b"",
        b"",
        b"",
    )
    checksum = b"%06o\0" % sum(header)
    return header[:148] + checksum + header[155:]


def tar_stream(members: Iterable[Member], top: str) -> Iterator[bytes]:
    """A tar archive of `members` under the folder name `top`, piece by piece."""
    written = 0
    for member in members:
        name = f"{top}/{member.rel}" if member.rel else top
        if member.kind != FILE:
            header = tar_header(name, member)
            written += len(header)
            yield header
            continue
        fd = _open(member.real)
        if fd < 0:
            continue
        try:
            header = tar_header(name, member)
            yield header
            yield from _blocks(fd, member.size, member.rel)
            pad = -member.size % 512
            if pad:
                yield _NUL[:pad]
            written += len(header) + member.size + pad
        finally:
            os.close(fd)
    end = 1024 + (-(written + 1024) % _RECORD)
    yield bytes(end)


def zip_stream(
    members: Iterable[Member], top: str, *, deflate: str = "auto", level: int = DEFLATE_LEVEL
) -> Iterator[bytes]:
    """A zip archive of `members` under the folder name `top`, piece by piece."""
    writer = ZipWriter(level=level)
    for member in members:
        name = f"{top}/{member.rel}" if member.rel else top
        if member.kind == FOLDER:
            yield writer.directory(name, mode=member.mode, mtime=member.mtime)
            continue
        fd = _open(member.real)
        if fd < 0:
            continue
        try:
            size = member.size
            first = os.read(fd, min(BLOCK, size)) if size else b""
            packed = deflate == "always"
            if deflate == "auto":
                packed = deflates(member.rel, first, size)
            rest = _blocks(fd, size - len(first), member.rel) if len(first) < size else ()
            yield from writer.file(
                name,
                _chain(first, rest),
                size=size,
                mode=member.mode,
                mtime=member.mtime,
                deflate=packed,
            )
        finally:
            os.close(fd)
    yield writer.finish()


def _chain(first: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _open(real: str) -> int:
    """A descriptor of the file, or -1 when it is gone since the walk (it is left out)."""
    try:
        return os.open(real, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        log.warning("left out of a download: %s: %s", real, exc)
        return -1


def _blocks(fd: int, size: int, rel: str) -> Iterator[bytes]:
    """Exactly `size` bytes of the open file; a file that got shorter ends the archive."""
    left = size
    while left > 0:
        block = os.read(fd, min(BLOCK, left))
        if not block:
            raise OSError(f"{rel} got shorter while it was being sent")
        left -= len(block)
        yield block


def coalesced(pieces: Iterable[bytes], size: int = BLOCK) -> Iterator[bytes]:
    """`pieces` joined into chunks of about `size` bytes; large pieces pass as they are."""
    waiting: list[bytes] = []
    held = 0
    for piece in pieces:
        if len(piece) >= size:
            if waiting:
                yield b"".join(waiting)
                waiting, held = [], 0
            yield piece
            continue
        waiting.append(piece)
        held += len(piece)
        if held >= size:
            yield b"".join(waiting)
            waiting, held = [], 0
    if waiting:
        yield b"".join(waiting)
