"""Collection's decisions pinned one by one: the retention policy each template gets, what
is learned of compressed blobs without a note, the report's counts, and the clean-ups."""

from __future__ import annotations

import errno
import fcntl
import gzip
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import make_settings
from helpers import md5, tar_gz
from test_collect import NIGHTLY, TEAM, collector, upload_series

from bucketdav.errors import StoreFull
from bucketdav.store.blobs import Store
from bucketdav.store.collect import Collector, Stopped, policy_of
from bucketdav.store.expire import Removed
from bucketdav.store.retention import DAY, Policy, Rules

NOW = {"BUCKETDAV_GC_UNREFERENCED_DAYS": "0"}


def test_policy_of_gives_each_template_its_own_rules_or_the_global_ones(store_root):
    settings = make_settings(
        store_root,
        REPLICATE_0="team/${Topic}",
        REPLICATE_1="builds/${Project}/nightly/${Branch}",
        REPLICATE_2="other/${X}",
        REPLICATE_0_KEEP_LAST="3",
        REPLICATE_1_KEEP_DAYS="2",
        BUCKETDAV_KEEP_LAST="5",
        BUCKETDAV_KEEP_DAYS="30",
    )
    assert policy_of(settings) == Policy(
        default=Rules(keep_last=5, keep_days=30 * DAY),
        templates=(
            (("team", None), Rules(keep_last=3, keep_days=None)),
            (("builds", None, "nightly", None), Rules(keep_last=None, keep_days=2 * DAY)),
            (("other", None), None),
        ),
    )


def test_policy_of_without_rules_keeps_everything(store_root):
    settings = make_settings(store_root, REPLICATE_0="team/${Topic}")
    policy = policy_of(settings)
    assert policy == Policy(default=Rules(None, None), templates=((("team", None), None),))
    assert not policy.active


def fanned(root: Path, top: str) -> list[str]:
    """Every path below `root/top`, relative to it (fan-out folders included)."""
    return sorted(str(p.relative_to(root / top)) for p in (root / top).rglob("*"))


def test_collect_of_an_unreferenced_archive_reports_each_path_and_leaves_no_folder(
    make_client, store_root
):
    data = tar_gz({"a": b"tree file"})
    answer = make_client(**TEAM).put("/upload/t.tgz", data).json
    tar = store_root / answer["path"]["decompressed"]
    size = tar.stat().st_size
    descriptors = len(os.listdir("/proc/self/fd"))
    report = collector(store_root, later=1, **NOW).run()
    assert len(os.listdir("/proc/self/fd")) == descriptors  # every folder opened is closed
    assert list((store_root / "gc" / "candidates").iterdir()) == []
    assert (report.success, report.error, report.skipped, report.notes) == (True, None, 0, 1)
    assert report.removed == [
        Removed(answer["path"]["archive"] + "/", "tree", 0, "unreferenced 0 days"),
        Removed(answer["path"]["blob"], "blob", len(data), "unreferenced 0 days"),
        Removed(answer["path"]["decompressed"], "blob", size, "unreferenced 0 days"),
    ]
    # The member's blob was linked from the tree: it goes at the next run, with the last
    # fan-out folders of blob/; those of explode/ and decompressed/ went with the tree.
    assert (fanned(store_root, "explode"), fanned(store_root, "decompressed")) == ([], [])
    member = md5(b"tree file")
    assert fanned(store_root, "blob") == [
        member[:2],
        f"{member[:2]}/{member[2:4]}",
        f"{member[:2]}/{member[2:4]}/{member}",
    ]
    again = collector(store_root, later=1, **NOW).run()
    assert [(r.kind, r.size, r.path) for r in again.removed] == [
        ("blob", 9, f"blob/{member[:2]}/{member[2:4]}/{member}")
    ]
    assert again.notes == 0
    assert fanned(store_root, "blob") == []
    assert list((store_root / "gc" / "candidates").iterdir()) == []


