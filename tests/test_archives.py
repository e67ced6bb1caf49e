"""Archives at the unit level: classification, member decisions, and unpack() over a real store."""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import io
import lzma
import os
import random
import shutil
import stat
import struct
import subprocess
import tarfile
import threading
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import pytest

from bucketdav.errors import StoreFull, UnsafeArchive
from bucketdav.store.blobs import Store
from bucketdav.uploads.archives import readers
from bucketdav.uploads.archives.extract import classify, unpack
from bucketdav.uploads.archives.members import Kind, Layout, member_path
from bucketdav.uploads.archives.tree import TreeBuilder
from bucketdav.uploads.outcome import Outcome

MiB = 1 << 20

# -- building archives in the tests (no binaries in the repository) ---------------------


def F(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple:
    """A regular file member."""
    return ("file", name, data, mode)


def D(name: str, mode: int = 0o755) -> tuple:
    """A directory member."""
    return ("dir", name, b"", mode)


def S(name: str, target: str) -> tuple:
    """A symlink member."""
    return ("sym", name, target, 0o777)


def H(name: str, target: str) -> tuple:
    """A hard-link member (tar only)."""
    return ("hard", name, target, 0o644)


def T(name: str, kind: str) -> tuple:
    """A special member: chr, blk, fifo (tar) or those and sock (zip)."""
    return (kind, name, b"", 0o644)


_TAR_TYPES = {
    "dir": tarfile.DIRTYPE,
    "sym": tarfile.SYMTYPE,
    "hard": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def tar_bytes(
    members: list[tuple], *, compression: str = "", fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    """A tar (optionally gz, bz2 or xz) holding exactly `members`, hostile ones included."""
    buf = io.BytesIO()
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(
        fileobj=buf, mode=mode, format=fmt, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for kind, name, payload, perm in members:
            info = tarfile.TarInfo(name)
            info.mode = perm
            info.mtime = 1_700_000_000
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = _TAR_TYPES[kind]
            if kind in ("sym", "hard"):
                info.linkname = payload
            tar.addfile(info)
    return buf.getvalue()


_ZIP_MODES = {
    "dir": stat.S_IFDIR | 0o755,
    "sym": stat.S_IFLNK | 0o777,
    "chr": stat.S_IFCHR | 0o644,
    "blk": stat.S_IFBLK | 0o644,
    "fifo": stat.S_IFIFO | 0o644,
    "sock": stat.S_IFSOCK | 0o644,
}


def zip_bytes(members: list[tuple], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip holding exactly `members`; symlinks and specials carry Unix modes as Info-ZIP does."""
    buf = io.BytesIO()
    # Duplicate names are one of the hostile cases; zipfile warns about them while writing.
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as archive:
        warnings.simplefilter("ignore", UserWarning)
        for kind, name, payload, perm in members:
            info = zipfile.ZipInfo(name + ("/" if kind == "dir" else ""), (2024, 1, 2, 3, 4, 6))
            info.compress_type = compression
            info.create_system = 3
            mode = _ZIP_MODES.get(kind, stat.S_IFREG | perm)
            info.external_attr = mode << 16
            data = payload.encode() if isinstance(payload, str) else payload
            archive.writestr(info, data)
    return buf.getvalue()


def make_source_tree(root: Path) -> Path:
    """A small tree with what real archives hold: nesting, empty and duplicate files, links."""
    files = {
        "README.md": b"# demo\n",
        "src/main.py": b"print('hello')\n" * 50,
        "src/pkg/util.py": b"def f():\n    return 1\n",
        "empty.txt": b"",
        "dup1.txt": b"same bytes\n",
        "dup2.txt": b"same bytes\n",
        "data/big.bin": hashlib.sha256(b"seed").digest() * (MiB // 16),
        "ünïcode/名前.txt": b"unicode\n",
        "nested/inner.tgz": gzip.compress(b"not extracted again"),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "emptydir").mkdir()
    (root / "link-to-readme").symlink_to("README.md")
    (root / "src" / "pkg" / "up").symlink_to("../main.py")
    (root / "src" / "alias").symlink_to("pkg")
    return root


def pack_tar(root: Path, compression: str = "") -> bytes:
    """`root` as a tar, the way `tar c .` lists it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}" if compression else "w") as tar:
        tar.add(root, arcname=".")
    return buf.getvalue()


def pack_zip(root: Path, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """`root` as a zip, symlinks stored as Info-ZIP does."""
    members = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                members.append(S(rel, os.readlink(path)))
            elif path.is_dir():
                members.append(D(rel))
            else:
                members.append(F(rel, path.read_bytes()))
    return zip_bytes(members, compression=compression)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry below `root`: directories, file contents, symlink targets."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", path.read_bytes())
    return out


# -- running unpack over a store -----------------------------------------------------------


@pytest.fixture
def store(store_root: Path) -> Store:
    """An opened md5 store in the test's temporary directory."""
    opened = Store(store_root, "md5")
    opened.open()
    return opened


def run(
    store: Store,
    data: bytes,
    name: str = "upload.bin",
    *,
    max_bytes: int = 64 * MiB,
    max_files: int = 1000,
) -> Outcome:
    """Store `data` as an upload's blob and unpack it, as process() does."""
    outcome = Outcome(blob=store.ingest([data]), filename=name)
    unpack(store, outcome, max_bytes=max_bytes, max_files=max_files)
    return outcome


def assert_no_tree_left(store: Store) -> None:
    """No partial tree anywhere, staging empty, nothing written beside the store."""
    assert list(store.staging.iterdir()) == []
    assert list(store.trees.iterdir()) == []
    assert list((store.root.parent / "outside").iterdir()) == []


def refused(
    store: Store, data: bytes, *, member: str, name: str = "evil.tar", **bounds: int
) -> str:
    """Unpack `data`, expect a refusal naming `member`; returns the message."""
    with pytest.raises(UnsafeArchive) as caught:
        run(store, data, name, **bounds)
    assert caught.value.member == member
    message = str(caught.value)
    assert "nothing was extracted" in message
    assert_no_tree_left(store)
    assert store.find(hashlib.md5(data).hexdigest()) is not None  # noqa: S324 - md5 store
    return message


# -- classify ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (gzip.compress(b"x"), "gzip"),
        (bz2.compress(b"x"), "bzip2"),
        (bz2.compress(b""), "bzip2"),
        (lzma.compress(b"x"), "xz"),
        (tar_bytes([F("a")]), "tar"),
        (tar_bytes([F("a")], fmt=tarfile.GNU_FORMAT), "tar"),
        (zip_bytes([F("a")]), "zip"),
        (zip_bytes([]), "zip"),
        (b"BZh9 is how this text file starts", None),
        (b"PK but not a zip", None),
        (b"", None),
        (b"plain text\n" * 100, None),
    ],
)
def test_archives_classify_by_magic_bytes(data, kind):
    assert classify(data[:512]) == kind


# -- member names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("a/b.txt", ("a", "b.txt")),
        ("./a//b/", ("a", "b")),
        (".", ()),
        ("ü/名", ("ü", "名")),
        ("a..b/..c", ("a..b", "..c")),
    ],
)
def test_archives_member_path_accepts_plain_names(name, path):
    assert member_path(name) == path


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("/etc/passwd", "absolute"),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("a/../b", "'..'"),
        ("..\\x", "backslash"),
        ("a\x00b", "NUL"),
        ("a\nb", "control character"),
        ("bad\udcffname", "not valid UTF-8"),
        ("x" * 256, "longer than 255"),
        ("é" * 128, "longer than 255"),
        ("/".join(["d" * 200] * 21), "longer than 4096"),
        ("", "empty"),
    ],
)
def test_archives_member_path_refuses_dubious_names(name, reason):
    with pytest.raises(UnsafeArchive) as caught:
        member_path(name)
    assert reason in str(caught.value)
    assert caught.value.member == name


