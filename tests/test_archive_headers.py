"""Hostile archive headers: every field of every tar header with each bad value, pax records,
GNU long names, zip directories; in unpack() and, for the costly ones, on the live server."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LiveServer, require_tool
from helpers import raw_tar_header, staged, tar_blocks, tar_gz
from test_archives import F, H, S, assert_no_tree_left, tar_bytes

from bucketdav.errors import UnsafeArchive
from bucketdav.store.blobs import Store
from bucketdav.uploads.archives.extract import unpack
from bucketdav.uploads.archives.tarformat import HeaderFault, number, pax_records
from bucketdav.uploads.outcome import Outcome

MiB = 1 << 20

# (field, offset, width) of a ustar header, as POSIX lays it out.
FIELDS = [
    ("name", 0, 100),
    ("mode", 100, 8),
    ("uid", 108, 8),
    ("gid", 116, 8),
    ("size", 124, 12),
    ("mtime", 136, 12),
    ("chksum", 148, 8),
    ("typeflag", 156, 1),
    ("linkname", 157, 100),
    ("magic", 257, 6),
    ("version", 263, 2),
    ("uname", 265, 32),
    ("gname", 297, 32),
    ("devmajor", 329, 8),
    ("devminor", 337, 8),
    ("prefix", 345, 155),
]
NUMERIC = {"mode", "uid", "gid", "size", "mtime", "chksum", "devmajor", "devminor"}


def numeric_values(width: int) -> list[bytes]:
    """Octal-field values a hostile writer may put in: signs, bases, overflows, base-256."""
    return [
        b"-1",
        b"-0000001",
        b"+0000001",
        b"0x10",
        b"0o17",
        b"1_0",
        b"9" * (width - 1),
        b" 12 34",
        b"abc",
        b"7" * width,
        b"\0" * width,
        b" " * width,
        b"\0" + b"1" * (width - 1),
        b"\xff" * width,
        b"\xff" + b"\0" * (width - 1),
        b"\x80" + b"\xff" * (width - 1),
        b"\x80" + b"\0" * (width - 2) + b"\x01",
        b"\x81" + b"\0" * (width - 1),
        b"\xfe" * width,
        "1\u0663".encode(),
    ]


TEXT_VALUES = [
    b"",
    b"\xff\xfe",
    b"a\0b",
    b"../../x",
    b"/etc/passwd",
    b"\x01ctl",
    b"a\\b",
    b"x" * 200,
    b"./",
    b"\0" * 5 + b"junk",
]
TYPE_VALUES = [bytes([t]) for t in b"0123456789ABDKLMNSVXgxz\0\xff"]
MAGIC_VALUES = [b"ustar\0", b"ustar ", b"\0" * 6, b"xxxxxx", b"\xff" * 6]
VERSION_VALUES = [b"00", b"  ", b" \0", b"\xff\xff", b"99"]


def bad_values(field: str, width: int) -> list[bytes]:
    """The values tried in `field`."""
    if field in NUMERIC:
        return numeric_values(width)
    if field == "typeflag":
        return TYPE_VALUES
    if field == "magic":
        return MAGIC_VALUES
    if field == "version":
        return VERSION_VALUES
    return TEXT_VALUES


def header_offsets(data: bytes) -> Iterator[int]:
    """Where each header block of a well-formed tar starts (pax and long-name ones included)."""
    at = 0
    while at + 512 <= len(data) and data[at : at + 512].strip(b"\0"):
        yield at
        size = int(data[at + 124 : at + 136].split(b"\0")[0] or b"0", 8)
        has_data = data[at + 156 : at + 157] in (b"0", b"\0", b"7", b"x", b"g", b"L", b"K")
        at += 512 + (-(-size // 512) * 512 if has_data else 0)


def with_checksum(block: bytearray) -> None:
    """Write the right checksum into a header block."""
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


def mutations(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Each field of each header of `data` set to each bad value, its checksum fixed or not."""
    for at in header_offsets(data):
        for field, start, width in FIELDS:
            for index, value in enumerate(bad_values(field, width)):
                # With the checksum left stale the value hardly matters: two per field do.
                for fix in (True, False) if index < 2 else (True,):
                    out = bytearray(data)
                    block = out[at : at + 512]
                    block[start : start + width] = value[:width].ljust(width, b"\0")
                    if fix and field != "chksum":
                        with_checksum(block)
                    out[at : at + 512] = block
                    yield f"@{at} {field}={value[:12]!r} fix={fix}", bytes(out)


