"""What the access-control tests share: a team's access file, credentials, a certificate."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from helpers import tar_gz

from tests.conftest import IN_CI, LiveServer

ALICE_PW = "alice correct horse"
BOB_PW = "bob-battery-staple-42"
TOKEN = "tok-nightly-9d1c2b3a4f5e6d7c8b9a"  # noqa: S105 - a test token
OLD_TOKEN = "tok-old-1122334455667788"  # noqa: S105 - a test token
TEMPLATES = {"REPLICATE_0": "team/${Team}", "REPLICATE_1": "public/${Public}"}


def sha(text: str) -> str:
    """The token hash the access file keeps."""
    return hashlib.sha256(text.encode()).hexdigest()


def team_access(
    *, cost: int = 4, bob_reads: str = "/replica/team/nightly/", old_uploads: bool = False
) -> str:
    """An access file: anonymous reads public/, alice does everything, bob reads one folder,
    the nightly token files under team/nightly/, an old token (may upload) has expired."""
    alice = bcrypt.hashpw(ALICE_PW.encode(), bcrypt.gensalt(cost)).decode()
    bob = bcrypt.hashpw(BOB_PW.encode(), bcrypt.gensalt(cost)).decode()
    return f"""
[anonymous]
read = ["/replica/public/"]

[users.alice]
password = "{alice}"
read = ["/"]
upload = true
metrics = true

[users.bob]
password = "{bob}"
read = ["{bob_reads}"]

[tokens.nightly]
hash = "sha256:{sha(TOKEN)}"
upload = true
replicas = ["team/nightly/"]

[tokens.old]
hash = "sha256:{sha(OLD_TOKEN)}"
read = ["/"]
upload = {str(old_uploads).lower()}
expires = 2020-06-30
"""


def basic(user: str, password: str) -> dict[str, str]:
    """The Authorization header of HTTP Basic."""
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


ALICE = basic("alice", ALICE_PW)
BOB = basic("bob", BOB_PW)
NIGHTLY = {"Authorization": f"Bearer {TOKEN}"}
SECRETS = (ALICE_PW, BOB_PW, TOKEN, OLD_TOKEN, ALICE["Authorization"].split()[1])


NOTES = "/replica/team/nightly/build.latest/build/notes.txt"


def start_team(factory, access_file: Path, **env: str) -> LiveServer:
    """A server with the team's access file, a nightly build, another team's file, a public one.

    The nightly build is `replica/team/nightly/build.latest/build/notes.txt`.
    """
    server = factory(BUCKETDAV_ACCESS_FILE=str(access_file), **TEMPLATES, **env)
    build = tar_gz({"build/notes.txt": b"nightly notes\n", "build/data/more.bin": b"\1" * 5000})
    for name, data, headers in [
        ("build.tgz", build, {"Team": "nightly"}),
        ("secret.txt", b"other team\n", {"Team": "other"}),
        ("hello.txt", b"hello\n", {"Public": "docs"}),
    ]:
        made = server.upload(name, data, headers={**ALICE, **headers})
        assert made.status == 200, made.body
    return server


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""

    cert: Path
    key: Path

    def env(self) -> dict[str, str]:
        """The settings that make a server speak HTTPS with it."""
        return {"BUCKETDAV_TLS_CERT": str(self.cert), "BUCKETDAV_TLS_KEY": str(self.key)}


def self_signed(folder: Path) -> Certificate:
    """Make a self-signed certificate with openssl; fail (in CI) or skip when it is missing."""
    import pytest

    openssl = shutil.which("openssl")
    if openssl is None:
        message = "openssl is not installed (scripts/test installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return Certificate(cert, key)