def test_archives_layout_refuses_file_dir_conflicts_and_duplicates():
    layout = Layout()
    assert layout.add(("a", "b"), Kind.FILE, "a/b") == [("a",)]
    assert layout.add(("a",), Kind.DIR, "a/") == []  # an implied directory listed later
    for path, kind in [
        (("a", "b"), Kind.FILE),
        (("a", "b", "c"), Kind.FILE),
        (("a",), Kind.FILE),
        (("a",), Kind.DIR),
    ]:
        with pytest.raises(UnsafeArchive):
            layout.add(path, kind, "/".join(path))


def test_archives_layout_follows_symlink_chains_like_the_kernel():
    layout = Layout()
    layout.add(("a", "l1"), Kind.SYMLINK, "a/l1", target="..")
    layout.add(("a", "ok"), Kind.SYMLINK, "a/ok", target="l1/a")
    layout.add(("a", "l2"), Kind.SYMLINK, "a/l2", target="l1/..")
    assert layout.resolve(("a", "ok")) == (("a",), 0)
    with pytest.raises(UnsafeArchive) as caught:
        layout.check_symlinks()
    assert caught.value.member == "a/l2"


def test_archives_layout_refuses_symlink_loops():
    layout = Layout()
    layout.add(("x",), Kind.SYMLINK, "x", target="y")
    layout.add(("y",), Kind.SYMLINK, "y", target="x/z")
    with pytest.raises(UnsafeArchive) as caught:
        layout.check_symlinks()
    assert "loop" in str(caught.value)


def test_archives_layout_allows_chains_of_40_links_and_refuses_41():
    for length, refused_too in ((40, False), (41, True)):
        layout = Layout()
        layout.add(("d", "f"), Kind.FILE, "d/f")
        for index in range(length):
            target = f"l{index + 1}" if index + 1 < length else "d/f"
            layout.add((f"l{index}",), Kind.SYMLINK, f"l{index}", target=target)
        layout.add(("start",), Kind.SYMLINK, "start", target="l0")
        if refused_too:
            with pytest.raises(UnsafeArchive, match="chain of more than 40 links"):
                layout.check_symlinks()
        else:
            layout.check_symlinks()
            assert layout.resolve(("start",)) == (("d", "f"), 0)


