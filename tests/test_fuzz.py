"""Bounded, seeded fuzzing of the multipart parser and the archive readers through the API.

Each case is a valid body mutated a few times (bytes flipped, cut, repeated, framing
inserted). The rules: never a 5xx, never a file outside the store, staging/ empty after
each request, and the store checks clean at the end.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import multipart_body, staged

from bucketdav.store.check import check_store

MULTIPART_CASES = 1500
ARCHIVE_CASES = 700
BOUNDARY = "fuzzboundary"
TOKENS = [
    b"\r\n",
    b"--",
    f"--{BOUNDARY}".encode(),
    f"\r\n--{BOUNDARY}--\r\n".encode(),
    b'Content-Disposition: form-data; name="file"; filename="../../x"\r\n',
    b"Content-Type: text/plain\r\n",
    b"\x00",
    b"\xff\xfe",
    b"=?utf-8?q?x?=",
    b"filename*=UTF-8''..%2F..%2Fx; name=\"file\"",
    b"ustar\x00",
    b"PK\x03\x04",
    b"\x1f\x8b\x08",
    b"../../../outside/",
]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """`data` with one to four random edits."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        edit = rng.randrange(6)
        at = rng.randrange(len(out) + 1)
        if edit == 0 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif edit == 1:
            out[at:at] = rng.choice(TOKENS)
        elif edit == 2:
            del out[at : at + rng.randint(1, 64)]
        elif edit == 3:
            end = min(len(out), at + rng.randint(1, 200))
            out[at:at] = out[at:end] * rng.randint(1, 3)
        elif edit == 4:
            del out[at:]
        else:
            out[at:at] = rng.randbytes(rng.randint(1, 32))
    return bytes(out)


def assert_contained(tmp_path: Path, store_root: Path) -> None:
    """Nothing appeared next to the store, and staging/ is empty."""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "store"]
    assert list((tmp_path / "outside").iterdir()) == []
    assert staged(store_root) == []


def run_cases(count: int, seed: int, send: Callable[[random.Random], object]) -> dict[int, int]:
    """Run `count` seeded cases; returns how many answered each status."""
    rng = random.Random(seed)
    statuses: dict[int, int] = {}
    started = time.monotonic()
    for _ in range(count):
        response = send(rng)
        status = response.status_int
        assert status < 500, (status, response.body[:500])
        assert response.content_type == "application/json"
        statuses[status] = statuses.get(status, 0) + 1
    assert time.monotonic() - started < 120
    print(f"{count} cases, seed {seed}: statuses {sorted(statuses.items())}")
    return statuses


# -- multipart ----------------------------------------------------------------------------


def multipart_seeds() -> list[bytes]:
    """Valid bodies to mutate: plain, with other fields, odd names, a big part."""
    seeds = [
        multipart_body([("file", "a.txt", b"hello")], BOUNDARY)[0],
        multipart_body([("note", None, b"x" * 50), ("file", "r.xml", b"<r/>" * 100)], BOUNDARY)[0],
        multipart_body([("file", "../../etc/passwd", b"escape")], BOUNDARY)[0],
        multipart_body([("file", "dir\\win.txt", b"\x00\x01" * 300)], BOUNDARY)[0],
        multipart_body([("file", "x.tgz", b"\x1f\x8b\x08" + b"\x00" * 100)], BOUNDARY)[0],
    ]
    header = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f"filename*=UTF-8''caf%C3%A9.txt\r\nContent-Type: text/plain\r\n\r\n"
    ).encode()
    seeds.append(header + b"data" * 2000 + f"\r\n--{BOUNDARY}--\r\n".encode())
    return seeds


