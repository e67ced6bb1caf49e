"""Retention and collection over a real store: what goes, what stays, what readers then see,
the upload side of the race, crashes at every step, and hostile folders."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import make_settings
from helpers import md5, tar_gz
from test_crash import crash_at

from bucketdav.store import blobs as blobs_module
from bucketdav.store import holds as holds_module
from bucketdav.store.blobs import Store
from bucketdav.store.check import check_store
from bucketdav.store.collect import Collector
from bucketdav.store.commands import run_rm
from bucketdav.store.entries import parse_entry
from bucketdav.store.gcreport import Report
from bucketdav.store.periodic import Periodic
from bucketdav.store.retention import DAY
from bucketdav.uploads.archives import tree as tree_module

TEAM = {"REPLICATE_0": "team/${Topic}"}
NIGHTLY = {"Topic": "nightly"}


def collector(root: Path, *, later: float = 0.0, pause=lambda: None, **env: str) -> Collector:
    """A Collector over the store at `root`, its clock `later` seconds ahead of the real one."""
    settings = make_settings(root, **{**TEAM, **env})
    store = Store(settings.archive_dir, settings.checksum_type, node=settings.node)
    return Collector(store, settings, clock=lambda: time.time() + later, pause=pause)


def age_entries(folder: Path, days: dict[str, int]) -> dict[str, str]:
    """Rename each entry to the same name stamped `days[name]` days ago; returns old -> new.

    Entries carry their age in their name (so it survives copies and restores): this is
    how a test makes uploads of past days without waiting for them.
    """
    renamed = {}
    for old, ago in days.items():
        entry = parse_entry(old)
        assert entry is not None
        stamp = time.strftime("%Y%m%d.%H%M", time.gmtime(time.time() - ago * DAY))
        new = entry.series.stamped(stamp, entry.index)
        os.rename(folder / old, folder / new)
        renamed[old] = new
    for link in folder.iterdir():
        if link.is_symlink() and os.readlink(link) in renamed:
            target = renamed[os.readlink(link)]
            link.unlink()
            link.symlink_to(target)
    return renamed


def paths(report: Report) -> list[tuple[str, str]]:
    return [(r.path, r.why) for r in report.removed]


def clean(root: Path) -> dict[str, list[str]]:
    report = check_store(root, "md5", full=True)
    return {kind: found for kind, found in report.examples.items() if found}


def upload_series(client, name: str, datas: list[bytes], headers=NIGHTLY) -> list[dict]:
    return [client.put(f"/upload/{name}", data, headers=headers).json for data in datas]


# -- retention and collection ------------------------------------------------------------------


def test_gc_dry_run_lists_what_gc_then_removes_and_the_rules_keep_the_rest(make_client, store_root):
    client = make_client(**TEAM)
    upload_series(client, "report.txt", [f"report {i}\n".encode() for i in range(6)])
    folder = store_root / "replica" / "team" / "nightly"
    names = sorted(n.name for n in folder.iterdir() if parse_entry(n.name))
    ages = dict(zip(names, (90, 60, 40, 20, 10, 0), strict=True))
    renamed = age_entries(folder, ages)
    rules = {"BUCKETDAV_KEEP_LAST": "2", "BUCKETDAV_KEEP_DAYS": "30"}
    dry = collector(store_root, **rules).run(dry_run=True)
    real = collector(store_root, **rules).run()
    assert dry.success and real.success
    assert paths(dry) == paths(real)
    gone = [renamed[n] for n in names[:3]]
    why = "older than 30 days, keep last 2"
    assert paths(real) == [(f"replica/team/nightly/{n}", why) for n in gone]
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([renamed[n] for n in names[3:]] + ["report.latest.txt"])
    assert clean(store_root) == {}


def test_gc_collects_unreferenced_content_after_its_days_and_keeps_what_live_trees_came_from(
    make_client, store_root
):
    client = make_client(**TEAM)
    old, new = upload_series(client, "build.tgz", [tar_gz({"a": b"old"}), tar_gz({"a": b"new"})])
    plain = client.put("/upload/lone.bin", b"nobody files me").json
    folder = store_root / "replica" / "team" / "nightly"
    assert collector(store_root, BUCKETDAV_KEEP_LAST="1").run().entries == 1
    rules = {"BUCKETDAV_GC_UNREFERENCED_DAYS": "7"}
    # Six days on nothing is old enough; eight days on the old build and the lone blob go.
    assert collector(store_root, later=6 * DAY, **rules).run().removed == []
    report = collector(store_root, later=8 * DAY, **rules).run()
    assert report.success
    removed = {(r.kind, r.path) for r in report.removed}
    assert removed == {
        ("tree", old["path"]["archive"] + "/"),
        ("blob", old["path"]["blob"]),
        ("blob", old["path"]["decompressed"]),
        ("blob", plain["path"]["blob"]),
    }
    assert {r.why for r in report.removed} == {"unreferenced 8 days"}
    for gone in (
        old["checksum"]["blob"],
        old["checksum"]["decompressed"],
        plain["checksum"]["blob"],
    ):
        assert client.get(f"/checksum/{gone}", status=404).json["code"] == 404
    for kept in (new["checksum"]["blob"], new["checksum"]["decompressed"]):
        assert client.get(f"/checksum/{kept}").json["checksum"] == kept
    assert (folder / "build.latest" / "a").read_bytes() == b"new"
    # The old tree's files were linked from nothing else: their blobs go at the next run.
    later = collector(store_root, later=16 * DAY, **rules).run()
    assert [r.path for r in later.removed] == [
        "blob/" + "/".join((d[:2], d[2:4], d)) for d in [md5(b"old")]
    ]
    assert not (store_root / "gc" / "candidates").exists() or not any(
        (store_root / "gc" / "candidates").iterdir()
    )
    assert clean(store_root) == {}


def test_collected_content_is_404_over_webdav_also_when_looked_up_before(make_client, store_root):
    client = make_client(**TEAM)
    answer = client.put(
        "/upload/site.tgz", tar_gz({"index.html": b"<p>hi</p>"}), headers=NIGHTLY
    ).json
    blob = "/" + answer["path"]["blob"]
    tree = "/" + answer["path"]["archive"] + "/"
    member = tree + "index.html"
    entry = "/" + answer["path"]["replicas"][0] + "/index.html"
    for path in (blob, tree, member, entry):
        # Remembered now: the look-ups after collection must not trust what they remember.
        assert client.get(path).status_int == 200
        assert client.head(path).status_int == 200
        client.request(path, method="PROPFIND", headers={"Depth": "0"}, status=207)
    assert run_rm(make_settings(store_root, **TEAM), [answer["path"]["replicas"][0]]) == 0
    rules = {"BUCKETDAV_GC_UNREFERENCED_DAYS": "0"}
    assert collector(store_root, later=1, **rules).run().trees == 1
    for path in (blob, tree, member, entry):
        assert client.get(path, status=404).status_int == 404
        assert client.head(path, status=404).status_int == 404
        client.request(path, method="PROPFIND", headers={"Depth": "0"}, status=404)
    listing = client.request(
        "/replica/team/nightly/", method="PROPFIND", headers={"Depth": "1"}, status=207
    )
    assert b"site." not in listing.body


# -- the upload side of the race ---------------------------------------------------------------


def collect_first(monkeypatch, module, take: Callable[[Path], None]) -> list[Path]:
    """Make `module.shared` find its path taken just before it looks (as a collector would)."""
    real = module.shared
    taken: list[Path] = []

    def racing(path):
        if os.path.exists(path) and not taken:
            taken.append(Path(path))
            take(Path(path))
        return real(path)

    monkeypatch.setattr(module, "shared", racing)
    return taken


def take_away(outside: Path) -> Callable[[Path], None]:
    def take(path: Path) -> None:
        os.rename(path, outside / path.name)

    return take


def test_upload_of_content_collected_between_look_and_link_stores_its_own_copy(
    make_client, store_root, monkeypatch
):
    client = make_client(**TEAM)
    first = client.put("/upload/a.txt", b"shared bytes").json
    taken = collect_first(monkeypatch, blobs_module, take_away(store_root.parent / "outside"))
    second = client.put("/upload/a.txt", b"shared bytes", headers=NIGHTLY).json
    assert taken == [store_root / first["path"]["blob"]]
    assert second["created"] is True
    blob = store_root / second["path"]["blob"]
    replica = store_root / second["path"]["replicas"][0]
    assert blob.read_bytes() == b"shared bytes"
    assert os.stat(replica).st_ino == os.stat(blob).st_ino
    assert clean(store_root) == {}


def test_archive_member_collected_between_look_and_link_is_linked_from_this_copy(
    make_client, store_root, monkeypatch
):
    client = make_client(**TEAM)
    client.put("/upload/m.txt", b"member bytes")
    taken = collect_first(monkeypatch, tree_module, take_away(store_root.parent / "outside"))
    answer = client.put("/upload/t.tgz", tar_gz({"m.txt": b"member bytes"}), headers=NIGHTLY).json
    assert [p.name for p in taken] == [md5(b"member bytes")]
    member = store_root / answer["path"]["archive"] / "m.txt"
    blob = (
        store_root
        / "blob"
        / md5(b"member bytes")[:2]
        / md5(b"member bytes")[2:4]
        / md5(b"member bytes")
    )
    assert os.stat(member).st_ino == os.stat(blob).st_ino
    assert clean(store_root) == {}


def test_deploy_by_checksum_of_content_collected_meanwhile_is_404(
    make_client, store_root, monkeypatch
):
    client = make_client(**TEAM)
    answer = client.put("/upload/a.txt", b"deploy me").json
    real = Store.find_flushed

    def found_then_collected(self, digest):
        blob = real(self, digest)
        os.rename(blob.path, store_root.parent / "outside" / digest)
        return blob

    monkeypatch.setattr(Store, "find_flushed", found_then_collected)
    headers = {"X-Checksum-Deploy": "true", "X-Checksum": answer["checksum"]["blob"], **NIGHTLY}
    denied = client.put("/upload/a.txt", b"", headers=headers, status=404).json
    assert "send the bytes" in denied["error"]
    assert not (store_root / "replica" / "team" / "nightly").exists() or not any(
        (store_root / "replica" / "team" / "nightly").iterdir()
    )


def test_deploy_by_checksum_of_collected_content_is_404(make_client, store_root):
    client = make_client(**TEAM)
    answer = client.put("/upload/a.txt", b"collected before the deploy").json
    assert collector(store_root, later=1, BUCKETDAV_GC_UNREFERENCED_DAYS="0").run().blobs == 1
    headers = {"X-Checksum-Deploy": "true", "X-Checksum": answer["checksum"]["blob"]}
    assert client.put("/upload/a.txt", b"", headers=headers, status=404).json["code"] == 404
    client.get(f"/checksum/{answer['checksum']['blob']}", status=404)


def test_known_archive_whose_tree_is_collected_as_it_is_found_is_extracted_again(
    make_client, store_root, monkeypatch
):
    client = make_client(**TEAM)
    data = tar_gz({"x": b"again"})
    first = client.put("/upload/b.tgz", data).json
    tree = store_root / first["path"]["archive"]
    real = holds_module.open_shared
    taken = []

    def collected_first(path, *, directory=False):
        if Path(path) == tree and not taken:
            taken.append(path)
            shutil.move(tree, store_root.parent / "outside" / "tree")  # as collection takes it
        return real(path, directory=directory)

    monkeypatch.setattr(holds_module, "open_shared", collected_first)
    second = client.put("/upload/b.tgz", data, headers=NIGHTLY).json
    assert taken == [tree]
    assert second["path"]["archive"] == first["path"]["archive"]
    assert (store_root / second["path"]["replicas"][0] / "x").read_bytes() == b"again"
    assert clean(store_root) == {}


def test_content_an_upload_holds_is_left_for_the_next_run(make_client, store_root):
    client = make_client(**TEAM)
    answer = client.put("/upload/a.txt", b"held").json
    blob = store_root / answer["path"]["blob"]
    fd = os.open(blob, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # what an upload relying on it holds
        report = collector(store_root, later=1, BUCKETDAV_GC_UNREFERENCED_DAYS="0").run()
        assert (report.blobs, report.skipped) == (0, 1)
        assert blob.exists()
    finally:
        os.close(fd)
    assert collector(store_root, later=1, BUCKETDAV_GC_UNREFERENCED_DAYS="0").run().blobs == 1
    assert not blob.exists()


def test_tree_whose_archive_blob_an_upload_holds_is_left_for_the_next_run(make_client, store_root):
    # On JuiceFS a second mount's lock on the tree's folder does not conflict with ours, so
    # the lock that keeps the tree is the one on its tar's blob, which every upload holds.
    client = make_client(**TEAM)
    answer = client.put("/upload/t.tar", gzip.decompress(tar_gz({"a.txt": b"held tree"}))).json
    tree = store_root / answer["path"]["archive"]
    blob = store_root / answer["path"]["blob"]
    fd = os.open(blob, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # what an upload relying on the tree holds
        report = collector(store_root, later=1, BUCKETDAV_GC_UNREFERENCED_DAYS="0").run()
        assert report.trees == 0
        assert tree.is_dir()
    finally:
        os.close(fd)
    assert collector(store_root, later=1, BUCKETDAV_GC_UNREFERENCED_DAYS="0").run().trees == 1
    assert not tree.exists()


# -- bucketdav rm, the lock, the command ------------------------------------------------------


def test_rm_removes_entries_and_points_latest_at_the_newest_left(make_client, store_root, capsys):
    client = make_client(**TEAM)
    answers = upload_series(client, "r.txt", [b"one", b"two", b"three"])
    folder = store_root / "replica" / "team" / "nightly"
    first, second, third = (a["path"]["replicas"][0] for a in answers)
    assert run_rm(make_settings(store_root, **TEAM), [third, second]) == 0
    assert capsys.readouterr().out.splitlines() == [f"removed {second}", f"removed {third}"]
    assert os.readlink(folder / "r.latest.txt") == Path(first).name
    assert sorted(p.name for p in folder.iterdir()) == sorted([Path(first).name, "r.latest.txt"])
    assert run_rm(make_settings(store_root, **TEAM), [first]) == 0
    assert sorted(folder.iterdir()) == []
    assert clean(store_root) == {}


@pytest.mark.parametrize(
    "path",
    [
        "blob/ab/cd/abcd",
        "explode/ab/cd/abcd/x",
        "replica/team/nightly/r.latest.txt",
        "replica/team/../../etc/passwd.20260101.1200.0",
        "replica/team/nightly",
        "replica/team/nightly/missing.20260101.1200.0.txt",
        "/etc/passwd",
    ],
)
def test_rm_refuses_what_is_not_a_replica_entry_and_removes_nothing(
    make_client, store_root, path, capsys
):
    client = make_client(**TEAM)
    kept = client.put("/upload/r.txt", b"stays", headers=NIGHTLY).json["path"]["replicas"][0]
    assert run_rm(make_settings(store_root, **TEAM), [kept, path]) == 1
    assert "nothing was removed" in capsys.readouterr().err
    assert (store_root / kept).read_bytes() == b"stays"


def test_rm_takes_paths_under_archive_uri(make_client, store_root):
    env = {**TEAM, "ARCHIVE_URI": "https://files.example/store"}
    client = make_client(**env)
    path = client.put("/upload/r.txt", b"x", headers=NIGHTLY).json["path"]["replicas"][0]
    assert path.startswith("https://files.example/store/replica/")
    assert run_rm(make_settings(store_root, **env), [path]) == 0
    assert not (store_root / "replica" / "team" / "nightly" / Path(path).name).exists()


def test_one_collector_at_a_time(make_client, store_root):
    make_client(**TEAM).put("/upload/a.txt", b"unreferenced")
    lock_dir = store_root / "gc"
    lock_dir.mkdir()
    fd = os.open(lock_dir / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process collecting
        report = collector(store_root, later=1, BUCKETDAV_GC_UNREFERENCED_DAYS="0").run()
        assert not report.success
        assert "another collection is running" in (report.error or "")
        assert report.removed == []
    finally:
        os.close(fd)
    assert collector(store_root, later=1, BUCKETDAV_GC_UNREFERENCED_DAYS="0").run().blobs == 1


def gc_cli(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKETDAV_", "ARCHIVE_"))}
    return subprocess.run(
        [sys.executable, "-m", "bucketdav", "gc", *args],
        env={**base, "ARCHIVE_DIR": str(root), **TEAM, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_gc_command_dry_run_prints_what_gc_removes(make_client, store_root):
    client = make_client(**TEAM)
    upload_series(client, "r.txt", [b"1", b"2", b"3"])
    client.put("/upload/lone.bin", b"lonely")
    rules = {"BUCKETDAV_KEEP_LAST": "1", "BUCKETDAV_GC_UNREFERENCED_DAYS": "0"}
    dry = gc_cli(store_root, "--dry-run", **rules)
    assert dry.returncode == 0, dry.stderr
    real = gc_cli(store_root, **rules)
    assert real.returncode == 0, real.stderr
    listed = dry.stdout.replace("would remove", "removed").splitlines()
    assert listed[:-1] == real.stdout.splitlines()[:-1]
    assert len(listed) == 4  # two entries, the lone blob, the summary
    assert listed[-1].startswith("removed 3 paths, 6 bytes (2 replica entries, 0 trees, 1 blobs)")
    assert any(line.endswith("  keep last 1") for line in listed)
    assert any(line.endswith("6 bytes  unreferenced 0 days") for line in listed)
    again = gc_cli(store_root, "--json", **rules)
    report = json.loads(again.stdout)
    assert (report["success"], report["count"], report["blobs"]) == (True, 2, 2)
    assert {r["why"] for r in report["removed"]} == {"unreferenced 0 days"}


def test_gc_command_without_rules_does_nothing_and_exits_0(store_root):
    done = gc_cli(store_root, "--dry-run")
    assert (done.returncode, done.stderr) == (0, "")
    assert "no retention or collection rule is set" in done.stdout


# -- check: how trees remember their sources ---------------------------------------------------


def test_check_reports_a_tree_whose_archive_blob_is_gone(make_client, store_root):
    answer = make_client(**TEAM).put("/upload/t.tar", gzip.decompress(tar_gz({"a": b"1"}))).json
    (store_root / answer["path"]["blob"]).unlink()
    assert list(clean(store_root)) == ["source"]


def test_check_full_reports_a_note_that_lies_and_repair_removes_it(make_client, store_root):
    client = make_client(**TEAM)
    answer = client.put("/upload/t.tgz", tar_gz({"a": b"1"})).json
    other = client.put("/upload/o.bin", b"other").json
    note = store_root / "decompressed" / answer["checksum"]["blob"][:2]
    note = note / answer["checksum"]["blob"][2:4] / answer["checksum"]["blob"]
    assert check_store(store_root, "md5", full=True).clean
    note.unlink()
    note.symlink_to(os.path.relpath(store_root / other["path"]["blob"], note.parent))
    assert check_store(store_root, "md5").clean  # well-formed, both ends stored
    report = check_store(store_root, "md5", full=True, repair=True)
    assert report.problems["source"] == 1 and report.repaired["source"] == 1
    assert not note.exists()
    assert check_store(store_root, "md5", full=True).clean


def test_check_tolerates_candidates_of_an_interrupted_collection(make_client, store_root):
    make_client(**TEAM).put("/upload/a.txt", b"taken")
    candidates = store_root / "gc" / "candidates"
    candidates.mkdir(parents=True)
    blob = next((store_root / "blob").rglob(md5(b"taken")))
    os.rename(blob, candidates / f"blob-{blob.name}")
    report = check_store(store_root, "md5", full=True)
    assert report.clean
    assert any("gc/candidates/" in note for note in report.notes)


def test_collection_learns_what_a_compressed_blob_without_a_note_decompresses_to(
    make_client, store_root
):
    client = make_client(**TEAM)
    answer = client.put("/upload/t.tgz", tar_gz({"a": b"1"}), headers=NIGHTLY).json
    digest = answer["checksum"]["blob"]
    note = store_root / "decompressed" / digest[:2] / digest[2:4] / digest
    note.unlink()  # a store from before notes, or a note lost
    report = collector(store_root, later=30 * DAY, BUCKETDAV_GC_UNREFERENCED_DAYS="7").run()
    assert report.removed == []
    assert os.readlink(note).endswith(answer["checksum"]["decompressed"])
    client.get(f"/checksum/{digest}")


# -- hostile folders ---------------------------------------------------------------------------

OLD = time.strftime("%Y%m%d.%H%M", time.gmtime(time.time() - 400 * DAY))
RULES = {
    "BUCKETDAV_KEEP_LAST": "1",
    "BUCKETDAV_KEEP_DAYS": "1",
    "BUCKETDAV_GC_UNREFERENCED_DAYS": "0",
}


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path below `root`: a file's bytes, a link's text, "dir" for a folder."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = os.readlink(path)
        elif path.is_dir():
            out[key] = "dir"
        else:
            out[key] = path.read_bytes()
    return out


def test_collection_never_follows_or_removes_anything_outside_the_store(make_client, store_root):
    client = make_client(**TEAM)
    upload_series(client, "r.txt", [b"1", b"2"])
    outside = store_root.parent / "outside"
    (outside / "dir").mkdir()
    for name in (f"r.{OLD}.0.txt", f"r.{OLD}.1.txt", "0" * 32):
        (outside / "dir" / name).write_bytes(b"not yours")
    (outside / "file").write_bytes(b"not yours either")
    folder = store_root / "replica" / "team" / "nightly"
    # Links out of the store, named like entries; a folder of old entries reached by a link.
    (folder / f"r.{OLD}.7.txt").symlink_to(outside / "file")
    (folder / f"out.{OLD}.0").symlink_to("../../../../outside/dir")
    (store_root / "replica" / "team" / "elsewhere").symlink_to(outside / "dir")
    # Names that look like entries but are not: a folder, a fifo, a bad date.
    (folder / f"d.{OLD}.0").mkdir()
    os.mkfifo(folder / f"p.{OLD}.0")
    (folder / "r.20261399.0000.0.txt").write_bytes(b"no such day")
    # Fan-out folders, a tree and a note that are links out of the store.
    (store_root / "blob" / "00").symlink_to(outside / "dir")
    (store_root / "explode" / "11").mkdir()
    (store_root / "explode" / "11" / "11").mkdir()
    (store_root / "explode" / "11" / "11" / ("1" * 32)).symlink_to(outside / "dir")
    note = store_root / "decompressed" / "22" / "22" / ("2" * 32)
    note.parent.mkdir(parents=True)
    note.symlink_to(outside / "file")
    before = snapshot(outside)
    report = collector(store_root, later=10 * DAY, **RULES).run()
    assert report.success, report.error
    assert snapshot(outside) == before
    # One of the two real entries goes; the rest of the folder is left as it was.
    assert [r.kind for r in report.removed].count("entry") == 1
    for name in (
        f"r.{OLD}.7.txt",
        f"out.{OLD}.0",
        f"d.{OLD}.0",
        f"p.{OLD}.0",
        "r.20261399.0000.0.txt",
    ):
        assert os.path.lexists(folder / name), name
    assert (store_root / "replica" / "team" / "elsewhere").is_symlink()
    assert note.is_symlink()


def test_folders_replaced_mid_run_by_a_file_or_a_link_are_left_alone(make_client, store_root):
    client = make_client(**{**TEAM})
    for topic in ("a", "b", "c"):
        upload_series(
            client, "r.txt", [topic.encode() + b"1", topic.encode() + b"2"], {"Topic": topic}
        )
    outside = store_root.parent / "outside"
    for index in range(3):
        (outside / f"r.{OLD}.{index}.txt").write_bytes(b"keep me")
    before = snapshot(outside)
    team = store_root / "replica" / "team"
    swapped = []

    def swap() -> None:
        # After the first folder: the others become a link out of the store and a file.
        if not swapped:
            for name, make in (("b", lambda p: p.symlink_to(outside)), ("a", Path.touch)):
                shutil.rmtree(team / name)
                make(team / name)
                swapped.append(name)

    report = collector(store_root, later=10 * DAY, pause=swap, **RULES).run()
    assert report.success, report.error
    assert swapped == ["b", "a"]
    assert snapshot(outside) == before
    assert [r.path.split("/")[2] for r in report.removed if r.kind == "entry"] == ["c"]


# -- crashes -----------------------------------------------------------------------------------


def live_replicas_readable(root: Path) -> list[str]:
    """Replica entries that cannot be read: a file that does not open, a link that dangles."""
    bad = []
    for path in (root / "replica").rglob("*"):
        if parse_entry(path.name) is None and not path.name.endswith(("latest", "latest.txt")):
            continue
        if path.is_symlink() and not path.exists():
            bad.append(str(path))
        elif path.is_file():
            try:
                path.read_bytes()
            except OSError:
                bad.append(str(path))
    return bad


def public(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for tree in ("blob", "explode", "replica", "decompressed")
        for p in (root / tree).rglob("*")
    )


def copy_store(source: Path, dest: Path) -> None:
    """A copy that keeps hard links, as a store needs (shutil.copytree makes copies)."""
    subprocess.run(["cp", "-a", str(source), str(dest)], check=True)


def until_settled(root: Path) -> None:
    for _ in range(6):
        if not collector(root, later=1, **RULES).run().removed:
            return
    raise AssertionError("collection did not settle in 6 runs")


@pytest.mark.slow
def test_crash_at_every_step_of_a_collection_leaves_a_clean_store(make_client, store_root):
    client = make_client(**TEAM)
    upload_series(client, "b.tgz", [tar_gz({"m": b"one"}), tar_gz({"m": b"two"})])
    upload_series(client, "r.txt", [b"first", b"second"])
    client.put("/upload/lone.tgz", tar_gz({"n": b"nobody"}))
    client.put("/upload/lone.bin", b"nobody either")
    base = store_root.parent / "base"
    copy_store(store_root, base)
    settled = store_root.parent / "settled"
    copy_store(base, settled)
    until_settled(settled)
    total = crash_at(0, lambda: collector(store_root, later=1, **RULES).run())
    assert total > 20
    problems = {}
    for step in range(1, total + 1):
        shutil.rmtree(store_root)
        copy_store(base, store_root)
        crash_at(step, lambda: collector(store_root, later=1, **RULES).run())
        found = clean(store_root)
        unreadable = live_replicas_readable(store_root)
        until_settled(store_root)
        if found or unreadable or clean(store_root) or public(store_root) != public(settled):
            problems[step] = (found, unreadable, clean(store_root))
    print(f"{total} crash points")
    assert problems == {}


# -- the server's periodic run -----------------------------------------------------------------


def test_periodic_run_reports_each_run_and_stops_between_batches(make_client, store_root):
    client = make_client(**TEAM)
    for index in range(30):
        client.put(f"/upload/f{index}.bin", f"unreferenced {index}".encode())
    settings = make_settings(store_root, **TEAM, BUCKETDAV_GC_UNREFERENCED_DAYS="0")
    store = Store(settings.archive_dir, settings.checksum_type, node=settings.node)
    reports: list[Report] = []
    periodic = Periodic(store, settings, on_report=reports.append, interval=3600)
    periodic.stopping.set()  # as on shutdown: the run stops at its first pause
    stopped = periodic.run_once()
    assert (stopped.success, stopped.error) == (False, "stopped before the end (shutting down)")
    # One blob was taken before the first pause, and deleted before the run stopped.
    assert stopped.blobs == 1
    assert not any((store_root / "gc" / "candidates").iterdir())
    assert clean(store_root) == {}
    periodic.stopping.clear()
    finished = periodic.run_once()
    assert finished.success and finished.blobs == 29
    assert reports == [stopped, finished]
    assert clean(store_root) == {}
