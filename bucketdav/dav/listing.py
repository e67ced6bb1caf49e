"""The HTML listing of a WebDAV folder, for people browsing the store.

The page loads `/static/bucketdav.css` and `/static/listing.js` and has no inline script
or style, so it must be sent with a Content-Security-Policy that allows both from 'self'
and nothing else; `bucketdav.api.PAGE_CSP` is that policy:
`default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;
connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'`.
Without JavaScript the page still works: rows come in name order, folders first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from html import escape
from urllib.parse import quote

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


@dataclass(frozen=True)
class Entry:
    """One row of a listing: a file or a folder inside the listed folder."""

    name: str
    href: str
    is_dir: bool
    size: int | None
    mtime: float
    checksum: str | None
    count: int | None


def human_size(size: int) -> str:
    """A byte count as people read it: `512 B`, `1.5 KiB`, `12 MiB`."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            break
    return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"


def _text(value: str) -> str:
    """HTML-escaped text; bytes that were not UTF-8 (kept as surrogates) show as U+FFFD."""
    clean = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return escape(clean, quote=True)


# Everything an already-encoded href may hold; anything else (spaces, non-ASCII) gets encoded.
_HREF_SAFE = "/%:?#[]@!$&'()*+,;=~-._"


def _href(value: str) -> str:
    return escape(quote(value, safe=_HREF_SAFE, errors="surrogateescape"), quote=True)


def _stamp(mtime: float) -> tuple[str, str]:
    """The machine (ISO 8601) and human (minute, UTC) forms of a modification time."""
    moment = time.gmtime(mtime)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", moment), time.strftime("%Y-%m-%d %H:%M", moment)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _order(entry: Entry) -> tuple[bool, str, str]:
    return (not entry.is_dir, entry.name.casefold(), entry.name)


def breadcrumb(path: str) -> list[tuple[str, str]]:
    """(label, href) pairs from the root to `path`, each href percent-encoded."""
    crumbs = [("bucketdav", "/")]
    href = "/"
    for segment in [s for s in path.split("/") if s]:
        href += quote(segment, safe="", errors="surrogateescape") + "/"
        crumbs.append((segment, href))
    return crumbs


def _row(entry: Entry) -> str:
    iso, shown = _stamp(entry.mtime)
    kind = "dir" if entry.is_dir else "file"
    name = _text(entry.name) + ("/" if entry.is_dir else "")
    if entry.is_dir:
        size_key = -1 if entry.count is None else entry.count
        size_cell = (
            '<span class="muted">folder</span>'
            if entry.count is None
            else _plural(entry.count, "item")
        )
    else:
        size_key = entry.size or 0
        size_cell = (
            f'<span title="{size_key} bytes">{human_size(size_key)}</span>'
            if entry.size is not None
            else ""
        )
    checksum = f'<code class="sum">{_text(entry.checksum)}</code>' if entry.checksum else ""
    return (
        f'<tr class="{kind}" data-name="{_text(entry.name.casefold())}" '
        f'data-size="{size_key}" data-mtime="{entry.mtime:.3f}" data-dir="{int(entry.is_dir)}">'
        f'<td class="name"><a class="{kind}" href="{_href(entry.href)}">{name}</a></td>'
        f'<td class="size">{size_cell}</td>'
        f'<td class="date"><time datetime="{iso}">{shown}</time></td>'
        f'<td class="checksum">{checksum}</td></tr>'
    )


def render_listing(
    *,
    path: str,
    entries: list[Entry],
    upload_url: str = "/upload",
    algorithm: str | None = None,
    sign_in: bool = False,
) -> str:
    """A full HTML page listing `entries` of the folder at `path` (a decoded URL path).

    `algorithm` (CHECKSUM_TYPE) names the checksums in the column heading when given. With
    `sign_in` (access control on, no credentials sent) the page links to itself with
    `?sign-in`, which asks the browser for a name and password.
    """
    crumbs = breadcrumb(path)
    trail = "".join(
        f'<li><a href="{_href(href)}"'
        + (' aria-current="page"' if index == len(crumbs) - 1 else "")
        + f">{_text(label)}</a></li>"
        for index, (label, href) in enumerate(crumbs)
    )
    title = _text(path if path.startswith("/") else "/" + path)
    parent = (
        f'<p class="up"><a href="{_href(crumbs[-2][1])}">Up to {_text(crumbs[-2][0])}</a></p>'
        if len(crumbs) > 1
        else ""
    )
    rows = "\n".join(_row(entry) for entry in sorted(entries, key=_order))
    files = sum(1 for e in entries if not e.is_dir)
    folders = len(entries) - files
    summary = f"{_plural(folders, 'folder')}, {_plural(files, 'file')}"
    # The root is the whole store, which is not offered as one download.
    downloads = (
        ' <span class="downloads">· <a href="?download=zip">Download .zip</a>'
        ' · <a href="?download=tar">Download .tar</a></span>'
        if len(crumbs) > 1
        else ""
    )
    checksum_heading = f"Checksum ({_text(algorithm)})" if algorithm else "Checksum"
    body = (
        f"""<table id="listing">
<caption class="visually-hidden">Contents of {title}</caption>
<thead><tr><th scope="col" data-key="name" aria-sort="ascending">Name</th>
<th scope="col" data-key="size">Size</th>
<th scope="col" data-key="mtime">Modified (UTC)</th>
<th scope="col" class="checksum">{checksum_heading}</th></tr></thead>
<tbody>
{rows}
</tbody></table>"""
        if entries
        else '<p class="empty">This folder is empty.</p>'
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · bucketdav</title>
<link rel="stylesheet" href="/static/bucketdav.css">
<link rel="icon" href="/static/folder.svg" type="image/svg+xml">
<script src="/static/listing.js" defer></script>
</head>
<body>
<header class="bar">
<nav aria-label="Breadcrumb"><ol class="crumbs">{trail}</ol></nav>
<nav aria-label="Actions" class="actions">
<a href="{_href(upload_url)}">Upload files</a>
<a href="/connect">Connect a drive</a>
{'<a href="?sign-in">Sign in</a>' if sign_in else ""}
</nav>
</header>
<main>
<h1>{title}</h1>
{parent}
<p class="summary">{summary}{downloads}</p>
{body}
</main>
</body></html>
"""
