"""Reading an upload's body: raw or multipart, streamed and bounded, and its checksum headers."""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import re
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
# A chunk-size line is hex digits only, then extensions (RFC 9112 7.1): anything looser is
# how a proxy in front and this server come to disagree on where a request ends.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
CHUNK_SIZE_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*"
    + _TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + _TOKEN
    + rb"|"
    + _QUOTED
    + rb"))?)*\r\n"
)
TRAILER_LINE = re.compile(_TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n")
# Bounds on the framing around the data: one chunk-size line, and all trailer fields.
MAX_CHUNK_LINE = 4096
MAX_TRAILERS = 16 << 10

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
    """Leave the rest of the body unread: the server ends the connection after the answer."""
    with contextlib.suppress(AttributeError):
        environ.get("wsgi.input").stopped = True


def body_left_unread(environ: dict[str, Any]) -> bool:
    """True when the request still has body bytes the application did not read."""
    return left_unread(environ.get("wsgi.input"))


def left_unread(stream: Any) -> bool:
    """True when a request body stream has not been read to its end (or reading was stopped)."""
    if getattr(stream, "stopped", False) or getattr(stream, "remaining", 0):
        return True
    return isinstance(stream, ChunkedBody) and not stream.finished


class ChunkedBody:
    """wsgi.input of a chunked request: strict framing, read in bounded pieces.

    Cheroot's own reader takes each chunk into memory whole, however large it says it is,
    blocks inside it for as long as the client trickles, and reads sizes such as `+5` or
    `0x5` as numbers. Here data comes in pieces of at most the size asked for, as soon as
    some has arrived, so the size limit and the rate rule of `body_chunks` see every piece;
    a framing line that trickles in for longer than `timeout` seconds is TooSlow. Broken
    framing is ValueError, as from any reader of bad data (`body_chunks` answers it with 400).
    """

    def __init__(self, rfile: Any, *, timeout: float | None = None) -> None:
        self.rfile = rfile
        self.timeout = timeout
        self.left = 0
        self.finished = False
        self.stopped = False
        # Body bytes handed out so far, for the access log and metrics.
        self.received = 0

    def read1(self, size: int = READ_SIZE) -> bytes:
        """Up to `size` bytes of the body, once some have come; b"" at its end."""
        pieces: list[bytes] = []
        got = 0
        started = time.monotonic()
        while got < size and not self.finished:
            if not self.left:
                if got and not self.rfile.has_data():
                    break  # hand over what has come rather than wait for the next chunk
                self._next_chunk()
                continue
            piece = self._piece(min(size - got, self.left))
            pieces.append(piece)
            got += len(piece)
            self.left -= len(piece)
            if not self.left:
                self._chunk_end()
            if time.monotonic() - started > PARTIAL_READ_AFTER:
                break
        self.received += got
        return b"".join(pieces)

    def read(self, size: int | None = -1) -> bytes:
        """`size` bytes of the body, fewer only at its end; all of it when `size` is negative."""
        pieces: list[bytes] = []
        got = 0
        while size is None or size < 0 or got < size:
            piece = self.read1(READ_SIZE if size is None or size < 0 else size - got)
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        return b"".join(pieces)

    def readline(self, size: int | None = -1) -> bytes:
        """One line of the body (up to `size` bytes)."""
        line = bytearray()
        while size is None or size < 0 or len(line) < size:
            if not self.left:
                if self.finished:
                    break
                self._next_chunk()
                continue
            view = self.rfile.peek(1)
            if not view:
                raise ClientGone("the body ended inside a chunk")
            want = min(len(view), self.left)
            if size is not None and size >= 0:
                want = min(want, size - len(line))
            end = view.find(b"\n", 0, want)
            count = want if end < 0 else end + 1
            line += self.rfile.read(count)
            self.left -= count
            self.received += count
            if not self.left:
                self._chunk_end()
            if end >= 0:
                break
        return bytes(line)

    def readlines(self, hint: int = -1) -> list[bytes]:
        """The remaining lines of the body."""
        return list(iter(self.readline, b""))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def close(self) -> None:
        """Nothing to release: the connection's reader belongs to the server."""

    def _piece(self, size: int) -> bytes:
        """Up to `size` bytes inside the current chunk, at least one."""
        if self.rfile.has_data():
            data = self.rfile.read1(size)
        else:
            # Straight from the socket: the buffered reader would copy every byte twice more.
            buffer = bytearray(size)
            view = memoryview(buffer)
            got = 0
            started = time.monotonic()
            while got < size and (count := self.rfile.raw.readinto(view[got:])):
                got += count
                if time.monotonic() - started > PARTIAL_READ_AFTER:
                    break
            data = bytes(view[:got])
        if not data:
            raise ClientGone("the body ended inside a chunk")
        return data

    def _chunk_end(self) -> None:
        if self.rfile.read(2) != b"\r\n":
            raise ValueError("malformed chunked body: chunk data is not followed by CRLF")

    def _next_chunk(self) -> None:
        size = chunk_size(self._line(MAX_CHUNK_LINE))
        if size:
            self.left = size
            return
        since = time.monotonic()
        total = 0
        while (line := self._line(MAX_TRAILERS - total, since=since)) != b"\r\n":
            total += len(line)
            if not TRAILER_LINE.fullmatch(line):
                raise ValueError(f"malformed chunked body: bad trailer field {_shown(line)}")
        self.finished = True

    def _line(self, limit: int, *, since: float | None = None) -> bytes:
        """One framing line, CRLF included, of at most `limit` bytes."""
        line = bytearray()
        while True:
            view = self.rfile.peek(1)
            if not view:
                raise ClientGone("the body ended inside its chunked framing")
            since = since or time.monotonic()
            room = limit + 1 - len(line)
            end = view.find(b"\n", 0, room)
            line += self.rfile.read(min(len(view), room) if end < 0 else end + 1)
            if end >= 0:
                return bytes(line)
            if len(line) > limit:
                raise ValueError("malformed chunked body: a framing line is too long")
            if self.timeout is not None and time.monotonic() - since > self.timeout:
                raise TooSlow(f"the chunked framing took over {self.timeout:g}s for one line")


def chunk_size(line: bytes) -> int:
    """The size a chunk-size line (CRLF included) declares; ValueError unless it is strict."""
    match = CHUNK_SIZE_LINE.fullmatch(line)
    if match is None:
        raise ValueError(f"malformed chunked body: bad chunk-size line {_shown(line)}")
    return int(match.group(1), 16)


def _shown(line: bytes) -> str:
    return repr(line[:40].removesuffix(b"\r\n").decode("latin-1"))


def body_chunks(
    environ: dict[str, Any], *, length: int | None, limit: int, timeout: float | None = None
) -> Iterator[bytes]:
    """Yield the body as it arrives; refuse it past `limit` bytes, and notice a short body.

    With `timeout`, a body that brings less than MIN_BYTES_PER_TIMEOUT bytes in any
    `timeout` seconds is cut off (TooSlow).
    """
    stream = environ["wsgi.input"]
    read = socket_reader(stream) or getattr(stream, "read1", None) or stream.read
    received = 0
    window_start, window_bytes = time.monotonic(), 0
    while length is None or received < length:
        want = READ_SIZE if length is None else min(READ_SIZE, length - received)
        try:
            chunk = read(want)
        except (OSError, ValueError) as exc:
            # A broken chunked framing (ValueError) or a dropped connection.
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
