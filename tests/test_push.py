"""`bucketdav push`: the real command against the real server, with a relay to record and break.

The relay is a small HTTP server of the test's own on 127.0.0.1 in front of the live server: it
records what the client sent (headers, body bytes), and can answer 503 or hang up mid-body
before it forwards requests as they are.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
import select
import socket
import ssl
import struct
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import require_tool
from helpers import md5

from bucketdav.client.command import parse_header
from bucketdav.client.progress import Progress, human_size, progress_line
from bucketdav.client.retry import RetryPolicy, retry_after_seconds, with_retries
from bucketdav.client.source import FolderTar, SourceError
from bucketdav.client.transport import ConnectionLost, Reply, Server

PUSH = [sys.executable, "-m", "bucketdav", "push"]


def push_env(**extra: str) -> dict[str, str]:
    """The environment without proxies or a token, so only what a test sets reaches the client."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith("BUCKETDAV_")
    }
    return {**env, **extra}


def push(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `bucketdav push` with `args`; stdout is a pipe, so no progress is drawn."""
    return subprocess.run(
        [*PUSH, *args],
        capture_output=True,
        text=True,
        env=env or push_env(),
        timeout=120,
        check=False,
    )


def make_tree(root: Path) -> Path:
    """A folder with a nested folder, an empty file, an empty folder, a UTF-8 name, a symlink."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-folder").mkdir()
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "sub" / "naïve café.txt").write_bytes("é\n".encode())
    (root / "sub" / "deeper" / "big.bin").write_bytes(bytes(range(256)) * 8000)
    (root / "sub" / "link").symlink_to("../a.txt")
    return root