@pytest.mark.slow
def test_fuzz_multipart_bodies_never_5xx_nor_escape(make_client, store_root, tmp_path):
    client = make_client(MAX_CONTENT_LENGTH="64kb")
    seeds = multipart_seeds()
    types = [
        f"multipart/form-data; boundary={BOUNDARY}",
        f'multipart/form-data; boundary="{BOUNDARY}"',
        "multipart/form-data; boundary=",
        "multipart/form-data",
        f"multipart/form-data; boundary={BOUNDARY}x",
        f"multipart/form-data; boundary={BOUNDARY}; charset=latin1",
    ]

    def send(rng: random.Random) -> object:
        body = mutate(rng.choice(seeds), rng)
        ctype = types[0] if rng.random() < 0.8 else rng.choice(types)
        # WebTest re-encodes a multipart body given to post(); request() sends these bytes.
        response = client.request(
            "/upload",
            method="POST",
            body=body,
            expect_errors=True,
            headers={"Content-Type": ctype},
        )
        assert staged(store_root) == []
        return response

    statuses = run_cases(MULTIPART_CASES, 20261128, send)
    assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0
    assert_contained(tmp_path, store_root)
    assert check_store(store_root, "md5", full=True).clean


# -- archives -----------------------------------------------------------------------------


def tar_bytes(compress: str = "", *, hostile: bool = True) -> bytes:
    """A tar with folders, files, a symlink, a hard link, and (`hostile`) members that leave."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w" + (f":{compress}" if compress else "")) as tar:

        def add(
            name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = ""
        ) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("pkg/", kind=tarfile.DIRTYPE)
        add("pkg/a.txt", b"alpha\n" * 40)
        add("pkg/sub/b.bin", bytes(range(256)) * 4)
        add("pkg/link", kind=tarfile.SYMTYPE, link="a.txt")
        add("pkg/hard", kind=tarfile.LNKTYPE, link="pkg/a.txt")
        if hostile:
            add("pkg/../../outside/evil.txt", b"escaped")
            add("pkg/out", kind=tarfile.SYMTYPE, link="../../../outside")
            add("pkg/out/through.txt", b"through a link")
    return buf.getvalue()


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("z/a.txt", b"zeta\n" * 50)
        archive.writestr("z/dir/", b"")
        archive.writestr("z/b.bin", bytes(range(256)))
        archive.writestr("../outside/zip-evil.txt", b"escaped")
        archive.writestr("/abs/zip-abs.txt", b"absolute")
    return buf.getvalue()


def archive_seeds() -> list[tuple[str, bytes]]:
    """(upload name, body) for every archive and compressed kind the server reads."""
    return [
        ("t.tar", tar_bytes()),
        ("safe.tar", tar_bytes(hostile=False)),
        ("safe.tgz", tar_bytes("gz", hostile=False)),
        ("t.tgz", tar_bytes("gz")),
        ("t.tar.bz2", tar_bytes("bz2")),
        ("t.tar.xz", tar_bytes("xz")),
        ("z.zip", zip_bytes()),
        ("f.gz", gzip.compress(b"text " * 500)),
        ("f.bz2", bz2.compress(b"text " * 500)),
        ("f.xz", lzma.compress(b"text " * 500)),
    ]


@pytest.mark.slow
def test_fuzz_archives_never_5xx_nor_escape(make_client, store_root, tmp_path):
    client = make_client(BUCKETDAV_EXTRACT_MAX_BYTES="1mb", BUCKETDAV_EXTRACT_MAX_FILES="200")
    seeds = archive_seeds()

    def send(rng: random.Random) -> object:
        name, body = rng.choice(seeds)
        if rng.random() < 0.9:
            body = mutate(body, rng)
        response = client.put(
            f"/upload/{name}",
            params=body,
            expect_errors=True,
            content_type="application/octet-stream",
        )
        assert staged(store_root) == []
        return response

    statuses = run_cases(ARCHIVE_CASES, 1128, send)
    assert statuses.get(200, 0) > 0 and statuses.get(422, 0) > 0
    assert_contained(tmp_path, store_root)
    assert not Path("/abs/zip-abs.txt").exists()
    report = check_store(store_root, "md5", full=True)
    assert report.clean, report.examples
    assert report.scanned["trees"] > 0