def test_archives_layout_walks_below_missing_names_and_back():
    layout = Layout()
    layout.add(("a", "f"), Kind.FILE, "a/f")
    layout.add(("a", "in"), Kind.SYMLINK, "a/in", target="f/x/../../../a/nothing/y/..")
    layout.add(("a", "out"), Kind.SYMLINK, "a/out", target="missing/../../..")
    assert layout.resolve(("a", "in")) == (("a",), 1)
    with pytest.raises(UnsafeArchive) as caught:
        layout.check_symlinks()
    assert caught.value.member == "a/out"


def test_archives_layout_checks_deep_paths_in_time_linear_in_their_length():
    # 1,000 members and 1,000 links, each 2,000 segments deep: about 40 s when every
    # step of a path or a link rebuilt the path up to it.
    deep = tuple(["d"] * 2000)
    target = "/".join(["d"] * 1999 + ["gone"])
    layout = Layout()
    started = time.monotonic()
    for index in range(1000):
        layout.add((*deep, f"f{index}"), Kind.FILE, f"f{index}")
        layout.add((f"l{index}",), Kind.SYMLINK, f"l{index}", target=target)
    layout.check_symlinks()
    assert time.monotonic() - started < 5
    assert layout.resolve(("l999",)) == (deep[:1999], 1)


# -- round trips ---------------------------------------------------------------------------


def assert_tree_is_blobs(store: Store, tree: Path) -> int:
    """Every regular file of `tree` is the inode of the blob of its content; returns how many."""
    count = 0
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink():
                continue
            digest = hashlib.md5(path.read_bytes()).hexdigest()  # noqa: S324 - md5 store
            assert os.stat(path).st_ino == os.stat(store.blob_path(digest)).st_ino, path
            assert stat.S_IMODE(path.stat().st_mode) == 0o444
            count += 1
    return count


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_archives_tar_round_trip(store, tmp_path, compression):
    source = make_source_tree(tmp_path / "src")
    data = pack_tar(source, compression)
    outcome = run(store, data, "src.tar")
    tar = outcome.decompressed.path.read_bytes() if compression else data
    assert outcome.archive.digest == hashlib.md5(tar).hexdigest()  # noqa: S324 - md5 store
    assert outcome.archive.path == store.tree_path(outcome.archive.digest)
    assert snapshot(outcome.archive.path) == snapshot(source)
    assert outcome.archive.files == assert_tree_is_blobs(store, outcome.archive.path) == 9
    assert list(store.staging.iterdir()) == []


@pytest.mark.parametrize(
    "compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
)
def test_archives_zip_round_trip(store, tmp_path, compression):
    source = make_source_tree(tmp_path / "src")
    data = pack_zip(source, compression)
    outcome = run(store, data, "src.zip")
    assert outcome.decompressed is None
    assert outcome.archive.digest == hashlib.md5(data).hexdigest()  # noqa: S324 - md5 store
    assert snapshot(outcome.archive.path) == snapshot(source)
    assert assert_tree_is_blobs(store, outcome.archive.path) == 9


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_archives_single_compressed_file_becomes_its_own_blob(store, compress):
    content = b"log line\n" * 10_000
    outcome = run(store, compress(content), "build.log.gz")
    assert outcome.decompressed.path.read_bytes() == content
    assert outcome.decompressed.digest == hashlib.md5(content).hexdigest()  # noqa: S324
    assert outcome.archive is None
    assert list(store.trees.iterdir()) == []


def test_archives_concatenated_gzip_members_decompress_whole(store):
    outcome = run(store, gzip.compress(b"one\n") + gzip.compress(b"two\n"), "x.gz")
    assert outcome.decompressed.path.read_bytes() == b"one\ntwo\n"


def _gzip_with_header_crc(data: bytes, *, damaged: bool) -> bytes:
    """`data` gzipped with every optional header field, FHCRC last (RFC 1952 2.3.1)."""
    head = b"\x1f\x8b\x08\x1e\x00\x00\x00\x00\x00\x03" + struct.pack("<H", 4) + b"xtra"
    head += b"name\x00comment\x00"
    crc = zlib.crc32(head) & 0xFFFF
    head += struct.pack("<H", crc ^ 0xFFFF if damaged else crc)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflate.compress(data) + deflate.flush()
    return head + body + struct.pack("<II", zlib.crc32(data), len(data))


def test_archives_gzip_with_every_header_field_and_zero_padding_decompresses(store):
    data = _gzip_with_header_crc(b"fields\n", damaged=False) + bytes(100)
    assert run(store, data, "x.gz").decompressed.path.read_bytes() == b"fields\n"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_gzip_with_header_crc(b"fields\n", damaged=True), id="header-crc"),
        pytest.param(gzip.compress(b"one\n") + b"\x00\x00garbage", id="garbage-after-padding"),
    ],
)
def test_archives_gzip_damaged_header_or_tail_is_refused(store, data):
    with pytest.raises(UnsafeArchive) as caught:
        run(store, data, "x.gz")
    assert caught.value.member == "x.gz"
    assert "truncated or malformed" in str(caught.value)
    assert list(store.staging.iterdir()) == []


