"""A zip archive written front to back, member by member, for a stream that cannot seek.

zipfile can write to such a stream, but keeps a ZipInfo per member (about 350 bytes) and
cannot be abandoned half-way: closing it writes the whole central directory, or raises
while a member is open. Here the central directory is packed as each member ends (about
60 bytes plus the name), and a writer that is dropped costs nothing.

Every file member has its CRC and sizes in a data descriptor after its data (they are
known only once it is read). Zip64 records are used where a size, an offset or the member
count needs them (APPNOTE 6.3.10, sections 4.3.9, 4.4 and 4.5.3).
"""

from __future__ import annotations

import stat
import struct
import time
import zlib
from collections.abc import Iterable, Iterator

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_DESCRIPTOR = struct.Struct("<IIII")
_DESCRIPTOR64 = struct.Struct("<IIQQ")
_END = struct.Struct("<IHHHHIIH")
_END64 = struct.Struct("<IQHHIIQQQQ")
_LOCATOR64 = struct.Struct("<IIQI")
# The Info-ZIP extended timestamp: flags (bit 0: modification time), then UTC seconds.
_TIMESTAMP = struct.Struct("<HHBI")
STORED, DEFLATED = 0, 8
# Bit 3: CRC and sizes follow the data; bit 11: the name is UTF-8.
_FLAG_DESCRIPTOR, _FLAG_UTF8 = 0x08, 0x800
_UNIX = 3 << 8
_VERSION, _VERSION64 = 20, 45
_MAX32 = 0xFFFFFFFF
_MAX16 = 0xFFFF
# Deflate can grow incompressible data a little; a file this close to 4 GiB gets Zip64.
_ZIP64_FROM = _MAX32 - (_MAX32 >> 6)
_MSDOS_DIRECTORY = 0x10


def dos_time(mtime: float) -> tuple[int, int]:
    """The MS-DOS (date, time) fields of a UTC time, clamped to the years they can hold."""
    year, month, day, hour, minute, second = time.gmtime(max(mtime, 0))[:6]
    if year < 1980:
        return (0 << 9) | (1 << 5) | 1, 0
    if year > 2107:
        return (127 << 9) | (12 << 5) | 31, (23 << 11) | (59 << 5) | 29
    return (year - 1980) << 9 | month << 5 | day, hour << 11 | minute << 5 | second // 2


def _timestamp(mtime: float) -> bytes:
    return _TIMESTAMP.pack(0x5455, 5, 1, min(max(int(mtime), 0), 0x7FFFFFFF))


