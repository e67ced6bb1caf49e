"""Hostile credentials and paths against the live server: injection, size, escapes, timing."""

from __future__ import annotations

import base64
import statistics
import threading
import time
from pathlib import Path

import bcrypt
import pytest
from access_setup import BOB, BOB_PW, NIGHTLY, NOTES, sha, start_team, team_access

from tests.conftest import LiveServer

pytestmark = pytest.mark.slow


@pytest.fixture
def guarded(live_server_factory, tmp_path) -> LiveServer:
    access = tmp_path / "access.toml"
    access.write_text(team_access())
    # Many failures on purpose: no lock-out in the way of counting them.
    return start_team(live_server_factory, access, BUCKETDAV_LOGIN_FAILURES="100000")


def raw_basic(name: bytes, password: bytes) -> str:
    return "Basic " + base64.b64encode(name + b":" + password).decode()


def get(server: LiveServer, path: str, headers: dict[str, str]) -> int:
    """Status of a GET sent with `path` exactly as given (http.client does not normalise)."""
    conn = server.connection()
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        conn.close()


def server_kib(server: LiveServer, field: str) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.mark.parametrize(
    "name",
    [
        b"eve\r\nX-Injected: 1",
        b'eve" identity=alice reason="ok',
        b"\x1b[31meve\x1b[0m",
        b"eve\n2026-01-01 00:00:00,000 INFO bucketdav.access: forged line",
        "\u202eevil".encode(),
        b"\xff\xfe",
    ],
)
def test_access_hostile_user_names_cannot_forge_headers_or_log_lines(guarded, name):
    seen = len(guarded.settled_log())
    header = raw_basic(name, b"whatever")
    resp = guarded.request("GET", "/", headers={"Authorization": header})
    assert resp.status == 401
    assert "X-Injected" not in resp.headers
    assert b"eve" not in resp.body and b"evil" not in resp.body
    lines = guarded.settled_log()[seen:].splitlines()
    (line,) = [line for line in lines if '"GET / HTTP/1.1"' in line]
    assert " 401 " in line and "identity=anonymous" in line
    assert 'reason="wrong credentials"' in line
    assert not any(word in "\n".join(lines) for word in ("eve", "evil", "X-Injected", "forged"))
    assert all(line[:4].isdigit() for line in lines)


def test_access_hostile_overlong_credentials_are_refused_cheaply(guarded):
    before = server_kib(guarded, "VmRSS")
    huge = "Basic " + base64.b64encode(b"alice:" + b"p" * 40_000).decode()
    statuses: list[int] = []
    delays: list[float] = []

    def flood() -> None:
        for _ in range(25):
            statuses.append(guarded.request("GET", "/", headers={"Authorization": huge}).status)

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        started = time.monotonic()
        assert guarded.request("GET", "/healthz").status == 200
        delays.append(time.monotonic() - started)
        time.sleep(0.05)
    for thread in threads:
        thread.join(60)
    assert statuses == [401] * 100
    assert max(delays) < 1.0
    assert server_kib(guarded, "VmRSS") - before < 30_000
    assert "p" * 1000 not in guarded.settled_log()


CLIMBS = [
    "/replica/team/nightly/../other/secret.latest.txt",
    "/replica/team/nightly/%2e%2e/other/secret.latest.txt",
    "/replica/team/nightly/%2E%2E/other/",
    "/replica/team/nightly%2F..%2Fother/secret.latest.txt",
    "/replica/team/nightly/..%2Fother/secret.latest.txt",
    "/replica/team/nightly/%252e%252e/other/secret.latest.txt",
    "/replica/team/nightly//..//other/secret.latest.txt",
    "/replica/team/nightly/..\\other/secret.latest.txt",
    "/replica/team/nightly/./../other/",
    "/replica/team/./other/secret.latest.txt",
    "/replica/team/other%00/secret.latest.txt",
    "/replica/team/nightly/build.latest/../../other/secret.latest.txt",
]