def snapshot(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry under `root` by relative path: folders, file bytes, symlink targets."""
    found: dict[str, tuple[str, bytes | str]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_dir():
                found[key] = ("dir", "")
            else:
                found[key] = ("file", path.read_bytes())
    return found


@dataclass
class Seen:
    """One request as the relay received it."""

    method: str
    target: str
    headers: dict[str, str]
    body: int


class Relay:
    """An HTTP relay on 127.0.0.1: records requests; answers PUTs with `faults` in order, then
    forwards. A fault is "503" (answer 503 with Retry-After: 1 once the body is read) or
    "drop:N" (hang up with a reset after N bytes of the body)."""

    def __init__(self, upstream_port: int, faults: list[str] | None = None) -> None:
        self.upstream_port = upstream_port
        self.faults = list(faults or [])
        self.seen: list[Seen] = []
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def puts(self) -> list[Seen]:
        """The PUT requests received so far."""
        with self.lock:
            return [seen for seen in self.seen if seen.method == "PUT"]

    def close(self) -> None:
        """Stop accepting connections."""
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        reader = conn.makefile("rb")
        try:
            for _ in range(100):
                line = reader.readline(65536)
                if not line:
                    return
                method, target, _version = line.decode("latin-1").split()
                head = [line]
                headers: dict[str, str] = {}
                while (field := reader.readline(65536)) not in (b"\r\n", b""):
                    head.append(field)
                    name, _, value = field.decode("utf-8").partition(":")
                    headers[name.strip().lower()] = value.strip()
                fault = self._fault(method)
                if fault.startswith("drop:"):
                    got = len(reader.read(int(fault[5:])))
                    self._record(method, target, headers, got)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                body = self._body(reader, headers)
                self._record(method, target, headers, len(body))
                if fault == "503":
                    text = b'{"code": 503, "status": "Service Unavailable", "error": "busy"}'
                    conn.sendall(
                        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                        b"Content-Type: application/json\r\nConnection: close\r\n"
                        b"Content-Length: %d\r\n\r\n%b" % (len(text), text)
                    )
                    return
                conn.sendall(self._forward(head, headers, body))
                return
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            reader.close()
            conn.close()

    def _fault(self, method: str) -> str:
        with self.lock:
            return self.faults.pop(0) if method == "PUT" and self.faults else ""

    def _record(self, method: str, target: str, headers: dict[str, str], body: int) -> None:
        with self.lock:
            self.seen.append(Seen(method, target, headers, body))

    @staticmethod
    def _body(reader: io.BufferedReader, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            for _ in range(1_000_000):
                size = int(reader.readline(1024).split(b";")[0], 16)
                if size == 0:
                    assert reader.readline(1024) == b"\r\n"
                    return bytes(body)
                body += reader.read(size)
                assert reader.readline(1024) == b"\r\n"
            raise AssertionError("too many chunks")
        return reader.read(int(headers.get("content-length", "0")))

    def _forward(self, head: list[bytes], headers: dict[str, str], body: bytes) -> bytes:
        """The upstream's answer to the request, sent with a length and `Connection: close`."""
        skip = (b"content-length:", b"transfer-encoding:", b"connection:")
        # As a proxy does: an absolute-form target goes on as the origin's path.
        method, target, version = head[0].split(b" ")
        if target.startswith(b"http://"):
            target = b"/" + target.split(b"/", 3)[3]
        lines = [b" ".join((method, target, version))]
        lines += [h for h in head[1:] if not h.lower().startswith(skip)]
        lines.append(b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        with socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30) as up:
            up.sendall(b"".join(lines) + body)
            answer = bytearray()
            while chunk := up.recv(65536):
                answer += chunk
        return bytes(answer)


@pytest.fixture
def relay_factory(live_server):
    """Start relays in front of the live server; all are closed at the end."""
    relays: list[Relay] = []

    def start(*faults: str) -> Relay:
        relay = Relay(live_server.port, list(faults))
        relays.append(relay)
        return relay

    yield start
    for relay in relays:
        relay.close()
        assert not relay.errors, relay.errors


# -- against the live server --


def test_push_file_stores_it_and_prints_its_url(live_server, tmp_path):
    source = tmp_path / "results.xml"
    source.write_bytes(b"<results/>\n" * 1000)
    done = push(str(source), "--to", live_server.url)
    assert done.returncode == 0, done.stderr
    first, blob = done.stdout.splitlines()
    assert re.fullmatch(r".*results\.xml: 10\.7 KiB sent in \d+\.\d s", first)
    url = blob.split()[1]
    assert blob.split()[0] == "blob"
    assert live_server.request("GET", live_server.path_of(url)).body == source.read_bytes()
    assert done.stderr == ""


def test_push_folder_lands_as_the_same_tree(live_server, tmp_path):
    source = make_tree(tmp_path / "build")
    done = push(str(source), "--to", live_server.url, "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["filename"] == "build.tar"
    assert answer["files"] == 4
    assert snapshot(live_server.root / answer["path"]["archive"]) == snapshot(source)


def test_push_known_file_is_deployed_by_checksum_with_no_body(live_server, relay_factory, tmp_path):
    relay = relay_factory()
    source = tmp_path / "report.html"
    source.write_bytes(b"<p>report</p>" * 5000)
    assert push(str(source), "--to", relay.url).returncode == 0
    again = push(str(source), "--to", relay.url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0].endswith("report.html: already stored, 0 bytes sent")
    first, second = relay.puts()
    assert (first.body, second.body) == (source.stat().st_size, 0)
    assert second.headers["x-checksum-deploy"] == "true"
    assert second.headers["x-checksum"] == md5(source.read_bytes())
    log = live_server.settled_log()
    line = f"md5={md5(source.read_bytes())} size={source.stat().st_size} made=- replicas=0"
    assert log.count(f"{line} deployed=true") == 1


def test_push_sends_the_checksum_it_computed_with_a_new_file(relay_factory, tmp_path):
    relay = relay_factory()
    source = tmp_path / "new.bin"
    source.write_bytes(b"fresh" * 100)
    assert push(str(source), "--to", relay.url).returncode == 0
    (put,) = relay.puts()
    assert put.headers["x-checksum"] == md5(source.read_bytes())
    assert [seen.method for seen in relay.seen] == ["GET", "HEAD", "PUT"]


def test_push_always_send_sends_known_content_again(relay_factory, tmp_path):
    relay = relay_factory()
    source = tmp_path / "again.txt"
    source.write_bytes(b"again")
    assert push(str(source), "--to", relay.url).returncode == 0
    assert push(str(source), "--to", relay.url, "--always-send").returncode == 0
    assert [put.body for put in relay.puts()] == [5, 5]
    assert "x-checksum" not in relay.puts()[1].headers


def test_push_headers_make_replicas(live_server_factory, tmp_path):
    server = live_server_factory(REPLICATE_0="user/${Username}/${Topic}")
    source = tmp_path / "notes.txt"
    source.write_bytes(b"notes")
    done = push(str(source), "--to", server.url, "-H", "Username: bob", "-H", "Topic: démo")
    assert done.returncode == 0, done.stderr
    (replica,) = [line.split()[1] for line in done.stdout.splitlines() if " replica " in line]
    assert "/replica/user/bob/d%C3%A9mo/notes." in replica
    assert (server.root / "replica/user/bob/démo/notes.latest.txt").read_bytes() == b"notes"


def test_push_names_the_templates_its_headers_did_not_fill(live_server_factory, tmp_path):
    server = live_server_factory(REPLICATE_0="user/${Username}/${Topic}")
    source = tmp_path / "notes.txt"
    source.write_bytes(b"notes")
    done = push(str(source), "--to", server.url, "-H", "Username: bob")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        "  skipped      REPLICATE_0 user/${Username}/${Topic}: missing header Topic"
    )


def test_push_folder_with_headers_files_the_tree(live_server_factory, tmp_path):
    server = live_server_factory(REPLICATE_0="ci/${Topic}")
    source = make_tree(tmp_path / "site")
    done = push(str(source), "--to", server.url, "-H", "Topic: nightly", "--json")
    assert done.returncode == 0, done.stderr
    assert snapshot(server.root / "replica/ci/nightly/site.latest") == snapshot(source)


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_push_sends_the_token_as_bearer(relay_factory, tmp_path, how):
    relay = relay_factory()
    source = tmp_path / "x.txt"
    source.write_bytes(b"x")
    if how == "flag":
        done = push(str(source), "--to", relay.url, "--token", "s3cret")
    else:
        done = push(str(source), "--to", relay.url, env=push_env(BUCKETDAV_TOKEN="s3cret"))  # noqa: S106
    assert done.returncode == 0, done.stderr
    assert {seen.headers.get("authorization") for seen in relay.seen} == {"Bearer s3cret"}


def test_push_without_token_sends_no_authorization(relay_factory, tmp_path):
    relay = relay_factory()
    source = tmp_path / "x.txt"
    source.write_bytes(b"x")
    assert push(str(source), "--to", relay.url).returncode == 0
    assert all("authorization" not in seen.headers for seen in relay.seen)


def test_push_waits_as_retry_after_says_on_503(relay_factory, tmp_path):
    relay = relay_factory("503", "503")
    source = tmp_path / "busy.bin"
    source.write_bytes(b"b" * 300_000)
    started = time.monotonic()
    done = push(str(source), "--to", relay.url)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert [put.body for put in relay.puts()] == [300_000] * 3
    assert done.stderr.splitlines() == [
        "bucketdav: busy (503); try 2 of 5 in 1 s",
        "bucketdav: busy (503); try 3 of 5 in 1 s",
    ]
    assert elapsed >= 2


def test_push_gives_up_after_its_tries(relay_factory, tmp_path):
    relay = relay_factory("503", "503")
    source = tmp_path / "busy.bin"
    source.write_bytes(b"b")
    done = push(str(source), "--to", relay.url, "--tries", "2", "--max-wait", "0")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == f"bucketdav: {source}: busy (503)"
    assert len(relay.puts()) == 2


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_push_sends_again_after_the_connection_breaks_mid_upload(
    live_server, relay_factory, tmp_path, kind
):
    relay = relay_factory("drop:65536")
    if kind == "file":
        source = tmp_path / "big.bin"
        source.write_bytes(os.urandom(3 << 20))
    else:
        source = make_tree(tmp_path / "tree")
        (source / "sub" / "deeper" / "more.bin").write_bytes(os.urandom(3 << 20))
    done = push(str(source), "--to", relay.url, "--max-wait", "0.1", "--json")
    assert done.returncode == 0, done.stderr
    first, second = relay.puts()
    assert first.body == 65536 < second.body
    assert "try 2 of 5" in done.stderr
    answer = json.loads(done.stdout)
    if kind == "file":
        assert (live_server.root / answer["path"]["blob"]).read_bytes() == source.read_bytes()
    else:
        assert snapshot(live_server.root / answer["path"]["archive"]) == snapshot(source)


def test_push_unreachable_server_fails_after_its_tries(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    source = tmp_path / "x.txt"
    source.write_bytes(b"x")
    done = push(str(source), "--to", f"http://127.0.0.1:{port}", "--tries", "2", "--max-wait", "0")
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0] == "bucketdav: Connection refused; try 2 of 2 in 0 s"
    assert (
        lines[1] == f"bucketdav: {source}: http://127.0.0.1:{port}: Connection refused; not stored"
    )


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_push_refused_upload_exits_1_with_the_servers_message(live_server_factory, tmp_path, kind):
    server = live_server_factory(MAX_CONTENT_LENGTH="10kb")
    if kind == "file":
        source = tmp_path / "huge.bin"
        source.write_bytes(os.urandom(8 << 20))
    else:
        source = make_tree(tmp_path / "huge")
    done = push(str(source), "--to", server.url)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"bucketdav: {source}: the upload")
    assert "is larger than MAX_CONTENT_LENGTH (10kb) (413)" in line
    assert done.stdout == ""
    assert not [path for path in (server.root / "blob").rglob("*") if path.is_file()]


