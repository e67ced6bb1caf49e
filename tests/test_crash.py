"""Crash consistency: the real server killed with SIGKILL mid-phase restarts into a sound store.

Each phase runs a bounded number of kills at delays drawn from a fixed seed; after every
restart the store must check clean (every blob hashed), every upload the server answered
200 must read back whole, and no partial file or tree may be visible over WebDAV.
"""

from __future__ import annotations

import gzip
import http.client
import io
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import LiveServer
from helpers import files_under, md5, staged

from bucketdav.store.blobs import Store
from bucketdav.store.check import check_store

pytestmark = pytest.mark.slow

KILLS_PER_PHASE = 10
EXTRACT_KILLS = 8
PHASE_BUDGET = 20.0


def unexpected(report) -> dict[str, list[str]]:
    """The report's problems by kind, with their examples."""
    return {kind: examples for kind, examples in report.examples.items() if examples}


@dataclass
class Acked:
    """Uploads the server acknowledged (200), and what their responses promised."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    blobs: dict[str, int] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    kills: int = 0

    def add(self, digest: str, size: int, paths: dict[str, str] | None = None) -> None:
        with self.lock:
            self.blobs[digest] = size
            self.paths.update(paths or {})


def kill_delays(seed: int, count: int, low: float, high: float) -> list[float]:
    """`count` kill delays spread over [low, high], shuffled with a fixed seed."""
    rng = random.Random(seed)
    step = (high - low) / max(1, count - 1)
    delays = [low + i * step + rng.uniform(0, step / 2) for i in range(count)]
    rng.shuffle(delays)
    return delays


def put(server: LiveServer, name: str, data: bytes, headers: dict[str, str]) -> dict | None:
    """One upload; the JSON answer on 200, None when the server died under it."""
    try:
        response = server.upload(name, data, headers)
    except (OSError, http.client.HTTPException):
        return None
    assert response.status == 200, response.body[:300]
    return response.json()


def blob_path(digest: str) -> str:
    return f"blob/{digest[:2]}/{digest[2:4]}/{digest}"


def assert_sound(server: LiveServer) -> None:
    """The restarted store checks clean with every blob hashed, and staging/ is empty."""
    report = check_store(server.root, "md5", full=True)
    assert unexpected(report) == {}, report.examples
    assert staged(server.root) == []


def assert_cli_check_clean(server: LiveServer) -> None:
    """`bucketdav check --full` on the store, as an operator runs it, exits 0."""
    env = {k: v for k, v in server.env.items() if not k.startswith("REPLICATE_")}
    done = subprocess.run(
        [sys.executable, "-m", "bucketdav", "check", "--full"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def assert_acknowledged_whole(server: LiveServer, acked: Acked) -> None:
    """Every upload the server answered 200 reads back whole over WebDAV."""
    for digest, size in acked.blobs.items():
        response = server.request("GET", "/" + blob_path(digest))
        assert response.status == 200, digest
        assert len(response.body) == size and md5(response.body) == digest


def run_phase(
    factory: Callable[..., LiveServer],
    root: Path,
    acked: Acked,
    *,
    delays: list[float],
    load: Callable[[LiveServer, threading.Event], None],
    env: dict[str, str],
) -> LiveServer:
    """Start, load, SIGKILL after each delay, restart and check; returns the last server."""
    server = factory(root=root, **env)
    deadline = time.monotonic() + PHASE_BUDGET
    for delay in delays:
        if time.monotonic() > deadline:
            break
        stop = threading.Event()
        worker = threading.Thread(target=load, args=(server, stop))
        worker.start()
        time.sleep(delay)
        server.stop(signal.SIGKILL)
        stop.set()
        worker.join(30)
        assert not worker.is_alive()
        acked.kills += 1
        server = factory(root=root, **env)
        assert_sound(server)
    assert acked.kills >= len(delays) // 2
    assert_acknowledged_whole(server, acked)
    assert_cli_check_clean(server)
    return server


def in_threads(count: int, body: Callable[[int], None]) -> None:
    """Run `body(i)` in `count` threads and wait for them."""
    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


# -- receiving the body -------------------------------------------------------------------


def test_crash_while_receiving_bodies_loses_no_acknowledged_upload(live_server_factory, tmp_path):
    root = tmp_path / "store"
    acked = Acked()
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.randrange(1, 1 << 20)) for _ in range(24)]

    def load(server: LiveServer, stop: threading.Event) -> None:
        def uploader(index: int) -> None:
            for turn in range(40):
                if stop.is_set():
                    return
                data = payloads[(index * 7 + turn + acked.kills) % len(payloads)]
                data = data + f"{acked.kills}-{index}-{turn}".encode()
                answer = put(server, f"f{index}.bin", data, {})
                if answer is None:
                    return
                acked.add(answer["checksum"]["blob"], len(data))

        def slow_sender(_index: int) -> None:
            # A body that is always mid-way when the kill comes.
            with socket.create_connection((server.host, server.port), timeout=10) as sock:
                sock.sendall(b"PUT /upload/slow.bin HTTP/1.1\r\nHost: x\r\n")
                sock.sendall(b"Content-Length: 10000000\r\n\r\n")
                while not stop.is_set():
                    try:
                        sock.sendall(b"x" * 65536)
                    except OSError:
                        return
                    time.sleep(0.01)

        in_threads(4, lambda i: slow_sender(i) if i == 3 else uploader(i))

    server = run_phase(
        live_server_factory,
        root,
        acked,
        delays=kill_delays(1, KILLS_PER_PHASE, 0.05, 0.8),
        load=load,
        env={},
    )
    assert len(acked.blobs) >= 4
    assert all(size < 10_000_000 for size in acked.blobs.values())
    assert server.request("GET", "/healthz").status == 200


# -- extracting a large archive -----------------------------------------------------------


def big_archive(tag: str, files: int = 600) -> tuple[bytes, str, dict[str, str]]:
    """A .tar.gz of `files` distinct small files plus a few large ones; (body, tar md5, members)."""
    members: dict[str, bytes] = {}
    for index in range(files):
        members[f"pkg/d{index % 20}/f{index}.txt"] = f"{tag} file {index}\n".encode() * 8
    for index in range(1):
        members[f"pkg/big{index}.bin"] = random.Random(f"{tag}{index}").randbytes(1 << 20)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, 1), md5(raw), {n: md5(d) for n, d in members.items()}


def tree_listing(tree: Path) -> dict[str, str]:
    """Member path -> md5 for every file of an extracted tree."""
    return {p.relative_to(tree).as_posix(): md5(p.read_bytes()) for p in files_under(tree)}


def test_crash_while_extracting_leaves_whole_trees_or_none(live_server_factory, tmp_path):
    root = tmp_path / "store"
    acked = Acked()
    expected: dict[str, dict[str, str]] = {}
    archives: list[tuple[bytes, str]] = []
    for index in range(EXTRACT_KILLS + 1):
        body, digest, members = big_archive(f"a{index}")
        expected[digest] = members
        archives.append((body, digest))

    def load(server: LiveServer, stop: threading.Event) -> None:
        body, digest = archives[acked.kills]
        answer = put(server, "pkg.tgz", body, {})
        if answer is not None:
            assert answer["checksum"]["archive"] == digest
            acked.add(answer["checksum"]["blob"], len(body), {digest: answer["path"]["archive"]})

    # Measure one whole upload and extraction, then kill at points spread over that time.
    server = live_server_factory(root=root)
    started = time.monotonic()
    load(server, threading.Event())
    took = time.monotonic() - started
    archives.append(archives.pop(0))
    server.stop(signal.SIGKILL)
    acked.kills = 0

    server = run_phase(
        live_server_factory,
        root,
        acked,
        delays=kill_delays(2, EXTRACT_KILLS, 0.1 * took, 1.1 * took),
        load=load,
        env={},
    )
    trees = [p for p in (root / "explode").glob("*/*/*") if p.is_dir()]
    assert trees
    for tree in trees:
        assert tree_listing(tree) == expected[tree.name], f"half tree {tree}"
    for digest, path in acked.paths.items():
        assert (root / path).is_dir()
        member = "pkg/d3/f3.txt"
        response = server.request("GET", f"/{path}/{member}")
        assert response.status == 200 and md5(response.body) == expected[digest][member]
    killed_mid_way = acked.kills + 1 - len(acked.paths)
    assert killed_mid_way >= 2, "no kill landed before the answer"


# -- a burst of replica updates -----------------------------------------------------------


REPLICA_ENV = {"REPLICATE_0": "team/${Team}", "REPLICATE_1": "all/${Topic}"}


def small_tgz(text: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = text.encode()
        info = tarfile.TarInfo("out/report.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def visible_files(server: LiveServer, folder: Path) -> Iterator[tuple[str, int, int]]:
    """Each entry below a replica folder over WebDAV: (path, status, the status expected).

    Files are read with GET, folders listed with PROPFIND (Depth 1).
    """
    for path in sorted([folder, *folder.rglob("*")]):
        relative = path.relative_to(server.root).as_posix()
        if path.is_dir():
            response = server.request("PROPFIND", f"/{quote(relative)}/", headers={"Depth": "1"})
            yield relative, response.status, 207
        else:
            yield relative, server.request("GET", f"/{quote(relative)}").status, 200


def test_crash_during_replica_bursts_keeps_every_name_whole(live_server_factory, tmp_path):
    root = tmp_path / "store"
    acked = Acked()
    contents: dict[str, bytes] = {}

    def load(server: LiveServer, stop: threading.Event) -> None:
        def uploader(index: int) -> None:
            for turn in range(200):
                if stop.is_set():
                    return
                headers = {"Team": f"t{index % 2}", "Topic": "nightly"}
                text = f"run {acked.kills} {index} {turn}"
                tree = turn % 4 == 0
                data = small_tgz(text) if tree else text.encode()
                answer = put(server, "res.tgz" if tree else "res.txt", data, headers)
                if answer is None:
                    return
                replicas = answer["path"]["replicas"]
                assert len(replicas) == 2, answer
                digest = answer["checksum"]["blob"]
                contents[digest] = data
                acked.add(digest, len(data), {p: digest if not tree else text for p in replicas})

        in_threads(6, uploader)

    server = run_phase(
        live_server_factory,
        root,
        acked,
        delays=kill_delays(3, KILLS_PER_PHASE, 0.05, 0.6),
        load=load,
        env=REPLICA_ENV,
    )
    assert len(acked.paths) >= 10
    for path, promised in acked.paths.items():
        if path.endswith(".txt"):
            response = server.request("GET", "/" + quote(path))
            assert response.status == 200 and response.body == contents[promised]
        else:
            response = server.request("GET", "/" + quote(path) + "/out/report.txt")
            assert response.status == 200 and response.body == promised.encode()
    for folder in (root / "replica").iterdir():
        for relative, status, expected in visible_files(server, folder):
            assert status == expected, relative
    for latest in (root / "replica").rglob("*.latest*"):
        assert latest.is_symlink() and latest.exists(), latest
        assert os.path.basename(os.readlink(latest)) == os.readlink(latest)


# -- every file-system step of one upload, as a crash point -------------------------------

# The calls that change what is on disk; a crash lands between two of them.
STEPS = (
    "open",
    "write",
    "fsync",
    "chmod",
    "fchmod",
    "link",
    "symlink",
    "rename",
    "replace",
    "unlink",
    "mkdir",
    "makedirs",
    "rmdir",
)


def crash_at(step: int, action: Callable[[], None]) -> int:
    """Run `action` in a forked child that dies (os._exit) just before its `step`-th disk call.

    Returns how many disk calls the child made when it did not die (step 0 never dies).
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: count calls, die at the chosen one, report the count
        os.close(read)
        count = [0]
        for name in STEPS:
            original = getattr(os, name)

            def counted(*args, _original=original, **kwargs):
                count[0] += 1
                if count[0] == step:
                    os._exit(9)
                return _original(*args, **kwargs)

            setattr(os, name, counted)
        try:
            action()
            code = 0
        except BaseException:
            code = 3
        os.write(write, str(count[0]).encode())
        os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        told = pipe.read()
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 9), f"the child failed at step {step} (exit {code})"
    return int(told or 0)