def base_archives() -> dict[str, bytes]:
    """Small valid tars in each header format, with links, long names and pax records."""
    long_name = "d" * 60 + "/" + "e" * 70 + ".txt"
    members = [F("dir/a.txt", b"alpha" * 100), S("dir/l", "a.txt"), H("dir/h", "dir/a.txt")]
    return {
        "ustar": tar_bytes(members, fmt=tarfile.USTAR_FORMAT),
        "gnu": tar_bytes(
            [*members, F(long_name, b"long"), S("ln", long_name)], fmt=tarfile.GNU_FORMAT
        ),
        "pax": tar_bytes([*members, F(long_name, b"long"), F("naïve ☃.txt", b"u")]),
    }


@pytest.fixture
def store(store_root: Path) -> Store:
    """An opened md5 store."""
    opened = Store(store_root, "md5")
    opened.open()
    return opened


@pytest.fixture
def quick_store() -> Iterator[Store]:
    """A store in memory where there is one: thousands of unpacks in seconds, not minutes."""
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=parent) as root:
        opened = Store(Path(root) / "store", "md5")
        opened.open()
        yield opened


def outcome_of(store: Store, data: bytes, name: str) -> str:
    """Unpack `data`: "made" or "refused"; any other error fails, and a refusal leaves nothing."""
    blob = store.ingest([data])
    try:
        unpack(store, Outcome(blob=blob, filename=name), max_bytes=4 * MiB, max_files=100)
    except UnsafeArchive as exc:
        message = str(exc)
        assert "nothing was extracted" in message
        assert exc.member, message
        assert exc.member != name or "offset" in message or "truncated" in message, message
        assert list(store.staging.iterdir()) == []
        assert not store.tree_path(blob.digest).exists()
        return "refused"
    assert list(store.staging.iterdir()) == []
    return "made"


@pytest.mark.parametrize("fmt", ["ustar", "gnu", "pax"])
def test_archive_headers_every_bad_field_is_refused_or_read_never_an_error(quick_store, fmt):
    data = base_archives()[fmt]
    seen = {"made": 0, "refused": 0}
    for case, mutated in mutations(data):
        try:
            seen[outcome_of(quick_store, mutated, f"{fmt}.tar")] += 1
        except Exception as exc:  # the case in the failure message, not only a traceback
            raise AssertionError(f"{fmt} {case}: {type(exc).__name__}: {exc}") from exc
    assert seen["refused"] > 150 * len(list(header_offsets(data)))
    assert seen["made"] > 20 * len(list(header_offsets(data)))


@pytest.mark.parametrize(
    ("size", "member", "reason"),
    [
        (b"\xff" * 12, "a.txt", "its size is negative (-1)"),
        (b"\xff" + b"\0" * 10 + b"\x01", "a.txt", "its size is negative"),
        (b"-0000000005\0", "a.txt", "is not an octal number"),
        (b"0x000000005\0", "a.txt", "is not an octal number"),
        (b"\x80" + b"\xff" * 11, "a.txt", "BUCKETDAV_EXTRACT_MAX_BYTES"),
    ],
)
def test_archive_headers_bad_size_names_the_member(store, size, member, reason):
    data = bytearray(tar_bytes([F("a.txt", b"hello")], fmt=tarfile.USTAR_FORMAT))
    block = data[0:512]
    block[124:136] = size
    with_checksum(block)
    data[0:512] = block
    with pytest.raises(UnsafeArchive) as caught:
        unpack(
            store,
            Outcome(blob=store.ingest([bytes(data)]), filename="neg.tar"),
            max_bytes=MiB,
            max_files=10,
        )
    assert caught.value.member == member
    assert reason in str(caught.value)
    assert_no_tree_left(store)


