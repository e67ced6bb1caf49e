"""Real WebDAV clients against the real server: rclone, rclone mount, davfs2, cadaver, Chromium."""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import subprocess
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cheroot import wsgi

from bucketdav.dav.app import make_dav_app
from bucketdav.store.blobs import Store
from tests.conftest import IN_CI, LiveServer, make_settings, require_tool

pytestmark = [pytest.mark.client, pytest.mark.slow]

SOURCES = {
    "notes.txt": b"first line\nsecond line\n",
    "data/big.bin": bytes(range(256)) * 4096 + b"tail",
    "data/empty.txt": b"",
    "data/space name & more.txt": "caf\u00e9 \u2603\n".encode(),
}


@dataclass
class Published:
    """What the test put in the store: sources, their blobs and the public paths of each."""

    server: LiveServer
    sources: Path
    tree_path: str
    replica_dir: str
    checksums: dict[str, str]


def run(args: list[str], *, timeout: float = 60, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL, **kwargs
    )


def need_root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("mounting needs root in CI")
        pytest.skip("mounting needs root")


@pytest.fixture
def published(live_server_factory: Callable[..., LiveServer], tmp_path: Path) -> Published:
    """The sources uploaded as one .tgz: extracted to explode/, filed as a replica tree."""
    server = live_server_factory(REPLICATE_0="team/${Topic}")
    sources = tmp_path / "sources"
    for name, data in SOURCES.items():
        (sources / name).parent.mkdir(parents=True, exist_ok=True)
        (sources / name).write_bytes(data)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name in SOURCES:
            tar.add(sources / name, arcname=name)
    resp = server.upload("build.tgz", archive.getvalue(), headers={"Topic": "nightly"})
    assert resp.status == 200, resp.body
    replica = server.root / "replica" / "team" / "nightly"
    assert (replica / "build.latest").is_symlink()
    # Something on disk that points out of the store must stay invisible.
    os.symlink("/etc", replica / "escape")
    checksums = {name: hashlib.md5(data).hexdigest() for name, data in SOURCES.items()}  # noqa: S324
    return Published(
        server, sources, "/" + resp.json()["path"]["archive"], "/replica/team/nightly", checksums
    )


def remote(server: LiveServer, path: str = "") -> str:
    return f":webdav,url='{server.url}':{path.lstrip('/')}"


