"""Real clients with credentials, over HTTP and over HTTPS with a self-signed certificate.

rclone (lsf, copy, md5sum), a davfs2 mount with a secrets file, and cadaver (its .netrc; over
HTTPS it asks a terminal whether to accept the certificate, and is answered through a pty).
"""

from __future__ import annotations

import hashlib
import os
import pty
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from access_setup import BOB_PW, NOTES, Certificate, self_signed, start_team, team_access

from tests.conftest import IN_CI, LiveServer, require_tool

pytestmark = [pytest.mark.client, pytest.mark.slow]

BUILD = "/replica/team/nightly/build.latest"


@pytest.fixture(params=["http", "https"])
def team(request, live_server_factory, tmp_path) -> tuple[LiveServer, Certificate | None]:
    access = tmp_path / "access.toml"
    access.write_text(team_access())
    certificate = self_signed(tmp_path / "tls") if request.param == "https" else None
    env = certificate.env() if certificate else {}
    return start_team(live_server_factory, access, **env), certificate


def run(args: list[str], *, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL, **kwargs
    )


def rclone(args: list[str], tmp_path: Path, certificate: Certificate | None):
    config = tmp_path / "rclone.conf"
    config.touch()
    tool = require_tool("rclone")
    trust = ["--ca-cert", str(certificate.cert)] if certificate else []
    return run([tool, "--config", str(config), *trust, *args])


def test_access_clients_rclone_lists_copies_and_sums_with_credentials(team, tmp_path):
    server, certificate = team
    obscured = run([require_tool("rclone"), "obscure", BOB_PW]).stdout.decode().strip()
    login = ["--webdav-user", "bob", "--webdav-pass", obscured, "--webdav-vendor", "owncloud"]
    remote = f":webdav,url='{server.url}':"
    listed = rclone(["lsf", "-R", remote + BUILD, *login], tmp_path, certificate)
    assert listed.returncode == 0, listed.stderr
    assert sorted(listed.stdout.decode().split()) == [
        "build/",
        "build/data/",
        "build/data/more.bin",
        "build/notes.txt",
    ]
    copied = rclone(["copy", remote + BUILD, str(tmp_path / "copy"), *login], tmp_path, certificate)
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "copy" / "build" / "notes.txt").read_bytes() == b"nightly notes\n"
    summed = rclone(["md5sum", remote + BUILD, *login], tmp_path, certificate)
    assert summed.returncode == 0, summed.stderr
    expected = hashlib.md5(b"nightly notes\n").hexdigest()  # noqa: S324 - the store's sum
    assert f"{expected}  build/notes.txt" in summed.stdout.decode()
    # The root shows only the way to what bob may read.
    top = rclone(["lsf", remote, *login], tmp_path, certificate)
    assert top.stdout.decode().split() == ["replica/"]
    # Without credentials, or with a wrong password, nothing of the team's folder.
    anonymous = rclone(["lsf", remote + "replica/team/"], tmp_path, certificate)
    assert anonymous.returncode != 0
    assert b"401" in anonymous.stderr or b"Unauthorized" in anonymous.stderr


def need_root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("mounting needs root in CI")
        pytest.skip("mounting needs root")


@pytest.fixture
def davfs_mount(team, tmp_path) -> Iterator[Path]:
    """The store mounted with davfs2 as bob, his password in a secrets file of the test's own."""
    need_root()
    require_tool("mount.davfs")
    server, certificate = team
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    secrets = tmp_path / "secrets"
    secrets.write_text(f"{mountpoint} bob {BOB_PW}\n")
    secrets.chmod(0o600)
    conf = tmp_path / "davfs2.conf"
    # davfs2 reads the certificate after dropping to its own user, which cannot enter
    # pytest's private folders: a copy goes where it can.
    public = Path(tempfile.mkdtemp(prefix="bucketdav-cert-"))
    public.chmod(0o755)
    trust = ""
    if certificate:
        shutil.copy(certificate.cert, public / "cert.pem")
        (public / "cert.pem").chmod(0o644)
        trust = f"trust_server_cert {public / 'cert.pem'}\n"
    conf.write_text(f"ask_auth 0\nuse_locks 0\nbuf_size 64\nsecrets {secrets}\n{trust}")
    mounted = run(["mount", "-t", "davfs", "-o", f"ro,conf={conf}", server.url, str(mountpoint)])
    try:
        assert mounted.returncode == 0, mounted.stderr
        yield mountpoint
    finally:
        if os.path.ismount(mountpoint) and run(["umount", str(mountpoint)]).returncode != 0:
            run(["umount", "-l", str(mountpoint)], timeout=30)
        shutil.rmtree(public, ignore_errors=True)
    assert not os.path.ismount(mountpoint)


def test_access_clients_davfs2_mounts_with_a_secrets_file(davfs_mount, team):
    server, _ = team
    visible = set(os.listdir(davfs_mount)) - {"lost+found"}
    assert visible == {"replica"}
    assert os.listdir(davfs_mount / "replica" / "team") == ["nightly"]
    notes = davfs_mount / NOTES.lstrip("/")
    assert notes.read_bytes() == b"nightly notes\n"
    log = server.settled_log()
    assert "identity=bob" in log
    assert BOB_PW not in log


def cadaver_session(url: str, commands: list[str], home: Path, timeout: float = 60) -> str:
    """Drive cadaver on a pty: accept the certificate when asked, then run `commands`."""
    tool = require_tool("cadaver")
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [tool, url],
        stdin=child,
        stdout=child,
        stderr=child,
        env={**os.environ, "HOME": str(home), "TERM": "dumb"},
        close_fds=True,
    )
    os.close(child)
    output = b""
    pending = list(commands)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
            if output.rstrip().endswith(b"(y/n)"):
                os.write(main, b"y\n")
                output += b"\n"
            elif output.rstrip().endswith(b">") and pending:
                os.write(main, pending.pop(0).encode() + b"\n")
                output += b"\n"
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        os.close(main)
    return output.decode("utf-8", "replace")


def test_access_clients_cadaver_signs_in_from_netrc(team, tmp_path):
    server, _ = team
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text(f"machine 127.0.0.1\nlogin bob\npassword {BOB_PW}\n")
    netrc.chmod(0o600)
    got = tmp_path / "got.txt"
    out = cadaver_session(
        server.url + "replica/team/nightly/",
        ["ls", f"get build.latest/build/notes.txt {got}", "quit"],
        home,
    )
    assert "build.latest" in out, out
    assert got.read_bytes() == b"nightly notes\n", out