class ZipWriter:
    """Makes the bytes of one zip archive; the caller sends them in the order they come."""

    def __init__(self, *, level: int = 6) -> None:
        self.level = level
        self.offset = 0
        self.count = 0
        self.central = bytearray()

    def directory(self, name: str, *, mode: int, mtime: float) -> bytes:
        """The local header of a folder member (`name` without the trailing slash)."""
        encoded = name.encode("utf-8") + b"/"
        flags = 0 if encoded.isascii() else _FLAG_UTF8
        date, clock = dos_time(mtime)
        extra = _timestamp(mtime)
        header = _LOCAL.pack(
            0x04034B50, _VERSION, flags, STORED, clock, date, 0, 0, 0, len(encoded), len(extra)
        )
        attributes = (stat.S_IFDIR | stat.S_IMODE(mode)) << 16 | _MSDOS_DIRECTORY
        offset = self.offset
        self._record(encoded, flags, STORED, clock, date, (0, 0, 0), offset, attributes, extra)
        data = header + encoded + extra
        self.offset += len(data)
        return data

    def file(
        self,
        name: str,
        blocks: Iterable[bytes],
        *,
        size: int,
        mode: int,
        mtime: float,
        deflate: bool,
    ) -> Iterator[bytes]:
        """The local header, data and descriptor of a file of `size` bytes read as `blocks`.

        The blocks must add up to `size` (the Zip64 choice is made from it up front).
        """
        encoded = name.encode("utf-8")
        flags = _FLAG_DESCRIPTOR | (0 if encoded.isascii() else _FLAG_UTF8)
        method = DEFLATED if deflate and size else STORED
        date, clock = dos_time(mtime)
        zip64 = size >= _ZIP64_FROM
        extra = _timestamp(mtime)
        local_extra = extra + (struct.pack("<HHQQ", 1, 16, 0, 0) if zip64 else b"")
        version = _VERSION64 if zip64 else _VERSION
        header = _LOCAL.pack(
            0x04034B50, version, flags, method, clock, date, 0, 0, 0, len(encoded), len(local_extra)
        )
        offset = self.offset
        head = header + encoded + local_extra
        self.offset += len(head)
        yield head
        crc = 0
        read = written = 0
        compressor = zlib.compressobj(self.level, zlib.DEFLATED, -15) if method else None
        for block in blocks:
            crc = zlib.crc32(block, crc)
            read += len(block)
            if compressor is not None:
                block = compressor.compress(block)
                if not block:
                    continue
            written += len(block)
            yield block
        if compressor is not None:
            tail = compressor.flush()
            written += len(tail)
            yield tail
        if read != size:
            raise ValueError(f"{name}: read {read} bytes, expected {size}")
        if zip64:
            descriptor = _DESCRIPTOR64.pack(0x08074B50, crc, written, read)
        elif written > _MAX32:
            raise ValueError(f"{name}: {written} bytes written do not fit a zip without Zip64")
        else:
            descriptor = _DESCRIPTOR.pack(0x08074B50, crc, written, read)
        self.offset += written + len(descriptor)
        attributes = (stat.S_IFREG | stat.S_IMODE(mode)) << 16
        sums = (crc, written, read)
        self._record(encoded, flags, method, clock, date, sums, offset, attributes, extra, zip64)
        yield descriptor

    def _record(
        self,
        encoded: bytes,
        flags: int,
        method: int,
        clock: int,
        date: int,
        sums: tuple[int, int, int],
        offset: int,
        attributes: int,
        extra: bytes,
        zip64: bool = False,
    ) -> None:
        """Keep the central directory record of a member that has been written.

        `sums` are its CRC, stored size and size; a Zip64 member has its sizes in Zip64 form
        here too, as its local header announced.
        """
        crc, written, read = sums
        wide = []
        if zip64 or read >= _MAX32 or written >= _MAX32:
            wide += [read, written]
            read = written = _MAX32
        if offset >= _MAX32:
            wide.append(offset)
            offset = _MAX32
        if wide:
            extra += struct.pack(f"<HH{len(wide)}Q", 1, 8 * len(wide), *wide)
        version = _VERSION64 if wide else _VERSION
        self.central += _CENTRAL.pack(
            0x02014B50,
            _UNIX | _VERSION64,
            version,
            flags,
            method,
            clock,
            date,
            crc,
            written,
            read,
            len(encoded),
            len(extra),
            0,
            0,
            0,
            attributes,
            offset,
        )
        self.central += encoded
        self.central += extra
        self.count += 1

    def finish(self) -> bytes:
        """The central directory and the end records; nothing may be added afterwards."""
        start, size, count = self.offset, len(self.central), self.count
        tail, self.central = self.central, bytearray()
        if count >= _MAX16 or size >= _MAX32 or start >= _MAX32:
            end64 = start + size
            tail += _END64.pack(
                0x06064B50, 44, _UNIX | _VERSION64, _VERSION64, 0, 0, count, count, size, start
            )
            tail += _LOCATOR64.pack(0x07064B50, 0, end64, 1)
        tail += _END.pack(
            0x06054B50,
            0,
            0,
            min(count, _MAX16),
            min(count, _MAX16),
            min(size, _MAX32),
            min(start, _MAX32),
            0,
        )
        self.offset += len(tail)
        return bytes(tail)
