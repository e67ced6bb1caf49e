"""The real server starts, takes an upload, serves it back and stops cleanly."""

from __future__ import annotations

import signal
import socket
import threading
import time


def test_live_server_upload_roundtrip(live_server):
    resp = live_server.upload("hello.txt", b"hello\n")
    assert resp.status == 200
    url = resp.json()["url"]["blob"]
    got = live_server.request("GET", live_server.path_of(url))
    assert got.status == 200
    assert got.body == b"hello\n"


def test_live_server_stops_cleanly_on_sigterm(live_server):
    assert live_server.stop(signal.SIGTERM) == 0
    assert "stopped" in live_server.log()


def test_live_keep_alive_requests_are_all_answered_in_order(live_server):
    # Back-to-back requests on one connection are served by the worker that has it.
    paths = []
    for index in range(5):
        url = live_server.upload(f"f{index}.txt", f"file {index}\n".encode()).json()["url"]["blob"]
        paths.append(live_server.path_of(url))
    conn = live_server.connection()
    try:
        for _ in range(20):
            for index, path in enumerate(paths):
                conn.request("GET", path)
                resp = conn.getresponse()
                assert (resp.status, resp.read()) == (200, f"file {index}\n".encode())
        # Pipelined: both requests are in the socket before the first answer is read.
        sock = conn.sock
        sock.sendall(
            "".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n" for p in paths[:2]).encode("ascii")
        )
        raw = b""
        deadline = time.monotonic() + 10
        while raw.count(b"file ") < 2 and time.monotonic() < deadline:
            raw += sock.recv(65536)
        assert raw.count(b"HTTP/1.1 200 OK") == 2
        assert raw.index(b"file 0\n") < raw.index(b"file 1\n")
    finally:
        conn.close()


def test_live_busy_connection_does_not_starve_another(live_server_factory):
    # One worker thread, and a client whose next request is always waiting (pipelined):
    # a second client must still be answered before that stream ends, since a connection
    # waiting for a worker goes before the next request of the busy one.
    server = live_server_factory(BUCKETDAV_THREADS="1")
    path = server.path_of(server.upload("a.txt", b"a\n").json()["url"]["blob"])
    count = 3000
    pipeline = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode("ascii") * count
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    finished: list[float] = []
    answers = [0]

    def read_all() -> None:
        data = b""
        deadline = time.monotonic() + 60
        while answers[0] < count and time.monotonic() < deadline:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data = data[-64:] + chunk
            answers[0] += chunk.count(b"HTTP/1.1 200 OK")
        finished.append(time.monotonic())

    reader = threading.Thread(target=read_all, daemon=True)
    sender = threading.Thread(target=sock.sendall, args=(pipeline,), daemon=True)
    reader.start()
    sender.start()
    try:
        deadline = time.monotonic() + 10
        while answers[0] < 50 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert answers[0] >= 50, "the pipelined client was not being served"
        other = server.request("GET", path)
        answered = time.monotonic()
        assert other.status == 200 and other.body == b"a\n"
        reader.join(60)
        assert answers[0] == count
        assert answered < finished[0], "the second client waited for the whole pipeline"
    finally:
        sock.close()
