"""Pure decisions about raw tar headers: strict numeric fields, pax records, sparse maps."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BLOCK = 512
# Types whose header is followed by a payload that belongs to the next header.
PAX_TYPES = frozenset(b"xXg")
LONG_TYPES = frozenset(b"LK")
# Types stored with data blocks after the header; others have none, whatever their size says.
_DATA_TYPES = frozenset(b"07\x00S")
_KNOWN_TYPES = frozenset(b"0123456\x00")
_OCTAL = re.compile(rb" *([0-7]*) *")
_ASCII = bytes(range(128))
_DECIMAL = re.compile(r"[0-9]{1,20}")
_TIME = re.compile(r"-?[0-9]{1,20}(\.[0-9]{0,20})?")
_SPARSE_MAP = re.compile(r"([0-9]{1,20},[0-9]{1,20})(,[0-9]{1,20},[0-9]{1,20})*")
_RECORD_LENGTH = re.compile(rb"([0-9]{1,8}) ")
_MAP_NUMBER = re.compile(rb"[0-9]{1,20}")
_NUMBER_FIELDS = (
    ("mode", 100, 108),
    ("uid", 108, 116),
    ("gid", 116, 124),
    ("size", 124, 136),
    ("mtime", 136, 148),
    ("device major number", 329, 337),
    ("device minor number", 337, 345),
)
# Old GNU sparse headers: four (offset, size) pairs, a continuation flag, the real size.
_GNU_SPARSE_AT = 386
_GNU_EXTENDED_AT = 482
_GNU_REALSIZE = (483, 495)
_EXTENSION_PAIRS = 21
# Pax keywords whose value is a number; a malformed one is refused, not read as 0.
_DECIMAL_KEYS = frozenset(
    {
        "size",
        "uid",
        "gid",
        "GNU.sparse.size",
        "GNU.sparse.realsize",
        "GNU.sparse.numblocks",
        "GNU.sparse.offset",
        "GNU.sparse.numbytes",
        "GNU.sparse.major",
        "GNU.sparse.minor",
    }
)
_TIME_KEYS = frozenset({"mtime", "atime", "ctime"})
_NAME_KEYS = frozenset({"path", "linkpath", "GNU.sparse.name"})


class HeaderFault(ValueError):
    """A header that no honest tar writer produces; the message says which field is wrong."""


def text(raw: bytes) -> str:
    """A NUL-terminated name field as text; bytes that are not UTF-8 become surrogates."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def number(raw: bytes, what: str, *, signed: bool = False) -> int:
    """A numeric header field: octal text, or GNU base-256 (0x80 positive, 0xff negative)."""
    if raw[0] in (0x80, 0xFF):
        value = int.from_bytes(raw[1:], "big")
        if raw[0] == 0xFF:
            value -= 1 << (8 * (len(raw) - 1))
    else:
        digits = _OCTAL.fullmatch(raw.split(b"\0", 1)[0])
        if digits is None:
            raise HeaderFault(f"its {what} field {raw!r} is not an octal number")
        value = int(digits.group(1) or b"0", 8)
    if value < 0 and not signed:
        raise HeaderFault(f"its {what} is negative ({value})")
    return value


def checksum_fault(block: bytes) -> str | None:
    """Why the checksum of a header block is wrong, or None when it is right."""
    digits = _OCTAL.fullmatch(block[148:156].split(b"\0", 1)[0])
    if digits is None or not digits.group(1):
        return f"its checksum field {block[148:156]!r} is not an octal number"
    rest = block[:148] + b" " * 8 + block[156:]
    # Some old tars summed signed chars; tar readers accept either sum.
    unsigned = sum(rest)
    signed = unsigned - 256 * len(rest.translate(None, _ASCII))
    if int(digits.group(1), 8) not in (unsigned, signed):
        return "its checksum does not match"
    return None


