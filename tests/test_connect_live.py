"""The Connect page's commands, pasted into bash exactly as the page shows them, against a live
server: rclone mounts and copies, davfs2 mounts as root."""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import IN_CI, LiveServer, require_tool
from tests.helpers import tar_gz
from tests.test_dav_clients import need_root

pytestmark = [pytest.mark.client, pytest.mark.slow]

SOURCES = {
    "notes.txt": b"first line\nsecond line\n",
    "data/report.txt": "caf\u00e9 \u2603\n".encode(),
}


class _PageCommands(HTMLParser):
    """The text of each <pre> block (character references decoded), by its section's id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.section = ""
        self.current: list[str] | None = None
        self.found: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.section = dict(attrs).get("id") or ""
        elif tag == "pre":
            self.current = []

    def handle_data(self, data: str) -> None:
        if self.current is not None:
            self.current.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre" and self.current is not None:
            self.found.setdefault(self.section, []).append("".join(self.current))
            self.current = None


def connect_commands(server: LiveServer) -> dict[str, list[str]]:
    """The commands the live server's Connect page shows, by recipe."""
    page = server.request("GET", "/connect")
    assert page.status == 200, page.body
    parser = _PageCommands()
    parser.feed(page.body.decode())
    return parser.found


def shell_env(home: Path) -> dict[str, str]:
    """A user's environment whose home is `home`, so `~` and rclone's config stay in the test."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("XDG_", "RCLONE_", "BUCKETDAV_", "ARCHIVE_", "REPLICATE_"))
    }
    return {**env, "HOME": str(home)}


def paste(line: str, *, cwd: Path, env: dict[str, str], timeout: float = 60):
    """Run one command line as bash runs a pasted line."""
    return subprocess.run(
        ["bash", "-c", line],
        cwd=cwd,
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def rclone_mount_args(line: str) -> list[str] | None:
    """The words after `rclone mount` in a line, or None when it mounts nothing.

    Such a line stays in the foreground until the folder is unmounted.
    """
    words = shlex.split(line, comments=True)
    for i, pair in enumerate(itertools.pairwise(words)):
        if pair == ("rclone", "mount"):
            return words[i + 2 :]
    return None


def rclone_mount_point(args: list[str], home: Path) -> Path:
    """The local folder of `rclone mount REMOTE FOLDER`, with `~` as `home`."""
    _remote, point = [word for word in args if not word.startswith("-")][:2]
    return home / point.removeprefix("~/") if point.startswith("~/") else Path(point)


@contextmanager
def pasted_mount(line: str, point: Path, *, cwd: Path, env: dict[str, str]) -> Iterator[Path]:
    """Run a foreground `rclone mount` line in the background; unmount it at the end."""
    if not os.path.exists("/dev/fuse"):
        if IN_CI:
            pytest.fail("/dev/fuse is missing")
        pytest.skip("/dev/fuse is missing")
    fusermount = require_tool("fusermount3")
    log = cwd / "rclone-mount.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", line],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(point) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.ismount(point), log.read_text("utf-8", "replace")
        yield point
    finally:
        if os.path.ismount(point):
            subprocess.run([fusermount, "-u", str(point)], timeout=30, check=False)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        if os.path.ismount(point):
            subprocess.run([fusermount, "-u", "-z", str(point)], timeout=30, check=False)
    assert not os.path.ismount(point)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file below `root` by its relative path, with its content."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def filed(live_server_factory: Callable[..., LiveServer]) -> LiveServer:
    """A server whose replica/ holds one uploaded tree, filed as team/nightly/build.*."""
    server = live_server_factory(REPLICATE_0="team/${Topic}")
    resp = server.upload("build.tgz", tar_gz(SOURCES), headers={"Topic": "nightly"})
    assert resp.status == 200, resp.body
    return server


def test_connect_rclone_lines_mount_and_copy_when_pasted(filed, tmp_path):
    require_tool("rclone")
    lines = connect_commands(filed)["rclone"]
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = shell_env(home)
    mounted = []
    for line in lines:
        args = rclone_mount_args(line)
        if args is not None:
            with pasted_mount(line, rclone_mount_point(args, home), cwd=work, env=env) as point:
                build = point / "replica" / "team" / "nightly" / "build.latest"
                mounted.append(tree_bytes(build))
        else:
            done = paste(line, cwd=work, env=env)
            assert done.returncode == 0, (line, done.stderr.decode())
    assert mounted == [SOURCES]
    entries = sorted(os.listdir(filed.root / "replica" / "team" / "nightly"))
    assert len(entries) == 2
    assert tree_bytes(work / "replica") == {
        f"team/nightly/{entry}/{name}": data for entry in entries for name, data in SOURCES.items()
    }


def test_connect_davfs2_lines_mount_as_root(filed, tmp_path):
    need_root()
    require_tool("mount.davfs")
    lines = connect_commands(filed)["davfs2"]
    # The page names fixed local paths (the mount point and the davfs2 configuration file);
    # only those are swapped for this test's own, so the machine's /mnt and /etc stay untouched.
    mount_point, conf = tmp_path / "mnt", tmp_path / "bucketdav.conf"
    local = {"/mnt/bucket": str(mount_point), "/etc/davfs2/bucketdav.conf": str(conf)}
    pasted = []
    for line in lines:
        for fixed, own in local.items():
            line = line.replace(fixed, own)
        pasted.append(line)
    assert "/mnt/bucket" not in " ".join(pasted)
    try:
        for line in pasted:
            done = paste(line, cwd=tmp_path, env=shell_env(tmp_path), timeout=90)
            assert done.returncode == 0, (line, done.stderr.decode())
        assert os.path.ismount(mount_point)
        build = mount_point / "replica" / "team" / "nightly" / "build.latest"
        assert sorted(os.listdir(build)) == ["data", "notes.txt"]
        assert (build / "data" / "report.txt").read_bytes() == SOURCES["data/report.txt"]
    finally:
        if os.path.ismount(mount_point):
            unmounted = subprocess.run(["umount", str(mount_point)], timeout=60, check=False)
            if unmounted.returncode != 0:
                subprocess.run(["umount", "-l", str(mount_point)], timeout=30, check=False)
    assert not os.path.ismount(mount_point)
