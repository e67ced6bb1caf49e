"""GET and HEAD of a file: conditional requests, one byte range, streamed in large blocks."""

from __future__ import annotations

import email.utils
import os
import re
import select
import socket
from collections.abc import Callable, Iterator
from typing import Any

from bucketdav.dav.lookup import Node, PublicTree, content_type, is_active
from bucketdav.dav.propfind import http_date

# Cheroot has no sendfile and copies each chunk into its buffer, again after a partial send;
# blocks near the socket buffer size measured faster than 1-4 MiB (bench/dav.py).
BLOCK_SIZE = 256 << 10
# Up to this size a file is read at once: fewer calls per request than an iterator.
SMALL_FILE = 256 << 10
# One range of RFC 9110: ASCII digits only, with optional spaces and tabs around them.
_RANGE_SPEC = re.compile(r"[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*")
_OWS = " \t"
# Past any file size; longer numbers are not converted (int() refuses over 4,300 digits).
_BEYOND = 1 << 64


class Unsatisfiable(ValueError):
    """The Range header asks for bytes the file does not have."""


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The (first, last) byte of a single `bytes=` range; None when it should be ignored."""
    unit, _, spec = header.partition("=")
    if unit.strip(_OWS).lower() != "bytes" or "," in spec:
        return None  # other units and multiple ranges: send the whole file, as RFC 9110 allows
    # str.isdigit() and int() take digits of any script (², ٣); an invalid range is ignored.
    match = _RANGE_SPEC.fullmatch(spec)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if first_text == "":
        if last_text == "":
            return None
        length = _position(last_text)
        if length == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - length), size - 1
    first = _position(first_text)
    last = _position(last_text) if last_text else size - 1
    if last_text and last < first:
        return None
    if first >= size:
        raise Unsatisfiable
    return first, min(last, size - 1)


def _position(digits: str) -> int:
    """A byte position or count of ASCII digits; huge ones are all _BEYOND."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) < 20 else _BEYOND


def _etags(header: str) -> list[str]:
    """The entity tags of an If-Match / If-None-Match header, unquoted, weakness dropped."""
    tags = []
    for item in header.split(","):
        tag = item.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        tags.append(tag.strip('"'))
    return tags


def _date(header: str | None) -> float | None:
    if not header:
        return None
    try:
        return email.utils.parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def precondition(environ: dict[str, Any], etag: str, mtime: float) -> int | None:
    """304 or 412 when a conditional header says so (RFC 9110 order), else None."""
    modified = int(mtime)
    if_match = environ.get("HTTP_IF_MATCH")
    if if_match is not None:
        tags = _etags(if_match)
        if "*" not in tags and etag not in tags:
            return 412
    else:
        since = _date(environ.get("HTTP_IF_UNMODIFIED_SINCE"))
        if since is not None and modified > since:
            return 412
    if_none = environ.get("HTTP_IF_NONE_MATCH")
    if if_none is not None:
        tags = _etags(if_none)
        if "*" in tags or etag in tags:
            return 304
    else:
        since = _date(environ.get("HTTP_IF_MODIFIED_SINCE"))
        if since is not None and modified <= since:
            return 304
    return None


def _range_applies(environ: dict[str, Any], etag: str, mtime: float) -> bool:
    """If-Range: the range holds only while the file is the one the client has part of."""
    if_range = environ.get("HTTP_IF_RANGE")
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.startswith('"'):
        return if_range.strip('"') == etag
    date = _date(if_range)
    return date is not None and int(mtime) == int(date)