def test_push_continues_after_a_refusal_and_exits_1(live_server_factory, tmp_path):
    server = live_server_factory(MAX_CONTENT_LENGTH="10kb")
    (tmp_path / "big.bin").write_bytes(b"b" * 20_000)
    (tmp_path / "small.txt").write_bytes(b"small")
    done = push(str(tmp_path / "big.bin"), str(tmp_path / "small.txt"), "--to", server.url)
    assert done.returncode == 1
    assert "small.txt: 5 B sent" in done.stdout
    assert "(413)" in done.stderr


def test_push_json_prints_one_answer_per_path(live_server, tmp_path):
    (tmp_path / "one.txt").write_bytes(b"one")
    tree = make_tree(tmp_path / "two")
    done = push(str(tmp_path / "one.txt"), str(tree), "--to", live_server.url, "--json")
    assert done.returncode == 0, done.stderr
    one, two = (json.loads(line) for line in done.stdout.splitlines())
    assert (one["code"], one["filename"], one["checksum"]["blob"]) == (200, "one.txt", md5(b"one"))
    assert (two["code"], two["filename"], two["files"]) == (200, "two.tar", 4)


def test_push_missing_path_sends_nothing_and_exits_2(live_server, tmp_path):
    (tmp_path / "here.txt").write_bytes(b"here")
    done = push(str(tmp_path / "here.txt"), str(tmp_path / "gone"), "--to", live_server.url)
    assert done.returncode == 2
    assert done.stderr == f"bucketdav: no such file or folder: {tmp_path / 'gone'}; nothing sent\n"
    assert "/upload/" not in live_server.settled_log()


