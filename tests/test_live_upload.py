"""Uploads through the real Cheroot server: chunked bodies, limits, aborts, concurrency."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import require_tool
from helpers import assert_blobs_sound, files_under, md5, multipart_body, own_staging, staged


def wait_until(predicate, *, timeout=10.0, interval=0.05):
    """Poll `predicate` until true or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def test_live_put_chunked_with_http_client(live_server):
    chunks = [b"a" * 1000, b"b" * 70000, b"c"]
    conn = live_server.connection()
    conn.request("PUT", "/upload/chunked.bin", body=iter(chunks), encode_chunked=True)
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, body
    assert live_server.request("GET", "/checksum/" + md5(b"".join(chunks))).status == 200


def test_live_put_chunked_with_curl_stdin(live_server, tmp_path):
    curl = require_tool("curl")
    data = bytes(range(256)) * 4000
    out = subprocess.run(
        [curl, "-sS", "-T", "-", live_server.url + "upload/stream.bin"],
        input=data,
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert f'"blob": "{md5(data)}"' in out.stdout.decode()


def test_live_post_multipart_with_curl(live_server, tmp_path):
    curl = require_tool("curl")
    (tmp_path / "results.xml").write_bytes(b"<testsuite/>")
    out = subprocess.run(
        [curl, "-sS", "-F", f"file=@{tmp_path / 'results.xml'}", live_server.url + "upload"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert f'"blob": "{md5(b"<testsuite/>")}"' in out.stdout.decode()
    assert '"filename": "results.xml"' in out.stdout.decode()


def test_live_chunked_body_over_limit_is_413_and_keeps_nothing(live_server_factory):
    server = live_server_factory(MAX_CONTENT_LENGTH="100kb")
    conn = server.connection()
    conn.request("PUT", "/upload/big", body=iter([b"x" * 60000] * 3), encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413
    assert b"100kb" in resp.read()
    assert wait_until(lambda: not staged(server.root))
    assert files_under(server.root / "blob") == []


def test_live_content_length_over_limit_is_refused_before_the_body(live_server_factory):
    server = live_server_factory(MAX_CONTENT_LENGTH="1mb")
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"PUT /upload/huge HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")
    assert files_under(server.root / "blob") == []


def test_live_multipart_over_limit_is_413(live_server_factory):
    server = live_server_factory(MAX_CONTENT_LENGTH="10kb")
    body, ctype = multipart_body([("file", "big.bin", b"y" * 200_000)])
    resp = server.request("POST", "/upload", body=body, headers={"Content-Type": ctype})
    assert resp.status == 413
    assert resp.json()["code"] == 413
    assert wait_until(lambda: not staged(server.root))


def test_live_aborted_upload_leaves_nothing(live_server):
    with socket.create_connection((live_server.host, live_server.port), timeout=10) as sock:
        sock.sendall(b"PUT /upload/partial HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        sock.sendall(b"z" * 300_000)
        assert wait_until(lambda: any(staged(live_server.root)))
    assert wait_until(lambda: not staged(live_server.root))
    assert files_under(live_server.root / "blob") == []
    assert live_server.request("GET", "/healthz").status == 200


def test_live_concurrent_identical_uploads_make_one_blob(live_server):
    data = b"shared artifact\n" * 5000

    def upload(i):
        return live_server.upload(f"copy{i}.txt", data).status

    with ThreadPoolExecutor(max_workers=30) as pool:
        statuses = list(pool.map(upload, range(30)))
    assert statuses == [200] * 30
    blobs = files_under(live_server.root / "blob")
    assert [b.name for b in blobs] == [md5(data)]
    assert staged(live_server.root) == []
    assert_blobs_sound(live_server.root)


def test_live_concurrent_different_uploads_all_stored(live_server):
    payloads = [f"artifact {i}\n".encode() * (1000 + i) for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(lambda p: live_server.upload("a.txt", p).status, payloads))
    assert statuses == [200] * 20
    assert {b.name for b in files_under(live_server.root / "blob")} == {md5(p) for p in payloads}
    assert_blobs_sound(live_server.root)


def test_live_restart_keeps_store_and_clears_staging(live_server_factory, tmp_path):
    root = tmp_path / "kept"
    server = live_server_factory(root=root)
    assert server.upload("keep.txt", b"keep me").status == 200
    server.stop()
    (own_staging(root) / "up-leftover").write_bytes(b"half")
    again = live_server_factory(root=root)
    assert again.request("GET", "/checksum/" + md5(b"keep me")).status == 200
    assert staged(root) == []


@pytest.mark.parametrize("size", [0, 1, 65536, 3 * 1024 * 1024 + 7])
def test_live_put_sizes_roundtrip(live_server, size):
    data = bytes(i % 251 for i in range(size))
    body = live_server.upload("f.bin", data).json()
    got = live_server.request("GET", live_server.path_of(body["url"]["blob"]))
    assert got.body == data and body["size"] == size


def test_live_deploy_header_with_a_chunked_body_stores_the_body(live_server):
    data = b"sent anyway"
    conn = live_server.connection()
    conn.request(
        "PUT",
        "/upload/d.txt",
        body=iter([data]),
        encode_chunked=True,
        headers={"X-Checksum-Deploy": "true", "X-Checksum": md5(data)},
    )
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    assert live_server.request("GET", "/checksum/" + md5(data)).status == 200


@pytest.mark.parametrize(
    "head",
    [
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n",
        b"PUT /upload/ HTTP/1.1\r\nHost: x\r\n",
        b"PUT /upload/x HTTP/1.1\r\nHost: x\r\nX-Checksum: nothex\r\n",
    ],
)
@pytest.mark.parametrize("length", [b"50000000000", b"30000000"])
def test_live_refusal_before_the_body_does_not_drain_it(live_server, head, length):
    with socket.create_connection((live_server.host, live_server.port), timeout=10) as sock:
        sock.sendall(head + b"Content-Length: " + length + b"\r\n\r\n" + b"q" * 65536)
        reply = sock.recv(4096)
        assert reply.split(b" ")[1] in (b"400", b"413", b"415")
        # The server ends the connection at once: it neither waits for the rest of the body
        # nor reads it into memory (a recv timeout here fails the test).
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(65536):
                pass
    status = (Path(f"/proc/{live_server.proc.pid}/status")).read_text()
    rss_kib = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    assert rss_kib < 200 * 1024
    assert live_server.request("GET", "/healthz").status == 200
