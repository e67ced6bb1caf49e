"""Deploy by checksum: an upload slot and the space check like any upload, an empty chunked
body like an empty Content-Length one, and known compressed content never decompressed again."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import LiveServer, require_tool
from helpers import files_under, md5

from bucketdav.store.blobs import Store


def deploy_headers(data: bytes, **extra: str) -> dict[str, str]:
    return {"X-Checksum-Deploy": "true", "X-Checksum": md5(data), **extra}


# -- slot and space ------------------------------------------------------------------------


def test_deploy_below_the_free_space_watermark_is_507(make_client, store_root):
    make_client().put("/upload/known.txt", b"known")
    full = make_client(BUCKETDAV_MIN_FREE="99%")
    refused = full.put("/upload/k.txt", b"", headers=deploy_headers(b"known"), status=507).json
    assert refused["code"] == 507


def test_deploy_copy_past_the_link_limit_is_refused_below_the_watermark(
    make_client, store_root, monkeypatch
):
    client = make_client(REPLICATE_0="team/${Topic}")
    data = b"m" * 1_000_000
    blob = client.put("/upload/big.bin", data).json["path"]["blob"]
    real_link = os.link

    def saturated(src, dst, **kwargs):
        if os.fspath(src).endswith(blob):
            raise OSError(errno.EMLINK, "Too many links")
        return real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", saturated)
    # Room for the deploy itself, not for another copy of its megabyte.
    monkeypatch.setattr(Store, "free_bytes", lambda self: (1_500_000, 1_000_000))
    headers = deploy_headers(data, Topic="nightly")
    refused = client.put("/upload/big.bin", b"", headers=headers, status=507).json
    assert "replica/team/nightly/" in refused["error"]
    assert files_under(store_root / "replica") == []
    assert list((store_root / "staging").iterdir()) == []


def start_body(server: LiveServer, name: str, length: int) -> socket.socket:
    """A connection that has sent the head of a PUT and none of its body yet."""
    sock = socket.create_connection((server.host, server.port), timeout=30)
    sock.sendall(
        f"PUT /upload/{name} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n".encode()
    )
    return sock


@pytest.fixture
def slot_held(live_server_factory: Callable[..., LiveServer]) -> Iterator[LiveServer]:
    """A server with one upload slot, taken by an upload that keeps sending its body."""
    server = live_server_factory(BUCKETDAV_MAX_UPLOADS="1", BUCKETDAV_TIMEOUT="2")
    assert server.upload("known.txt", b"known content").status == 200
    holder = start_body(server, "hold.bin", length=30_000_000)
    done = threading.Event()

    def keep_sending() -> None:
        # Fast enough that the slow-body rule never cuts it off, for as long as the test runs.
        deadline = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < deadline:
            holder.sendall(b"h" * 50_000)
            done.wait(0.05)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    deadline = time.monotonic() + 10
    while not any(p.name.startswith("up-") for p in (server.root / "staging").iterdir()):
        assert time.monotonic() < deadline, "the holding upload never started"
        time.sleep(0.02)
    try:
        yield server
    finally:
        done.set()
        sender.join(10)
        holder.close()


def test_deploy_waits_for_an_upload_slot_then_is_503_with_retry_after(slot_held):
    started = time.monotonic()
    refused = slot_held.upload("k.txt", b"", deploy_headers(b"known content"))
    waited = time.monotonic() - started
    assert refused.status == 503
    assert refused.headers["Retry-After"].isdigit()
    assert refused.json()["code"] == 503
    assert 1.5 < waited < 10


def test_deploy_with_an_empty_chunked_body_waits_for_a_slot_too(slot_held):
    conn = slot_held.connection()
    conn.request(
        "PUT",
        "/upload/k.txt",
        body=iter([]),
        encode_chunked=True,
        headers=deploy_headers(b"known content"),
    )
    assert conn.getresponse().status == 503


# -- an empty chunked body -----------------------------------------------------------------


def test_deploy_with_curl_t_dev_null_deploys(live_server_factory):
    curl = require_tool("curl")
    # One slot: the chunked deploy must not wait for a second one while it holds the first.
    server = live_server_factory(BUCKETDAV_MAX_UPLOADS="1", BUCKETDAV_TIMEOUT="5")
    data = b"deployed with curl"
    stored = server.upload("first.txt", data).json()
    command = [curl, "-sS", "-T", "/dev/null", "-v"]
    for name, value in deploy_headers(data).items():
        command += ["-H", f"{name}: {value}"]
    done = subprocess.run(
        [*command, server.url + "upload/again.txt"], capture_output=True, timeout=30, check=True
    )
    assert b"Transfer-Encoding: chunked" in done.stderr
    body = json.loads(done.stdout)
    assert body["code"] == 200 and body["created"] is False
    assert body["checksum"] == stored["checksum"] and body["filename"] == "again.txt"


def test_deploy_with_only_the_last_chunk_deploys_and_keeps_the_connection(live_server):
    data = b"deployed with a raw chunked request"
    live_server.upload("first.txt", data)
    head = "".join(f"{k}: {v}\r\n" for k, v in deploy_headers(data).items())
    request = (
        f"PUT /upload/raw.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n{head}\r\n"
        "0\r\n\r\n"
        "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((live_server.host, live_server.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        deadline = time.monotonic() + 10
        while (chunk := sock.recv(65536)) and time.monotonic() < deadline:
            received += chunk
    first, _, rest = received.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    assert b'"checksum": {"blob": "' + md5(data).encode() in rest
    assert rest.count(b"HTTP/1.1 200") == 1  # the pipelined /healthz, answered in turn


def test_empty_chunked_deploy_of_unknown_content_is_404(live_server):
    conn = live_server.connection()
    conn.request(
        "PUT",
        "/upload/x.txt",
        body=iter([]),
        encode_chunked=True,
        headers=deploy_headers(b"never sent"),
    )
    answer = conn.getresponse()
    assert answer.status == 404
    assert json.loads(answer.read())["code"] == 404
    assert files_under(live_server.root / "blob") == []