def test_push_refuses_what_is_not_a_file_or_folder(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    done = push(str(tmp_path / "pipe"), "--to", "http://127.0.0.1:9/")
    assert (done.returncode, done.stderr) == (
        2,
        f"bucketdav: not a file or folder: {tmp_path / 'pipe'}; nothing sent\n",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-H", "no colon"], "bucketdav: -H 'no colon': expected 'Name: value'\n"),
        (["--token", "a\nb"], "bucketdav: the token cannot hold line breaks or NUL\n"),
        (["--to", "ftp://x/"], "bucketdav: 'ftp://x/' is not an http:// or https:// URL\n"),
    ],
)
def test_push_bad_arguments_exit_2(tmp_path, args, message):
    (tmp_path / "f").write_bytes(b"f")
    done = push(str(tmp_path / "f"), "--to", "http://127.0.0.1:9/", *args)
    assert (done.returncode, done.stderr) == (2, message)


def test_push_goes_through_the_proxy_the_environment_names(live_server, relay_factory, tmp_path):
    relay = relay_factory()
    source = tmp_path / "proxied.txt"
    source.write_bytes(b"proxied")
    done = push(str(source), "--to", live_server.url, env=push_env(http_proxy=relay.url))
    assert done.returncode == 0, done.stderr
    assert [seen.target for seen in relay.seen] == [
        f"{live_server.url}config",
        f"{live_server.url}checksum/{md5(b'proxied')}",
        f"{live_server.url}upload/proxied.txt",
    ]


def test_push_draws_progress_on_a_terminal_only(live_server, tmp_path):
    source = tmp_path / "shown.bin"
    source.write_bytes(os.urandom(2 << 20))
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [*PUSH, str(source), "--to", live_server.url],
        stdout=child,
        stderr=subprocess.PIPE,
        env=push_env(),
    )
    os.close(child)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if select.select([main], [], [], 1)[0]:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            seen += data
    os.close(main)
    assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    assert re.search(rb"\r\x1b\[Kshown\.bin \(checksum\)  [\d.]+ \S+ / 2\.0 MiB  \d+%  ", seen)
    assert re.search(rb"\r\x1b\[Kshown\.bin  [\d.]+ \S+ / 2\.0 MiB  \d+%  [\d.]+ \S+/s", seen)
    assert b"shown.bin: 2.0 MiB sent in" in seen
    piped = push(str(source), "--to", live_server.url, "--always-send")
    assert piped.returncode == 0
    assert "\r" not in piped.stdout and "\x1b" not in piped.stdout


# -- pure parts --