def test_archive_headers_negative_size_is_a_422_through_the_api(client):
    data = bytearray(tar_bytes([F("a.txt", b"hello")], fmt=tarfile.USTAR_FORMAT))
    data[124:136] = b"\xff" * 12
    block = data[0:512]
    with_checksum(block)
    data[0:512] = block
    resp = client.put(
        "/upload/neg.tar", params=bytes(data), status=422, content_type="application/x-tar"
    )
    assert resp.json["code"] == 422
    assert "archive member 'a.txt' has a malformed tar header at offset 0" in resp.json["error"]
    assert "its size is negative (-1)" in resp.json["error"]


def pax_archive(records: bytes, *, member: bytes = b"a.txt", data: bytes = b"hello") -> bytes:
    """A tar of one pax extended header with exactly `records`, then a file member."""
    return tar_blocks(
        raw_tar_header(b"./PaxHeaders/a.txt", b"x", len(records)) + records,
        raw_tar_header(member, b"0", len(data)) + data,
    )


def rec(text: str | bytes) -> bytes:
    """One well-formed pax record: `<length> <keyword>=<value>\\n`, the length counting itself."""
    body = text.encode() if isinstance(text, str) else text
    for digits in range(1, 9):
        total = len(body) + 2 + digits
        if len(str(total)) == digits:
            return b"%d %s\n" % (total, body)
    raise AssertionError("record too long")


@pytest.mark.parametrize(
    ("records", "member", "reason"),
    [
        (b"0 path=x\n", "pax.tar", "wrong length"),
        (b"5 path=x\n", "pax.tar", "wrong length"),
        (b"99 path=x\n", "pax.tar", "wrong length"),
        (b"+9 path=x\n", "pax.tar", "does not start with a length"),
        (b"x path=x\n", "pax.tar", "does not start with a length"),
        (b"9 path x\n", "pax.tar", "no valid keyword"),
        (b"7 =abc\n", "pax.tar", "no valid keyword"),
        (b"8 \xff\xfe=ab\n", "pax.tar", "non-UTF-8 keyword"),
        (rec("size=-5"), "pax.tar", "is not a decimal number"),
        (rec("size=abc"), "pax.tar", "is not a decimal number"),
        (rec("size="), "pax.tar", "is not a decimal number"),
        (rec("size=0x10"), "pax.tar", "is not a decimal number"),
        (rec("size=" + "9" * 30), "pax.tar", "is not a decimal number"),
        (rec("size=99999999"), "a.txt", "BUCKETDAV_EXTRACT_MAX_BYTES"),
        (rec("mtime=yesterday"), "pax.tar", "is not a time"),
        (rec("uid=-1"), "pax.tar", "is not a decimal number"),
        (rec("GNU.sparse.map=1,2,3"), "pax.tar", "not a list of offset,size pairs"),
        (rec("path="), "pax.tar", "without a name at offset 1024"),
        (rec(b"path=\xff.txt"), "\udcff.txt", "not valid UTF-8"),
        (rec("path=../escape"), "../escape", "climbs out"),
        (rec("path=/abs"), "/abs", "absolute path"),
        (rec("path=" + "p" * 5000), "p" * 5000, "longer than 4096 bytes"),
        (rec("path=a.txt") + b"junk", "pax.tar", "does not start with a length"),
    ],
)
def test_archive_headers_bad_pax_records_are_refused(store, records, member, reason):
    with pytest.raises(UnsafeArchive) as caught:
        unpack(
            store,
            Outcome(blob=store.ingest([pax_archive(records)]), filename="pax.tar"),
            max_bytes=MiB,
            max_files=10,
        )
    assert caught.value.member == member
    assert reason in str(caught.value)
    assert_no_tree_left(store)


def test_archive_headers_valid_pax_overrides_are_honoured(store):
    records = (
        rec("path=dir/renamed.txt") + rec("mtime=-12.5") + rec("SCHILY.xattr.user.x=1") + b"\0" * 7
    )
    outcome = Outcome(blob=store.ingest([pax_archive(records)]), filename="pax.tar")
    unpack(store, outcome, max_bytes=MiB, max_files=10)
    assert (outcome.archive.path / "dir" / "renamed.txt").read_bytes() == b"hello"


