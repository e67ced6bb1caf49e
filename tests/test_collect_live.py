"""Retention and collection with the real server: its own periodic run, and what WebDAV
clients (PROPFIND, rclone) list before and after `bucketdav gc`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import LiveServer, require_tool
from helpers import tar_gz

TEAM = {"REPLICATE_0": "team/${Topic}"}


def wait_for(condition, *, timeout: float = 20.0, what: str = "") -> None:
    """Poll `condition` until it holds (bounded): the server's run comes on its own clock."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def gc(server: LiveServer, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`bucketdav gc` from the shell, with the server's settings and `env`."""
    return subprocess.run(
        [sys.executable, "-m", "bucketdav", "gc", *args],
        env={**server.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_server_collects_on_its_own_every_interval_and_stops_cleanly(live_server_factory):
    server = live_server_factory(
        BUCKETDAV_GC_UNREFERENCED_DAYS="0", BUCKETDAV_GC_INTERVAL="1s", **TEAM
    )
    lone = server.upload("lone.bin", b"nobody files this").json()
    kept = server.upload("kept.bin", b"filed", headers={"Topic": "t"}).json()
    digest = lone["checksum"]["blob"]
    wait_for(
        lambda: server.request("HEAD", f"/checksum/{digest}").status == 404,
        what="the server's collection removing an unreferenced blob",
    )
    assert server.request("HEAD", f"/checksum/{kept['checksum']['blob']}").status == 200
    assert server.request("GET", "/" + lone["path"]["blob"]).status == 404
    log = server.settled_log()
    assert "retention and collection every 1s" in log
    assert "collection: removed" in log
    assert server.stop(signal.SIGTERM) == 0
    assert "stopped" in server.log()


def test_server_without_rules_runs_no_collection(live_server_factory):
    server = live_server_factory(BUCKETDAV_GC_INTERVAL="1s")
    lone = server.upload("lone.bin", b"kept for ever").json()
    assert "retention and collection" not in server.settled_log()
    assert server.request("HEAD", f"/checksum/{lone['checksum']['blob']}").status == 200
    assert not (server.root / "gc").exists()


@pytest.mark.client
def test_webdav_and_rclone_listings_show_what_gc_left(live_server_factory, tmp_path):
    rclone = require_tool("rclone")
    server = live_server_factory(**TEAM)
    for index in range(3):
        server.upload("log.txt", f"log {index}\n".encode(), headers={"Topic": "t"})
        server.upload("site.tgz", tar_gz({"i.html": f"{index}".encode()}), headers={"Topic": "t"})
    folder = server.root / "replica" / "team" / "t"
    before = sorted(p.name for p in folder.iterdir())
    config = tmp_path / "rclone.conf"
    config.touch()

    def listed() -> list[str]:
        done = subprocess.run(
            [rclone, "--config", str(config), "lsf", f":webdav,url='{server.url}':replica/team/t/"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return sorted(line.rstrip("/") for line in done.stdout.splitlines())

    assert listed() == before
    done = gc(server, BUCKETDAV_KEEP_LAST="1", BUCKETDAV_GC_UNREFERENCED_DAYS="0")
    assert done.returncode == 0, done.stderr
    gone = [
        line.split()[1] for line in done.stdout.splitlines() if line.startswith("removed replica/")
    ]
    assert len(gone) == 4
    after = sorted(p.name for p in folder.iterdir())
    assert after == sorted(set(before) - {Path(p).name for p in gone})
    assert listed() == after
    propfind = server.request("PROPFIND", "/replica/team/t/", headers={"Depth": "1"})
    assert propfind.status == 207
    for name in before:
        assert (name.encode() in propfind.body) == (name in after), name
    for path in gone:
        assert server.request("GET", "/" + path).status == 404
    latest = server.request("GET", "/replica/team/t/log.latest.txt")
    assert (latest.status, latest.body) == (200, b"log 2\n")
    assert os.path.isdir(folder / "site.latest")