def test_archives_plain_file_is_left_alone(store):
    outcome = run(store, b"just text\n", "notes.txt")
    assert outcome.decompressed is None and outcome.archive is None


def test_archives_hard_links_share_the_blob(store):
    data = tar_bytes([F("a", b"shared"), H("b", "a"), H("c", "b"), D("d"), H("d/e", "./a")])
    tree = run(store, data).archive.path
    inodes = {os.stat(tree / p).st_ino for p in ("a", "b", "c", "d/e")}
    assert inodes == {os.stat(store.blob_path(hashlib.md5(b"shared").hexdigest())).st_ino}  # noqa: S324


def test_archives_hard_link_to_inner_symlink_is_a_symlink(store):
    data = tar_bytes([F("d/f"), S("d/l", "f"), H("d/m", "d/l")])
    tree = run(store, data).archive.path
    assert os.readlink(tree / "d" / "m") == "f"
    assert (tree / "d" / "m").read_bytes() == b"x"


def test_archives_modes_are_sane_whatever_the_archive_says(store):
    data = tar_bytes(
        [F("run.sh", b"#!/bin/sh\n", mode=0o6777), D("open", mode=0o1777), F("open/f", mode=0o666)]
    )
    tree = run(store, data).archive.path
    assert stat.S_IMODE((tree / "run.sh").stat().st_mode) == 0o444
    assert stat.S_IMODE((tree / "open").stat().st_mode) == 0o755
    assert stat.S_IMODE(tree.stat().st_mode) == 0o755
    assert stat.S_IMODE((tree / "open" / "f").stat().st_mode) == 0o444


UNICODE_NAME = "données/naïve ☃.txt"


def zip_with_raw_name(raw: bytes, *, extra: bytes = b"") -> bytes:
    """A zip of one file whose name is the bytes `raw`, without the UTF-8 flag."""
    placeholder = b"Q" * len(raw)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        info = zipfile.ZipInfo(placeholder.decode(), (2024, 1, 2, 3, 4, 6))
        info.extra = extra
        archive.writestr(info, b"content")
    data = buf.getvalue()
    assert data.count(placeholder) == 2  # the local header and the central directory
    return data.replace(placeholder, raw)


def unicode_path_field(name: str, *, made_for: bytes) -> bytes:
    """An Info-ZIP Unicode Path field (0x7075): `name`, made for the header name `made_for`."""
    data = b"\x01" + struct.pack("<L", zlib.crc32(made_for)) + name.encode()
    return struct.pack("<2H", 0x7075, len(data)) + data


@pytest.mark.parametrize(
    ("data", "name"),
    [
        pytest.param(zip_bytes([F(UNICODE_NAME, b"content")]), UNICODE_NAME, id="utf8-flag"),
        pytest.param(zip_with_raw_name(UNICODE_NAME.encode()), UNICODE_NAME, id="utf8-no-flag"),
        pytest.param(zip_with_raw_name(b"\x81ber.txt"), "über.txt", id="cp437"),
        pytest.param(
            zip_with_raw_name(
                b"na\x8bve.txt", extra=unicode_path_field("naïve ☃.txt", made_for=b"na\x8bve.txt")
            ),
            "naïve ☃.txt",
            id="unicode-path-field",
        ),
        pytest.param(
            zip_with_raw_name(
                b"na\x8bve.txt", extra=unicode_path_field("stale.txt", made_for=b"other.txt")
            ),
            "naïve.txt",
            id="stale-unicode-path-field",
        ),
    ],
)
def test_archives_zip_names_are_those_unzip_shows(store, data, name):
    tree = run(store, data, "names.zip").archive.path
    assert (tree / name).read_bytes() == b"content"


def test_archives_zip_made_by_info_zip_keeps_its_utf8_names(store, tmp_path):
    zip_tool = shutil.which("zip")
    if zip_tool is None:
        pytest.skip("the zip command is not installed")
    source = tmp_path / "src"
    (source / "données").mkdir(parents=True)
    (source / UNICODE_NAME).write_bytes(b"content")
    subprocess.run(
        [zip_tool, "-qr", tmp_path / "out.zip", "."],
        cwd=source,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
        check=True,
    )
    tree = run(store, (tmp_path / "out.zip").read_bytes(), "out.zip").archive.path
    assert (tree / UNICODE_NAME).read_bytes() == b"content"
    assert [p.name for p in tree.iterdir()] == ["données"]