def test_collect_learns_no_note_for_a_compressed_blob_no_tree_came_from(make_client, store_root):
    client = make_client(**TEAM)
    client.put("/upload/t.tgz", tar_gz({"a": b"kept"}), headers=NIGHTLY)  # a tree that stays
    answer = client.put("/upload/log.gz", gzip.compress(b"not an archive\n" * 10)).json
    digest = answer["checksum"]["blob"]
    note = store_root / "decompressed" / digest[:2] / digest[2:4] / digest
    note.unlink()  # a store from before notes, or a note lost
    report = collector(store_root, later=1, **NOW).run()
    # Decompressed to learn the note, which names no tree: nothing is noted, both go.
    assert report.notes == 0
    assert sorted((r.kind, r.path) for r in report.removed) == sorted(
        [("blob", answer["path"]["blob"]), ("blob", answer["path"]["decompressed"])]
    )
    assert not os.path.lexists(note)


def test_collect_dry_run_learns_a_lost_note_without_writing_it(make_client, store_root):
    client = make_client(**TEAM)
    answer = client.put("/upload/t.tgz", tar_gz({"a": b"1"}), headers=NIGHTLY).json
    digest = answer["checksum"]["blob"]
    note = store_root / "decompressed" / digest[:2] / digest[2:4] / digest
    note.unlink()  # a store from before notes, or a note lost
    report = collector(store_root, later=1, **NOW).run(dry_run=True)
    assert (report.success, report.removed) == (True, [])
    assert not os.path.lexists(note)


def test_collect_in_batches_takes_every_blob_once(make_client, store_root):
    client = make_client(**TEAM)
    for index in range(5):
        client.put(f"/upload/f{index}.bin", f"lone {index}".encode())
    settings = make_settings(store_root, **TEAM, **NOW)
    store = Store(settings.archive_dir, settings.checksum_type, node=settings.node)
    report = Collector(store, settings, clock=lambda: time.time() + 1, batch=2).run()
    assert (report.success, report.blobs, report.skipped) == (True, 5, 0)
    assert sorted(r.path for r in report.removed) == sorted(
        f"blob/{d[:2]}/{d[2:4]}/{d}" for d in (md5(f"lone {i}".encode()) for i in range(5))
    )
    assert fanned(store_root, "blob") == []


def test_collect_removes_empty_fan_out_folders_an_earlier_run_left(make_client, store_root):
    make_client(**TEAM)
    for folder in ("blob/aa", "blob/bb/cc", "explode/dd/ee", "decompressed/ff/00", "blob/ab/cd"):
        (store_root / folder).mkdir(parents=True)
    (store_root / "blob" / "ab" / "ef").mkdir()
    (store_root / "blob" / "ab" / "ef" / "stray").write_bytes(b"not a blob")
    report = collector(store_root, later=1, **NOW).run()
    assert (report.success, report.removed) == (True, [])
    # Empty ones go with their parent when that empties it; ab/ keeps ef/ and what is in it.
    assert fanned(store_root, "blob") == ["ab", "ab/ef", "ab/ef/stray"]
    assert (fanned(store_root, "explode"), fanned(store_root, "decompressed")) == ([], [])


def test_collect_first_deletes_the_candidates_an_interrupted_run_left(make_client, store_root):
    make_client(**TEAM)
    candidates = store_root / "gc" / "candidates"
    (candidates / f"tree-{'1' * 32}" / "sub").mkdir(parents=True)
    (candidates / f"tree-{'1' * 32}" / "sub" / "f").write_bytes(b"member")
    (candidates / f"tree-{'1' * 32}" / "sub").chmod(0o555)  # as published trees are
    (candidates / f"blob-{'2' * 32}").write_bytes(b"blob")
    (candidates / f"link-{'3' * 32}").symlink_to(store_root.parent / "outside")
    (store_root.parent / "outside" / "kept").write_bytes(b"outside")
    dry = collector(store_root, later=1, **NOW).run(dry_run=True)
    assert (dry.success, dry.removed) == (True, [])
    assert len(list(candidates.iterdir())) == 3  # a dry run changes nothing
    report = collector(store_root, later=1, **NOW).run()
    # Checked when they were taken: deleted, never reported again, links not followed.
    assert (report.success, report.removed) == (True, [])
    assert list(candidates.iterdir()) == []
    assert (store_root.parent / "outside" / "kept").read_bytes() == b"outside"


