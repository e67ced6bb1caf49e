"""Slow, stalled, greedy and vanishing clients cannot take the server or leave anything behind."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable

import pytest
from conftest import LiveServer
from helpers import files_under, multipart_body, staged

from bucketdav.store.check import check_store

pytestmark = pytest.mark.slow


def wait_until(predicate: Callable[[], object], *, timeout: float = 10.0) -> object:
    """Poll `predicate` until it is true or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def start_body(server: LiveServer, name: str, length: int = 1000) -> socket.socket:
    """A connection that has sent the head of a PUT and none of its body yet."""
    sock = socket.create_connection((server.host, server.port), timeout=30)
    sock.sendall(
        f"PUT /upload/{name} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n".encode()
    )
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the response on `sock`."""
    answer = http.client.HTTPResponse(sock)
    answer.begin()
    return answer.status, dict(answer.getheaders()), answer.read()


def staging_and_blobs_empty(server: LiveServer) -> bool:
    return not staged(server.root) and not files_under(server.root / "blob")


def test_slow_clients_do_not_stop_healthz(live_server):
    sockets = [start_body(live_server, f"slow{i}") for i in range(40)]
    slowest = 0.0
    probes = 0
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            for sock in sockets:
                sock.sendall(b"x")
            started = time.monotonic()
            conn = live_server.connection(timeout=2)
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200
            conn.close()
            slowest = max(slowest, time.monotonic() - started)
            probes += 1
            time.sleep(max(0.0, 1 - (time.monotonic() - started)))
    finally:
        for sock in sockets:
            sock.close()
    assert probes >= 5
    assert slowest < 2
    assert wait_until(lambda: staging_and_blobs_empty(live_server))


def test_slow_body_is_cut_off_with_408_and_keeps_nothing(live_server_factory):
    server = live_server_factory(BUCKETDAV_TIMEOUT="1")
    sock = start_body(server, "trickle.bin", length=100_000)
    started = time.monotonic()
    try:
        # Under MIN_BYTES_PER_TIMEOUT a second, never silent long enough for the idle timeout.
        sock.settimeout(0.25)
        status = None
        while status is None and time.monotonic() - started < 10:
            try:
                sock.sendall(b"y" * 10)
                status, headers, body = read_answer(sock)
            except TimeoutError:
                continue
        sock.settimeout(5)
    finally:
        sock.close()
    assert status == 408
    assert headers["Connection"] == "close"
    assert b'"code": 408' in body
    assert time.monotonic() - started < 6
    assert wait_until(lambda: staging_and_blobs_empty(server))


def test_fast_enough_body_is_not_cut_off(live_server_factory):
    server = live_server_factory(BUCKETDAV_TIMEOUT="1")
    sock = start_body(server, "steady.bin", length=40 * 20_000)
    try:
        for _ in range(40):
            sock.sendall(b"z" * 20_000)
            time.sleep(0.05)
        status, _headers, body = read_answer(sock)
    finally:
        sock.close()
    assert status == 200, body


def test_uploads_over_the_limit_wait_then_get_503_with_retry_after(live_server_factory):
    server = live_server_factory(BUCKETDAV_MAX_UPLOADS="2", BUCKETDAV_TIMEOUT="2")
    holders = [start_body(server, f"hold{i}", length=10_000_000) for i in range(2)]
    done = threading.Event()

    def keep_sending() -> None:
        # Steady, fast enough bodies: the two uploads keep their slots for the whole test.
        while not done.is_set():
            for sock in holders:
                sock.sendall(b"h" * 50_000)
            time.sleep(0.05)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        refused = server.upload("third.bin", b"third")
        waited = time.monotonic() - started
    finally:
        done.set()
        sender.join(10)
        for sock in holders:
            sock.close()
    assert refused.status == 503
    assert refused.headers["Retry-After"].isdigit()
    assert refused.json()["code"] == 503
    assert 1.5 < waited < 10
    assert wait_until(lambda: server.upload("later.bin", b"later").status == 200)


def test_uploads_over_the_limit_wait_for_a_free_slot(live_server_factory):
    server = live_server_factory(BUCKETDAV_MAX_UPLOADS="1", BUCKETDAV_TIMEOUT="10")
    holder = start_body(server, "first.bin", length=200_000)
    result: dict[str, int] = {}
    try:
        holder.sendall(b"a" * 100_000)
        time.sleep(0.3)
        waiting = threading.Thread(
            target=lambda: result.update(status=server.upload("second.bin", b"b").status)
        )
        waiting.start()
        time.sleep(0.5)
        assert "status" not in result
        holder.sendall(b"a" * 100_000)
        status, _headers, _body = read_answer(holder)
        waiting.join(15)
    finally:
        holder.close()
    assert status == 200
    assert result["status"] == 200


@pytest.mark.parametrize("kind", ["content-length", "chunked", "multipart"])
def test_client_gone_mid_upload_leaves_nothing(live_server, kind):
    server = live_server
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        if kind == "multipart":
            body, ctype = multipart_body([("file", "gone.bin", b"m" * 400_000)])
            sock.sendall(
                f"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
            )
            sock.sendall(body[:300_000])
        elif kind == "chunked":
            sock.sendall(
                b"PUT /upload/gone.bin HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            sock.sendall(b"30000\r\n" + b"c" * 0x30000 + b"\r\n" + b"30000\r\n" + b"c" * 1000)
        else:
            sock.sendall(
                b"PUT /upload/gone.bin HTTP/1.1\r\nHost: t\r\nContent-Length: 500000\r\n\r\n"
            )
            sock.sendall(b"l" * 300_000)
        assert wait_until(lambda: staged(server.root))
    assert wait_until(lambda: staging_and_blobs_empty(server))
    assert check_store(server.root, "md5", full=True).clean
    assert server.request("GET", "/healthz").status == 200


def test_slow_request_heads_are_cut_off_so_workers_come_back(live_server_factory):
    server = live_server_factory(BUCKETDAV_THREADS="4", BUCKETDAV_TIMEOUT="2")
    sockets = []
    for _ in range(8):
        sock = socket.create_connection((server.host, server.port), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        sockets.append(sock)
    started = time.monotonic()
    closed = 0
    try:
        while time.monotonic() - started < 12 and closed < len(sockets):
            closed = 0
            for sock in sockets:
                try:
                    sock.sendall(b"s")
                except OSError:
                    closed += 1
            time.sleep(0.5)
        conn = server.connection(timeout=5)
        conn.request("GET", "/healthz")
        status = conn.getresponse().status
        conn.close()
    finally:
        for sock in sockets:
            sock.close()
    assert closed == len(sockets)
    assert status == 200
    assert time.monotonic() - started < 14