def zip_claiming(entries: int, *, zip64: bool, extra_entries: int = 0) -> bytes:
    """A valid one-file zip whose end record declares `entries`; `extra_entries` more
    copies of its directory entry make the directory really hold that many more."""
    data = zip_bytes([F("a", b"x")])
    end = data.rindex(b"PK\x05\x06")
    fields = list(struct.unpack("<4s4H2LH", data[end : end + 22]))
    entry = data[fields[6] : end]
    directory = entry * (1 + extra_entries)
    body = data[: fields[6]] + directory
    if not zip64:
        fields[3] = fields[4] = entries
        fields[5] = len(directory)
        return body + struct.pack("<4s4H2LH", *fields)
    record = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, len(directory), fields[6]
    )
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(body), 1)
    end_record = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0
    )
    return body + record + locator + end_record


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(zip_claiming(1001, zip64=False), "declares 1001 members", id="end-record"),
        pytest.param(zip_claiming(4_000_000, zip64=True), "declares 4000000 members", id="zip64"),
        pytest.param(
            zip_claiming(1, zip64=False, extra_entries=1000),
            "has more than 1000 members",
            id="directory-holds-more",
        ),
    ],
)
def test_archives_zip_with_too_many_entries_is_refused_before_zipfile_reads_it(
    store, monkeypatch, data, reason
):
    def no_zipfile(*args, **kwargs):
        raise AssertionError("zipfile read the directory")

    monkeypatch.setattr(zipfile, "ZipFile", no_zipfile)
    message = refused(store, data, member="many.zip", name="many.zip", max_files=1000)
    assert reason in message
    assert "BUCKETDAV_EXTRACT_MAX_FILES (1000)" in message


def test_archives_zip_with_a_huge_directory_is_refused_before_zipfile_reads_it(store, monkeypatch):
    monkeypatch.setattr(readers, "MAX_DIRECTORY_BYTES", 1000)
    data = zip_claiming(1, zip64=False, extra_entries=30)
    message = refused(store, data, member="big.zip", name="big.zip")
    assert "more than the 1000 bytes extraction reads" in message


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        pytest.param(lambda d: d[:-22], "no end of central directory record", id="no-end"),
        pytest.param(
            lambda d: d[:-10] + struct.pack("<L", 1 << 30) + d[-6:],
            "larger than the",
            id="directory-larger-than-file",
        ),
        pytest.param(
            lambda d: d.replace(b"PK\x01\x02", b"PK\x09\x09"),
            "something other than entries",
            id="bad-entry",
        ),
    ],
)
def test_archives_zip_with_an_impossible_directory_is_refused(store, mutate, reason):
    message = refused(store, mutate(zip_bytes([F("a", b"x")])), member="bad.zip", name="bad.zip")
    assert "truncated or malformed" in message
    assert reason in message


def test_archives_nested_archive_is_a_plain_file(store):
    inner = tar_bytes([F("inner.txt")], compression="gz")
    outcome = run(store, tar_bytes([F("inner.tgz", inner)], compression="gz"), "outer.tgz")
    assert (outcome.archive.path / "inner.tgz").read_bytes() == inner
    assert len(list(store.trees.glob("*/*/*"))) == 1


def test_archives_tar_of_only_its_top_directory_is_an_empty_tree(store):
    outcome = run(store, tar_bytes([D(".")]), "empty.tar")
    assert list(outcome.archive.path.iterdir()) == []
    assert outcome.archive.files == 0


def test_archives_tar_without_members_is_only_a_blob(store):
    # All zeros: nothing says it is a tar, and there is nothing to browse.
    outcome = run(store, tar_bytes([]), "empty.tar")
    assert outcome.archive is None


def test_archives_repeat_unpack_reuses_the_tree(store, monkeypatch):
    data = tar_bytes([F("a/b", b"1"), F("c", b"2")], compression="gz")
    first = run(store, data, "x.tgz").archive
    built = []
    monkeypatch.setattr(
        "bucketdav.uploads.archives.extract.TreeBuilder", lambda *a, **k: built.append(1)
    )
    second = run(store, data, "x.tgz").archive
    assert built == []
    assert second.path == first.path and second.files == 2
    assert first.created and not second.created


