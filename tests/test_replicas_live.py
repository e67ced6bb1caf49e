"""Replicas against the real server: a burst of uploads, raw header bytes, 10 kB values."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest

TEMPLATE = "user/${Username}/${Topic}"
BOB = {"Username": "bob", "Topic": "demo"}
BURST = 30


def raw_put(server, name: str, data: bytes, header_lines: bytes) -> tuple[int, bytes]:
    """PUT with header bytes exactly as given (http.client would refuse or re-encode them)."""
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(
            f"PUT /upload/{name} HTTP/1.1\r\nHost: {server.host}\r\n".encode()
            + f"Content-Length: {len(data)}\r\nConnection: close\r\n".encode()
            + header_lines
            + b"\r\n"
            + data
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.slow
def test_live_burst_of_uploads_gets_distinct_names_and_latest_never_vanishes(live_server_factory):
    server = live_server_factory(REPLICATE_0=TEMPLATE)
    first = server.upload("results.xml", b"seed", BOB)
    assert first.status == 200
    latest = server.root / "replica/user/bob/demo/results.latest.xml"
    assert latest.is_symlink()
    misses: list[str] = []
    polls = {"disk": 0, "http": 0}
    stop = threading.Event()

    def poll_disk() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                os.readlink(latest)
                os.stat(latest)
            except OSError as exc:
                misses.append(f"disk: {exc!r}")
            polls["disk"] += 1

    def poll_http() -> None:
        deadline = time.monotonic() + 60
        conn = server.connection()
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                conn.request("GET", "/replica/user/bob/demo/results.latest.xml")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or not body:
                    misses.append(f"http: {resp.status} {body[:80]!r}")
                polls["http"] += 1
        finally:
            conn.close()

    readers = [threading.Thread(target=poll_disk), threading.Thread(target=poll_http)]
    for reader in readers:
        reader.start()
    try:
        with ThreadPoolExecutor(BURST) as pool:
            responses = list(
                pool.map(lambda i: server.upload("results.xml", b"run %d" % i, BOB), range(BURST))
            )
    finally:
        stop.set()
        for reader in readers:
            reader.join(60)
    assert [r.status for r in responses] == [200] * BURST
    names = {r.json()["path"]["replicas"][0] for r in responses}
    assert len(names) == BURST
    assert all(n.startswith("replica/user/bob/demo/results.") for n in names)
    assert misses == []
    assert polls["disk"] > 0 and polls["http"] > 0
    newest = max(names, key=lambda n: tuple(int(x) for x in n.split(".")[1:4]))
    assert os.readlink(latest) == newest.rsplit("/", 1)[1]
    folder = sorted(p.name for p in latest.parent.iterdir())
    assert len(folder) == BURST + 2 and not any(n.startswith(".") for n in folder)


def test_live_utf8_header_value_names_the_folder(live_server_factory):
    server = live_server_factory(REPLICATE_0=TEMPLATE)
    status, _body = raw_put(
        server, "a.txt", b"x", "Username: b\u00f8b\r\nTopic: \u65e5\r\n".encode()
    )
    assert status == 200
    assert (server.root / "replica" / "user" / "b\u00f8b" / "\u65e5").is_dir()


@pytest.mark.parametrize(
    "value", [b"../../etc", b"..", b".", b"a/b", b"a\\b", b"%2e%2e", b"\x01\x7f", b"t" * 10_240]
)
def test_live_hostile_header_value_is_never_a_5xx(live_server_factory, value):
    server = live_server_factory(REPLICATE_0=TEMPLATE)
    status, body = raw_put(server, "a.txt", b"x", b"Username: bob\r\nTopic: " + value + b"\r\n")
    assert status == 200
    made = json.loads(body)["path"]["replicas"]
    if len(value) > 200:
        assert made is None and "longer than 200 bytes" in json.loads(body)["skipped"][0]
        assert not (server.root / "replica" / "user").exists()
        return
    (path,) = made
    folder = (server.root / path).parent
    assert folder.parent == server.root / "replica" / "user" / "bob"
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    assert os.path.realpath(folder).startswith(str(server.root / "replica") + os.sep)
    assert server.request("GET", "/" + quote(path)).body == b"x"