class FileBody:
    """A WSGI body reading `length` bytes of an open file from `offset`, closed when done."""

    def __init__(self, fd: int, offset: int, length: int, block: int = BLOCK_SIZE) -> None:
        self.fd = fd
        self.offset = offset
        self.remaining = length
        self.block = block

    def __iter__(self) -> Iterator[bytes]:
        fd, block = self.fd, self.block
        if self.offset:
            os.lseek(fd, self.offset, os.SEEK_SET)
        while self.remaining > 0:
            chunk = os.read(fd, min(block, self.remaining))
            if not chunk:
                break
            self.remaining -= len(chunk)
            yield chunk

    def close(self) -> None:
        """Release the file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SendfileBody(FileBody):
    """Like FileBody, but past the first block the kernel copies the file to the socket.

    The first block goes through Cheroot, which sends the headers with it and flushes both;
    the rest is os.sendfile on Cheroot's own socket, with no copy through Python.
    """

    def __init__(self, fd: int, offset: int, length: int, sock: socket.socket) -> None:
        super().__init__(fd, offset, length)
        self.sock = sock

    def __iter__(self) -> Iterator[bytes]:
        first = os.pread(self.fd, min(self.block, self.remaining), self.offset)
        if not first:
            return
        self.offset += len(first)
        self.remaining -= len(first)
        yield first
        out, timeout = self.sock.fileno(), self.sock.gettimeout()
        while self.remaining > 0:
            try:
                sent = os.sendfile(out, self.fd, self.offset, min(self.remaining, 1 << 30))
            except BlockingIOError:
                if not _writable(out, timeout):
                    raise TimeoutError("the client stopped reading") from None
                continue
            if sent == 0:
                # The file is shorter than announced: the connection must not be reused.
                raise OSError("the file ended before its announced length")
            self.offset += sent
            self.remaining -= sent


def _writable(fd: int, timeout: float | None) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(None if timeout is None else int(timeout * 1000)))


def client_socket(environ: dict[str, Any]) -> socket.socket | None:
    """Cheroot's plain TCP socket of this request, or None (another server, or TLS)."""
    raw = getattr(getattr(environ.get("wsgi.input"), "rfile", None), "raw", None)
    sock = getattr(raw, "_sock", None)
    return sock if type(sock) is socket.socket else None


def file_headers(node: Node, etag: str) -> list[tuple[str, str]]:
    """Headers every answer about this file carries."""
    media = content_type(node.name)
    headers = [
        ("Content-Type", media),
        ("Last-Modified", http_date(node.mtime)),
        ("ETag", f'"{etag}"'),
        ("Accept-Ranges", "bytes"),
        ("X-Content-Type-Options", "nosniff"),
    ]
    if is_active(media):
        headers.append(("Content-Security-Policy", "sandbox"))
    return headers


def serve_file(
    tree: PublicTree,
    node: Node,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    *,
    head: bool,
) -> Any:
    """Answer GET or HEAD of a file node.

    GET opens the file before anything else: its lookup may be a remembered one that was
    not checked again, and a file removed since must be 404, not a 304 or a stale answer.
    """
    fd = -1
    if not head:
        opened = _open(tree, node)
        if opened is None:
            start_response(
                "404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")]
            )
            return [b"not found\n"]
        node, fd = opened
    try:
        status, headers, span = decide(node, environ, etag=tree.etag(node) or "")
    except BaseException:
        _release(fd)
        raise
    if span is None or fd < 0:
        _release(fd)
        start_response(status, headers)
        return [b""]
    first, length = span
    if length <= SMALL_FILE:
        try:
            data = os.pread(fd, length, first)
        finally:
            os.close(fd)
        start_response(status, headers)
        return [data]
    sock = client_socket(environ)
    body = FileBody(fd, first, length) if sock is None else SendfileBody(fd, first, length, sock)
    try:
        start_response(status, headers)
    except BaseException:
        body.close()
        raise
    return body


def decide(
    node: Node, environ: dict[str, Any], *, etag: str
) -> tuple[str, list[tuple[str, str]], tuple[int, int] | None]:
    """The status, headers and (first byte, length) to send of a file; no span: no body."""
    headers = file_headers(node, etag)
    status = precondition(environ, etag, node.mtime)
    if status is not None:
        kept = [h for h in headers if h[0] in ("Last-Modified", "ETag", "X-Content-Type-Options")]
        line = "304 Not Modified" if status == 304 else "412 Precondition Failed"
        return line, [*kept, ("Content-Length", "0")], None
    size = node.size
    first, last, partial = 0, size - 1, False
    range_header = environ.get("HTTP_RANGE")
    if range_header and _range_applies(environ, etag, node.mtime):
        try:
            wanted = parse_range(range_header, size)
        except Unsatisfiable:
            return (
                "416 Range Not Satisfiable",
                [
                    ("Content-Range", f"bytes */{size}"),
                    ("Content-Length", "0"),
                    ("Content-Type", "text/plain"),
                ],
                None,
            )
        if wanted is not None:
            (first, last), partial = wanted, True
    length = last - first + 1 if size else 0
    headers.append(("Content-Length", str(length)))
    if not partial:
        return "200 OK", headers, (first, length)
    headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
    return "206 Partial Content", headers, (first, length)


def _open(tree: PublicTree, node: Node) -> tuple[Node, int] | None:
    """The node and an open descriptor of its file; looked up afresh once if it is gone."""
    try:
        return node, os.open(node.real, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        tree.forget(node)
    fresh = tree.lookup(node.path)
    if fresh is None or fresh.is_dir:
        return None
    try:
        return fresh, os.open(fresh.real, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        tree.forget(fresh)
        return None


def _release(fd: int) -> None:
    if fd >= 0:
        os.close(fd)