def test_archives_losing_the_rename_race_keeps_the_existing_tree(store, monkeypatch):
    data = tar_bytes([F("a", b"mine")])
    digest = hashlib.md5(data).hexdigest()  # noqa: S324 - md5 store
    final = store.tree_path(digest)
    real_is_dir = Path.is_dir

    def racing_is_dir(path: Path) -> bool:
        # Another upload publishes the same tree just after this one looked.
        if path == final and not real_is_dir(path):
            final.mkdir(parents=True)
            (final / "theirs").write_bytes(b"")
            return False
        return real_is_dir(path)

    monkeypatch.setattr(Path, "is_dir", racing_is_dir)
    tree = run(store, data).archive
    assert tree.path == final and not tree.created
    assert [p.name for p in final.iterdir()] == ["theirs"]
    assert list(store.staging.iterdir()) == []


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("members", "member", "reason"),
    [
        ([F("/etc/evil")], "/etc/evil", "absolute"),
        ([F("../outside/evil")], "../outside/evil", "'..'"),
        ([D("a"), F("a/../../outside/evil")], "a/../../outside/evil", "'..'"),
        ([S("l", "/etc/passwd")], "l", "absolute path"),
        ([S("l", "../outside")], "l", "outside the archive"),
        ([D("a"), S("a/l1", ".."), S("a/l2", "l1/..")], "a/l2", "outside the archive"),
        ([S("l", "sub"), D("sub"), S("sub/x", "../l/../..")], "sub/x", "outside the archive"),
        ([S("l", "l")], "l", "loop"),
        ([D("d"), S("l", "d"), F("l/evil")], "l/evil", "made it a symlink"),
        ([H("h", "/etc/passwd")], "h", "not a safe name"),
        ([H("h", "../outside/x")], "h", "not a safe name"),
        ([H("h", "later"), F("later")], "h", "not an earlier member"),
        ([D("d"), H("h", "d")], "h", "directory"),
        ([D("a/b/c"), S("a/b/c/l", "../../.."), H("h", "a/b/c/l")], "h", "outside the archive"),
        ([S("a/b/l", ".."), H("c/d/h", "a/b/l"), H("x", "c/d/h")], "x", "outside the archive"),
        ([T("dev/null", "chr")], "dev/null", "device"),
        ([T("dev/sda", "blk")], "dev/sda", "device"),
        ([T("pipe", "fifo")], "pipe", "fifo"),
        ([F("a"), F("a")], "a", "twice"),
        ([F("a"), D("a")], "a", "twice"),
        ([D("a"), F("a")], "a", "twice"),
        ([F("a"), F("a/b")], "a/b", "made it a file"),
        ([F("a/b"), F("a")], "a", "need a directory"),
        ([F("a\nb")], "a\nb", "control character"),
        ([F("bad\udcffname")], "bad\udcffname", "not valid UTF-8"),
        ([F("n" * 256)], "n" * 256, "longer than 255"),
        ([F("/".join(["d" * 250] * 17))], "/".join(["d" * 250] * 17), "longer than 4096"),
        ([F("..\\..\\evil")], "..\\..\\evil", "backslash"),
        ([S(".", "..")], ".", "top directory"),
    ],
)
def test_archives_tar_refusals(store, members, member, reason):
    message = refused(store, tar_bytes(members, compression="gz"), member=member, name="evil.tgz")
    assert reason in message


@pytest.mark.parametrize(
    ("members", "member", "reason"),
    [
        ([F("/abs")], "/abs", "absolute"),
        ([F("../../outside/evil")], "../../outside/evil", "'..'"),
        ([S("l", "../../etc")], "l", "outside the archive"),
        ([S("l", "/etc")], "l", "absolute path"),
        ([T("dev", "chr")], "dev", "device"),
        ([T("pipe", "fifo")], "pipe", "fifo"),
        ([T("sock", "sock")], "sock", "socket"),
        ([F("a"), F("a")], "a", "twice"),
        ([F("a"), F("a/b")], "a/b", "made it a file"),
        ([F("dir\\..\\..\\evil")], "dir\\..\\..\\evil", "backslash"),
    ],
)
def test_archives_zip_refusals(store, members, member, reason):
    message = refused(store, zip_bytes(members), member=member, name="evil.zip")
    assert reason in message


def test_archives_zip_name_with_nul_is_refused_not_truncated(store):
    data = zip_bytes([F("okXname")]).replace(b"okXname", b"ok\x00name")
    assert "NUL" in refused(store, data, member="ok\x00name", name="nul.zip")


def test_archives_too_many_members_is_refused(store):
    data = tar_bytes([F(f"f{i}") for i in range(6)])
    assert "BUCKETDAV_EXTRACT_MAX_FILES (5)" in refused(store, data, member="f5", max_files=5)


def test_archives_too_many_bytes_is_refused(store):
    data = tar_bytes([F("a", b"1" * 600), F("b", b"2" * 600)])
    message = refused(store, data, member="b", max_bytes=1000)
    assert "BUCKETDAV_EXTRACT_MAX_BYTES (1000 bytes)" in message


def _corrupt_zip_crc(data: bytes) -> bytes:
    """The same zip with a wrong CRC in its central directory: only a full read notices."""
    at = data.index(b"PK\x01\x02") + 16
    return data[:at] + bytes(b ^ 0xFF for b in data[at : at + 4]) + data[at + 4 :]


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])
def test_archives_zip_bomb_stops_at_the_bound(store, compression):
    # A read to the end would report the bad CRC; stopping at the bound reports the bound.
    bomb = _corrupt_zip_crc(zip_bytes([F("zeros", bytes(64 * MiB))], compression=compression))
    assert len(bomb) < MiB
    message = refused(store, bomb, member="zeros", name="bomb.zip", max_bytes=2 * MiB)
    assert "BUCKETDAV_EXTRACT_MAX_BYTES" in message


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_archives_compressed_bomb_stops_at_the_bound(store, compress):
    # Cut short, the stream would be reported truncated if it were read to its end.
    bomb = compress(bytes(64 * MiB))[:-8]
    with pytest.raises(UnsafeArchive) as caught:
        run(store, bomb, "bomb.gz", max_bytes=2 * MiB)
    assert "BUCKETDAV_EXTRACT_MAX_BYTES" in str(caught.value)
    assert caught.value.member == "bomb.gz"
    assert list(store.staging.iterdir()) == []
    assert len(list(store.blobs.glob("*/*/*"))) == 1


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(tar_bytes([F("a", b"1" * 5000)], compression="gz")[:-40], id="tgz-cut"),
        pytest.param(gzip.compress(b"x" * 1000)[:20], id="gz-cut"),
        pytest.param(b"\x1f\x8b\x08" + b"garbage" * 10, id="gz-garbage"),
        pytest.param(bz2.compress(b"x" * 1000)[:-10], id="bz2-cut"),
        pytest.param(lzma.compress(b"x" * 1000)[:-10], id="xz-cut"),
        pytest.param(zip_bytes([F("a", b"1" * 5000)])[:-30], id="zip-cut"),
        pytest.param(b"PK\x03\x04" + b"\0" * 200, id="zip-garbage"),
    ],
)
def test_archives_truncated_or_malformed_is_refused(store, data):
    with pytest.raises(UnsafeArchive) as caught:
        run(store, data, "broken")
    assert "truncated or malformed" in str(caught.value)
    assert caught.value.member
    assert_no_tree_left(store)