@pytest.mark.parametrize("path", CLIMBS)
def test_access_hostile_a_prefix_cannot_be_climbed_out_of(guarded, path):
    assert get(guarded, path, BOB) in (400, 403, 404)
    assert get(guarded, path, {}) in (400, 401, 404)
    propfind = guarded.request("PROPFIND", path, headers={**BOB, "Depth": "1"})
    assert propfind.status in (400, 403, 404)
    assert b"other team" not in propfind.body


def test_access_hostile_a_latest_link_is_read_checked_on_the_path_asked_for(guarded):
    assert get(guarded, NOTES, BOB) == 200
    target = (guarded.root / "replica/team/nightly/build.latest").resolve()
    direct = "/" + target.relative_to(guarded.root).as_posix() + "/build/notes.txt"
    assert direct.startswith("/explode/")
    assert get(guarded, direct, BOB) == 403


@pytest.mark.parametrize("value", ["nightly/../other", "../other", "nightly%2F..%2Fother", ".."])
def test_access_hostile_a_token_cannot_file_outside_its_prefix_through_header_values(
    guarded, value
):
    before = sorted(p.relative_to(guarded.root) for p in (guarded.root / "replica").rglob("*"))
    made = guarded.upload("x.txt", b"x", headers={**NIGHTLY, "Team": value})
    assert made.status == 403
    after = sorted(p.relative_to(guarded.root) for p in (guarded.root / "replica").rglob("*"))
    assert after == before


def test_access_hostile_wrong_token_wrong_user_and_wrong_password_take_the_same_time(
    live_server_factory, tmp_path
):
    # A password hash that takes long enough (cost 10, ~60 ms) to stand above the noise.
    access = tmp_path / "access.toml"
    alice = bcrypt.hashpw(b"right", bcrypt.gensalt(10)).decode()
    access.write_text(
        f'[users.alice]\npassword = "{alice}"\nread = ["/"]\n\n'
        f'[tokens.ci]\nhash = "sha256:{sha("right-token")}"\nread = ["/"]\n'
    )
    server = live_server_factory(
        BUCKETDAV_ACCESS_FILE=str(access), BUCKETDAV_LOGIN_FAILURES="100000"
    )
    kinds = {
        "wrong token": {"Authorization": raw_basic(b"ci", b"wrong-token")},
        "wrong token, Bearer": {"Authorization": "Bearer wrong-token"},
        "wrong user": {"Authorization": raw_basic(b"nobody", b"right")},
        "wrong password": {"Authorization": raw_basic(b"alice", b"wrong")},
    }
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    conn = server.connection()
    try:
        for _ in range(9):
            for kind, headers in kinds.items():
                started = time.perf_counter()
                conn.request("GET", "/config", headers=headers)
                answer = conn.getresponse()
                answer.read()
                times[kind].append(time.perf_counter() - started)
                assert answer.status == 401
    finally:
        conn.close()
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    assert max(medians.values()) < 1.5 * min(medians.values()), medians
    assert min(medians.values()) > 0.02, medians  # each did cost a hash


def test_access_hostile_brute_force_is_locked_out_and_costs_little(live_server_factory, tmp_path):
    access = tmp_path / "access.toml"
    access.write_text(team_access())
    server = start_team(live_server_factory, access)
    before = server_kib(server, "VmRSS")
    statuses = [
        get(server, "/replica/team/", {"Authorization": raw_basic(b"bob", f"guess{n}".encode())})
        for n in range(30)
    ]
    assert statuses[:10] == [401] * 10
    assert statuses[10:] == [429] * 20
    assert get(server, "/replica/team/", BOB) == 429
    assert server_kib(server, "VmRSS") - before < 20_000
    log = server.settled_log()
    assert log.count("failed sign-ins within") == 1
    assert BOB_PW not in log and "guess1" not in log