def crash_points(make_client, store_root: Path, upload: Callable, env: dict[str, str]):
    """Crash one upload before each of its disk calls; yield (step, report after restart)."""
    base = store_root.parent / "base"
    client = make_client(**env)
    upload(client, "warm-up")
    shutil.copytree(store_root, base, symlinks=True)
    total = crash_at(0, lambda: upload(client, "counted"))
    assert total > 10
    for step in range(1, total + 1):
        shutil.rmtree(store_root)
        shutil.copytree(base, store_root, symlinks=True)
        crash_at(step, lambda: upload(client, "crashed"))
        Store(store_root, "md5").open()  # what the next start-up does
        yield step, check_store(store_root, "md5", full=True)


def upload_file(client, tag: str) -> None:
    headers = {"Team": "red", "Topic": "nightly"}
    client.put("/upload/res.txt", f"file {tag}\n".encode() * 100, headers=headers)


def upload_archive(client, tag: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for index in range(2):
            data = f"{tag} member {index}\n".encode()
            info = tarfile.TarInfo(f"out/m{index}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("out/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "m0.txt"
        tar.addfile(info)
    headers = {"Team": "red", "Topic": "nightly"}
    client.put("/upload/res.tgz", buf.getvalue(), headers=headers)


@pytest.mark.parametrize("upload", [upload_file, upload_archive])
def test_crash_at_every_disk_step_of_an_upload_leaves_a_clean_store(
    make_client, store_root, upload
):
    problems = {}
    steps = 0
    for step, report in crash_points(make_client, store_root, upload, REPLICA_ENV):
        steps += 1
        if unexpected(report):
            problems[step] = unexpected(report)
    print(f"{upload.__name__}: {steps} crash points")
    assert steps > 10
    assert problems == {}


def test_crash_points_leave_no_temporary_latest_link(make_client, store_root):
    leftovers = [
        step
        for step, report in crash_points(make_client, store_root, upload_file, REPLICA_ENV)
        if report.problems["leftover"]
    ]
    print(f"crash points leaving a temporary latest link: {leftovers}")
    assert leftovers == []