def test_archives_tar_cut_inside_a_member_is_refused(store):
    data = tar_bytes([F("first", b"1" * 100), F("second", b"2" * 5000)])
    message = refused(store, data[: 512 * 4], member="second", name="cut.tar")
    assert "truncated" in message


def test_archives_tar_with_damaged_header_after_a_member_is_refused(store):
    data = bytearray(tar_bytes([F("first", b"1" * 100), F("second", b"2")]))
    data[1024:1036] = b"not a header"
    message = refused(store, bytes(data), member="first", name="damaged.tar")
    assert "damaged" in message


def test_archives_tar_with_oversized_pax_header_is_refused(store):
    data = tar_bytes([F("p" * (2 * MiB))])
    message = refused(store, data, member="big.tar", name="big.tar")
    assert "header of more than" in message


def test_archives_encrypted_zip_member_is_refused(store):
    data = bytearray(zip_bytes([F("secret", b"s" * 100)]))
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature) + flags_at
        data[at] |= 1
    message = refused(store, bytes(data), member="secret", name="enc.zip")
    assert "encrypted" in message


def test_archives_disk_full_while_extracting_is_store_full_and_leaves_nothing(store, monkeypatch):
    outcome = Outcome(
        blob=store.ingest([tar_bytes([F(f"f{i}", b"%d" % i) for i in range(300)])]),
        filename="full.tar",
    )

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StoreFull):
        unpack(store, outcome, max_bytes=MiB, max_files=1000)
    monkeypatch.undo()
    assert_no_tree_left(store)
    assert store.find(outcome.blob.digest) is not None


def test_archives_tree_builder_names_blobs_as_the_store_does(store):
    digest = hashlib.md5(b"name").hexdigest()  # noqa: S324 - md5 store
    builder = TreeBuilder(store, store.staging, max_bytes=1, max_files=1)
    assert builder._blob_of(digest) == str(store.blob_path(digest))


def test_archives_member_too_long_for_the_store_is_refused_before_writing(store):
    name = "/".join(["d" * 200] * 20) + "/f.txt"  # within 4096 bytes, not below the store
    assert len(name) < 4096
    message = refused(store, tar_bytes([F(name)]), member=name, name="long.tar")
    assert "too deep" in message


def test_archives_symlink_target_of_path_max_is_refused(store):
    message = refused(store, tar_bytes([S("l", "a/" * 2048)]), member="l", name="long.tar")
    assert "4096 bytes or longer" in message


# -- a new compressed tar is extracted while it is decompressed ----------------------------


def test_archives_tgz_larger_than_the_decompression_steps_round_trips(store):
    # Several MiB of members: the reader waits for the decompressing thread many times.
    rng = random.Random(3)
    members = [F(f"d{i % 5}/f{i}.bin", rng.randbytes(rng.randrange(1, 300_000))) for i in range(60)]
    data = tar_bytes(members, compression="gz")
    outcome = run(store, data, "big.tgz")
    tar = tar_bytes(members)
    assert outcome.decompressed.digest == hashlib.md5(tar).hexdigest()  # noqa: S324 - md5 store
    assert outcome.decompressed.path.read_bytes() == tar
    assert outcome.archive.created and outcome.archive.files == 60
    for _kind, name, payload, _mode in members:
        assert (outcome.archive.path / name).read_bytes() == payload
    assert assert_tree_is_blobs(store, outcome.archive.path) == 60
    assert list(store.staging.iterdir()) == []


def test_archives_tgz_refused_for_a_member_keeps_its_decompressed_blob(store):
    members = [F("ok.txt", b"fine\n" * 50_000), F("../escape.txt", b"no")]
    message = refused(store, tar_bytes(members, compression="gz"), member="../escape.txt")
    assert "climbs out" in message
    tar_digest = hashlib.md5(tar_bytes(members)).hexdigest()  # noqa: S324 - md5 store
    assert store.find(tar_digest) is not None


