"""WebDAV under hostile input: what one request can cost in memory, time and workers is bounded."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import webtest
from conftest import LiveServer, make_settings, require_tool

from bucketdav.dav import app as dav_app
from bucketdav.dav import lookup as dav_lookup
from bucketdav.dav import propfind as dav_propfind
from bucketdav.dav.app import make_dav_app
from bucketdav.dav.get import Unsatisfiable, parse_range
from bucketdav.dav.lookup import Node, PublicTree
from bucketdav.dav.propfind import BadPropfind, PropRequest, Renderer, parse_propfind
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


# -- PROPFIND: named properties and a streamed answer ------------------------------------


def test_parse_propfind_takes_up_to_the_cap_of_named_properties():
    limit = dav_propfind.MAX_NAMED_PROPS
    assert len(parse_propfind(naming(limit)).names) == limit
    with pytest.raises(BadPropfind, match=f"at most {limit} properties; this one names 7900"):
        parse_propfind(naming(7900))


def test_dav_propfind_naming_more_properties_than_the_cap_is_400(dav):
    limit = dav_propfind.MAX_NAMED_PROPS
    resp = dav.request(
        "/blob/",
        method="PROPFIND",
        headers={"Depth": "1", "Content-Type": "application/xml"},
        body=naming(limit + 1),
        status=400,
    )
    assert resp.text == (
        f"a PROPFIND may name at most {limit} properties; this one names {limit + 1}\n"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>',
        b'<D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>',
        naming(3),
    ],
    ids=["empty", "allprop", "propname", "prop"],
)
@pytest.mark.parametrize("depth", ["0", "1"])
def test_dav_served_app_answers_every_propfind_itself(store, body, depth):
    # WsgiDAV builds a multistatus whole; the app the server runs never hands it a PROPFIND.
    app = make_dav_app(make_settings(store.root), store)

    def refuse(environ, start_response):
        raise AssertionError(f"{environ['REQUEST_METHOD']} reached WsgiDAV")

    app.wsgidav = refuse
    for path in ("/", "/blob/", blob_url(store, b"listed")):
        webtest.TestApp(app, lint=False).request(
            path, method="PROPFIND", headers={"Depth": depth}, body=body, status=207
        )


def test_renderer_multistatus_renders_one_node_at_a_time(store):
    folder = store.root / "replica" / "many"
    folder.mkdir()
    for index in range(500):
        (folder / f"f{index:04d}.txt").write_bytes(b"x")
    tree = PublicTree(str(store.root), "md5")
    taken: list[Node] = []

    def nodes() -> Iterator[Node]:
        for node in tree.children(tree.lookup("/replica/many")):
            taken.append(node)
            yield node

    chunks = iter(
        Renderer(tree).multistatus(nodes(), PropRequest("prop", (f"{{urn:x}}{'p' * 600}",)))
    )
    first = next(chunks)
    assert first.startswith(b'<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus ')
    assert 0 < len(taken) < 200
    rest = b"".join(chunks)
    assert len(taken) == 500
    assert rest.endswith(b"</D:multistatus>\n")


def test_dav_small_propfind_answer_keeps_its_content_length(fast_dav, store):
    url = blob_url(store, b"small")
    resp = fast_dav.request(url, method="PROPFIND", headers={"Depth": "0"}, status=207)
    assert resp.headers["Content-Length"] == str(len(resp.body))


def test_dav_live_propfind_answer_is_streamed_not_built_whole(live_server):
    folder = live_server.root / "replica" / "many"
    folder.mkdir()
    for index in range(1000):
        (folder / f"f{index:04d}.txt").write_bytes(b"x")
    # The most a body may name, each name long: about 60 KiB of answer per file.
    body = naming(dav_propfind.MAX_NAMED_PROPS, width=590)
    assert len(body) < dav_app.MAX_BODY
    peak_before = status_kib(live_server, "VmHWM")
    received = 0
    with socket.create_connection((live_server.host, live_server.port), timeout=30) as sock:
        sock.sendall(
            b"PROPFIND /replica/many/ HTTP/1.1\r\nHost: t\r\nDepth: 1\r\nConnection: close\r\n"
            b"Content-Type: application/xml\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = sock.recv(65536)
        received = len(head)
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    assert head.startswith(b"HTTP/1.1 207 ")
    assert received > 50 * MIB
    assert status_kib(live_server, "VmHWM") - peak_before < 64 * 1024
    assert live_server.request("GET", "/healthz").status == 200


# -- slow bodies --------------------------------------------------------------------------


# A PROPFIND head, and how each trickled byte is framed.
TRICKLES = {
    "length": (b"Content-Length: 1000\r\n\r\n", b" "),
    "chunked": (b"Transfer-Encoding: chunked\r\n\r\n", b"1\r\n \r\n"),
}


@pytest.mark.parametrize("framing", list(TRICKLES))
def test_dav_live_trickled_bodies_are_cut_off_and_healthz_answers(live_server_factory, framing):
    server = live_server_factory(BUCKETDAV_THREADS="2", BUCKETDAV_TIMEOUT="1")
    head, byte = TRICKLES[framing]
    started = time.monotonic()
    tricklers = []
    for _ in range(2):
        sock = socket.create_connection((server.host, server.port), timeout=10)
        sock.sendall(b"PROPFIND / HTTP/1.1\r\nHost: t\r\nDepth: 0\r\n" + head + byte)
        sock.setblocking(False)
        tricklers.append(sock)
    health: dict[str, float | int] = {}

    def probe() -> None:
        conn = server.connection(timeout=20)
        try:
            conn.request("GET", "/healthz")
            health["status"] = conn.getresponse().status
            health["at"] = time.monotonic()
        finally:
            conn.close()

    prober = threading.Thread(target=probe)
    prober.start()
    answers: dict[int, tuple[bytes, float]] = {}
    try:
        # A byte every 0.2 s: never silent for the idle timeout, far under 16 KiB a second.
        while len(answers) < len(tricklers) and time.monotonic() - started < 8:
            for index, sock in enumerate(tricklers):
                if index in answers:
                    continue
                with contextlib.suppress(BlockingIOError):
                    answers[index] = (sock.recv(4096), time.monotonic())
                    continue
                with contextlib.suppress(OSError):
                    sock.send(byte)
            time.sleep(0.2)
    finally:
        for sock in tricklers:
            sock.close()
        prober.join(30)
    assert [answer.split(b"\r\n", 1)[0] for answer, _ in answers.values()] == [
        b"HTTP/1.1 408 Request Timeout"
    ] * 2
    cut = max(at for _, at in answers.values())
    assert cut - started < 4
    assert health["status"] == 200
    assert health["at"] - cut < 1


def test_dav_body_shorter_than_its_content_length_is_400(fast_dav):
    body = b'<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
    request = webtest.TestRequest.blank("/", method="PROPFIND", headers={"Depth": "0"}, body=body)
    request.environ["CONTENT_LENGTH"] = str(len(body) + 50)
    resp = fast_dav.do_request(request, status="*")
    assert resp.status_int == 400
    assert resp.headers["Connection"] == "close"
    assert resp.text == f"the body ended after {len(body)} of {len(body) + 50} bytes\n"


# -- remembered look-ups ---------------------------------------------------------------------


def test_public_tree_remembers_one_lookup_per_file_whatever_the_slashes(store):
    url = blob_url(store, b"one file")
    tree = PublicTree(str(store.root), "md5")
    for count in range(1, 40):
        assert tree.lookup(url.replace("/", "/" * count) + "/" * count).path == url
    assert list(tree.files) == [url]


def test_public_tree_lookup_through_a_long_slash_run_allocates_little(store):
    url = blob_url(store, b"one file")
    tree = PublicTree(str(store.root), "md5")
    assert tree.lookup(url) is not None
    path = "/blob" + "/" * 60_000 + url.removeprefix("/blob/")
    tracemalloc.start()
    try:
        assert tree.lookup(path).path == url
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024


def test_public_tree_bounds_the_bytes_it_remembers(store, monkeypatch):
    monkeypatch.setattr(dav_lookup, "LOOKUP_CACHE_BYTES", 4096, raising=False)
    urls = [blob_url(store, f"file {index}".encode()) for index in range(100)]
    tree = PublicTree(str(store.root), "md5")
    for url in urls:
        assert tree.lookup(url).path == url
    held = sum(len(path) + len(node.path) + len(node.real) for path, node in tree.files.items())
    assert 0 < held <= 4096


def test_public_tree_remembered_hit_costs_one_lstat_and_a_get_none(store, monkeypatch):
    blob = store.ingest([b"remembered"])
    url = "/" + store.relative(blob.path)
    tree = PublicTree(str(store.root), "md5")
    assert tree.lookup(url) is not None
    calls: list[str] = []
    for name in ("lstat", "stat"):
        real = getattr(os, name)
        monkeypatch.setattr(
            os, name, lambda p, *a, _real=real, **k: calls.append(p) or _real(p, *a, **k)
        )
    assert tree.lookup(url).real == str(blob.path)
    assert calls == [str(blob.path)]
    assert tree.lookup(url, recheck=False).real == str(blob.path)
    assert calls == [str(blob.path)]


@pytest.mark.parametrize("method", ["HEAD", "PROPFIND", "GET"])
def test_dav_remembered_file_removed_by_hand_is_404(fast_dav, store, method):
    blob = store.ingest([b"soon gone\n"])
    url = "/" + store.relative(blob.path)
    assert fast_dav.get(url).body == b"soon gone\n"
    os.chmod(blob.path.parent, 0o755)
    os.unlink(blob.path)
    resp = fast_dav.request(url, method=method, headers={"Depth": "0"}, status="*")
    assert resp.status_int == 404


def test_dav_remembered_file_stored_again_is_served_again(fast_dav, store):
    blob = store.ingest([b"back again\n"])
    url = "/" + store.relative(blob.path)
    assert fast_dav.head(url).status_int == 200
    os.chmod(blob.path.parent, 0o755)
    os.unlink(blob.path)
    assert fast_dav.head(url, status="*").status_int == 404
    store.ingest([b"back again\n"])
    assert fast_dav.head(url).headers["Content-Length"] == "11"
    assert fast_dav.get(url).body == b"back again\n"


def test_dav_live_heads_with_long_slash_runs_keep_memory_flat(live_server_factory):
    # Two workers: each thread's malloc arena keeps freed 60 KB request lines of its own,
    # which is noise here; what is measured is what the server keeps per request.
    server = live_server_factory(BUCKETDAV_THREADS="2")
    data = b"one blob, many spellings"
    url = server.path_of(server.upload("slashes.txt", data).json()["url"]["blob"])
    first, rest = url.removeprefix("/blob/").split("/", 1)
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        reader = sock.makefile("rb")

        def heads(start: int, count: int) -> None:
            for index in range(start, start + count):
                # 60 KB of slashes, spread differently each time: every path is new text.
                slashes = "/" * (30_000 + index), "/" * (30_000 - index)
                path = f"/blob{slashes[0]}{first}{slashes[1]}{rest}"
                sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                assert reader.readline().startswith(b"HTTP/1.1 200 ")
                while reader.readline() != b"\r\n":
                    pass

        heads(0, 300)
        before = status_kib(server, "VmRSS")
        heads(300, 1000)
    assert status_kib(server, "VmRSS") - before < 32 * 1024


def test_dav_live_remembered_blob_removed_by_hand_is_404(live_server):
    data = b"removed behind the server's back"
    url = live_server.path_of(live_server.upload("gone.txt", data).json()["url"]["blob"])
    assert live_server.request("GET", url).body == data
    assert live_server.request("HEAD", url).status == 200
    path = live_server.root / url.lstrip("/")
    os.chmod(path.parent, 0o755)
    os.unlink(path)
    assert live_server.request("HEAD", url).status == 404
    assert live_server.request("PROPFIND", url, headers={"Depth": "0"}).status == 404
    assert live_server.request("GET", url).status == 404


# -- listings -----------------------------------------------------------------------------


def test_dav_listing_counts_members_within_an_entry_budget(fast_dav, store, monkeypatch):
    monkeypatch.setattr(dav_app, "LISTING_COUNT_BUDGET", 100, raising=False)
    top = store.root / "replica" / "top"
    for letter in "abcde":
        (top / letter).mkdir(parents=True)
        for index in range(60):
            (top / letter / f"{index}.txt").write_bytes(b"x")
    inside = str(top) + os.sep
    read = [0]
    real_listdir, real_scandir = os.listdir, os.scandir

    def listdir(path=".", *args, **kwargs):
        names = real_listdir(path, *args, **kwargs)
        if isinstance(path, str) and path.startswith(inside):
            read[0] += len(names)
        return names

    class Scan:
        """os.scandir, counting the entries it hands out from the subfolders."""

        def __init__(self, path=".", *args, **kwargs):
            self.entries = real_scandir(path, *args, **kwargs)
            self.counted = isinstance(path, str) and path.startswith(inside)

        def __iter__(self):
            for entry in self.entries:
                read[0] += self.counted
                yield entry

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.entries.close()

        def close(self):
            self.entries.close()

    monkeypatch.setattr(os, "listdir", listdir)
    monkeypatch.setattr(os, "scandir", Scan)
    text = fast_dav.get("/replica/top/").text
    sizes = dict(re.findall(r'>([a-e])/</a></td><td class="size">(.*?)</td>', text))
    assert sizes == {"a": "60 items", **{x: '<span class="muted">folder</span>' for x in "bcde"}}
    assert read[0] <= 100 + 1


@pytest.mark.client
def test_dav_rclone_lists_a_folder_whose_answer_comes_in_pieces(live_server, tmp_path):
    rclone = require_tool("rclone")
    folder = live_server.root / "replica" / "many"
    folder.mkdir()
    names = {f"file-{index:05d}-with-a-longer-name.txt" for index in range(3000)}
    for name in names:
        (folder / name).write_bytes(b"x")
    answer = live_server.request("PROPFIND", "/replica/many/", headers={"Depth": "1"})
    assert answer.status == 207 and "Content-Length" not in answer.headers
    config = tmp_path / "rclone.conf"
    config.touch()
    listed = subprocess.run(
        [rclone, "--config", str(config), "lsf", f":webdav,url='{live_server.url}':replica/many"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == names