def test_parse_header_takes_name_and_utf8_value():
    assert parse_header("Topic:  démo ") == ("Topic", "démo".encode())


@pytest.mark.parametrize("text", ["Topic", ": x", "Bad Name: x", "Content-Length: 1", "A: b\nc"])
def test_parse_header_refuses_what_would_break_the_request(text):
    with pytest.raises(ValueError, match="-H"):
        parse_header(text)


def test_retry_after_reads_seconds_and_dates():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now=now) == 7
    assert retry_after_seconds("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30
    assert retry_after_seconds("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0
    assert retry_after_seconds("soon", now=now) is None
    assert retry_after_seconds(None, now=now) is None


def test_retry_policy_doubles_and_is_capped():
    policy = RetryPolicy(tries=6, max_wait=5)
    assert [policy.wait(n, None) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    assert policy.wait(1, 60) == 5
    assert policy.wait(3, 0.5) == 0.5


def test_with_retries_returns_the_first_answer_that_is_not_503():
    busy = Reply(503, "Service Unavailable", {"retry-after": "2"}, b"{}")
    done = Reply(200, "OK", {}, b"{}")
    answers: list[Reply | Exception] = [ConnectionLost("reset"), busy, done]
    waits: list[float] = []
    said: list[str] = []

    def attempt() -> Reply:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    reply = with_retries(attempt, policy=RetryPolicy(), say=said.append, sleep=waits.append)
    assert reply is done
    assert waits == [1, 2]
    assert said == ["reset; try 2 of 5 in 1 s", "503 Service Unavailable; try 3 of 5 in 2 s"]


def test_with_retries_raises_the_last_lost_connection():
    def attempt() -> Reply:
        raise ConnectionLost("refused")

    with pytest.raises(ConnectionLost, match="refused"):
        with_retries(attempt, policy=RetryPolicy(tries=3), say=lambda _: None, sleep=lambda _: None)


def test_reply_message_is_the_servers_error_field():
    reply = Reply(413, "Request Entity Too Large", {}, b'{"code": 413, "error": "too big"}')
    assert reply.message() == "too big (413)"
    assert Reply(502, "Bad Gateway", {}, b"<html>").message() == "502 Bad Gateway"


def test_progress_line_shows_share_and_rate():
    assert (
        progress_line("a.bin", 512 << 20, 1 << 30, 2.0)
        == "a.bin  512.0 MiB / 1.0 GiB  50%  256.0 MiB/s"
    )
    assert progress_line("tree.tar", 1536, None, 1.0) == "tree.tar  1.5 KiB  1.5 KiB/s"


def test_human_size_units():
    assert [human_size(n) for n in (0, 1023, 1024, 5 << 30)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "5.0 GiB",
    ]


def test_progress_writes_nothing_when_disabled():
    out = io.StringIO()
    progress = Progress(out, "x", 10, enabled=False)
    progress.add(5)
    progress.close()
    assert out.getvalue() == ""


def test_progress_redraws_at_most_every_fifth_of_a_second():
    out = io.StringIO()
    now = [0.0]
    progress = Progress(out, "x", 100, enabled=True, clock=lambda: now[0])
    for step in range(10):
        now[0] = step * 0.05
        progress.add(10)
    progress.close()
    assert out.getvalue().count("\r\x1b[Kx ") == 3  # at 0, 0.2 and 0.4 s
    assert out.getvalue().endswith("\r\x1b[K")


def test_folder_tar_reads_back_with_tarfile(tmp_path):
    source = make_tree(tmp_path / "src")
    os.mkfifo(source / "pipe")
    skipped: list[str] = []
    data = b"".join(FolderTar(source, skipped=skipped.append, chunk=4096))
    assert len(data) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = {m.name: m for m in archive.getmembers()}
        assert sorted(members) == [
            "a.txt",
            "empty-folder",
            "empty.txt",
            "sub",
            "sub/deeper",
            "sub/deeper/big.bin",
            "sub/link",
            "sub/naïve café.txt",
        ]
        assert members["sub/link"].issym() and members["sub/link"].linkname == "../a.txt"
        assert members["empty-folder"].isdir()
        for name in ("a.txt", "empty.txt", "sub/naïve café.txt", "sub/deeper/big.bin"):
            extracted = archive.extractfile(members[name])
            assert extracted is not None
            assert extracted.read() == (source / name).read_bytes()
        assert members["a.txt"].mtime == int((source / "a.txt").stat().st_mtime)
    assert skipped == ["pipe: not a file, folder or symlink"]


def test_folder_tar_keeps_names_that_are_not_utf8(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    with open(os.path.join(os.fsencode(source), b"caf\xe9.txt"), "wb") as handle:
        handle.write(b"latin-1 name")
    data = b"".join(FolderTar(source, skipped=lambda _: None))
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as tar:
        assert [os.fsencode(name) for name in tar.getnames()] == [b"caf\xe9.txt"]


def test_folder_tar_refuses_a_file_that_shrinks_while_read(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "log.txt").write_bytes(b"x" * 100_000)
    pieces = iter(FolderTar(source, skipped=lambda _: None, chunk=512))
    header = next(pieces)
    assert header.startswith(b"log.txt\0")
    (source / "log.txt").write_bytes(b"short")
    with pytest.raises(SourceError, match="shrank while it was being sent"):
        list(pieces)


def test_server_takes_a_new_connection_when_the_kept_one_was_closed():
    listener = socket.create_server(("127.0.0.1", 0))
    closed = threading.Event()

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            closed.set()

    threading.Thread(target=serve, daemon=True).start()
    server = Server(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=10, environ={})
    try:
        assert server.request("GET", "/config").body == b"ok"
        assert closed.wait(10)
        assert server.request("GET", "/config").body == b"ok"
    finally:
        server.close()
        listener.close()


@pytest.fixture
def tls_server(tmp_path):
    """An https server on 127.0.0.1 with a self-signed certificate, keeping connections alive.

    It reads each request whole and answers with the number of body bytes it got. Yields the
    URL, the certificate's path and a list that grows by one per connection accepted.
    """
    openssl = require_tool("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def serve() -> None:
        for _ in range(10):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    reader = tls.makefile("rb")
                    for _ in range(10):
                        headers = {}
                        while (line := reader.readline(65536)) not in (b"\r\n", b""):
                            name, _, value = line.decode().partition(":")
                            headers[name.strip().lower()] = value.strip()
                        if not headers:
                            break
                        got = b"%d" % len(Relay._body(reader, headers))
                        tls.sendall(
                            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(got), got)
                        )
            except (OSError, ssl.SSLError):
                continue

    threading.Thread(target=serve, daemon=True).start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}", cert, accepted
    listener.close()


def test_server_verifies_https_certificates(tls_server, monkeypatch):
    url, cert, _accepted = tls_server
    server = Server(url, timeout=10, environ={})
    with pytest.raises(ConnectionLost, match="TLS certificate not trusted") as refused:
        server.request("GET", "/config")
    assert refused.value.retry is False
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    assert Server(url, timeout=10, environ={}).request("GET", "/config").body == b"0"


def test_server_sends_bodies_over_https(tls_server, monkeypatch):
    # TLS 1.3 session tickets make an idle socket readable: not to be taken for an answer.
    url, cert, accepted = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    server = Server(url, timeout=5, environ={})
    chunks = [b"x" * 65536] * 32
    try:
        assert server.request("PUT", "/upload/x", body=iter(chunks)).body == b"2097152"
        reply = server.request("PUT", "/upload/x", body=iter(chunks), length=2097152)
        assert reply.body == b"2097152"
    finally:
        server.close()
    assert len(accepted) == 1


@pytest.fixture
def tunnel_proxy():
    """An HTTP proxy on 127.0.0.1 that only tunnels (CONNECT); yields its URL and the targets."""
    listener = socket.create_server(("127.0.0.1", 0))
    targets: list[str] = []

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def serve() -> None:
        for _ in range(10):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(30)
            reader = conn.makefile("rb")
            target = reader.readline(65536).split()[1].decode()
            while reader.readline(65536) not in (b"\r\n", b""):
                pass
            targets.append(target)
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((host, int(port)), timeout=30)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            threading.Thread(target=pipe, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", targets
    listener.close()


def test_server_reaches_https_through_the_proxys_tunnel(tls_server, tunnel_proxy, monkeypatch):
    url, cert, _accepted = tls_server
    proxy, targets = tunnel_proxy
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    server = Server(url, timeout=10, environ={"https_proxy": proxy})
    try:
        assert server.request("PUT", "/upload/x", body=iter([b"abc"])).body == b"3"
    finally:
        server.close()
    assert targets == [url.removeprefix("https://")]


def test_server_url_must_be_http_or_https():
    with pytest.raises(ValueError, match="not an http"):
        Server("127.0.0.1:8080", timeout=1, environ={})
    assert Server("https://files.example/bucket/", timeout=1, environ={}).prefix == "/bucket"