def test_collect_counts_every_note_it_removes_and_every_blob_it_leaves(make_client, store_root):
    client = make_client(**TEAM)
    for name in ("a", "b"):
        client.put(f"/upload/{name}.tgz", tar_gz({name: name.encode()}))
    held = [client.put(f"/upload/{n}.txt", f"held {n}".encode()).json for n in ("c", "d")]
    fds = [os.open(store_root / answer["path"]["blob"], os.O_RDONLY) for answer in held]
    try:
        for fd in fds:
            fcntl.flock(fd, fcntl.LOCK_SH)  # what an upload relying on it holds
        report = collector(store_root, later=1, **NOW).run()
    finally:
        for fd in fds:
            os.close(fd)
    assert (report.trees, report.blobs, report.notes, report.skipped) == (2, 4, 2, 2)


def test_collect_run_without_rules_says_so_and_touches_nothing(make_client, store_root):
    make_client(**TEAM).put("/upload/a.txt", b"never collected")
    report = collector(store_root, later=30 * DAY).run()
    assert (report.rules, report.dry_run, report.success, report.removed) == (
        False,
        False,
        True,
        [],
    )
    assert not (store_root / "gc").exists()
    dry = collector(store_root, BUCKETDAV_KEEP_LAST="1").run(dry_run=True)
    assert (dry.rules, dry.dry_run, dry.success) == (True, True, True)


def test_collect_run_that_cannot_open_its_lock_reports_the_error(make_client, store_root):
    make_client(**TEAM).put("/upload/a.txt", b"stays")
    (store_root / "gc" / "lock").mkdir(parents=True)  # not a file: open() fails
    report = collector(store_root, later=1, **NOW).run()
    assert (report.success, report.removed) == (False, [])
    assert report.error == f"Is a directory: {store_root / 'gc' / 'lock'}"
    assert 0 < report.seconds < 60


def test_collect_run_refuses_a_gc_folder_that_is_a_link(make_client, store_root):
    make_client(**TEAM)
    (store_root.parent / "outside" / "gc").mkdir()
    (store_root / "gc").symlink_to(store_root.parent / "outside" / "gc")
    report = collector(store_root, later=1, **NOW).run()
    assert (report.success, report.error) == (False, "gc is not a folder; nothing done")
    assert list((store_root.parent / "outside" / "gc").iterdir()) == []


def test_collect_of_a_blob_whose_fan_out_folder_went_meanwhile_skips_it(
    make_client, store_root, monkeypatch, tmp_path
):
    digest = md5(b"moved away")
    make_client(**TEAM).put("/upload/a.txt", b"moved away")
    # A file of that name in the working folder: never the collector's to take.
    here = tmp_path / "cwd"
    here.mkdir()
    (here / digest).write_bytes(b"not in the store")
    monkeypatch.chdir(here)
    real_take = Collector._take

    def folder_gone_first(self, item, *args, **kwargs):
        os.rename(store_root / "blob" / digest[:2], tmp_path / "outside" / "moved")
        return real_take(self, item, *args, **kwargs)

    monkeypatch.setattr(Collector, "_take", folder_gone_first)
    report = collector(store_root, later=1, **NOW).run()
    assert (report.success, report.removed, report.skipped) == (True, [], 1)
    assert (here / digest).read_bytes() == b"not in the store"


def first_below(limit: str, make: Callable[[int], bytes]) -> bytes:
    """The first of make(0), make(1), … whose MD5 sorts before `limit` (the plan's order)."""
    for index in range(10_000):
        data = make(index)
        if md5(data) < limit:
            return data
    raise AssertionError(f"no content sorts before {limit}")


def lose_note(root: Path, digest: str) -> Path:
    note = root / "decompressed" / digest[:2] / digest[2:4] / digest
    note.unlink()  # a store from before notes, or a note lost
    return note


