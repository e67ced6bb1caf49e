"""WebDAV side: the public trees of the store, read-only, with fast paths for common requests."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any

from wsgidav.error_printer import ErrorPrinter
from wsgidav.http_authenticator import HTTPAuthenticator
from wsgidav.request_resolver import RequestResolver
from wsgidav.wsgidav_app import WsgiDAVApp

from bucketdav.access.decide import ACCESS_KEY, may_read, on_the_way, sees
from bucketdav.access.rules import Identity
from bucketdav.api import PAGE_CSP, status_of
from bucketdav.dav import listing
from bucketdav.dav.download import Downloads, download_kind, query, saved_name, with_attachment
from bucketdav.dav.get import serve_file
from bucketdav.dav.lookup import Node, PublicTree, count_members
from bucketdav.dav.propfind import BadPropfind, Renderer, href_of, parse_propfind
from bucketdav.dav.provider import StoreProvider
from bucketdav.dav.walk import Readable
from bucketdav.errors import ClientGone, TooLarge
from bucketdav.settings import Settings
from bucketdav.store.blobs import Store
from bucketdav.uploads.receive import body_chunks, stop_reading

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
READ_METHODS = frozenset({"OPTIONS", "GET", "HEAD", "PROPFIND"})
ALLOW = "OPTIONS, GET, HEAD, PROPFIND"
# A PROPFIND names a few properties; no read method needs a bigger body.
MAX_BODY = 64 << 10
_CLOSE = (("Connection", "close"),)
# A browser listing shows checksums of files that are not blobs while hashing stays cheap.
LISTING_HASH_BUDGET = 16 << 20
# Entries a listing may read to count its folders' members; past it, counts are left out.
LISTING_COUNT_BUDGET = 10_000
FINITE_DEPTH = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:error xmlns:D="DAV:"><D:propfind-finite-depth/></D:error>\n'
)


def dav_config(provider: StoreProvider) -> dict[str, Any]:
    """The WsgiDAV configuration: anonymous read, no locks, no dead properties, no browser."""
    return {
        "provider_mapping": {"/": provider},
        "simple_dc": {"user_mapping": {"*": True}},
        "http_authenticator": {
            "accept_basic": True,
            "accept_digest": False,
            "default_to_digest": False,
        },
        "lock_storage": None,
        "property_manager": None,
        "dir_browser": {"enable": False},
        "middleware_stack": [ErrorPrinter, HTTPAuthenticator, RequestResolver],
        "logging": {"enable": False},
        "verbose": 1,
        "suppress_version_info": True,
        "block_size": 1 << 20,
    }


def make_dav_app(settings: Settings, store: Store, *, fast: bool = True) -> WsgiApp:
    """The read-only WebDAV application over blob/, explode/ and replica/ of `store`.

    With `fast` off, every read goes through WsgiDAV's generic code (tests compare the two).
    """
    tree = PublicTree(str(store.root), store.algorithm)
    wsgidav = WsgiDAVApp(dav_config(StoreProvider(tree)))
    downloads = Downloads(
        tree.root,
        max_files=settings.download_max_files,
        max_bytes=settings.download_max_bytes,
        deflate=settings.download_deflate,
    )
    return DavApp(tree, wsgidav, fast=fast, timeout=settings.timeout, downloads=downloads)


def _plain(
    start_response: Callable[..., Any],
    status: str,
    text: str,
    extra: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    body = text.encode("utf-8")
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *extra],
    )
    return [body]


def decode_path(environ: dict[str, Any]) -> str | None:
    """PATH_INFO as text (WSGI hands it over as latin-1 of the raw bytes); None if not UTF-8."""
    raw = environ.get("PATH_INFO") or "/"
    if raw.isascii():
        return raw  # the same text either way; no copies of a path the client made long
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return None


def _body_length(environ: dict[str, Any]) -> int | None:
    """The declared body length, -1 for a chunked body, None when the header is invalid."""
    text = (environ.get("CONTENT_LENGTH") or "").strip()
    if not text:
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        return -1 if chunked else 0
    return int(text) if text.isascii() and text.isdigit() else None


def read_bounded(environ: dict[str, Any], limit: int, *, timeout: float | None) -> bytes | None:
    """The request body, or None when it is longer than `limit`.

    The uploads' rate rule applies (TooSlow under MIN_BYTES_PER_TIMEOUT per `timeout`
    seconds), and a body that ends early is ClientGone: a small body sent slowly would
    otherwise hold a worker for as long as the client likes.
    """
    length = _body_length(environ)
    if length is None or length > limit:
        return None
    if length == 0:
        return b""
    data = bytearray()
    try:
        for chunk in body_chunks(
            environ, length=None if length < 0 else length, limit=limit, timeout=timeout
        ):
            data += chunk
    except TooLarge:
        return None
    return bytes(data)


def _streamed(
    start_response: Callable[..., Any],
    status: str,
    headers: list[tuple[str, str]],
    chunks: Iterator[bytes],
) -> Iterable[bytes]:
    """Send `chunks` with a Content-Length when they are only one, else one by one as made."""
    first = next(chunks)
    second = next(chunks, None)
    if second is None:
        start_response(status, [*headers, ("Content-Length", str(len(first)))])
        return [first]
    start_response(status, headers)
    return _chained(first, second, chunks)


def _chained(first: bytes, second: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    # A generator, so that closing the answer (a client gone) closes `rest` and its listing.
    yield first
    yield second
    yield from rest


def member_counts(folders: Iterable[Node], budget: int) -> dict[str, int]:
    """Member counts of `folders` by path, in order, until `budget` entries have been read.

    Each folder costs one more than its members (opening it is work too, even empty).
    """
    counts: dict[str, int] = {}
    for folder in folders:
        if budget <= 0:
            break
        try:
            count = count_members(folder.real, budget - 1)
        except OSError:
            budget -= 1
            continue
        if count is None:
            break
        counts[folder.path] = count
        budget -= count + 1
    return counts


def _only_on_the_way(environ: dict[str, Any], node: Node) -> bool:
    """True for a file the identity may not read that its rights let through as a folder."""
    identity = environ.get(ACCESS_KEY)
    return identity is not None and not node.is_dir and not may_read(identity, node.path)


def _readable(environ: dict[str, Any], node: Node) -> Readable | None:
    """What of the folder `node` the request's identity may download; None: all of it."""
    identity = environ.get(ACCESS_KEY)
    if identity is None or may_read(identity, node.path):
        return None
    # A folder on the way to what the identity may read: only that, as its listing shows.
    base = node.path.rstrip("/") + "/"
    return Readable(
        may_read=lambda rel: may_read(identity, base + rel),
        may_enter=lambda rel: on_the_way(identity, base + rel),
    )


