"""Access control and HTTPS on the real server: credentials, logs, reload, lock-out, TLS."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from access_setup import (
    ALICE,
    BOB,
    NIGHTLY,
    NOTES,
    OLD_TOKEN,
    SECRETS,
    TOKEN,
    basic,
    self_signed,
    start_team,
    team_access,
)
from helpers import files_under

from bucketdav import launch
from tests.conftest import LiveServer

pytestmark = pytest.mark.slow


@pytest.fixture
def access_file(tmp_path: Path) -> Path:
    path = tmp_path / "access.toml"
    path.write_text(team_access())
    return path


@pytest.fixture
def guarded(live_server_factory, access_file) -> LiveServer:
    return start_team(live_server_factory, access_file)


def test_access_live_basic_bearer_and_refusals(guarded):
    assert guarded.request("GET", NOTES, headers=BOB).body == b"nightly notes\n"
    assert guarded.request("GET", NOTES, headers=basic("ci", TOKEN)).status == 403
    refused = guarded.request("GET", NOTES)
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="bucketdav"'
    assert refused.json()["code"] == 401
    assert guarded.request("GET", NOTES, headers=basic("ci", OLD_TOKEN)).status == 401
    put = guarded.upload("n.txt", b"n", headers={**NIGHTLY, "Team": "nightly"})
    assert put.status == 200
    assert guarded.request("GET", "/replica/public/docs/hello.latest.txt").body == b"hello\n"


def test_access_live_upload_outside_its_prefixes_is_refused_before_the_body(guarded):
    before = files_under(guarded.root)
    with socket.create_connection((guarded.host, guarded.port), timeout=10) as sock:
        head = (
            "PUT /upload/big.bin HTTP/1.1\r\nHost: t\r\nContent-Length: 50000000\r\n"
            f"Authorization: {NIGHTLY['Authorization']}\r\nTeam: other\r\n\r\n"
        )
        sock.sendall(head.encode() + b"x" * 1000)
        started = time.monotonic()
        answer = b""
        # The head and the body may come in two reads; the answer ends the connection.
        while time.monotonic() - started < 5 and (chunk := sock.recv(65536)):
            answer += chunk
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b"nightly may not file uploads under replica/team/other/" in answer
    assert took < 5
    assert files_under(guarded.root) == before


def test_access_live_secrets_never_in_logs_answers_or_config(guarded):
    answers = []
    for headers in (ALICE, BOB, NIGHTLY, basic("ci", TOKEN), basic("ci", OLD_TOKEN)):
        for path in ("/config", "/", NOTES, "/upload", "/connect", "/nope"):
            answers.append(guarded.request("GET", path, headers=headers).body)
    answers.append(guarded.upload("x.txt", b"x", headers={**NIGHTLY, "Team": "other"}).body)
    wrong = basic("alice", "guessed-password-77")
    answers.append(guarded.request("GET", "/", headers=wrong).body)
    config = guarded.request("GET", "/config", headers=ALICE).json()
    log = guarded.settled_log()
    for secret in (*SECRETS, "guessed-password-77", wrong["Authorization"].split()[1]):
        assert secret not in log
        assert all(secret.encode() not in body for body in answers)
        assert secret not in json.dumps(config)
    assert "identity=bob" in log and "identity=nightly" in log


def test_access_live_reload_on_change_and_a_bad_version_keeps_the_rules(guarded, access_file):
    explode = "/explode/"
    assert guarded.request("PROPFIND", explode, headers={**BOB, "Depth": "0"}).status == 403
    access_file.write_text(team_access(bob_reads="/"))
    assert wait_for(lambda: guarded.request("GET", explode, headers=BOB).status == 200)
    # A broken version: logged with its line, and the rules before stay in force.
    access_file.write_text(access_file.read_text() + "\n[users.eve]\npassword = 7\n")
    # The file is looked at, at most once a second, when a request comes.
    assert wait_for(
        lambda: (
            guarded.request("GET", "/", headers=BOB).status == 200
            and "cannot be used" in guarded.settled_log()
        )
    )
    log = guarded.settled_log()
    broken = [line for line in log.splitlines() if "cannot be used" in line]
    assert len(broken) == 1
    assert "line " in broken[0] and "[users.eve] needs password" in broken[0]
    assert guarded.request("GET", explode, headers=BOB).status == 200
    # A fixed version is taken again.
    access_file.write_text(team_access())
    assert wait_for(lambda: guarded.request("GET", explode, headers=BOB).status == 403)


def wait_for(check, timeout: float = 10) -> bool:
    """True once `check()` is, polling for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_access_live_lockout_answers_429_then_lets_in_again(live_server_factory, access_file):
    server = start_team(
        live_server_factory,
        access_file,
        BUCKETDAV_LOGIN_FAILURES="3",
        BUCKETDAV_LOGIN_LOCKOUT="2s",
    )
    wrong = basic("bob", "wrong")
    assert [server.request("GET", NOTES, headers=wrong).status for _ in range(3)] == [401] * 3
    locked = server.request("GET", NOTES, headers=BOB)
    assert locked.status == 429
    assert 1 <= int(locked.headers["Retry-After"]) <= 3
    assert locked.json()["code"] == 429
    assert server.request("GET", NOTES, headers=NIGHTLY).status == 429
    # Without credentials nothing is locked, and nothing counts.
    assert server.request("GET", "/replica/public/docs/hello.latest.txt").status == 200
    assert server.request("GET", NOTES).status == 401
    started = time.monotonic()
    assert wait_for(lambda: server.request("GET", NOTES, headers=BOB).status == 200, timeout=6)
    assert time.monotonic() - started <= 3
    log = server.settled_log()
    assert log.count("failed sign-ins within") == 1
    assert log.count('reason="locked out"') >= 2