def test_archive_headers_pax_size_override_moves_the_next_header(store):
    data = tar_blocks(
        raw_tar_header(b"./PaxHeaders/a", b"x", len(rec("size=600"))) + rec("size=600"),
        raw_tar_header(b"a.bin", b"0", 0) + b"A" * 600,
        raw_tar_header(b"b.txt", b"0", 1) + b"b",
    )
    outcome = Outcome(blob=store.ingest([data]), filename="size.tar")
    unpack(store, outcome, max_bytes=MiB, max_files=10)
    assert (outcome.archive.path / "a.bin").read_bytes() == b"A" * 600
    assert (outcome.archive.path / "b.txt").read_bytes() == b"b"


def test_archive_headers_global_records_as_git_archive_writes_them(store):
    comment = rec("comment=" + "c" * 40)
    header = raw_tar_header(b"pax_global_header", b"g", len(comment)) + comment
    with_member = tar_blocks(header, raw_tar_header(b"a.txt", b"0", 1) + b"a")
    outcome = Outcome(blob=store.ingest([with_member]), filename="git.tar")
    unpack(store, outcome, max_bytes=MiB, max_files=10)
    assert (outcome.archive.path / "a.txt").read_bytes() == b"a"
    # git archive of an empty tree: the global header is all there is, an empty tree.
    alone = Outcome(blob=store.ingest([tar_blocks(header)]), filename="empty.tar")
    unpack(store, alone, max_bytes=MiB, max_files=10)
    assert alone.archive.files == 0 and list(alone.archive.path.iterdir()) == []


def test_archive_headers_oversized_pax_header_is_refused_before_reading_it(store):
    records = rec("comment=" + "1" * (2 * MiB))
    with pytest.raises(UnsafeArchive) as caught:
        unpack(
            store,
            Outcome(blob=store.ingest([pax_archive(records)]), filename="big.tar"),
            max_bytes=4 * MiB,
            max_files=10,
        )
    assert "header of more than" in str(caught.value)


@pytest.mark.parametrize(
    ("size", "payload", "member", "reason"),
    [
        (1, b"q", "q", None),
        (3, b"q\0r", "q", None),
        (7, b"odd/len", "odd/len", None),
        (0, b"", "long.tar", "without a name at offset 512"),
        (513, b"n" * 512 + b"\0", "n" * 512, "path segment longer than 255 bytes"),
        (5000, b"m" * 100, "long.tar", "the archive is truncated at offset 0"),
        (-1, b"", "long.tar", "its size is negative (-1) at offset 0"),
        (2 * MiB, b"", "long.tar", "header of more than"),
    ],
)
def test_archive_headers_gnu_long_names_of_odd_sizes(store, size, payload, member, reason):
    header = bytearray(raw_tar_header(b"././@LongLink", b"L", max(size, 0)))
    if size < 0:
        header[124:136] = b"\xff" * 12
        with_checksum(header)
    data = tar_blocks(bytes(header) + payload, raw_tar_header(b"short", b"0", 2) + b"hi")
    outcome = Outcome(blob=store.ingest([data]), filename="long.tar")
    if reason is None:
        unpack(store, outcome, max_bytes=MiB, max_files=10)
        assert (outcome.archive.path / member).read_bytes() == b"hi"
        return
    with pytest.raises(UnsafeArchive) as caught:
        unpack(store, outcome, max_bytes=MiB, max_files=10)
    assert caught.value.member == member
    assert reason in str(caught.value)
    assert_no_tree_left(store)


