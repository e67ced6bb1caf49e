"""Pure decisions about a zip's central directory: where it is, its size, what names mean."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

ENTRY_SIZE = 46
_END = b"PK\x05\x06"
_END_SIZE = 22
_LOCATOR = b"PK\x06\x07"
_LOCATOR_SIZE = 20
_END64 = b"PK\x06\x06"
_END64_SIZE = 56
_ENTRY = b"PK\x01\x02"
# The end record may be followed by a comment of up to 64 KiB.
TAIL_SIZE = _END_SIZE + 0xFFFF
_UTF8_FLAG = 0x800
_UNICODE_PATH = 0x7075


class DirectoryFault(ValueError):
    """A central directory that cannot be what it claims; the message says why."""


@dataclass(frozen=True)
class Directory:
    """Where the central directory is (as zipfile will read it) and what it declares."""

    start: int
    size: int
    entries: int


def find_directory(tail: bytes, size: int, read: Callable[[int, int], bytes]) -> Directory:
    """The directory of a zip of `size` bytes ending with `tail` (its last TAIL_SIZE bytes).

    `read(offset, length)` reads elsewhere in the file, for the zip64 records. The end
    record is found as zipfile finds it, so both agree on where the directory is.
    """
    if tail[-_END_SIZE:-18] == _END and tail[-2:] == b"\0\0":
        found = len(tail) - _END_SIZE
    else:
        found = tail.rfind(_END)
        if found < 0 or len(tail) - found < _END_SIZE:
            raise DirectoryFault("no end of central directory record")
    end_at = size - len(tail) + found
    fields = struct.unpack("<4s4H2LH", tail[found : found + _END_SIZE])
    entries, length, location = fields[4], fields[5], end_at
    if end_at >= _LOCATOR_SIZE:
        locator = read(end_at - _LOCATOR_SIZE, _LOCATOR_SIZE)
        if len(locator) == _LOCATOR_SIZE and locator[:4] == _LOCATOR:
            _sig, disk, _offset, disks = struct.unpack("<4sLQL", locator)
            if disk != 0 or disks > 1:
                raise DirectoryFault("it spans several disks")
            at = end_at - _LOCATOR_SIZE - _END64_SIZE
            record = read(at, _END64_SIZE) if at >= 0 else b""
            if len(record) == _END64_SIZE and record[:4] == _END64:
                fields64 = struct.unpack("<4sQ2H2L4Q", record)
                entries, length, location = fields64[7], fields64[8], at
    start = location - length
    if start < 0:
        raise DirectoryFault(
            f"its central directory of {length} bytes is larger than the {size}-byte file"
        )
    return Directory(start, length, entries)


def entry_lengths(fixed: bytes) -> int:
    """How many bytes follow the fixed part of a directory entry (name, extra, comment)."""
    if len(fixed) != ENTRY_SIZE or fixed[:4] != _ENTRY:
        raise DirectoryFault("its central directory holds something other than entries")
    name, extra, comment = struct.unpack_from("<3H", fixed, 28)
    return name + extra + comment


def member_name(raw: bytes, flags: int, extra: bytes) -> str:
    """A member's name as `unzip -l` shows it.

    Flagged UTF-8 is UTF-8; otherwise a valid Info-ZIP Unicode Path field wins, then
    the bytes as UTF-8 when they are (what Unix zip tools write), else code page 437.
    """
    if flags & _UTF8_FLAG:
        return raw.decode("utf-8")
    unicode = unicode_path(raw, extra)
    if unicode is not None:
        return unicode
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp437")


def unicode_path(raw: bytes, extra: bytes) -> str | None:
    """The Unicode Path extra field's name, if it is there and made for this very name."""
    position = 0
    while position + 4 <= len(extra):
        kind, length = struct.unpack_from("<2H", extra, position)
        data = extra[position + 4 : position + 4 + length]
        position += 4 + length
        if kind != _UNICODE_PATH or len(data) < 5 or data[0] != 1:
            continue
        # The field names the header name it was made for by its CRC; a tool that
        # renamed the entry without updating the field leaves a stale one behind.
        if struct.unpack_from("<L", data, 1)[0] != zlib.crc32(raw):
            continue
        try:
            return data[5:].decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None