def test_access_live_bad_access_file_stops_start_up_naming_the_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[anonymous]\nread = ["/"]\n\n[users.al]\npassword = "x"\n')
    env = launch.environ_with(ARCHIVE_DIR=str(tmp_path / "store"), BUCKETDAV_ACCESS_FILE=str(bad))
    done = subprocess.run(
        [sys.executable, "-m", "bucketdav", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"bucketdav: BUCKETDAV_ACCESS_FILE='{bad}': line 5: the password of 'al' is not a "
        "bcrypt ($2y$, $2b$) or argon2id hash"
    ]
    assert not (tmp_path / "store").exists()


# -- HTTPS ----------------------------------------------------------------------------------


@pytest.fixture
def tls_server(live_server_factory, access_file, tmp_path) -> LiveServer:
    certificate = self_signed(tmp_path / "tls")
    return start_team(live_server_factory, access_file, **certificate.env())


def test_access_live_https_answers_with_https_urls(tls_server):
    assert tls_server.url.startswith("https://")
    made = tls_server.upload("n.txt", b"over tls\n", headers={**NIGHTLY, "Team": "nightly"})
    assert made.status == 200
    assert made.json()["url"]["blob"].startswith(f"https://127.0.0.1:{tls_server.port}/blob/")
    assert tls_server.request("GET", NOTES, headers=BOB).body == b"nightly notes\n"
    assert "listening on https://127.0.0.1:" in tls_server.log()


def test_access_live_https_port_tells_plain_http_to_use_https(tls_server):
    conn = http.client.HTTPConnection(tls_server.host, tls_server.port, timeout=10)
    conn.request("GET", "/healthz")
    answer = conn.getresponse()
    assert answer.status == 400
    assert b"https://" in answer.read()


def test_access_live_https_silent_client_does_not_hold_up_others(tls_server):
    silent = [socket.create_connection((tls_server.host, tls_server.port)) for _ in range(3)]
    try:
        started = time.monotonic()
        health = tls_server.request("GET", "/healthz")
        assert health.status == 200
        assert time.monotonic() - started < 2
    finally:
        for sock in silent:
            sock.close()


def test_access_live_https_keep_alive_serves_many_requests(tls_server):
    conn = tls_server.connection()
    try:
        for _ in range(20):
            conn.request("GET", NOTES, headers=BOB)
            answer = conn.getresponse()
            assert (answer.status, answer.read()) == (200, b"nightly notes\n")
    finally:
        conn.close()


def test_access_live_tls_needs_both_files_and_a_matching_key(tmp_path):
    certificate = self_signed(tmp_path / "tls")
    other = self_signed(tmp_path / "other")
    cases = [
        ({"BUCKETDAV_TLS_CERT": str(certificate.cert)}, "BUCKETDAV_TLS_KEY="),
        (
            {"BUCKETDAV_TLS_CERT": str(certificate.cert), "BUCKETDAV_TLS_KEY": str(other.key)},
            "BUCKETDAV_TLS_CERT=",
        ),
        (
            {"BUCKETDAV_TLS_CERT": str(tmp_path / "none.pem"), "BUCKETDAV_TLS_KEY": "k"},
            "cannot read it",
        ),
    ]
    for env, words in cases:
        done = subprocess.run(
            [sys.executable, "-m", "bucketdav", "serve", "--port", "0"],
            env=launch.environ_with(ARCHIVE_DIR=str(tmp_path / "store"), **env),
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("bucketdav: ") and words in line


def test_access_live_https_client_without_trust_is_refused(tls_server):
    context = ssl.create_default_context()
    conn = http.client.HTTPSConnection(tls_server.host, tls_server.port, context=context)
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/healthz")
    conn.close()
    assert tls_server.request("GET", "/healthz").status == 200


def test_access_live_many_clients_at_once_over_https(tls_server):
    results: list[int] = []

    def fetch() -> None:
        for _ in range(5):
            results.append(tls_server.request("GET", NOTES, headers=BOB).status)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [200] * 40