def test_collect_learns_a_lost_note_past_a_tree_that_goes_and_blobs_of_no_tree(
    make_client, store_root
):
    client = make_client(**TEAM)
    kept = client.put("/upload/a.tgz", tar_gz({"a": b"kept tree"}), headers=NIGHTLY).json
    gone = client.put("/upload/b.tgz", tar_gz({"b": b"tree that goes"})).json
    # Before the kept tree's archive in the plan: a plain blob, and a compressed one that
    # decompresses to no tree; the tree that goes comes first of all. Each is looked at
    # and passed over, and nothing is noted for what goes.
    limit = kept["checksum"]["blob"]
    plain = first_below(limit, lambda i: b"a plain blob, no archive %d" % i)
    plain = client.put("/upload/p.bin", plain).json
    packed = first_below(limit, lambda i: gzip.compress(b"log line %d\n" % i, mtime=0))
    log = client.put("/upload/log.gz", packed).json
    for answer in (kept, gone, log):
        lose_note(store_root, answer["checksum"]["blob"])
    # The tar of the tree that goes has another link: it stays, and the tree still goes.
    os.link(store_root / gone["path"]["decompressed"], store_root.parent / "outside" / "b.tar")
    report = collector(store_root, later=1, **NOW).run()
    assert (report.success, report.notes, report.skipped) == (True, 0, 0)
    assert sorted((r.kind, r.path) for r in report.removed) == sorted(
        [
            ("tree", gone["path"]["archive"] + "/"),
            ("blob", gone["path"]["blob"]),
            ("blob", plain["path"]["blob"]),
            ("blob", log["path"]["blob"]),
            ("blob", log["path"]["decompressed"]),
        ]
    )
    assert (store_root / kept["path"]["blob"]).exists()
    note = store_root / "decompressed" / limit[:2] / limit[2:4] / limit
    assert os.readlink(note).endswith(kept["checksum"]["decompressed"])


@pytest.mark.parametrize(
    "failure", [StoreFull("the disk is full"), OSError(errno.EIO, "write failed")]
)
def test_collect_keeps_the_archive_when_its_learned_note_cannot_be_written(
    make_client, store_root, monkeypatch, failure
):
    client = make_client(**TEAM)
    answer = client.put("/upload/t.tgz", tar_gz({"a": b"1"}), headers=NIGHTLY).json
    note = lose_note(store_root, answer["checksum"]["blob"])

    def fails(self, compressed, decompressed):
        raise failure

    monkeypatch.setattr(Store, "remember_decompressed", fails)
    report = collector(store_root, later=1, **NOW).run()
    assert (report.success, report.removed) == (True, [])
    assert (store_root / answer["path"]["blob"]).exists()
    assert not os.path.lexists(note)  # only a hint: learned again next time


def test_collect_after_a_tree_it_could_not_take_still_takes_what_follows(
    make_client, store_root, monkeypatch
):
    client = make_client(**TEAM)
    client.put("/upload/build.tgz", tar_gz({"a": b"tree file"}))
    lone = client.put("/upload/lone.bin", b"goes all the same").json
    real_take = Collector._take

    def trees_held(self, item, *args, **kwargs):
        return None if item.kind == "tree" else real_take(self, item, *args, **kwargs)

    monkeypatch.setattr(Collector, "_take", trees_held)
    report = collector(store_root, later=1, **NOW).run()
    # The tree, then the .tgz and the tar it keeps, are left; the lone blob after them goes.
    assert [r.path for r in report.removed] == [lone["path"]["blob"]]
    assert report.skipped == 3


def test_collect_prunes_every_fan_out_folder_it_emptied_past_one_still_in_use(
    make_client, store_root
):
    client = make_client(**TEAM)
    first = min(md5(b"lone %d" % i) for i in range(2))
    for index in range(2):
        client.put(f"/upload/{index}.bin", b"lone %d" % index)
    # Something else in the first one's folder: that folder stays, the second one's goes.
    (store_root / "blob" / first[:2] / first[2:4] / "stray").write_bytes(b"not a blob")
    report = collector(store_root, later=1, **NOW).run()
    assert report.blobs == 2
    assert fanned(store_root, "blob") == [
        first[:2],
        f"{first[:2]}/{first[2:4]}",
        f"{first[:2]}/{first[2:4]}/stray",
    ]


