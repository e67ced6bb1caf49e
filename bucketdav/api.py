"""The HTTP API: uploads, checksum look-ups, configuration and health, as a Bottle app."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import bottle
from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header

from bucketdav import pages
from bucketdav.errors import (
    BadRequest,
    BucketError,
    Busy,
    ChecksumCollision,
    ChecksumMismatch,
    ClientGone,
    LengthRequired,
    NotMultipart,
    StoreFull,
    TooLarge,
    UnknownContent,
    UnsafeArchive,
)
from bucketdav.naming import filename_segment, normalize_digest
from bucketdav.settings import Settings, format_size
from bucketdav.store import Blob, StagedFile, Store
from bucketdav.uploads import describe, process

log = logging.getLogger(__name__)

# First path segments the API answers; every other path belongs to WebDAV.
API_ROOTS = frozenset({"upload", "checksum", "config", "healthz", "static", "connect"})
STATIC_DIR = Path(__file__).parent / "static"
READ_SIZE = 256 << 10
# Room for multipart boundaries and part headers on top of MAX_CONTENT_LENGTH.
MULTIPART_SLACK = 64 * 1024
# Form fields other than `file` are small; more than this is not a form we expect.
MAX_OTHER_PARTS_BYTES = 64 * 1024

STATUS_OF: dict[type[BucketError], int] = {
    BadRequest: 400,
    ClientGone: 400,
    UnknownContent: 404,
    ChecksumCollision: 409,
    LengthRequired: 411,
    TooLarge: 413,
    NotMultipart: 415,
    ChecksumMismatch: 422,
    UnsafeArchive: 422,
    Busy: 503,
    StoreFull: 507,
}
# Checksum headers Artifactory clients send, and the hashlib algorithm of each.
CHECKSUM_HEADERS = {
    "x-checksum-md5": "md5",
    "x-checksum-sha1": "sha1",
    "x-checksum-sha256": "sha256",
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def status_of(error: BucketError) -> int:
    """The HTTP status for a domain error (the one table that maps them)."""
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 500


def error_json(code: int, message: str) -> str:
    """The one JSON body every API error has."""
    status = bottle.HTTP_CODES.get(code, "Error")
    return json.dumps({"code": code, "status": status, "error": message})


def is_api_path(path: str) -> bool:
    """True when `path` is answered by the API rather than WebDAV."""
    return path.lstrip("/").split("/", 1)[0] in API_ROOTS


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


def body_chunks(environ: dict[str, Any], *, length: int | None, limit: int) -> Iterator[bytes]:
    """Yield the body as it arrives; refuse it past `limit` bytes, and notice a short body."""
    stream = environ["wsgi.input"]
    received = 0
    while length is None or received < length:
        want = READ_SIZE if length is None else min(READ_SIZE, length - received)
        try:
            chunk = stream.read(want)
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
                            filename, target = _utf8_name(event.filename), staged
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


def _utf8_name(latin1: str) -> str:
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
    import hashlib

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


# -- the application ----------------------------------------------------------------------


class Api:
    """The API's handlers over one store; `app()` builds the Bottle application."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.slots = threading.BoundedSemaphore(settings.max_uploads)

    def app(self) -> bottle.Bottle:
        """The Bottle application with every route and JSON error handling."""
        app = bottle.Bottle()
        route = functools.partial(_route, app)
        route("/upload", ["GET"], self.page)
        route("/upload/", ["GET"], self.page)
        route("/upload", ["POST"], self.post)
        route("/upload/", ["POST"], self.post)
        route("/upload", ["PUT"], self.put)
        route("/upload/", ["PUT"], self.put)
        route("/upload/<name:path>", ["PUT"], self.put)
        route("/checksum/<text>", ["GET"], self.checksum)
        route("/config", ["GET"], self.config)
        route("/healthz", ["GET"], self.healthz)
        route("/static/<name:path>", ["GET"], self.static)
        for code in (400, 404, 405, 413, 500):
            app.error(code)(_bottle_error)
        return app

    # -- pages and facts --

    def page(self) -> str:
        bottle.response.content_type = "text/html; charset=utf-8"
        bottle.response.set_header("Content-Security-Policy", PAGE_CSP)
        return pages.upload_page(self.settings)

    def static(self, name: str) -> Any:
        response = bottle.static_file(name, root=str(STATIC_DIR))
        response.set_header("Cache-Control", "no-cache")
        return response

    def config(self) -> str:
        return _json(self.settings.public())

    def healthz(self) -> str:
        ok, reason = self.store.healthy()
        bottle.response.status = 200 if ok else 503
        return _json(
            {"code": 200 if ok else 503, "status": "ok" if ok else "unavailable", "detail": reason}
        )

    def checksum(self, text: str) -> str:
        digest = normalize_digest(text, self.store.digest_size)
        if digest is None:
            raise BadRequest(
                f"{text!r} is not a {self.store.algorithm} digest "
                f"({2 * self.store.digest_size} hex digits)"
            )
        blob = self.store.find(digest)
        if blob is None:
            raise UnknownContent(f"no content with {self.store.algorithm} {digest} is stored")
        return _json(
            {
                "checksum": blob.digest,
                "algorithm": self.store.algorithm,
                "size": blob.size,
                "path": self.store.relative(blob.path),
                "url": f"{_base_url()}/{quote(self.store.relative(blob.path))}",
            }
        )

    # -- uploads --

    def post(self) -> str:
        environ = bottle.request.environ
        kind, options = parse_options_header(environ.get("CONTENT_TYPE", ""))
        if kind != "multipart/form-data":
            raise NotMultipart(
                "POST /upload takes multipart/form-data (curl -F 'file=@name'); "
                "to send the raw bytes use PUT /upload/<name> (curl -T name)"
            )
        boundary = options.get("boundary")
        if not boundary:
            raise BadRequest("multipart/form-data without a boundary")
        length = declared_length(environ)
        limit = self.settings.max_content_length
        self._refuse_early(length, limit + MULTIPART_SLACK)
        headers = _headers()
        expected = expected_checksums(headers, self.store.algorithm)
        with (
            self._slot(),
            self.store.staged(extra=_extra_algorithms(expected, self.store)) as staged,
        ):
            chunks = body_chunks(environ, length=length, limit=limit + MULTIPART_SLACK)
            filename = read_multipart(chunks, boundary, staged, max_file=limit)
            verify_checksums(staged, expected, self.store.algorithm)
            blob = self.store.commit(staged)
            return self._finish(blob, filename, headers)

    def put(self, name: str = "") -> str:
        environ = bottle.request.environ
        # Bottle drops bytes of the path that are not UTF-8; take the name from the raw path.
        name = _utf8_name(environ.get("bottle.raw_path", "").partition("/upload")[2].lstrip("/"))
        headers = _headers()
        length = declared_length(environ)
        if headers.get("x-checksum-deploy", "").strip().lower() == "true" and not length:
            return self._deploy(name, headers)
        if not name.strip("/"):
            raise BadRequest(
                "name the file in the URL: PUT /upload/<name> (curl -T file URL/upload/)"
            )
        if length == 0 and "CONTENT_LENGTH" not in environ:
            raise LengthRequired("send Content-Length or a chunked body (curl -T)")
        limit = self.settings.max_content_length
        self._refuse_early(length, limit)
        expected = expected_checksums(headers, self.store.algorithm)
        with (
            self._slot(),
            self.store.staged(extra=_extra_algorithms(expected, self.store)) as staged,
        ):
            for chunk in body_chunks(environ, length=length, limit=limit):
                staged.write(chunk)
            verify_checksums(staged, expected, self.store.algorithm)
            blob = self.store.commit(staged)
            return self._finish(blob, name, headers)

    def _deploy(self, name: str, headers: dict[str, str]) -> str:
        digest = deploy_digest(headers, self.store.algorithm, self.store.digest_size)
        if digest is None:
            if not any(h in headers for h in CHECKSUM_HEADERS):
                raise BadRequest(
                    f"X-Checksum-Deploy needs X-Checksum with the {self.store.algorithm} digest"
                )
            raise UnknownContent(
                f"this store indexes {self.store.algorithm}; send the bytes instead"
            )
        if not name.strip("/"):
            raise BadRequest("name the file in the URL: PUT /upload/<name>")
        blob = self.store.find(digest)
        if blob is None:
            raise UnknownContent(f"no content with {self.store.algorithm} {digest}; send the bytes")
        log.info("deploy by checksum %s=%s", self.store.algorithm, digest)
        return self._finish(blob, name, headers)

    def _finish(self, blob: Blob, raw_name: str, headers: dict[str, str]) -> str:
        outcome = process(
            self.store, self.settings, blob, filename=filename_segment(raw_name), headers=headers
        )
        return _json(
            describe(
                outcome,
                store=self.store,
                base_url=_base_url(),
                archive_uri=self.settings.archive_uri,
            )
        )

    def _refuse_early(self, length: int | None, limit: int) -> None:
        if length is not None and length > limit:
            raise TooLarge(
                f"the upload ({length} bytes) is larger than MAX_CONTENT_LENGTH "
                f"({format_size(self.settings.max_content_length)})"
            )
        self.store.check_space(length or 0)

    def _slot(self) -> _Slot:
        return _Slot(self.slots, timeout=self.settings.timeout)


