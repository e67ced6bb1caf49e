"""A full disk, by bytes or by inodes, on a small tmpfs: 507, nothing partial, and recovery."""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import IN_CI, LiveServer, Response
from helpers import files_under, md5, staged

from bucketdav.store.check import check_store

pytestmark = [pytest.mark.root, pytest.mark.slow]

MOST_UPLOADS = 80


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount small tmpfs file systems for a test (needs root); all unmounted at the end."""
    mounted: list[Path] = []

    def mount(*, size: str, inodes: int) -> Path:
        if os.geteuid() != 0:
            message = "mounting a tmpfs needs root (CI runs as root)"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
        target = tmp_path / f"tmpfs{len(mounted)}"
        target.mkdir()
        options = f"size={size},nr_inodes={inodes},mode=0755"
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], check=True)
        mounted.append(target)
        return target / "store"

    yield mount
    for target in reversed(mounted):
        if subprocess.run(["umount", str(target)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], check=False)


def put_reading_early(server: LiveServer, path: str, data: bytes, *, chunked: bool) -> Response:
    """PUT while reading the answer as it comes, as curl does: a refusal may come mid-body."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(data)}"
    head = f"PUT {path} HTTP/1.1\r\nHost: t\r\n{framing}\r\nConnection: close\r\n\r\n"
    body = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n" if chunked else data
    with socket.create_connection((server.host, server.port), timeout=30) as sock:

        def send() -> None:
            # The server may answer and close before taking it all.
            with contextlib.suppress(OSError):
                sock.sendall(head.encode() + body)

        sender = threading.Thread(target=send)
        sender.start()
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        response = Response(answer.status, dict(answer.getheaders()), answer.read())
        sender.join(30)
    return response


def fill(server: LiveServer, size: int, *, chunked: bool) -> tuple[list[str], dict]:
    """Upload distinct files of `size` bytes until one is refused; (stored digests, refusal)."""
    rng = random.Random(size)
    stored = []
    for index in range(MOST_UPLOADS):
        data = rng.randbytes(size)
        response = put_reading_early(server, f"/upload/f{index}.bin", data, chunked=chunked)
        if response.status != 200:
            assert response.status == 507, response.body[:300]
            assert response.headers["Content-Type"].startswith("application/json")
            return stored, response.json()
        stored.append(md5(data))
    pytest.fail(f"{MOST_UPLOADS} uploads and the disk never filled")


def assert_nothing_partial(server: LiveServer, stored: list[str]) -> None:
    """staging/ is empty and every blob, and each upload that was answered 200, is whole."""
    assert [p.name for p in staged(server.root)] == []
    report = check_store(server.root, "md5", full=True)
    assert report.clean, report.examples
    assert sorted(p.name for p in files_under(server.root / "blob")) == sorted(set(stored))


def free_some(server: LiveServer, stored: list[str], count: int) -> None:
    """Delete `count` blobs, as an operator freeing space would."""
    for digest in stored[:count]:
        (server.root / "blob" / digest[:2] / digest[2:4] / digest).unlink()


def assert_error_shape(body: dict, code: int) -> None:
    assert set(body) == {"code", "status", "error"}
    assert body["code"] == code and body["error"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_full_disk_refuses_with_507_keeps_nothing_partial_and_recovers(
    tmpfs, live_server_factory, chunked
):
    root = tmpfs(size="8m", inodes=4096)
    server = live_server_factory(root=root, BUCKETDAV_MIN_FREE="0")
    stored, refusal = fill(server, 700_000, chunked=chunked)
    assert_error_shape(refusal, 507)
    assert 5 <= len(stored) <= 12
    assert_nothing_partial(server, stored)
    free_some(server, stored, 3)
    again = server.upload("after.bin", b"space again" * 1000)
    assert again.status == 200, again.body
    assert server.request("GET", "/" + again.json()["path"]["blob"]).body == b"space again" * 1000


def test_full_disk_watermark_refuses_early_and_healthz_says_so(tmpfs, live_server_factory):
    root = tmpfs(size="8m", inodes=4096)
    server = live_server_factory(root=root, BUCKETDAV_MIN_FREE="2mb")
    assert server.request("GET", "/healthz").status == 200
    stored, refusal = fill(server, 500_000, chunked=True)
    assert_error_shape(refusal, 507)
    assert "free" in refusal["error"]
    statvfs = os.statvfs(root)
    assert statvfs.f_bavail * statvfs.f_frsize < 2 << 20
    # The watermark refused before the disk was full: room is left, but not taken.
    assert statvfs.f_bavail * statvfs.f_frsize > 500_000
    health = server.request("GET", "/healthz")
    assert health.status == 503 and "watermark" in health.json()["detail"]
    sized = server.upload("sized.bin", b"x" * 400_000)
    assert sized.status == 507
    assert_nothing_partial(server, stored)
    free_some(server, stored, 4)
    assert server.request("GET", "/healthz").status == 200
    assert server.upload("after.bin", b"y" * 100_000).status == 200


def test_full_disk_out_of_inodes_is_507_and_recovers(tmpfs, live_server_factory):
    root = tmpfs(size="64m", inodes=120)
    server = live_server_factory(root=root, BUCKETDAV_MIN_FREE="0")
    stored, refusal = fill(server, 1000, chunked=False)
    assert_error_shape(refusal, 507)
    assert "inodes" in refusal["error"]
    assert len(stored) >= 5
    health = server.request("GET", "/healthz")
    assert health.status == 503 and "inodes" in health.json()["detail"]
    assert_nothing_partial(server, stored)
    free_some(server, stored, len(stored))
    assert server.request("GET", "/healthz").status == 200
    assert server.upload("after.bin", b"inodes again").status == 200