def _replace_body(environ: dict[str, Any], body: bytes) -> None:
    """Hand WsgiDAV the body already read, as if it were still to be read."""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)


class DavApp:
    """Guards every request (methods, paths, Depth, body size), then answers or hands over."""

    def __init__(
        self,
        tree: PublicTree,
        wsgidav: WsgiApp,
        *,
        fast: bool,
        timeout: float | None = None,
        downloads: Downloads,
    ) -> None:
        self.tree = tree
        self.downloads = downloads
        self.wsgidav = wsgidav
        self.fast = fast
        self.timeout = timeout
        self.renderer = Renderer(tree)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        # Every body is read here, bounded: one left unread would be drained whole into
        # memory by Cheroot before the next request on the connection.
        if _body_length(environ) is None:
            stop_reading(environ)
            return _plain(start_response, "400 Bad Request", "invalid Content-Length\n", _CLOSE)
        try:
            body = read_bounded(environ, MAX_BODY, timeout=self.timeout)
        except ClientGone as exc:
            stop_reading(environ)
            code = status_of(exc)
            return _plain(start_response, f"{code} {HTTPStatus(code).phrase}", f"{exc}\n", _CLOSE)
        if method not in READ_METHODS:
            return self._refuse(environ, start_response, method, close=body is None)
        if body is None:
            stop_reading(environ)
            return _plain(
                start_response,
                "413 Content Too Large",
                f"a {method} request body may have at most {MAX_BODY} bytes\n",
                _CLOSE,
            )
        path = decode_path(environ)
        if path is None:
            return _plain(start_response, "404 Not Found", "not found\n")
        if method == "PROPFIND":
            return self._propfind(environ, start_response, path, body)
        if method in ("GET", "HEAD"):
            # GET opens the file, which checks a remembered lookup for free (serve_file).
            node = self.tree.lookup(path, recheck=method == "HEAD")
            if node is None:
                return _plain(start_response, "404 Not Found", "not found\n")
            params = query(environ)
            if node.is_dir:
                if "download" in params:
                    return self._download(
                        environ, start_response, node, params, head=method == "HEAD"
                    )
                return self._listing(environ, start_response, node, head=method == "HEAD")
            filename = saved_name(params.get("name", ""))
            if filename is not None:
                start_response = with_attachment(start_response, filename)
            if _only_on_the_way(environ, node):
                return _plain(start_response, "403 Forbidden", "not readable with these rights\n")
            if self.fast:
                return serve_file(self.tree, node, environ, start_response, head=method == "HEAD")
        _replace_body(environ, body)
        return self.wsgidav(environ, start_response)

    def _download(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        node: Node,
        params: dict[str, str],
        *,
        head: bool,
    ) -> Iterable[bytes]:
        """A folder as one zip or tar archive (`?download=zip|tar`)."""
        try:
            kind = download_kind(params["download"])
        except ValueError as exc:
            return _plain(start_response, "400 Bad Request", f"{exc}\n")
        if node.path == "/":
            return _plain(
                start_response,
                "400 Bad Request",
                "the root is the whole store: download one of the folders inside it\n",
            )
        return self.downloads.serve(
            node, environ, start_response, kind=kind, head=head, readable=_readable(environ, node)
        )

    def _refuse(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        method: str,
        *,
        close: bool,
    ) -> list[bytes]:
        extra = [("Allow", ALLOW)]
        if close:
            stop_reading(environ)
            extra.extend(_CLOSE)
        return _plain(
            start_response,
            "405 Method Not Allowed",
            f"{method} is not allowed: this WebDAV share is read-only; "
            "upload with POST /upload or PUT /upload/<name>\n",
            extra,
        )

    def _propfind(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        path: str,
        body: bytes,
    ) -> Iterable[bytes]:
        depth = (environ.get("HTTP_DEPTH") or "1").strip().lower()
        if depth == "infinity":
            start_response(
                "403 Forbidden",
                [
                    ("Content-Type", "application/xml; charset=utf-8"),
                    ("Content-Length", str(len(FINITE_DEPTH))),
                ],
            )
            return [FINITE_DEPTH]
        if depth not in ("0", "1"):
            return _plain(start_response, "400 Bad Request", "Depth must be 0 or 1\n")
        try:
            request = parse_propfind(body)
        except BadPropfind as exc:
            return _plain(start_response, "400 Bad Request", f"{exc}\n")
        node = self.tree.lookup(path)
        if node is None:
            return _plain(start_response, "404 Not Found", "not found\n")
        if _only_on_the_way(environ, node):
            return _plain(start_response, "403 Forbidden", "not readable with these rights\n")
        identity = environ.get(ACCESS_KEY)
        # WsgiDAV 4.4 reads propname as "name" and answers it empty, so propname is ours too.
        # WsgiDAV builds its answer whole; only the comparison tests (fast off) send it
        # a PROPFIND, with the same caps on Depth and named properties.
        if self.fast or request.mode == "propname" or identity is not None:
            nodes = self._listed(node, identity) if depth == "1" and node.is_dir else [node]
            return _streamed(
                start_response,
                "207 Multi-Status",
                [("Content-Type", "application/xml; charset=utf-8")],
                self.renderer.multistatus(nodes, request),
            )
        _replace_body(environ, body)
        environ["HTTP_DEPTH"] = depth
        return self.wsgidav(environ, start_response)

    def _listed(self, node: Node, identity: Identity | None) -> Iterator[Node]:
        """A folder and then its members, as they are read; only those the identity sees."""
        yield node
        if identity is None or may_read(identity, node.path):
            yield from self.tree.children(node)
        else:
            # A folder on the way to what the identity may read: only the way is shown.
            yield from (child for child in self.tree.children(node) if sees(identity, child.path))

    def _listing(
        self, environ: dict[str, Any], start_response: Callable[..., Any], node: Node, *, head: bool
    ) -> Iterable[bytes]:
        href = href_of(node)
        if not (environ.get("PATH_INFO") or "/").endswith("/"):
            return _plain(
                start_response, "301 Moved Permanently", f"see {href}\n", [("Location", href)]
            )
        budget = [LISTING_HASH_BUDGET]
        children = list(self.tree.children(node))
        identity = environ.get(ACCESS_KEY)
        counted = children
        if identity is not None and not may_read(identity, node.path):
            # On the way to what the identity may read: only the way, and no counts that
            # would tell how much else a folder holds.
            children = [child for child in children if sees(identity, child.path)]
            counted = [child for child in children if may_read(identity, child.path)]
        counts = member_counts((child for child in counted if child.is_dir), LISTING_COUNT_BUDGET)
        entries = [
            listing.Entry(
                name=child.name,
                href=href_of(child),
                is_dir=child.is_dir,
                size=None if child.is_dir else child.size,
                mtime=child.mtime,
                checksum=self.tree.checksum(child, budget),
                count=counts.get(child.path),
            )
            for child in children
        ]
        page = listing.render_listing(
            path=node.path.rstrip("/") + "/",
            entries=entries,
            upload_url="/upload",
            sign_in=identity is not None and not identity.known,
        ).encode("utf-8")
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(page))),
                ("Content-Security-Policy", PAGE_CSP),
            ],
        )
        return [b""] if head else [page]
