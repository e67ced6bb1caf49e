"""Reading an upload's body: raw or multipart, streamed and bounded, and its checksum headers."""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from multipart import MultipartError, MultipartSegment, PushMultipartParser

from bucketdav.errors import BadRequest, ChecksumMismatch, ClientGone, TooLarge, TooSlow
from bucketdav.settings import format_size
from bucketdav.store.staging import StagedFile
from bucketdav.uploads.naming import normalize_digest

READ_SIZE = 256 << 10
# Room for multipart boundaries and part headers on top of MAX_CONTENT_LENGTH.
MULTIPART_SLACK = 64 * 1024
# Form fields other than `file` are small; more than this is not a form we expect.
MAX_OTHER_PARTS_BYTES = 64 * 1024
# A body must bring at least this much per BUCKETDAV_TIMEOUT seconds, or it is cut off:
# a client trickling a byte a second would otherwise hold a thread and an upload slot.
MIN_BYTES_PER_TIMEOUT = 16 * 1024
# A read that has waited this long returns what it has rather than fill its whole buffer.
PARTIAL_READ_AFTER = 0.5

# Checksum headers Artifactory clients send, and the hashlib algorithm of each.
CHECKSUM_HEADERS = {
    "x-checksum-md5": "md5",
    "x-checksum-sha1": "sha1",
    "x-checksum-sha256": "sha256",
}
# -- reading the request body -------------------------------------------------------------


def declared_length(environ: dict[str, Any]) -> int | None:
    """Content-Length as an int; None when the body is chunked (Cheroot de-chunks it)."""
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return None
    text = environ.get("CONTENT_LENGTH", "").strip()
    if not text:
        return 0
    if not text.isdigit():
        raise BadRequest(f"Content-Length {text!r} is not a byte count")
    return int(text)


def socket_reader(stream: Any) -> Callable[[int], bytes] | None:
    """A faster `read` for Cheroot's Content-Length body, or None for any other input.

    Cheroot reads through the pure-Python BufferedReader; once the bytes it has buffered
    are used up, reading straight from its socket gives the same bytes with far less work.
    """
    rfile = getattr(stream, "rfile", None)
    raw = getattr(rfile, "raw", None)
    if not (
        hasattr(stream, "remaining")
        and hasattr(rfile, "has_data")
        and isinstance(raw, socket.SocketIO)
    ):
        return None

    def read(size: int) -> bytes:
        size = min(size, stream.remaining)
        if size <= 0:
            return b""
        if rfile.has_data():
            data = rfile.read1(size)
        else:
            buffer = bytearray(size)
            view = memoryview(buffer)
            got = 0
            started = time.monotonic()
            while got < size and (count := raw.readinto(view[got:])):
                got += count
                if time.monotonic() - started > PARTIAL_READ_AFTER:
                    break  # a slow body still comes in chunks, so its rate can be checked
            data = bytes(view[:got])
        stream.remaining -= len(data)
        rfile.bytes_read += len(data)
        return data

    return read