@dataclass
class Header:
    """The fields of one 512-byte header that extraction needs."""

    name: str
    linkname: str
    type: int
    size: int
    # Old GNU sparse members: the map read so far, whether extension blocks follow, real size.
    sparse: list[tuple[int, int]] = field(default_factory=list)
    extended: bool = False
    realsize: int = 0

    @property
    def has_data(self) -> bool:
        """Whether data blocks of `size` bytes follow the header (and its extensions)."""
        return self.type in _DATA_TYPES or self.type not in _KNOWN_TYPES


def parse_header(block: bytes) -> Header:
    """The header in `block` (512 bytes, not all zeros), its checksum already checked."""
    values = {
        what: number(block[start:end], what, signed=what == "mtime")
        for what, start, end in _NUMBER_FIELDS
    }
    if values["mode"] > 0o177777:
        raise HeaderFault(f"its mode {values['mode']:o} is not a file mode")
    kind = block[156]
    name = text(block[0:100])
    prefix = text(block[345:500]) if block[257:263] == b"ustar\x00" else ""
    if prefix and kind not in LONG_TYPES and kind != ord("S"):
        name = prefix + "/" + name
    header = Header(name, text(block[157:257]), kind, values["size"])
    if kind == ord("S"):
        header.sparse = sparse_pairs(block, _GNU_SPARSE_AT, 4)
        header.extended = block[_GNU_EXTENDED_AT] != 0
        header.realsize = number(block[slice(*_GNU_REALSIZE)], "sparse real size")
    return header


def sparse_pairs(block: bytes, start: int, count: int) -> list[tuple[int, int]]:
    """The used (offset, size) pairs of an old GNU sparse header or extension block."""
    pairs = []
    for at in range(start, start + 24 * count, 24):
        offset = number(block[at : at + 12], "sparse offset")
        size = number(block[at + 12 : at + 24], "sparse size")
        if offset or size:
            pairs.append((offset, size))
    return pairs


def extension_pairs(block: bytes) -> tuple[list[tuple[int, int]], bool]:
    """The pairs of an old GNU sparse extension block, and whether another block follows."""
    return sparse_pairs(block, 0, _EXTENSION_PAIRS), block[504] != 0