def sparse_1_0(map_text: bytes, stored: bytes, *, realsize: int = 10) -> bytes:
    """A tar of one GNU sparse 1.0 member: pax records, then its map and stored bytes."""
    records = (
        rec("GNU.sparse.major=1")
        + rec("GNU.sparse.minor=0")
        + rec("GNU.sparse.name=s.bin")
        + rec(f"GNU.sparse.realsize={realsize}")
    )
    data = map_text.ljust(512, b"\0") + stored
    return tar_blocks(
        raw_tar_header(b"./PaxHeaders/s.bin", b"x", len(records)) + records,
        raw_tar_header(b"GNUSparseFile.0/s.bin", b"0", len(data)) + data,
    )


def test_archive_headers_sparse_member_has_zeros_in_its_holes(store):
    outcome = Outcome(blob=store.ingest([sparse_1_0(b"1\n2\n5\n", b"hello")]), filename="s.tar")
    unpack(store, outcome, max_bytes=MiB, max_files=10)
    assert (outcome.archive.path / "s.bin").read_bytes() == b"\0\0hello\0\0\0"


@pytest.mark.parametrize(
    ("map_text", "stored", "reason"),
    [
        (b"x\n", b"", "does not start with a count"),
        (b"1\n2\nfive\n", b"hello", "something other than numbers"),
        (b"99999999\n", b"", "cut short or too long"),
        (b"2\n0\n5\n2\n1\n", b"hellos", "out of order or overlapping"),
        (b"1\n8\n5\n", b"hello", "runs past the file's size (10)"),
        (b"1\n0\n3\n", b"hello", "does not account for its 5 stored bytes"),
    ],
)
def test_archive_headers_bad_sparse_maps_are_refused(store, map_text, stored, reason):
    data = sparse_1_0(map_text, stored)
    with pytest.raises(UnsafeArchive) as caught:
        unpack(
            store, Outcome(blob=store.ingest([data]), filename="s.tar"), max_bytes=MiB, max_files=10
        )
    assert caught.value.member == "s.bin"
    assert reason in str(caught.value)
    assert_no_tree_left(store)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"0000644\0", 0o644),
        (b"    644 \0", 0o644),
        (b"\0" * 8, 0),
        (b"\x80\0\0\0\0\0\x01\0", 256),
        (b"\xff" * 8, -1),
    ],
)
def test_archive_headers_numbers_read_as_tar_writes_them(raw, value):
    assert number(raw, "field", signed=True) == value


def test_archive_headers_pax_records_need_exact_lengths():
    assert pax_records(b"11 path=ab\n" + b"\0" * 5) == [("path", b"ab")]
    with pytest.raises(HeaderFault):
        pax_records(b"12 path=ab\n")


@pytest.mark.parametrize(
    "options",
    [
        ["--format=gnu"],
        ["--format=posix"],
        ["--format=posix", "--sparse-version=0.0"],
        ["--format=posix", "--sparse-version=0.1"],
        ["--format=ustar"],
    ],
)
def test_archive_headers_gnu_tar_archives_round_trip(store, tmp_path, options):
    tar = require_tool("tar")
    source = tmp_path / "src"
    deep = source / ("d" * 150) / ("e" * 90)
    deep.mkdir(parents=True)
    (deep / "f.txt").write_bytes(b"deep\n")
    (source / "naïve ☃.txt").write_bytes(b"u")
    (source / "link").symlink_to("naïve ☃.txt")
    with open(source / "sparse.bin", "wb") as sparse:
        for offset, data in ((300_000, b"middle"), (2 * MiB - 3, b"end")):
            sparse.seek(offset)
            sparse.write(data)
    ustar = "--format=ustar" in options
    # ustar can say neither that a file is sparse nor a 240-byte name.
    names = ["naïve ☃.txt", "link", "sparse.bin"] + ([] if ustar else ["d" * 150])
    sparse_flag = [] if ustar else ["--sparse"]
    archive = tmp_path / "out.tar"
    subprocess.run([tar, *options, *sparse_flag, "-cf", archive, "-C", source, *names], check=True)
    outcome = Outcome(blob=store.ingest([archive.read_bytes()]), filename="out.tar")
    unpack(store, outcome, max_bytes=16 * MiB, max_files=100)
    tree = outcome.archive.path
    assert (tree / "sparse.bin").read_bytes() == (source / "sparse.bin").read_bytes()
    assert (tree / "naïve ☃.txt").read_bytes() == b"u"
    assert os.readlink(tree / "link") == os.readlink(source / "link")
    if not ustar:
        assert (tree / ("d" * 150) / ("e" * 90) / "f.txt").read_bytes() == b"deep\n"