class _Slot:
    """Holds one of the bounded upload slots for the duration of a `with` block."""

    def __init__(self, semaphore: threading.BoundedSemaphore, *, timeout: float) -> None:
        self.semaphore = semaphore
        self.timeout = timeout

    def __enter__(self) -> None:
        if not self.semaphore.acquire(timeout=self.timeout):
            raise Busy("too many uploads at once; retry in a few seconds")

    def __exit__(self, *exc: object) -> None:
        self.semaphore.release()


def _extra_algorithms(expected: list[tuple[str, str, str]], store: Store) -> set[str]:
    return {algo for _h, algo, _d in expected if algo != store.algorithm}


def _headers() -> dict[str, str]:
    return {name.lower(): value for name, value in bottle.request.headers.items()}


def _base_url() -> str:
    parts = bottle.request.urlparts
    return f"{parts.scheme}://{parts.netloc}"


def _json(data: Any) -> str:
    bottle.response.content_type = "application/json"
    return json.dumps(data)


def _route(app: bottle.Bottle, path: str, methods: list[str], handler: Callable[..., Any]) -> None:
    """Register `handler`, rendering domain errors and surprises as the one JSON error body."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except BucketError as exc:
            code = status_of(exc)
            log.info("%s %s -> %d %s", bottle.request.method, bottle.request.path, code, exc)
            return _error_response(code, str(exc), retry=isinstance(exc, Busy))
        except bottle.HTTPResponse:
            raise
        except Exception:
            log.exception("unexpected error in %s %s", bottle.request.method, bottle.request.path)
            return _error_response(500, "internal error; the server log has the details")

    app.route(path, methods, wrapper)


def _error_response(code: int, message: str, *, retry: bool = False) -> bottle.HTTPResponse:
    headers = {"Content-Type": "application/json"}
    if code in (411, 413, 400):
        # The client may still be sending a body we will not read.
        headers["Connection"] = "close"
    if retry:
        headers["Retry-After"] = str(Busy.retry_after)
    return bottle.HTTPResponse(body=error_json(code, message), status=code, headers=headers)


def _bottle_error(error: bottle.HTTPError) -> str:
    """Bottle's own errors (no route, wrong method) in the same JSON shape."""
    bottle.response.content_type = "application/json"
    message = {
        404: f"nothing at {bottle.request.path}",
        405: f"{bottle.request.method} is not allowed on {bottle.request.path}",
    }.get(error.status_code, str(error.body or error.status_line))
    if error.exception is not None:
        log.error("unhandled error: %r", error.exception)
        message = "internal error; the server log has the details"
    return error_json(error.status_code, message)
