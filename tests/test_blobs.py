"""The store's commit and dedup at their edges: a blob gone meanwhile, EMLINK, health, notes."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
from pathlib import Path

import pytest
from helpers import MD5_COLLISION_A, MD5_COLLISION_B, md5, saturate_links

from bucketdav.errors import ChecksumCollision, StoreFull
from bucketdav.store import blobs
from bucketdav.store.blobs import LEFTOVER_AGE, MIN_FREE_INODES, Store


@pytest.fixture
def store(store_root: Path) -> Store:
    opened = Store(store_root, "md5")
    opened.open()
    return opened


def staged_names(store: Store) -> list[str]:
    return sorted(path.name for path in store.staging.iterdir())


def test_commit_collision_is_refused_naming_the_digest(store):
    store.ingest([MD5_COLLISION_A])
    with pytest.raises(ChecksumCollision) as caught:
        store.ingest([MD5_COLLISION_B])
    digest = md5(MD5_COLLISION_A)
    assert str(caught.value) == (
        f"md5 {digest} is already stored with different content; "
        "the stored blob is kept and this upload is refused"
    )
    assert store.blob_path(digest).read_bytes() == MD5_COLLISION_A


def test_commit_known_blob_gone_before_it_is_shared_stores_this_copy(store, monkeypatch):
    # Collection takes the blob between our look and our hold: this upload's copy becomes it.
    known = store.ingest([b"collected meanwhile"])
    real_shared = blobs.shared

    @contextlib.contextmanager
    def collected_first(path):
        if known.path.exists():
            known.path.unlink()
            yield None
            return
        with real_shared(path) as held:
            yield held

    monkeypatch.setattr(blobs, "shared", collected_first)
    again = store.ingest([b"collected meanwhile"])
    assert again.created
    assert again.path.read_bytes() == b"collected meanwhile"


def test_commit_known_blob_with_all_its_links_is_deduplicated(store, monkeypatch):
    known = store.ingest([b"many links"])
    saturate_links(monkeypatch, known.path)
    again = store.ingest([b"many links"])
    assert (again.created, again.path) == (False, known.path)
    assert staged_names(store) == []


def test_commit_pin_that_cannot_replace_the_staged_name_is_removed(store, monkeypatch):
    store.ingest([b"pinned"])

    def refused(src, dst, **kwargs):
        raise OSError(errno.EIO, "replace failed")

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(OSError, match="replace failed"):
        store.ingest([b"pinned"])
    assert staged_names(store) == []


def test_place_copy_past_emlink_is_read_only(store, monkeypatch):
    blob = store.ingest([b"copied"])
    saturate_links(monkeypatch, blob.path)
    dest = store.replicas / "copy.txt"
    store.place(blob.path, dest)
    assert dest.read_bytes() == b"copied"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o444


@pytest.mark.parametrize(
    ("writable", "free", "inodes", "health"),
    [
        (False, (10, 0), 100, (False, "the store is not writable")),
        (True, (10, 10), MIN_FREE_INODES, (True, "ok")),
        (True, (9, 10), 100, (False, "free space 9 is below the watermark 10")),
        (True, (10, 10), MIN_FREE_INODES - 1, (False, "free inodes 31 are below the reserve 32")),
        (True, (10, 10), None, (True, "ok")),
    ],
)
def test_healthy_at_its_bounds(store, monkeypatch, writable, free, inodes, health):
    monkeypatch.setattr(store, "writable", lambda: writable)
    monkeypatch.setattr(store, "free_bytes", lambda: free)
    monkeypatch.setattr(store, "free_inodes", lambda: inodes)
    assert store.healthy() == health


def test_find_decompressed_flushes_the_note_it_relies_on(store, monkeypatch):
    tar = store.ingest([b"the decompressed tar"])
    compressed = md5(b"the compressed upload")
    store.remember_decompressed(compressed, tar)
    flushed = []
    monkeypatch.setattr(blobs, "fsync_up", lambda folder, top: flushed.append((folder, top)))
    found = store.find_decompressed(compressed)
    assert found is not None and found.path == tar.path
    assert (store.note_path(compressed).parent, store.notes) in flushed


def test_find_decompressed_note_folder_gone_while_flushing_still_finds(store, monkeypatch):
    tar = store.ingest([b"another tar"])
    compressed = md5(b"another upload")
    store.remember_decompressed(compressed, tar)

    def gone(folder, top):
        if folder == store.note_path(compressed).parent:
            raise FileNotFoundError(errno.ENOENT, "removed", str(folder))

    monkeypatch.setattr(blobs, "fsync_up", gone)
    assert store.find_decompressed(compressed).path == tar.path


def test_commit_blob_that_keeps_vanishing_gives_up_after_eight_rounds(store, monkeypatch):
    known = store.ingest([b"flickering"])

    @contextlib.contextmanager
    def always_gone(path):
        yield None

    monkeypatch.setattr(blobs, "shared", always_gone)
    with pytest.raises(OSError) as caught:
        store.ingest([b"flickering"])
    assert (caught.value.errno, caught.value.strerror, caught.value.filename) == (
        errno.EAGAIN,
        "the blob kept appearing and vanishing",
        str(known.path),
    )
    assert staged_names(store) == []


def test_link_making_folders_tries_a_last_time_after_eight_rounds(tmp_path, monkeypatch):
    (tmp_path / "src").write_bytes(b"s")
    real_link = os.link
    calls = []

    def folder_removed(src, dst, **kwargs):
        calls.append(dst)
        if len(calls) <= 8:
            raise FileNotFoundError(errno.ENOENT, "removed by collection", dst)
        return real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", folder_removed)
    blobs.link_making_folders(tmp_path / "src", tmp_path / "ab" / "cd" / "dest")
    assert len(calls) == 9
    assert (tmp_path / "ab" / "cd" / "dest").read_bytes() == b"s"


@pytest.mark.parametrize(
    ("free", "incoming", "inodes", "message"),
    [
        ((110, 10), 100, MIN_FREE_INODES, None),
        ((110, 10), 101, 100, "the store keeps 10 bytes free and has 110; 101 more do not fit"),
        ((110, 10), 0, None, None),
        (
            (110, 10),
            0,
            MIN_FREE_INODES - 1,
            "the store's file system has 31 free inodes (files) left and keeps 32",
        ),
    ],
)
def test_check_space_at_its_bounds(store, monkeypatch, free, incoming, inodes, message):
    monkeypatch.setattr(store, "free_bytes", lambda: free)
    monkeypatch.setattr(store, "free_inodes", lambda: inodes)
    if message is None:
        store.check_space(incoming)
    else:
        with pytest.raises(StoreFull, match=f"^{re.escape(message)}"):
            store.check_space(incoming)


def test_clear_staging_counts_what_it_removes_and_keeps_what_is_a_day_old_exactly(store):
    now = 2_000_000_000
    (store.staging / "up-mine").write_bytes(b"my leftover")
    (store.staging / "tree-mine").mkdir()
    other = store.staging_root / "node-x"
    other.mkdir()
    for name, age in (("up-a-day", LEFTOVER_AGE), ("up-older", LEFTOVER_AGE + 1)):
        (other / name).write_bytes(b"another node's")
        os.utime(other / name, (now - age, now - age))
    (store.staging_root / "up-earlier-layout").write_bytes(b"x")
    os.utime(store.staging_root / "up-earlier-layout", (now - LEFTOVER_AGE - 1,) * 2)
    assert store.clear_staging(now=now) == 4
    assert staged_names(store) == []
    assert sorted(p.name for p in other.iterdir()) == ["up-a-day"]
    assert sorted(p.name for p in store.staging_root.iterdir()) == sorted(["node-x", store.node])
    assert store.clear_staging(now=now) == 0


@pytest.mark.parametrize("name", ["ab" * 15, "X" * 32, "ABCDEF" + "0" * 26])
def test_find_decompressed_ignores_a_note_naming_what_is_no_digest(store, name):
    # Shaped like a blob's path, with a file there: still not a blob this store could hold.
    stray = store.blobs / name[:2] / name[2:4] / name
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"not a blob")
    compressed = md5(b"some upload")
    note = store.note_path(compressed)
    note.parent.mkdir(parents=True)
    note.symlink_to(os.path.relpath(stray, note.parent))
    assert store.find_decompressed(compressed) is None


def test_clear_staging_removes_a_link_to_a_folder_without_following_it(store, tmp_path):
    outside = tmp_path / "outside" / "folder"
    outside.mkdir()
    (outside / "kept").write_bytes(b"not the store's")
    (store.staging / "tree-link").symlink_to(outside)
    assert store.clear_staging() == 1
    assert staged_names(store) == []
    assert (outside / "kept").read_bytes() == b"not the store's"


def test_clear_staging_entry_another_node_removed_meanwhile_is_no_error(store, monkeypatch):
    leftover = store.staging / "up-leftover"
    leftover.write_bytes(b"x")
    real_unlink = os.unlink

    def removed_first(path, *args, **kwargs):
        if os.fspath(path) == str(leftover):
            real_unlink(path)  # another node starting at the same time took it
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", removed_first)
    assert store.clear_staging() == 1
    assert staged_names(store) == []


@pytest.mark.parametrize(("files", "free"), [(0, None), (1000, 7)])
def test_free_inodes_is_none_where_the_file_system_counts_none(store, monkeypatch, files, free):
    counts = os.statvfs(store.root)
    fake = os.statvfs_result((*counts[:5], files, 3, 7, *counts[8:]))
    monkeypatch.setattr(os, "statvfs", lambda path: fake)
    assert store.free_inodes() == free


def test_remember_decompressed_flushes_the_note_it_writes(store, monkeypatch):
    tar = store.ingest([b"a tar"])
    compressed = md5(b"its upload")
    flushed = []
    monkeypatch.setattr(blobs, "fsync_up", lambda folder, top: flushed.append((folder, top)))
    store.remember_decompressed(compressed, tar)
    assert flushed == [(store.note_path(compressed).parent, store.notes)]
    assert store.find_decompressed(compressed).path == tar.path


def test_remember_decompressed_tries_a_last_time_after_eight_rounds(store, monkeypatch):
    tar = store.ingest([b"another tar"])
    compressed = md5(b"another upload")
    real_replace = os.replace
    calls = []

    def folder_removed(src, dst):
        calls.append(dst)
        if len(calls) <= 8:
            raise FileNotFoundError(errno.ENOENT, "removed by collection", dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", folder_removed)
    store.remember_decompressed(compressed, tar)
    assert calls == [store.note_path(compressed)] * 9
    assert os.readlink(store.note_path(compressed)) == os.path.relpath(
        tar.path, store.note_path(compressed).parent
    )
    assert staged_names(store) == []


def test_remember_decompressed_that_fails_leaves_nothing_in_staging(store, monkeypatch):
    tar = store.ingest([b"a third tar"])

    def refused(src, dst):
        raise OSError(errno.EIO, "replace failed")

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(OSError, match="replace failed"):
        store.remember_decompressed(md5(b"a third upload"), tar)
    assert staged_names(store) == []


def test_make_folders_tries_a_last_time_after_eight_rounds(tmp_path, monkeypatch):
    target = tmp_path / "ab" / "cd"
    target.mkdir(parents=True)  # made meanwhile by a twin upload: no error either
    real_makedirs = os.makedirs
    calls = []

    def parent_removed(path, *args, **kwargs):
        calls.append(path)
        if len(calls) <= 8:
            raise FileNotFoundError(errno.ENOENT, "removed by collection", path)
        return real_makedirs(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", parent_removed)
    blobs.make_folders(target)
    assert calls == [target] * 9


def test_clear_staging_never_follows_a_link_in_staging_to_a_folder(store, tmp_path):
    outside = tmp_path / "outside" / "node-folder"
    outside.mkdir(parents=True)
    (outside / "old").write_bytes(b"not the store's")
    os.utime(outside / "old", (1, 1))
    (store.staging_root / "node-link").symlink_to(outside)
    store.clear_staging()
    assert (outside / "old").read_bytes() == b"not the store's"


def test_store_open_makes_missing_parents_and_stages_under_the_host_name(tmp_path):
    opened = Store(tmp_path / "new" / "deep" / "store", "md5")
    opened.open()
    assert opened.staging == tmp_path / "new" / "deep" / "store" / "staging" / socket.gethostname()
    assert opened.staging.is_dir()


def test_store_open_that_cannot_create_the_store_says_why(tmp_path):
    (tmp_path / "file").write_bytes(b"in the way")
    with pytest.raises(blobs.StoreError) as caught:
        Store(tmp_path / "file" / "store", "md5").open()
    assert str(caught.value).startswith(
        f"ARCHIVE_DIR={tmp_path / 'file' / 'store'}: cannot create the store: [Errno 20]"
    )


def test_store_open_not_writable_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(Store, "writable", lambda self: False)
    with pytest.raises(blobs.StoreError) as caught:
        Store(tmp_path, "md5").open()
    assert str(caught.value) == f"ARCHIVE_DIR={tmp_path}: not writable by this user"
