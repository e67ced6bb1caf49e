"""Whole folders as zip or tar (`?download=`), and attachment names for files (`?name=`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl, quote

from bucketdav.api import LOG_REASON
from bucketdav.dav.lookup import Node
from bucketdav.dav.packing import coalesced, tar_stream, zip_stream
from bucketdav.dav.walk import HIDDEN, FolderTooLarge, Member, Readable, bounded, walk

log = logging.getLogger(__name__)

KINDS = {"zip": "application/zip", "tar": "application/x-tar"}


def attachment(filename: str) -> str:
    """A Content-Disposition value that saves as `filename` (RFC 6266, UTF-8 per RFC 5987)."""
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in filename)
    encoded = quote(filename, safe="!#$&+^`|~", errors="surrogateescape")
    if fallback == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def query(environ: dict[str, Any]) -> dict[str, str]:
    """The request's query parameters as text (the first of each name)."""
    text = environ.get("QUERY_STRING") or ""
    if not text:
        return {}
    if not text.isascii():
        text = text.encode("latin-1", "replace").decode("utf-8", "replace")
    found: dict[str, str] = {}
    for key, value in parse_qsl(text, keep_blank_values=True, errors="replace"):
        found.setdefault(key, value)
    return found


def saved_name(text: str) -> str | None:
    """The file name `?name=` asks for: its last path segment, without control characters."""
    name = HIDDEN.sub("", text.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    if name in ("", ".", "..") or len(name.encode("utf-8", "replace")) > 255:
        return None
    return name


def with_attachment(start_response: Callable[..., Any], filename: str) -> Callable[..., Any]:
    """`start_response` that names successful answers as a download of `filename`."""
    value = attachment(filename)

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if status.startswith("2"):
            headers = [*headers, ("Content-Disposition", value)]
        return start_response(status, headers, exc_info)

    return start


def download_kind(value: str) -> str:
    """The archive kind `?download=` asks for; ValueError when it is neither zip nor tar."""
    if value not in KINDS:
        raise ValueError("download must be zip or tar")
    return value


class Downloads:
    """Answers `GET <folder>/?download=zip|tar` within the download bounds."""

    def __init__(self, root: str, *, max_files: int, max_bytes: int, deflate: str = "auto") -> None:
        self.root = root
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.deflate = deflate

    def members(
        self, node: Node, *, kind: str, readable: Readable | None = None
    ) -> Iterator[Member]:
        """The members a download of `node` holds, raising FolderTooLarge past the bounds."""
        return bounded(
            walk(self.root, node.real, keep_links=kind == "tar", readable=readable),
            max_files=self.max_files,
            max_bytes=self.max_bytes,
        )

    def serve(
        self,
        node: Node,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        *,
        kind: str,
        head: bool,
        readable: Readable | None = None,
    ) -> Iterable[bytes]:
        """Answer a download of the folder `node`: 413 before any byte when it is too large."""
        try:
            for _ in self.members(node, kind=kind, readable=readable):
                pass
        except FolderTooLarge as exc:
            body = f"{exc}\n".encode()
            environ[LOG_REASON] = "folder too large to download"
            start_response(
                "413 Content Too Large",
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
            )
            return [body]
        top = node.name or "bucketdav"
        start_response(
            "200 OK",
            [
                ("Content-Type", KINDS[kind]),
                ("Content-Disposition", attachment(f"{top}.{kind}")),
                ("Cache-Control", "no-store"),
            ],
        )
        if head:
            return [b""]
        return self._stream(node, environ, kind=kind, top=top, readable=readable)

    def _stream(
        self,
        node: Node,
        environ: dict[str, Any],
        *,
        kind: str,
        top: str,
        readable: Readable | None,
    ) -> Iterator[bytes]:
        members = self.members(node, kind=kind, readable=readable)
        pieces = (
            tar_stream(members, top)
            if kind == "tar"
            else zip_stream(members, top, deflate=self.deflate)
        )
        try:
            yield from coalesced(pieces)
        except (OSError, ValueError, FolderTooLarge) as exc:
            # The archive cannot be finished; ending the answer with an error (not the end of
            # the chunked body) tells the client it is incomplete.
            environ[LOG_REASON] = f"download broken off: {exc}"
            log.warning("download of %s broken off: %s", node.path, exc)
            raise