def stop_reading(environ: dict[str, Any]) -> None:
    """Leave the rest of the request body unread and have the connection closed after the answer.

    Cheroot would otherwise read an unread Content-Length body to its end, into one buffer
    of that size, before answering (or take a chunked one for the next request); zeroing
    what it thinks remains and shutting the socket's read side ends both.
    """
    stream = environ.get("wsgi.input")
    if hasattr(stream, "remaining"):
        stream.remaining = 0
    raw = getattr(getattr(stream, "rfile", None), "raw", None)
    sock = getattr(raw, "_sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)


def body_left_unread(environ: dict[str, Any]) -> bool:
    """True when the request still has body bytes the application did not read."""
    stream = environ.get("wsgi.input")
    if getattr(stream, "remaining", 0):
        return True
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    return chunked and getattr(stream, "closed", True) is False


def body_chunks(
    environ: dict[str, Any], *, length: int | None, limit: int, timeout: float | None = None
) -> Iterator[bytes]:
    """Yield the body as it arrives; refuse it past `limit` bytes, and notice a short body.

    With `timeout`, a body that brings less than MIN_BYTES_PER_TIMEOUT bytes in any
    `timeout` seconds is cut off (TooSlow).
    """
    stream = environ["wsgi.input"]
    read = socket_reader(stream) or stream.read
    received = 0
    window_start, window_bytes = time.monotonic(), 0
    while length is None or received < length:
        want = READ_SIZE if length is None else min(READ_SIZE, length - received)
        try:
            chunk = read(want)
        except (OSError, ValueError) as exc:
            # Cheroot raises these for a broken chunked framing or a dropped connection.
            raise ClientGone(f"the request body could not be read: {exc}") from None
        if not chunk:
            if length is not None:
                raise ClientGone(f"the body ended after {received} of {length} bytes")
            return
        received += len(chunk)
        if received > limit:
            raise TooLarge(f"the upload is larger than MAX_CONTENT_LENGTH ({format_size(limit)})")
        if timeout is not None:
            window_bytes += len(chunk)
            now = time.monotonic()
            if now - window_start >= timeout:
                if window_bytes < MIN_BYTES_PER_TIMEOUT:
                    stop_reading(environ)
                    raise TooSlow(
                        f"the body came at {window_bytes} bytes in {now - window_start:.0f}s; "
                        f"send at least {MIN_BYTES_PER_TIMEOUT} bytes per {timeout:g}s"
                    )
                window_start, window_bytes = now, 0
        yield chunk


def read_multipart(
    chunks: Iterator[bytes], boundary: str, staged: StagedFile, *, max_file: int
) -> str:
    """Stream the `file` part of a multipart body into `staged`; return its file name."""
    filename: str | None = None
    target: StagedFile | None = None
    other = 0
    try:
        # Part headers are read as latin-1 (every byte a character) and the file name is then
        # decoded as UTF-8 with bad bytes kept, so a non-UTF-8 name is encoded, not refused.
        with PushMultipartParser(
            boundary, max_header_count=16, max_segment_count=64, header_charset="latin1"
        ) as parser:
            for chunk in chunks:
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        target = None
                        if event.name == "file" and event.filename is not None:
                            if filename is not None:
                                raise BadRequest("send one part named 'file' per request")
                            filename, target = utf8_name(event.filename), staged
                    elif event is None:
                        target = None
                    elif target is not None:
                        target.write(event)
                        if target.size > max_file:
                            raise TooLarge(
                                "the upload is larger than MAX_CONTENT_LENGTH "
                                f"({format_size(max_file)})"
                            )
                    else:
                        other += len(event)
                        if other > MAX_OTHER_PARTS_BYTES:
                            raise BadRequest("form fields other than 'file' are too large")
            for event in parser.parse(b""):
                if target is not None and isinstance(event, bytes | bytearray):
                    target.write(event)
    except MultipartError as exc:
        raise BadRequest(f"malformed multipart/form-data body: {exc}") from None
    if filename is None:
        raise BadRequest("no part named 'file': send it as curl -F 'file=@name' URL/upload")
    if not filename.strip():
        raise BadRequest("the 'file' part has an empty filename")
    return filename


def utf8_name(latin1: str) -> str:
    """A header value read as latin-1, decoded as the UTF-8 clients send (bad bytes escaped)."""
    try:
        return latin1.encode("latin1").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # already decoded, e.g. from an RFC 2231 filename*
        return latin1


# -- checksum headers ---------------------------------------------------------------------


def expected_checksums(headers: dict[str, str], algorithm: str) -> list[tuple[str, str, str]]:
    """(header, algorithm, expected hex) for every checksum header the client sent."""
    expected: list[tuple[str, str, str]] = []
    if "content-md5" in headers:
        try:
            raw = base64.b64decode(headers["content-md5"].strip(), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 16:
            raise BadRequest("Content-MD5 must be the base64 of a 16-byte MD5 digest (RFC 1864)")
        expected.append(("Content-MD5", "md5", raw.hex()))
    named = dict(CHECKSUM_HEADERS)
    named["x-checksum"] = algorithm
    for header, algo in named.items():
        if header in headers:
            size = _digest_size(algo)
            digest = normalize_digest(headers[header], size)
            if digest is None:
                raise BadRequest(f"{header} must be {2 * size} hex digits of {algo}")
            expected.append((header, algo, digest))
    return expected


@functools.cache
def _digest_size(algorithm: str) -> int:
    return hashlib.new(algorithm).digest_size


def verify_checksums(
    staged: StagedFile, expected: list[tuple[str, str, str]], algorithm: str
) -> None:
    """Raise ChecksumMismatch unless every expected checksum matches what was received."""
    for header, algo, want in expected:
        got = staged.hexdigest() if algo == algorithm else staged.extra_hexdigest(algo)
        if got != want:
            raise ChecksumMismatch(
                f"{header} says {algo} {want} but the content received has {got}; nothing was kept"
            )


def deploy_digest(headers: dict[str, str], algorithm: str, digest_size: int) -> str | None:
    """The digest a deploy-by-checksum names in CHECKSUM_TYPE, or None if none is given."""
    for header in ("x-checksum", f"x-checksum-{algorithm.replace('_', '-')}"):
        if header in headers:
            digest = normalize_digest(headers[header], digest_size)
            if digest is None:
                raise BadRequest(f"{header} must be {2 * digest_size} hex digits of {algorithm}")
            return digest
    return None
