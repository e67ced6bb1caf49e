"""Building an archive's tree at its edges: hard-link refusals, vanished blobs, EMLINK."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
from pathlib import Path

import pytest
from helpers import saturate_links
from test_archives import D, F, H, run, tar_bytes

from bucketdav.errors import UnsafeArchive
from bucketdav.store.blobs import Store
from bucketdav.uploads.archives import tree
from bucketdav.uploads.archives.members import Kind
from bucketdav.uploads.archives.readers import Member

KEPT = "; nothing was extracted (the uploaded file is kept as its blob)"


@pytest.fixture
def store(store_root: Path) -> Store:
    """An opened md5 store: digests are not trusted, bytes are compared."""
    opened = Store(store_root, "md5")
    opened.open()
    return opened


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324 - the store's default checksum


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([H("h", ".")], "is a hard link to '.', which is not an earlier member"),
        ([D("d"), H("h", "d")], "is a hard link to a directory"),
        ([F("a"), F("h"), H("h", "a")], "appears twice in the archive (as a file and as a file)"),
    ],
)
def test_tree_hard_link_refusals_are_exact(store, members, reason):
    with pytest.raises(UnsafeArchive) as caught:
        run(store, tar_bytes(members), "links.tar")
    assert str(caught.value) == f"archive member 'h' {reason}{KEPT}"


def test_tree_hard_link_made_file_is_named_when_a_member_needs_it_as_a_folder(store):
    with pytest.raises(UnsafeArchive) as caught:
        run(store, tar_bytes([F("a"), H("h", "a"), F("h/x")]), "links.tar")
    reason = "needs 'h' as a directory, but member 'h' made it a file"
    assert str(caught.value) == f"archive member 'h/x' {reason}{KEPT}"


def test_tree_blob_gone_while_sharing_is_linked_again(store, monkeypatch):
    # Collection took the stored blob between our failed link and our look (shared() finds
    # nothing): the next round links again, and the file ends as the blob's inode.
    stored = store.ingest([b"stored before"])
    real_shared = tree.shared
    calls = []

    @contextlib.contextmanager
    def first_gone(path):
        calls.append(path)
        if len(calls) == 1:
            yield None
            return
        with real_shared(path) as held:
            yield held

    monkeypatch.setattr(tree, "shared", first_gone)
    built = run(store, tar_bytes([F("a", b"stored before")]), "one.tar").archive.path
    assert len(calls) == 2
    assert os.stat(built / "a").st_ino == os.stat(stored.path).st_ino


def test_tree_blob_with_all_its_links_leaves_copies(store, monkeypatch):
    # Three members share one content; the blob takes no more links after the first.
    blob = str(store.blob_path(md5(b"same")))
    saturate_links(monkeypatch, blob)
    built = run(store, tar_bytes([F("a", b"same"), F("b", b"same"), F("c", b"same")]), "x.tar")
    path = built.archive.path
    assert [(path / n).read_bytes() for n in "abc"] == [b"same"] * 3
    inodes = [os.stat(path / n).st_ino for n in "abc"]
    assert inodes[0] == os.stat(blob).st_ino
    assert len(set(inodes)) == 3
    assert Path(blob).read_bytes() == b"same"


@pytest.mark.parametrize(("algorithm", "data"), [("sha256", b"same"), ("md5", b"")])
def test_tree_known_content_is_written_once(store_root, monkeypatch, algorithm, data):
    # With a trusted digest (or no bytes at all) a repeat is a link, not another file.
    opened = Store(store_root, algorithm)
    opened.open()
    writes = []
    real_write = tree.TreeBuilder._write_file

    def counted(dest, chunks, hasher):
        writes.append(os.path.basename(dest))
        return real_write(dest, chunks, hasher)

    monkeypatch.setattr(tree.TreeBuilder, "_write_file", staticmethod(counted))
    members = [F("a", data), F("b", data), H("c", "b"), F("d", data)]
    path = run(opened, tar_bytes(members), "same.tar").archive.path
    assert writes == ["a"]
    assert len({os.stat(path / name).st_ino for name in "abcd"}) == 1


def test_tree_hard_link_past_emlink_is_a_whole_copy(store, monkeypatch):
    blob = str(store.blob_path(md5(b"linked data")))
    real_link = os.link

    def saturated(src, dst, **kwargs):
        if os.fspath(src) == blob and not os.fspath(dst).endswith("/a"):
            raise OSError(errno.EMLINK, "Too many links", os.fspath(dst))
        return real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", saturated)
    members = [F("a", b"linked data"), H("b", "a"), H("c", "a")]
    path = run(store, tar_bytes(members), "x.tar").archive.path
    assert [(path / n).read_bytes() for n in "abc"] == [b"linked data"] * 3


def test_tree_blob_that_keeps_vanishing_gives_up_after_eight_rounds(store, monkeypatch):
    store.ingest([b"stored"])

    @contextlib.contextmanager
    def always_gone(path):
        yield None

    monkeypatch.setattr(tree, "shared", always_gone)
    with pytest.raises(OSError) as caught:
        run(store, tar_bytes([F("a", b"stored")]), "x.tar")
    assert caught.value.errno == errno.EAGAIN
    assert caught.value.strerror == "the blob kept appearing and vanishing"
    assert caught.value.filename == str(store.blob_path(md5(b"stored")))


def test_syncfs_flushes_the_file_system_of_the_path_it_is_given(tmp_path, monkeypatch):
    seen = []

    def fake_syncfs(fd):
        seen.append(os.fstat(fd).st_ino)
        return 0

    monkeypatch.setattr(tree, "_LIBC_SYNCFS", fake_syncfs)
    tree.syncfs(tmp_path)
    assert seen == [os.stat(tmp_path).st_ino]


def test_syncfs_failure_is_an_os_error_naming_the_path(tmp_path, monkeypatch):
    def failing_syncfs(fd):
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(tree, "_LIBC_SYNCFS", failing_syncfs)
    with pytest.raises(OSError) as caught:
        tree.syncfs(tmp_path)
    assert (caught.value.errno, caught.value.strerror, caught.value.filename) == (
        errno.EIO,
        os.strerror(errno.EIO),
        str(tmp_path),
    )


# -- the builder alone, with members whose chunks the test chooses --------------------------

KiB = 1024
MiB = 1024 * KiB


def member(name: str, *pieces: bytes, size: int | None = None) -> Member:
    """A file member read in exactly these pieces (its declared size theirs, unless given)."""
    declared = sum(map(len, pieces)) if size is None else size
    return Member(name, Kind.FILE, declared, chunks=lambda: iter(pieces))


@pytest.fixture
def builder_root(store) -> Path:
    root = store.staging / "tree-test"
    root.mkdir()
    return root


def test_tree_extraction_bound_is_inclusive(store, builder_root):
    builder = tree.TreeBuilder(store, builder_root, max_bytes=6, max_files=10)
    builder.add(member("a", b"abc", b"def"))
    builder.add(member("empty"))
    assert (builder_root / "a").read_bytes() == b"abcdef"
    with pytest.raises(UnsafeArchive) as caught:
        builder.add(member("b", b"x"))
    assert caught.value.member == "b"


def test_tree_extraction_bound_counts_every_member_streamed(store, builder_root):
    builder = tree.TreeBuilder(store, builder_root, max_bytes=3 * MiB, max_files=10)
    builder.add(member("big", *[b"b" * (512 * KiB)] * 5))
    with pytest.raises(UnsafeArchive) as caught:
        builder.add(member("next", b"n" * MiB))
    assert caught.value.member == "next"


def test_tree_member_larger_than_it_said_is_cut_off_by_name(store, builder_root):
    builder = tree.TreeBuilder(store, builder_root, max_bytes=2 * MiB, max_files=10)
    with pytest.raises(UnsafeArchive) as caught:
        builder.add(member("liar", *[b"l" * (512 * KiB)] * 5, size=MiB + 1))
    assert caught.value.member == "liar"
    assert "BUCKETDAV_EXTRACT_MAX_BYTES (2097152 bytes)" in str(caught.value)


def test_tree_hard_link_to_a_streamed_member_shares_its_record(store, builder_root):
    builder = tree.TreeBuilder(store, builder_root, max_bytes=4 * MiB, max_files=10)
    builder.add(member("big", *[b"s" * (512 * KiB)] * 3))
    builder.add(Member("h", Kind.HARDLINK, 0, link="big"))
    assert builder.records[("h",)] is builder.records[("big",)]


def test_tree_checks_free_space_every_so_many_bytes(store, builder_root, monkeypatch):
    monkeypatch.setattr(tree, "_SPACE_CHECK_EVERY", MiB)
    asked = []
    monkeypatch.setattr(store, "check_space", asked.append)
    builder = tree.TreeBuilder(store, builder_root, max_bytes=8 * MiB, max_files=10)
    builder.add(member("big", *[b"c" * (256 * KiB)] * 10))
    assert asked == [0, 0]


def test_tree_path_room_is_what_the_final_place_leaves(store, builder_root):
    final = Path(str(builder_root) + "x" * 100)  # the tree's place is 100 bytes longer
    room = 4095 - 100 - len(os.fsencode(builder_root)) - 1
    segments, left = [], room
    while left > 201:
        segments.append("d" * 200)
        left -= 201
    fits = "/".join([*segments, "f" * left])
    assert len(fits.encode()) == room
    builder = tree.TreeBuilder(store, builder_root, max_bytes=MiB, max_files=10, final=final)
    builder.add(member(fits, b"x"))
    with pytest.raises(UnsafeArchive, match="too deep to store"):
        builder.add(member(fits[:-1] + "/gg", b"x"))


def test_tree_small_member_larger_than_it_said_is_cut_off_by_name(store, builder_root):
    builder = tree.TreeBuilder(store, builder_root, max_bytes=8, max_files=10)
    with pytest.raises(UnsafeArchive) as caught:
        builder.add(member("fib", b"0123456789", size=5))
    assert caught.value.member == "fib"


def test_tree_small_member_that_turns_out_large_is_written_whole(store, builder_root):
    data = b"w" * (2 * MiB)
    builder = tree.TreeBuilder(store, builder_root, max_bytes=4 * MiB, max_files=10)
    builder.add(member("grew", data, size=1000))
    assert (builder_root / "grew").read_bytes() == data
