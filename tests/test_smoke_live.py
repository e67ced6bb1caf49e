"""The real server starts, takes an upload, serves it back and stops cleanly."""

from __future__ import annotations

import signal


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
