"""The store checker: its decisions, what it finds in a damaged store, and what it repairs."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from helpers import files_under, md5, own_staging, staged, tar_gz

from bucketdav.store.blobs import Store
from bucketdav.store.check import check_store
from bucketdav.store.entries import Series
from bucketdav.store.files import remove_tree
from bucketdav.store.findings import (
    EXAMPLES_PER_KIND,
    blob_name_problem,
    inside,
    latest_series,
    mode_problem,
    newest_replica,
    repaired_mode,
    staging_is_leftover,
)

DIGEST = "5d41402abc4b2a76b9719d911017c592"


@pytest.fixture
def store(make_client, store_root: Path) -> Path:
    """A store with two file replicas, an extracted archive and its tree replica."""
    client = make_client(REPLICATE_0="u/${User}")
    client.put("/upload/a.txt", b"hello", headers={"User": "bob"})
    client.put("/upload/a.txt", b"hello again", headers={"User": "bob"})
    archive = tar_gz({"top/one.txt": b"one", "top/two.txt": b"two"}, {"top/gone": "missing"})
    result = client.put("/upload/t.tgz", archive, headers={"User": "bob"}).json
    assert result["path"]["archive"]
    return store_root


def check(root: Path, **kwargs: object):
    """Run the checker with md5 and every blob hashed unless told otherwise."""
    kwargs.setdefault("full", True)
    return check_store(root, "md5", **kwargs)


def folder(root: Path) -> Path:
    return root / "replica" / "u" / "bob"


def stamped(root: Path, stem: str) -> list[str]:
    """The stamped replica names of a series, oldest first."""
    names = [p.name for p in folder(root).iterdir() if p.name.startswith(stem + ".")]
    return sorted(n for n in names if ".latest" not in n)


def writable(path: Path) -> None:
    os.chmod(path, 0o644)


# -- pure decisions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "problem"),
    [
        (("5d", "41", DIGEST), None),
        (("5d", "42", DIGEST), "wrong fan-out"),
        (("41", "5d", DIGEST), "wrong fan-out"),
        (("5d", "41", DIGEST.upper()), "lower-case hex"),
        (("5d", "41", DIGEST[:-1]), "lower-case hex"),
        (("5d", "41", DIGEST + ".x"), "lower-case hex"),
        (("5d", DIGEST), "depth 2"),
        (("5d", "41", "x", DIGEST), "depth 4"),
    ],
)
def test_check_blob_name_problem(parts, problem):
    found = blob_name_problem(parts, 32)
    assert (found is None) if problem is None else (problem in found)


@pytest.mark.parametrize(
    ("mode", "content", "bad"),
    [
        (0o100444, True, False),
        (0o100644, True, True),
        (0o100400, True, True),
        (0o104444, True, True),
        (0o40755, False, False),
        (0o40777, False, True),
        (0o41755, False, True),
        (0o42755, False, True),
        (0o40700, False, False),
    ],
)
def test_check_mode_problem(mode, content, bad):
    assert (mode_problem(mode, content=content) is not None) is bad
    fixed = stat.S_IFMT(mode) | repaired_mode(mode, content=content)
    assert mode_problem(fixed, content=content) is None


def test_check_staging_leftover_only_after_grace():
    assert not staging_is_leftover(1000.0, 1000.0 + 3599, 3600)
    assert staging_is_leftover(1000.0, 1000.0 + 3601, 3600)


def test_check_inside_is_a_path_test_not_a_prefix_test():
    assert inside("/s/explode/ab", "/s/explode/ab/x")
    assert inside("/s/explode/ab", "/s/explode/ab")
    assert not inside("/s/explode/ab", "/s/explode/abc")


def test_check_latest_series_picks_the_split_its_target_names():
    siblings = ["r.latest.20260101.1200.0.txt", "r.latest.latest.txt"]
    series = latest_series("r.latest.latest.txt", "r.latest.20260101.1200.0.txt", siblings)
    assert series == Series("r.latest", ".txt")
    assert latest_series("r.latest", "r.20260101.1200.3", []) == Series("r", "")
    assert latest_series("plain.txt", "x", []) is None
    assert latest_series("r.latest.txt", "elsewhere.txt", []) is None


def test_check_newest_replica_orders_by_stamp_then_index():
    series = Series("r", ".txt")
    names = [
        "r.20260101.1200.9.txt",
        "r.20260101.1200.10.txt",
        "r.20251231.2359.99.txt",
        "r.latest.txt",
        "other.txt",
    ]
    assert newest_replica(series, names) == "r.20260101.1200.10.txt"
    assert newest_replica(series, ["other.txt"]) is None


# -- finding ------------------------------------------------------------------------------


def test_check_uploaded_store_is_clean(store):
    report = check(store)
    assert report.clean, report.examples
    assert report.scanned["blobs"] == 6
    assert report.scanned["blobs hashed"] == 6
    assert report.scanned["dangling archive links (kept)"] == 1


def test_check_finds_a_blob_whose_content_changed(store):
    blob = store / "blob" / DIGEST[:2] / DIGEST[2:4] / DIGEST
    writable(blob)
    blob.write_bytes(b"HELLO")
    os.chmod(blob, 0o444)
    report = check(store)
    assert report.problems["corrupt"] == 1
    assert f"holds content {md5(b'HELLO')}" in report.examples["corrupt"][0]
    assert check(store, full=False, sample=0).problems["corrupt"] == 0


def test_check_finds_misplaced_blob_names(store):
    blobs = store / "blob"
    (blobs / "00" / "00").mkdir(parents=True)
    (blobs / "00" / "00" / DIGEST).write_bytes(b"hello")
    (blobs / "5d" / "stray").write_bytes(b"x")
    (blobs / "5d" / "41" / "link").symlink_to(DIGEST)
    for path in (blobs / "00" / "00" / DIGEST, blobs / "5d" / "stray"):
        os.chmod(path, 0o444)
    report = check(store)
    assert report.problems["misplaced"] == 3
    assert report.problems.total() == 3


def test_check_finds_a_replica_that_is_not_a_blob(store):
    name = stamped(store, "a")[0]
    path = folder(store) / name
    path.unlink()
    path.write_bytes(b"not stored anywhere")
    os.chmod(path, 0o444)
    report = check(store)
    assert report.problems["unlinked"] == 1
    assert name in report.examples["unlinked"][0]


def test_check_accepts_a_copy_of_a_blob_as_emlink_leaves_it(store):
    path = folder(store) / stamped(store, "a")[0]
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)
    os.chmod(path, 0o444)
    report = check(store)
    assert report.clean, report.examples
    assert report.scanned["copies"] == 1


def test_check_finds_links_that_dangle_or_leave(store, tmp_path):
    (folder(store) / "dangling").symlink_to("nothing-here")
    (folder(store) / "out").symlink_to(tmp_path / "outside")
    tree = next((store / "explode").glob("*/*/*"))
    (tree / "top" / "up").symlink_to("../../../..")
    report = check(store)
    assert report.problems["symlink"] == 3
    assert any("leads outside its archive's tree" in e for e in report.examples["symlink"])


def test_check_finds_a_stale_latest_and_a_temporary_link(store):
    older, newer = stamped(store, "a")
    latest = folder(store) / "a.latest.txt"
    latest.unlink()
    latest.symlink_to(older)
    (folder(store) / ".latest-0123").symlink_to(newer)
    report = check(store)
    assert report.problems["leftover"] == 1
    assert report.problems["latest"] == 0
    assert report.scanned["latest links behind the newest"] == 1
    (folder(store) / "t.latest").unlink()
    (folder(store) / "t.latest").symlink_to("t.20260101.1200.7")
    assert check(store).problems["latest"] == 1


def test_check_finds_wrong_modes(store):
    blob = store / "blob" / DIGEST[:2] / DIGEST[2:4] / DIGEST
    os.chmod(blob, 0o644)
    os.chmod(folder(store), 0o777)
    report = check(store)
    assert report.problems["mode"] == 2


def test_check_staging_leftovers_only_when_old(store):
    fresh = own_staging(store) / "up-fresh"
    fresh.write_bytes(b"in flight")
    old = own_staging(store) / "tree-old"
    (old / "deep").mkdir(parents=True)
    (old / "deep" / "f").write_bytes(b"x")
    hour_ago = time.time() - 7200
    for path in (old / "deep" / "f", old / "deep", old):
        os.utime(path, (hour_ago, hour_ago))
    report = check(store)
    assert report.problems["leftover"] == 1
    assert "tree-old" in report.examples["leftover"][0]
    assert any("in flight" in note for note in report.notes)


def test_check_report_caps_examples_per_kind(store):
    for index in range(EXAMPLES_PER_KIND + 5):
        (folder(store) / f"dangling{index}").symlink_to(f"nothing{index}")
    report = check(store)
    assert report.problems["symlink"] == EXAMPLES_PER_KIND + 5
    assert len(report.examples["symlink"]) == EXAMPLES_PER_KIND
    out = io.StringIO()
    report.write(out)
    assert "... and 5 more" in out.getvalue()
    assert "NOT CLEAN" in out.getvalue()


# -- repairing ----------------------------------------------------------------------------


def test_check_repair_fixes_what_it_can_and_keeps_all_data(store, tmp_path):
    older, newer = stamped(store, "a")
    latest = folder(store) / "a.latest.txt"
    latest.unlink()
    latest.symlink_to(older)
    (folder(store) / ".latest-0123").symlink_to(newer)
    (folder(store) / "dangling").symlink_to("nothing-here")
    (folder(store) / "out").symlink_to(tmp_path / "outside")
    os.chmod(store / "blob" / DIGEST[:2] / DIGEST[2:4] / DIGEST, 0o664)
    os.chmod(folder(store), 0o2777)
    old = own_staging(store) / "up-old"
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 7200,) * 2)
    fresh = own_staging(store) / "up-fresh"
    fresh.write_bytes(b"y")
    blobs_before = {p: p.read_bytes() for p in files_under(store / "blob")}

    report = check(store, repair=True)

    assert report.clean, report.examples
    assert report.repaired.total() == report.problems.total() == 6
    assert f"moved replica/u/bob/a.latest.txt to {newer}" in report.actions
    assert os.readlink(latest) == newer
    links = sorted(p.name for p in folder(store).iterdir() if p.is_symlink())
    assert links == ["a.latest.txt", *stamped(store, "t"), "t.latest"]
    assert not old.exists() and fresh.exists()
    assert {p: p.read_bytes() for p in files_under(store / "blob")} == blobs_before
    assert stat.S_IMODE(folder(store).stat().st_mode) == 0o775
    assert check(store).clean


def test_check_repair_removes_a_latest_with_nothing_to_point_at(store):
    (folder(store) / "z.latest.txt").symlink_to("z.20260101.1200.0.txt")
    report = check(store, repair=True)
    assert report.problems["latest"] == 1
    assert not (folder(store) / "z.latest.txt").is_symlink()


def test_check_repair_leaves_corrupt_blobs_for_a_person(store):
    blob = store / "blob" / DIGEST[:2] / DIGEST[2:4] / DIGEST
    writable(blob)
    blob.write_bytes(b"HELLO")
    os.chmod(blob, 0o444)
    report = check(store, repair=True)
    assert not report.clean
    assert report.remaining == 1
    assert blob.read_bytes() == b"HELLO"


def test_check_does_not_create_a_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError):
        check(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


# -- the command and a live server --------------------------------------------------------


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`bucketdav check ...` as an operator runs it."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "BUCKET"))}
    return subprocess.run(
        [sys.executable, "-m", "bucketdav", "check", *args],
        env={**full_env, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_cli_exit_status_follows_the_store(store, tmp_path):
    env = {"ARCHIVE_DIR": str(store)}
    clean = run_cli("--full", env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.rstrip().endswith("clean")
    (folder(store) / "dangling").symlink_to("nothing-here")
    config = tmp_path / "bucketdav.env"
    config.write_text(f"ARCHIVE_DIR={store}\n")
    dirty = run_cli("--config", str(config), env={})
    assert dirty.returncode == 1
    assert "replica/u/bob/dangling" in dirty.stdout
    repaired = run_cli("--repair", env=env)
    assert repaired.returncode == 0, repaired.stdout
    assert "repaired: removed link replica/u/bob/dangling" in repaired.stdout
    missing = run_cli(env={"ARCHIVE_DIR": str(tmp_path / "none")})
    assert missing.returncode == 2
    assert "is not a directory" in missing.stderr


@pytest.mark.slow
def test_check_while_uploads_run_is_always_clean(live_server_factory):
    server = live_server_factory(REPLICATE_0="u/${User}", REPLICATE_1="all/${Topic}")
    stop = threading.Event()
    failures: list[str] = []

    def upload(worker: int) -> None:
        count = 0
        while not stop.is_set() and count < 200:
            headers = {"User": f"w{worker}", "Topic": "t"}
            response = server.upload(f"f{count % 3}.txt", f"{worker}-{count}".encode(), headers)
            if response.status != 200:
                failures.append(f"{response.status} {response.body[:200]!r}")
            count += 1

    threads = [threading.Thread(target=upload, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    reports = []
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            reports.append(check_store(server.root, "md5", full=True, repair=True))
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not failures
    assert len(reports) >= 2
    assert all(r.clean and not r.repaired for r in reports), [r.examples for r in reports]
    assert check_store(server.root, "md5", full=True).clean


def make_deep(top: Path, depth: int) -> None:
    """`top/d/d/.../d/f` `depth` folders deep, made one level at a time (makedirs recurses)."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o444, dir_fd=fd))
        os.fchmod(fd, 0o555)
    finally:
        os.close(fd)


def test_check_and_start_up_handle_trees_thousands_of_folders_deep(make_client, store_root):
    client = make_client()
    name = "/".join(["d"] * 1050) + "/f.txt"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"deep"))
    try:
        assert client.put("/upload/deep.tar", buf.getvalue()).json["files"] == 1
        leftover = own_staging(store_root) / "tree-crashed"
        make_deep(leftover, 1050)
        report = check(store_root)
        assert report.scanned["trees"] == 1 and report.scanned["linked files"] == 1
        assert report.problems["leftover"] == 0  # changed just now: an upload in flight
        Store(store_root, "md5").open()
        assert staged(store_root) == []
        assert check(store_root).clean
    finally:
        # pytest removes old temporary folders with shutil.rmtree, which recurses too deep.
        remove_tree(store_root)
