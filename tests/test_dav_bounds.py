"""WebDAV under hostile input: what one request can cost in memory, time and workers is bounded."""

from __future__ import annotations

import contextlib
import re
import socket
from pathlib import Path

import pytest
import webtest
from conftest import LiveServer, make_settings

from bucketdav.dav.app import make_dav_app
from bucketdav.dav.get import Unsatisfiable, parse_range
from bucketdav.store.blobs import Store

MIB = 1 << 20


@pytest.fixture
def store(store_root: Path) -> Store:
    opened = Store(store_root, "md5")
    opened.open()
    return opened


@pytest.fixture(params=[True, False], ids=["fast", "wsgidav"])
def dav(request: pytest.FixtureRequest, store: Store) -> webtest.TestApp:
    app = make_dav_app(make_settings(store.root), store, fast=request.param)
    return webtest.TestApp(app, lint=False)


@pytest.fixture
def fast_dav(store: Store) -> webtest.TestApp:
    return webtest.TestApp(make_dav_app(make_settings(store.root), store), lint=False)


def blob_url(store: Store, data: bytes) -> str:
    return "/" + store.relative(store.ingest([data]).path)


def naming(count: int, *, width: int = 4) -> bytes:
    """A PROPFIND body naming `count` distinct unknown properties of `width`-digit names."""
    props = "".join(f"<x:p{i:0{width}d}/>" for i in range(count))
    return (
        f'<D:propfind xmlns:D="DAV:" xmlns:x="urn:x"><D:prop>{props}</D:prop></D:propfind>'
    ).encode()


def status_kib(server: LiveServer, field: str) -> int:
    """A memory figure (VmRSS, VmHWM) of the live server process, in KiB."""
    text = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def exchange(server: LiveServer, request: bytes) -> bytes:
    """Send raw bytes, return everything the server answers before it closes."""
    chunks = []
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


# -- Range ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "bytes=\u00b2-5",  # superscript two: str.isdigit() says yes, int() says no
        "bytes=0-\u00b3",
        "bytes=-\u00b9",
        "bytes=\u0663-5",  # Arabic-Indic three: int() reads it as 3
        "bytes=\u00a00-4",  # no-break space is not the optional white space of HTTP
        "bytes=+1-4",
        "bytes=0x1-4",
    ],
)
def test_parse_range_ignores_anything_but_ascii_digits(header):
    assert parse_range(header, 10) is None


def test_parse_range_allows_spaces_and_tabs_around_the_numbers():
    assert parse_range("bytes= 1 - 4\t", 10) == (1, 4)


def test_parse_range_takes_numbers_of_any_length():
    assert parse_range("bytes=0-" + "9" * 5000, 10) == (0, 9)
    assert parse_range("bytes=" + "0" * 5000 + "2-3", 10) == (2, 3)
    assert parse_range("bytes=-" + "9" * 5000, 10) == (0, 9)
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=" + "9" * 5000 + "-", 10)


def test_dav_live_range_with_a_non_ascii_digit_sends_the_whole_file(live_server):
    data = b"0123456789"
    url = live_server.path_of(live_server.upload("digits.txt", data).json()["url"]["blob"])
    reply = exchange(
        live_server,
        f"GET {url} HTTP/1.1\r\nHost: t\r\nRange: bytes=".encode() + b"\xb2-5\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply[:300]
    assert reply.endswith(b"\r\n\r\n" + data)
