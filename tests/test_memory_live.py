"""Memory of the live server under mixed load: listings of a large folder next to uploads."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from conftest import LiveServer

from bucketdav.server import limit_arenas

MIB = 1 << 20
FILES = 2000
CLIENTS = 16
# Bounds on the load, whichever comes first.
PROPFINDS = 240
LOAD_SECONDS = 5.0
UPLOAD_BYTES = 32 * MIB
PROPFIND_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop>'
    b"<D:resourcetype/><D:getcontentlength/><D:getlastmodified/><D:getetag/>"
    b"</D:prop></D:propfind>"
)
FOLDER = "/explode/me/mo/" + "memo" * 8 + "/many/"


def rss_kib(server: LiveServer) -> int:
    """The live server's resident set size, in KiB."""
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def large_folder(root: Path) -> None:
    """A published tree with FILES small files in one folder, as an extraction leaves it."""
    folder = root / FOLDER.strip("/")
    folder.mkdir(parents=True)
    for i in range(FILES):
        (folder / f"file-{i:05d}.txt").write_bytes(f"memory {i}\n".encode() * 8)


def propfind(server: LiveServer) -> int:
    conn = server.connection()
    try:
        conn.request("PROPFIND", FOLDER, body=PROPFIND_BODY, headers={"Depth": "1"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def under_load(server: LiveServer, *, uploads: int) -> tuple[list[int], int]:
    """PROPFIND statuses of CLIENTS clients and `uploads` uploads at once; the peak RSS."""
    statuses: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + LOAD_SECONDS

    def lister() -> None:
        while time.monotonic() < deadline:
            with lock:
                if len(statuses) >= PROPFINDS:
                    return
            status = propfind(server)
            with lock:
                statuses.append(status)

    def uploader(n: int) -> None:
        data = os.urandom(1 << 20) * (UPLOAD_BYTES >> 20)
        with lock:
            statuses.append(server.upload(f"load-{n}.bin", data[n:] + data[:n]).status)

    workers: list[Callable[[], None]] = [lister] * CLIENTS
    workers += [lambda n=n: uploader(n) for n in range(uploads)]
    threads = [threading.Thread(target=work, daemon=True) for work in workers]
    for thread in threads:
        thread.start()
    peak = rss_kib(server)
    while any(thread.is_alive() for thread in threads) and time.monotonic() < deadline + 30:
        peak = max(peak, rss_kib(server))
        threads[0].join(0.05)
    for thread in threads:
        thread.join(30)
    return statuses, max(peak, rss_kib(server))


def test_memory_listings_and_uploads_stay_bounded(
    live_server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    root = tmp_path / "store"
    large_folder(root)
    server = live_server_factory(root=root)
    # First use imports modules and fills caches once: not what this bounds.
    assert propfind(server) == 207
    assert server.upload("warm.bin", os.urandom(4 * MIB)).status == 200
    settled = rss_kib(server)

    statuses, peak = under_load(server, uploads=2)
    _, again = under_load(server, uploads=2)

    assert statuses.count(207) == len(statuses) - 2
    assert statuses.count(200) == 2
    # 16 answers of 2,000 files and two 32 MiB bodies at once hold a few MiB while they
    # last; free memory kept in an allocator arena per thread (16 on 2 cores) held 15-20 more.
    assert peak - settled < 10 * 1024
    # A second round finds what the first left free instead of taking more.
    assert again - settled < 10 * 1024


def test_limit_arenas_leaves_the_operators_choice() -> None:
    assert limit_arenas({"MALLOC_ARENA_MAX": "8"}) is False
    assert limit_arenas({}) is True