# -- hostile archives against the live server ----------------------------------------------


def server_kib(server: LiveServer, field: str) -> int:
    """A memory figure (VmRSS, VmHWM) of the live server process, in KiB."""
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    match = re.search(rf"{field}:\s+(\d+)", status)
    assert match is not None
    return int(match.group(1))


@contextlib.contextmanager
def healthz_timings(server: LiveServer) -> Iterator[list[float]]:
    """Time /healthz over and over (at most 2,000 times) while the body of the block runs."""
    timings: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set() and len(timings) < 2000:
            started = time.monotonic()
            assert server.request("GET", "/healthz").status == 200
            timings.append(time.monotonic() - started)
            done.wait(0.02)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        yield timings
    finally:
        done.set()
        thread.join(30)


def zip_directory_of(entries: int, *, declared: int, zip64: bool) -> bytes:
    """A zip whose central directory holds `entries` copies of one entry and declares `declared`."""
    one = io.BytesIO()
    with zipfile.ZipFile(one, "w") as archive:
        archive.writestr("a", b"x")
    data = one.getvalue()
    end = data.rindex(b"PK\x05\x06")
    start = struct.unpack_from("<L", data, end + 16)[0]
    directory = data[start:end] * entries
    body = data[:start] + directory
    if not zip64:
        count = min(declared, 0xFFFF)
        return body + struct.pack(
            "<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(directory), start, 0
        )
    record = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, declared, declared, len(directory), start
    )
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(body), 1)
    end_record = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0
    )
    return body + record + locator + end_record


@pytest.mark.parametrize(
    ("declared", "zip64", "reason"),
    [
        pytest.param(4_000_000, True, "declares 4000000 members", id="declares-4M"),
        pytest.param(1, False, "has more than 100000 members", id="holds-1M"),
    ],
)
def test_archive_headers_live_zip_of_a_million_entries_is_refused_in_bounded_memory(
    live_server, declared, zip64, reason
):
    # A million directory entries (54 MB), a small .zip.gz; the default limit is 100,000.
    upload = gzip.compress(zip_directory_of(1_000_000, declared=declared, zip64=zip64), 6)
    assert len(upload) < 1 << 20
    before = server_kib(live_server, "VmRSS")
    Path(f"/proc/{live_server.proc.pid}/clear_refs").write_text("5")  # restart VmHWM here
    started = time.monotonic()
    with healthz_timings(live_server) as timings:
        resp = live_server.upload("many.zip.gz", upload)
    elapsed = time.monotonic() - started
    assert resp.status == 422
    grown_kib = server_kib(live_server, "VmHWM") - before
    assert grown_kib < 64 * 1024, f"peak RSS grew by {grown_kib} KiB"
    assert elapsed < 15
    assert timings and max(timings) < 1
    assert reason in resp.json()["error"]
    assert "BUCKETDAV_EXTRACT_MAX_FILES (100000)" in resp.json()["error"]
    assert list((live_server.root / "explode").iterdir()) == []
    assert staged(live_server.root) == []


def test_archive_headers_live_deep_symlinks_are_checked_in_linear_time(live_server):
    # 2,000 links whose targets are 2,000 segments deep: 27 s of CPU when checks were quadratic.
    target = "/".join(["a"] * 2000)
    links = {f"l{index}": target for index in range(2000)}
    upload = tar_gz({}, links)
    assert len(upload) < 100_000
    started = time.monotonic()
    with healthz_timings(live_server) as timings:
        resp = live_server.upload("deep.tgz", upload)
    elapsed = time.monotonic() - started
    # Links that stay inside, however dangling, are kept.
    assert resp.status == 200, resp.body
    tree = live_server.root / resp.json()["path"]["archive"]
    assert os.readlink(tree / "l1999") == target
    assert elapsed < 10
    assert timings and max(timings) < 1
