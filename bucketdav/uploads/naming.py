"""Pure functions that turn client-chosen names and digests into safe store names."""

from __future__ import annotations

import posixpath
import string
import unicodedata

MAX_SEGMENT_BYTES = 200
_HEX = frozenset(string.hexdigits)
_UNSAFE = frozenset("/\\%\x7f") | frozenset(chr(c) for c in range(32))
# Control (C0 and C1), invisible format characters (bidi overrides, zero-width) and line
# separators: encoded so a name cannot hide, reorder or break what a listing shows.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


class NameError_(ValueError):
    """A name cannot become a safe path segment."""


def encode_segment(value: str) -> str:
    """Encode `value` as one path segment, injectively: unsafe characters become %XX.

    `/`, `\\`, `%`, control characters and bytes that were not UTF-8 (surrogate
    escapes) are percent-encoded, as is a leading dot, so `..`, `.` and hidden
    names cannot arise and two different values never give the same segment.
    """
    out = []
    for index, char in enumerate(value):
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by surrogateescape
            out.append(f"%{code - 0xDC00:02X}")
        elif (
            0xD800 <= code <= 0xDFFF
            or char in _UNSAFE
            or (index == 0 and char == ".")
            or (code > 0x7F and unicodedata.category(char) in _UNSAFE_CATEGORIES)
        ):
            out.append("".join(f"%{b:02X}" for b in char.encode("utf-8", "surrogatepass")))
        else:
            out.append(char)
    return "".join(out)


def header_segment(value: str) -> str:
    """Turn a request header value into one safe path segment, or raise NameError_."""
    # Only HTTP's optional whitespace is trimmed: str.strip() would also eat \x1c-\x1f,
    # \x85 and U+2028, making values that differ in them collide on one directory.
    value = value.strip(" \t")
    if not value:
        raise NameError_("the value is empty")
    # Only U+DC80..U+DCFF stand for undecodable bytes; any other lone surrogate is not text,
    # and encoding it could collide with the escape of the bytes that spell it.
    if any(0xD800 <= ord(c) <= 0xDFFF and not 0xDC80 <= ord(c) <= 0xDCFF for c in value):
        raise NameError_("the value is not text (a lone surrogate)")
    segment = encode_segment(value)
    if len(segment.encode("utf-8", "surrogateescape")) > MAX_SEGMENT_BYTES:
        raise NameError_(f"the value is longer than {MAX_SEGMENT_BYTES} bytes")
    return segment


def filename_segment(name: str | None, *, fallback: str = "upload") -> str:
    """Reduce a client's file name to one safe segment: its last component, encoded, bounded."""
    base = (name or "").replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].strip()
    if base in ("", ".", ".."):
        return fallback
    segment = encode_segment(base)
    if len(segment.encode("utf-8", "surrogateescape")) <= MAX_SEGMENT_BYTES:
        return segment
    stem, ext = split_suffix(segment)
    if len(ext) > 32:
        stem, ext = segment, ""
    budget = MAX_SEGMENT_BYTES - len(ext.encode())
    stem = stem.encode("utf-8", "surrogateescape")[:budget].decode("utf-8", "ignore")
    # Cutting through a %XX escape would leave a stray "%" that reads as another name.
    cut = stem.rfind("%", max(0, len(stem) - 2))
    return (stem[:cut] if cut != -1 else stem) + ext


ARCHIVE_SUFFIXES = (
    ".tar.gz",
    ".tar.bz2",
    ".tar.xz",
    ".tgz",
    ".tbz2",
    ".tbz",
    ".txz",
    ".tar",
    ".zip",
)


def split_suffix(name: str) -> tuple[str, str]:
    """Split a name into stem and suffix: `r.tar.gz` gives (`r`, `.tar.gz`)."""
    lower = name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    stem, ext = posixpath.splitext(name)
    return stem, ext


def normalize_digest(text: str, digest_size: int) -> str | None:
    """Return `text` lower-cased if it is a hex digest of `digest_size` bytes, else None."""
    text = text.strip()
    if len(text) != 2 * digest_size or not _HEX.issuperset(text):
        return None
    return text.lower()