def rclone(args: list[str], tmp_path: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    config = tmp_path / "rclone.conf"
    config.touch()
    return run([require_tool("rclone"), "--config", str(config), *args], timeout=timeout)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def test_dav_rclone_lists_copies_and_checks(published, tmp_path):
    server = published.server
    listed = rclone(["lsf", "-R", remote(server, published.replica_dir)], tmp_path)
    assert listed.returncode == 0, listed.stderr
    names = set(listed.stdout.decode().split())
    assert "build.latest/notes.txt" in names and "build.latest/data/big.bin" in names
    assert not any(n.startswith("escape") for n in names)
    copy = tmp_path / "copy"
    copied = rclone(["copy", remote(server, published.tree_path), str(copy)], tmp_path)
    assert copied.returncode == 0, copied.stderr
    assert tree_bytes(copy) == tree_bytes(published.sources)
    checked = rclone(
        [
            "check",
            "--webdav-vendor",
            "owncloud",
            str(published.sources),
            remote(server, published.replica_dir + "/build.latest"),
        ],
        tmp_path,
    )
    assert checked.returncode == 0, checked.stderr
    assert b"hashes could not be checked" not in checked.stderr


def file_gets(log: str) -> int:
    """How many GETs the access log shows, other than health checks."""
    return len(re.findall(r'"GET /(?!healthz)', log))


def test_dav_rclone_md5sum_uses_stored_checksums(published, tmp_path):
    server = published.server
    gets_before = file_gets(server.settled_log())
    summed = rclone(
        ["md5sum", "--webdav-vendor", "owncloud", remote(server, published.tree_path)], tmp_path
    )
    assert summed.returncode == 0, summed.stderr
    got = {}
    for line in summed.stdout.decode().splitlines():
        digest, name = line.split("  ", 1)
        got[name] = digest
    assert got == published.checksums
    assert file_gets(server.settled_log()) == gets_before


def test_dav_rclone_mount_lists_and_reads(published, tmp_path):
    if not os.path.exists("/dev/fuse"):
        if IN_CI:
            pytest.fail("/dev/fuse is missing")
        pytest.skip("/dev/fuse is missing")
    fusermount = require_tool("fusermount3")
    mountpoint = tmp_path / "rmnt"
    mountpoint.mkdir()
    mounted = rclone(
        [
            "mount",
            "--read-only",
            "--daemon",
            "--daemon-timeout",
            "30s",
            remote(published.server),
            str(mountpoint),
        ],
        tmp_path,
    )
    try:
        assert mounted.returncode == 0, mounted.stderr
        assert wait_for_mount(mountpoint)
        build = mountpoint / published.replica_dir.lstrip("/") / "build.latest"
        assert tree_bytes(build) == tree_bytes(published.sources)
        with pytest.raises(OSError):
            (mountpoint / "replica" / "new.txt").write_bytes(b"x")
    finally:
        run([fusermount, "-u", str(mountpoint)], timeout=30)
    assert not os.path.ismount(mountpoint)


def wait_for_mount(mountpoint: Path, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mountpoint):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def davfs_mount(published: Published, tmp_path: Path) -> Iterator[Path]:
    need_root()
    require_tool("mount.davfs")
    conf = tmp_path / "davfs2.conf"
    # buf_size 64: Linux 6.16+ fails every davfs2 listing with EINVAL on the default.
    # The cache stays in davfs2's default place: it drops to its own user, which cannot
    # enter pytest's private temporary directories.
    conf.write_text("ask_auth 0\nuse_locks 0\nbuf_size 64\n")
    mountpoint = tmp_path / "dmnt"
    mountpoint.mkdir()
    mounted = run(
        ["mount", "-t", "davfs", "-o", f"ro,conf={conf}", published.server.url, str(mountpoint)],
        timeout=60,
    )
    try:
        assert mounted.returncode == 0, mounted.stderr
        yield mountpoint
    finally:
        if os.path.ismount(mountpoint):
            unmounted = run(["umount", str(mountpoint)], timeout=60)
            if unmounted.returncode != 0:
                run(["umount", "-l", str(mountpoint)], timeout=30)
    assert not os.path.ismount(mountpoint)


def test_dav_davfs2_mounts_read_only(davfs_mount, published):
    before = snapshot(published.server.root)
    listed = run(["ls", "-R", str(davfs_mount)], timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert {"blob", "explode", "replica"} <= set(os.listdir(davfs_mount))
    assert "staging" not in os.listdir(davfs_mount)
    for base in (published.tree_path, published.replica_dir + "/build.latest"):
        mounted = davfs_mount / base.lstrip("/")
        for name, digest in published.checksums.items():
            assert hashlib.md5((mounted / name).read_bytes()).hexdigest() == digest  # noqa: S324
    with pytest.raises(OSError):
        (davfs_mount / "replica" / "new.txt").write_bytes(b"x")
    assert snapshot(published.server.root) == before


def test_dav_cadaver_gets_and_is_refused_writes(published, tmp_path):
    cadaver = require_tool("cadaver")
    got = tmp_path / "got.txt"
    before = snapshot(published.server.root)
    script = (
        f"ls {published.replica_dir}/build.latest/\n"
        f"get {published.tree_path}/notes.txt {got}\n"
        f"put {published.sources / 'notes.txt'} /replica/put.txt\n"
        "mkcol /replica/newdir\nquit\n"
    )
    done = subprocess.run(
        [cadaver, published.server.url],
        input=script.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    out = done.stdout.decode()
    assert "notes.txt" in out and "data" in out
    assert got.read_bytes() == SOURCES["notes.txt"]
    put_line = out.split("put.txt", 1)[1]
    assert "failed" in put_line.split("mkcol", 1)[0]
    assert "405" in out.split("newdir", 1)[1]
    assert snapshot(published.server.root) == before


@pytest.fixture
def generic_url(published: Published) -> Iterator[str]:
    """The same store served with every read going through WsgiDAV and our provider."""
    store = Store(published.server.root, "md5")
    app = make_dav_app(make_settings(published.server.root), store, fast=False)
    server = wsgi.Server(("127.0.0.1", 0), app, numthreads=4)
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.bind_addr[1]}/"
    finally:
        server.stop()
        thread.join(10)


def test_dav_rclone_sees_the_same_through_the_generic_provider(published, generic_url, tmp_path):
    fast, generic = (
        remote(published.server, published.replica_dir),
        (f":webdav,url='{generic_url}':{published.replica_dir.lstrip('/')}"),
    )
    for command in (["lsf", "-R"], ["md5sum", "--webdav-vendor", "owncloud"]):
        a, b = rclone([*command, fast], tmp_path), rclone([*command, generic], tmp_path)
        assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
        assert sorted(a.stdout.splitlines()) == sorted(b.stdout.splitlines())
        assert len(a.stdout.splitlines()) >= len(SOURCES)


def chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    browser = require_tool("chromium")
    profile = tmp_path / "chromium-profile"
    return run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        timeout=90,
    )


def png_colours(path: Path) -> int:
    """How many distinct byte values the decompressed image data holds (1 for a blank page)."""
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG")
    idat, pos = b"", 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(idat)))


def test_dav_chromium_renders_a_listing(published, tmp_path):
    hostile = "<img src=x onerror=alert(1)>.txt"
    folder = published.server.root / published.tree_path.lstrip("/")
    os.link(folder / "notes.txt", folder / hostile)
    url = published.server.url.rstrip("/") + published.tree_path + "/"
    dumped = chromium(["--dump-dom", url], tmp_path)
    assert dumped.returncode == 0, dumped.stderr
    dom = dumped.stdout.decode()
    assert "notes.txt" in dom and "data" in dom
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in dom and "<img src" not in dom
    assert 'href="/upload"' in dom
    row = dom.split(">notes.txt<", 1)[1].split("</tr>", 1)[0]
    assert re.search(r"\b23\s*B\b|23 bytes", row), row
    sub = chromium(["--dump-dom", url + "data/"], tmp_path).stdout.decode()
    row = sub.split(">big.bin<", 1)[1].split("</tr>", 1)[0]
    assert re.search(r"1(\.0)?\s*MiB|1048580", row), row
    shot = tmp_path / "listing.png"
    taken = chromium([f"--screenshot={shot}", "--window-size=1000,700", url], tmp_path)
    assert taken.returncode == 0 and shot.exists(), taken.stderr
    assert png_colours(shot) > 8