def test_archives_tgz_cut_short_is_named_by_the_compressed_file(store):
    # The tar inside looks whole up to the cut; the fault is the gzip stream's.
    data = tar_bytes([F(f"f{i}", os.urandom(20_000)) for i in range(40)], compression="gz")
    with pytest.raises(UnsafeArchive) as caught:
        run(store, data[: len(data) // 2], "cut.tgz")
    assert caught.value.member == "cut.tgz"
    assert "truncated or malformed" in str(caught.value)
    assert_no_tree_left(store)


def test_archives_tgz_store_full_while_decompressing_leaves_nothing(store, monkeypatch):
    data = tar_bytes([F(f"f{i}", os.urandom(300_000)) for i in range(20)], compression="gz")
    blob = store.ingest([data])
    real_write = os.write

    def write(fd: int, chunk) -> int:
        if threading.current_thread().name.startswith(("write", "inflate")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, chunk)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(StoreFull):
        unpack(store, Outcome(blob=blob, filename="full.tgz"), max_bytes=64 * MiB, max_files=100)
    monkeypatch.undo()
    assert_no_tree_left(store)
    assert len(list(store.blobs.glob("*/*/*"))) == 1


def test_archives_refused_archive_leaves_no_empty_blob_folders(store):
    members = [F(f"f{i}", f"content {i}".encode()) for i in range(50)] + [F("../evil")]
    data = tar_bytes(members)
    refused(store, data, member="../evil")
    digest = hashlib.md5(data).hexdigest()  # noqa: S324 - md5 store
    folders = {p for p in store.blobs.rglob("*") if p.is_dir()}
    assert folders == {store.blob_path(digest).parent, store.blob_path(digest).parent.parent}


def record_preads(monkeypatch) -> list[tuple[int, int]]:
    """From now until monkeypatch.undo(), the (size, offset) of every os.pread."""
    reads: list[tuple[int, int]] = []
    real_pread = os.pread

    def pread(fd: int, size: int, offset: int) -> bytes:
        reads.append((size, offset))
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", pread)
    return reads


def test_archives_tar_of_small_members_is_read_ahead_not_once_per_header(store, monkeypatch):
    data = tar_bytes([F(f"d/f{index}.txt", b"%d\n" % index * 100) for index in range(300)])
    assert len(data) < readers.WINDOW
    reads = record_preads(monkeypatch)
    outcome = run(store, data, "small.tar")
    monkeypatch.undo()
    assert outcome.archive.files == 300
    assert (outcome.archive.path / "d/f7.txt").read_bytes() == b"7\n" * 100
    assert reads == [(readers.WINDOW, 0)]


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_archives_zip_of_small_members_is_read_ahead_not_once_per_member(
    store, monkeypatch, compression
):
    members = [F(f"d/f{index}.txt", b"%d\n" % index * 100) for index in range(300)]
    data = zip_bytes(members, compression=compression)
    reads = record_preads(monkeypatch)
    outcome = run(store, data, "small.zip")
    monkeypatch.undo()
    assert outcome.archive.files == 300
    assert (outcome.archive.path / "d/f7.txt").read_bytes() == b"7\n" * 100
    # The directory's checks read its tail and records; the members come from one read.
    assert reads.count((readers.WINDOW, 0)) == 1
    assert len(reads) <= 4


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("damage", ["crc", "cut"])
def test_archives_zip_member_damaged_is_refused_by_name(store, compression, damage):
    members = [F("ok.txt", b"fine"), F("bad.bin", os.urandom(5000))]
    data = zip_bytes(members, compression=compression)
    if damage == "crc":
        data = _corrupt_zip_crc_of(data, "bad.bin")
    else:
        # 2,000 of the member's bytes are gone: what follows is read in their place.
        at = data.index(b"PK\x01\x02")
        data = data[: at - 2000] + data[at:]
        data = _fix_directory_offset(data, -2000)
    message = refused(store, data, member="bad.bin", name="damaged.zip")
    assert "truncated or malformed" in message


def _corrupt_zip_crc_of(data: bytes, name: str) -> bytes:
    """The zip with the CRC of `name` wrong in its central directory."""
    at = data.index(b"PK\x01\x02")
    while data[at + 46 : at + 46 + len(name)] != name.encode():
        at = data.index(b"PK\x01\x02", at + 4)
    at += 16
    return data[:at] + bytes(b ^ 0xFF for b in data[at : at + 4]) + data[at + 4 :]


def _fix_directory_offset(data: bytes, shift: int) -> bytes:
    """The zip with its end record's directory offset moved by `shift` bytes."""
    at = data.rindex(b"PK\x05\x06") + 16
    offset = struct.unpack("<L", data[at : at + 4])[0] + shift
    return data[:at] + struct.pack("<L", offset) + data[at + 4 :]


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_archives_zip_local_name_other_than_the_directory_s_is_refused(store, compression):
    data = zip_bytes([F("a/safe.txt", b"one"), F("b/also.txt", b"two")], compression=compression)
    local = data.index(b"PK\x03\x04", 1)  # the second member's local header
    at = data.index(b"b/also.txt", local)
    data = data[:at] + b"b/evil.txt" + data[at + len(b"b/evil.txt") :]
    message = refused(store, data, member="b/also.txt", name="two-names.zip")
    assert "directory and in its header differ" in message
