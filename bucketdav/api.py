"""The HTTP API: uploads, checksum look-ups, configuration and health, as a Bottle app."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import bottle
from multipart import parse_options_header

from bucketdav import pages
from bucketdav.access.decide import ACCESS_KEY, Decision, decide
from bucketdav.errors import (
    BadRequest,
    BucketError,
    Busy,
    ChecksumCollision,
    ChecksumMismatch,
    ClientGone,
    LengthRequired,
    NotAllowed,
    NotMultipart,
    NotSignedIn,
    StoreFull,
    TooLarge,
    TooSlow,
    UnknownContent,
    UnsafeArchive,
)
from bucketdav.observe.logs import UPLOAD, upload_facts
from bucketdav.observe.metrics import CONTENT_TYPE as METRICS_TYPE
from bucketdav.observe.metrics import Metrics
from bucketdav.public_url import base_url
from bucketdav.settings import Settings, format_size
from bucketdav.store.blobs import Blob, Store
from bucketdav.uploads.naming import filename_segment, normalize_digest
from bucketdav.uploads.pipeline import describe, process
from bucketdav.uploads.receive import (
    CHECKSUM_HEADERS,
    MULTIPART_SLACK,
    body_chunks,
    declared_length,
    deploy_digest,
    expected_checksums,
    read_multipart,
    utf8_name,
    verify_checksums,
)
from bucketdav.uploads.templates import Template, TemplateSkipped, render_template

log = logging.getLogger(__name__)

# First path segments the API answers; every other path belongs to WebDAV.
API_ROOTS = frozenset({"upload", "checksum", "config", "healthz", "metrics", "static", "connect"})
STATIC_DIR = Path(__file__).parent / "static"
STATUS_OF: dict[type[BucketError], int] = {
    BadRequest: 400,
    ClientGone: 400,
    NotSignedIn: 401,
    NotAllowed: 403,
    TooSlow: 408,
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
# What a 401 answers: browsers then ask for a name and password.
CHALLENGE = 'Basic realm="bucketdav"'
# The environ key under which a refusal's reason reaches the access-log line (server.py).
LOG_REASON = "bucketdav.reason"
INTERNAL_ERROR = "internal error; the server log has the details"
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


# -- the application ----------------------------------------------------------------------


class Api:
    """The API's handlers over one store; `app()` builds the Bottle application."""

    def __init__(self, settings: Settings, store: Store, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
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
        route("/connect", ["GET"], self.connect)
        if self.metrics is not None:
            route("/metrics", ["GET"], self.metrics_text)
        for code in (400, 404, 405, 413, 500):
            app.error(code)(_bottle_error)
        return app

    # -- pages and facts --

    def page(self) -> str:
        bottle.response.content_type = "text/html; charset=utf-8"
        bottle.response.set_header("Content-Security-Policy", PAGE_CSP)
        return pages.upload_page(self.settings)

    def connect(self) -> str:
        bottle.response.content_type = "text/html; charset=utf-8"
        bottle.response.set_header("Content-Security-Policy", PAGE_CSP)
        identity = bottle.request.environ.get(ACCESS_KEY)
        # With access control the commands pass credentials, with this user's name if known.
        user = None if identity is None else identity.name if identity.known else ""
        return pages.connect_page(_base_url(self.settings), user=user)

    def static(self, name: str) -> Any:
        response = bottle.static_file(name, root=str(STATIC_DIR))
        response.set_header("Cache-Control", "no-cache")
        return response

    def metrics_text(self) -> bytes:
        bottle.response.content_type = METRICS_TYPE
        return self.metrics.exposition() if self.metrics else b""

    def config(self) -> str:
        return _json(self.settings.public())

    def healthz(self) -> str:
        ok, reason = self.store.healthy()
        bottle.response.status = 200 if ok else 503
        return _json(
            {
                "code": 200 if ok else 503,
                "status": "ok" if ok else "unavailable",
                "detail": reason,
                "node": self.store.node,
            }
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
                "url": f"{_base_url(self.settings)}/{quote(self.store.relative(blob.path))}",
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
        headers = _headers()
        self._may_file(headers)
        length = declared_length(environ)
        limit = self.settings.max_content_length
        self._refuse_early(length, limit + MULTIPART_SLACK)
        expected = expected_checksums(headers, self.store.algorithm)
        with (
            self._slot(),
            self.store.staged(extra=_extra_algorithms(expected, self.store)) as staged,
        ):
            chunks = body_chunks(
                environ,
                length=length,
                limit=limit + MULTIPART_SLACK,
                timeout=self.settings.timeout,
            )
            filename = read_multipart(chunks, boundary, staged, max_file=limit)
            verify_checksums(staged, expected, self.store.algorithm)
            blob = self.store.commit(staged)
            return self._finish(blob, filename, headers)

    def put(self, name: str = "") -> str:
        environ = bottle.request.environ
        # Bottle drops bytes of the path that are not UTF-8; take the name from the raw path.
        name = utf8_name(environ.get("bottle.raw_path", "").partition("/upload")[2].lstrip("/"))
        headers = _headers()
        self._may_file(headers)
        length = declared_length(environ)
        deploy = headers.get("x-checksum-deploy", "").strip().lower() == "true"
        if deploy and length == 0:
            with self._slot():
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
            chunks = body_chunks(environ, length=length, limit=limit, timeout=self.settings.timeout)
            if deploy and length is None:
                first = next(chunks, None)
                if first is None:
                    # An empty chunked body (what `curl -T /dev/null` sends) is a deploy too.
                    return self._deploy(name, headers)
                chunks = itertools.chain((first,), chunks)
            for chunk in chunks:
                staged.write(chunk)
            verify_checksums(staged, expected, self.store.algorithm)
            blob = self.store.commit(staged)
            return self._finish(blob, name, headers)

    def _deploy(self, name: str, headers: dict[str, str]) -> str:
        """Process stored content as if just uploaded; the caller holds an upload slot.

        It may write as much as an upload (a decompressed blob, a tree, copies past the
        hard-link limit), so it takes a slot and passes the space check like one.
        """
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
        self.store.check_space(0)
        blob = self.store.find_flushed(digest)
        if blob is None:
            raise UnknownContent(f"no content with {self.store.algorithm} {digest}; send the bytes")
        return self._finish(blob, name, headers, deployed=True)

    def _finish(
        self, blob: Blob, raw_name: str, headers: dict[str, str], *, deployed: bool = False
    ) -> str:
        outcome = process(
            self.store,
            self.settings,
            blob,
            filename=filename_segment(raw_name),
            headers=headers,
            metrics=self.metrics,
        )
        # Said on the request's access-log line: one line per request.
        bottle.request.environ[UPLOAD] = upload_facts(
            outcome, self.store.algorithm, deployed=deployed
        )
        return _json(
            describe(
                outcome,
                store=self.store,
                base_url=_base_url(self.settings),
                archive_uri=self.settings.archive_uri,
            )
        )

    def _may_file(self, headers: dict[str, str]) -> None:
        """Refuse, before the body is read, an upload filing a replica where it may not."""
        identity = bottle.request.environ.get(ACCESS_KEY)
        if identity is None:
            return
        folders = replica_folders(self.settings.replicate, headers)
        decision = decide(identity, bottle.request.method, "/upload", folders)
        if decision is Decision.ALLOW:
            return
        outside = ", ".join(f"replica/{folder}/" for folder in folders)
        if decision is Decision.UNAUTHORIZED:
            raise NotSignedIn(f"filing under {outside} needs credentials")
        raise NotAllowed(f"{identity.name} may not file uploads under {outside}")

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


def replica_folders(templates: Sequence[Template], headers: dict[str, str]) -> list[str]:
    """The folders under replica/ an upload with these headers would be filed in."""
    folders = []
    for template in templates:
        try:
            folders.append("/".join(render_template(template, headers)))
        except TemplateSkipped:
            continue
    return folders


def _extra_algorithms(expected: list[tuple[str, str, str]], store: Store) -> set[str]:
    return {algo for _h, algo, _d in expected if algo != store.algorithm}


def _headers() -> dict[str, str]:
    """Request headers by lower-case name, values decoded as UTF-8 with bad bytes kept.

    Credentials are left out: no replication template can file them into a path.
    """
    environ = bottle.request.environ
    headers = {
        key[5:].replace("_", "-").lower(): utf8_name(value)
        for key, value in environ.items()
        if key.startswith("HTTP_") and isinstance(value, str) and key != "HTTP_AUTHORIZATION"
    }
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = environ[key]
    return headers


def _base_url(settings: Settings) -> str:
    """This server's scheme://host[:port] for absolute URLs in answers (public_url.base_url)."""
    return base_url(
        bottle.request.environ,
        public_url=settings.public_url,
        proxies=settings.trusted_proxies,
        listen_host=settings.host,
    )


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
            # Said on the request's access-log line: one line per request.
            bottle.request.environ[LOG_REASON] = str(exc)
            return _error_response(code, str(exc), retry=isinstance(exc, Busy))
        except bottle.HTTPResponse:
            raise
        except Exception:
            log.exception("unexpected error in %s %s", bottle.request.method, bottle.request.path)
            return _error_response(500, INTERNAL_ERROR)

    app.route(path, methods, wrapper)


def _error_response(code: int, message: str, *, retry: bool = False) -> bottle.HTTPResponse:
    headers = {"Content-Type": "application/json"}
    if code in (400, 408, 411, 413):
        # The client may still be sending a body we will not read.
        headers["Connection"] = "close"
    if retry:
        headers["Retry-After"] = str(Busy.retry_after)
    if code == 401:
        headers["WWW-Authenticate"] = CHALLENGE
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
        message = INTERNAL_ERROR
    return error_json(error.status_code, message)