def test_collect_asked_to_stop_during_its_walk_removes_nothing(make_client, store_root):
    client = make_client(**TEAM)
    lone = client.put("/upload/lone.bin", b"stays this time").json
    stray = store_root / "blob" / "00" / "00"
    stray.mkdir(parents=True)
    for index in range(200):  # the walk pauses every 200 entries
        (stray / f"stray-{index}").write_bytes(b"")
    stops = []

    def stop() -> None:
        stops.append(1)
        raise Stopped

    report = collector(store_root, later=1, pause=stop, **NOW).run()
    assert (report.success, report.error) == (False, "stopped before the end (shutting down)")
    assert (report.removed, stops) == ([], [1])
    assert (store_root / lone["path"]["blob"]).exists()


def test_collect_keeps_what_a_held_compressed_blob_decompresses_to(make_client, store_root):
    answer = make_client(**TEAM).put("/upload/log.gz", gzip.compress(b"a log\n" * 10)).json
    fd = os.open(store_root / answer["path"]["blob"], os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # an upload relying on it (and on its note) holds it
        report = collector(store_root, later=1, **NOW).run()
    finally:
        os.close(fd)
    # The compressed blob stays: so do its note and the blob the note names.
    assert (report.removed, report.skipped) == ([], 2)
    assert (store_root / answer["path"]["decompressed"]).exists()


def test_collect_of_a_noted_blob_whose_note_went_meanwhile_still_takes_it(
    make_client, store_root, monkeypatch
):
    make_client(**TEAM).put("/upload/log.gz", gzip.compress(b"a log\n" * 10))
    real_take = Collector._take

    def note_gone_first(self, item, *args, **kwargs):
        note = store_root / "decompressed" / item.digest[:2] / item.digest[2:4] / item.digest
        if os.path.lexists(note):
            note.unlink()
        return real_take(self, item, *args, **kwargs)

    monkeypatch.setattr(Collector, "_take", note_gone_first)
    report = collector(store_root, later=1, **NOW).run()
    assert (report.success, report.blobs, report.notes) == (True, 2, 1)


def test_collect_blob_linked_after_the_plan_is_kept_whatever_its_change_time(
    make_client, store_root, monkeypatch
):
    # A clock a day ahead: the change time of the new link is older than the cutoff, so
    # only the link count tells that the blob is in use again.
    blob = store_root / make_client(**TEAM).put("/upload/a.txt", b"linked").json["path"]["blob"]
    real_take = Collector._take

    def linked_first(self, item, *args, **kwargs):
        os.link(blob, store_root.parent / "outside" / "a.txt")
        return real_take(self, item, *args, **kwargs)

    monkeypatch.setattr(Collector, "_take", linked_first)
    report = collector(store_root, later=DAY, **NOW).run()
    assert (report.success, report.blobs, report.skipped) == (True, 0, 1)
    assert blob.read_bytes() == b"linked"


def test_collect_blob_gone_after_it_was_opened_is_skipped(make_client, store_root, monkeypatch):
    blob = store_root / make_client(**TEAM).put("/upload/a.txt", b"gone").json["path"]["blob"]
    real_lstat = os.lstat

    def removed_first(path, *args, **kwargs):
        if path == blob.name and kwargs.get("dir_fd") is not None:
            os.rename(blob, store_root.parent / "outside" / "a.txt")  # someone else took it
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", removed_first)
    report = collector(store_root, later=1, **NOW).run()
    assert (report.success, report.blobs, report.skipped) == (True, 0, 1)


def test_collect_dry_run_lists_entries_and_content_as_the_run_then_removes_them(
    make_client, store_root
):
    client = make_client(**TEAM)
    upload_series(client, "r.txt", [b"old entry", b"new entry"])
    client.put("/upload/build.tgz", tar_gz({"a": b"unreferenced tree"}))
    rules = {"BUCKETDAV_KEEP_LAST": "1", **NOW}
    dry = collector(store_root, later=1, **rules).run(dry_run=True)
    real = collector(store_root, later=1, **rules).run()
    assert [r.kind for r in dry.removed] == ["entry", "tree", "blob", "blob"]
    assert set(dry.removed) < set(real.removed)
    # The blob of the entry that went is unreferenced from then on: the dry run, which
    # removes no entry, cannot know.
    old = md5(b"old entry")
    assert set(real.removed) - set(dry.removed) == {
        Removed(f"blob/{old[:2]}/{old[2:4]}/{old}", "blob", 9, "unreferenced 0 days")
    }