def blocks(size: int) -> int:
    """The bytes `size` bytes of data take in the archive, padded to whole blocks."""
    return -(-size // BLOCK) * BLOCK


def pax_records(data: bytes) -> list[tuple[str, bytes]]:
    """The `<length> <keyword>=<value>\\n` records of a pax header payload, strictly."""
    records = []
    position = 0
    while position < len(data):
        if data[position] == 0:
            # Padding after the last record, checked once: slicing the rest at every
            # record would make a header of many small records quadratic.
            if data.count(b"\0", position) != len(data) - position:
                raise HeaderFault("its pax records have something after their padding")
            break
        head = _RECORD_LENGTH.match(data, position)
        if head is None:
            raise HeaderFault(f"its pax record at byte {position} does not start with a length")
        end = position + int(head.group(1))
        if end > len(data) or end <= head.end() or data[end - 1] != 0x0A:
            raise HeaderFault(f"its pax record at byte {position} has a wrong length")
        keyword, equals, value = data[head.end() : end - 1].partition(b"=")
        try:
            key = keyword.decode("utf-8")
        except UnicodeDecodeError:
            raise HeaderFault(
                f"its pax record at byte {position} has a non-UTF-8 keyword"
            ) from None
        if not equals or not key or not key.isprintable() or " " in key:
            raise HeaderFault(f"its pax record at byte {position} has no valid keyword")
        records.append((key, value))
        position = end
    return records


@dataclass
class Pax:
    """What pax records say about the member that follows them."""

    values: dict[str, str] = field(default_factory=dict)
    # GNU sparse 0.0 repeats these two keywords, one pair per piece of data.
    pieces: list[tuple[str, int]] = field(default_factory=list)

    def update(self, records: list[tuple[str, bytes]]) -> None:
        """Take `records` in, refusing a malformed value of a keyword that matters."""
        for key, raw in records:
            value = raw.decode("utf-8", "surrogateescape")
            if key in _DECIMAL_KEYS and not _DECIMAL.fullmatch(value):
                raise HeaderFault(f"its pax {key} '{value[:40]}' is not a decimal number")
            if key in _TIME_KEYS and not _TIME.fullmatch(value):
                raise HeaderFault(f"its pax {key} '{value[:40]}' is not a time")
            if key == "GNU.sparse.map" and value and not _SPARSE_MAP.fullmatch(value):
                raise HeaderFault("its pax GNU.sparse.map is not a list of offset,size pairs")
            if key in ("GNU.sparse.offset", "GNU.sparse.numbytes"):
                self.pieces.append((key, int(value)))
            self.values[key] = value

    def merged(self, other: Pax) -> Pax:
        """These records with `other`'s (a member's own) taking precedence."""
        return Pax({**self.values, **other.values}, self.pieces + other.pieces)

    def number(self, key: str) -> int | None:
        """A decimal keyword's value, if present."""
        value = self.values.get(key)
        return None if value is None else int(value)

    def name(self, key: str) -> str | None:
        """A name keyword's value, if present."""
        return self.values.get(key) if key in _NAME_KEYS else None

    @property
    def sparse_version(self) -> str | None:
        """Which GNU sparse format the records describe: 0.0, 0.1, 1.0, or None."""
        version = (self.values.get("GNU.sparse.major"), self.values.get("GNU.sparse.minor"))
        if version == ("1", "0"):
            return "1.0"
        if "GNU.sparse.map" in self.values:
            return "0.1"
        if "GNU.sparse.size" in self.values:
            return "0.0"
        return None

    def sparse_map(self) -> list[tuple[int, int]]:
        """The (offset, size) pairs of a 0.0 or 0.1 sparse member."""
        if "GNU.sparse.map" in self.values:
            numbers = [int(n) for n in self.values["GNU.sparse.map"].split(",") if n]
            return list(zip(numbers[::2], numbers[1::2], strict=True))
        offsets = [n for key, n in self.pieces if key == "GNU.sparse.offset"]
        sizes = [n for key, n in self.pieces if key == "GNU.sparse.numbytes"]
        if len(offsets) != len(sizes):
            raise HeaderFault("its pax sparse offsets and sizes do not pair up")
        return list(zip(offsets, sizes, strict=True))


def sparse_lines(data: bytes) -> int:
    """How many lines the map at the start of a GNU sparse 1.0 member's data takes.

    `data` holds at least the first line, the count of pieces; each piece takes two more.
    """
    first = data[: data.index(b"\n")]
    if not _MAP_NUMBER.fullmatch(first):
        raise HeaderFault("its sparse map does not start with a count")
    return 1 + 2 * int(first)


def sparse_map_1_0(data: bytes, lines: int) -> tuple[list[tuple[int, int]], int]:
    """The pairs of a GNU sparse 1.0 map of `lines` lines at the start of `data`, and the
    bytes it takes, whole blocks."""
    numbers = data.split(b"\n", lines)[1:lines]
    if any(not _MAP_NUMBER.fullmatch(n) for n in numbers):
        raise HeaderFault("its sparse map holds something other than numbers")
    used = sum(len(n) + 1 for n in numbers) + data.index(b"\n") + 1
    values = [int(n) for n in numbers]
    return list(zip(values[::2], values[1::2], strict=True)), blocks(used)


def check_sparse(pairs: list[tuple[int, int]], *, realsize: int, stored: int) -> None:
    """Refuse a sparse map whose pieces overlap, run past the file, or miss the stored bytes."""
    end = 0
    for offset, size in pairs:
        if offset < end:
            raise HeaderFault("its sparse map has pieces out of order or overlapping")
        end = offset + size
        if end > realsize:
            raise HeaderFault(f"its sparse map runs past the file's size ({realsize})")
    if sum(size for _offset, size in pairs) != stored:
        raise HeaderFault(f"its sparse map does not account for its {stored} stored bytes")
