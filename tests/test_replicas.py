"""Replicas on disk: names, indices, the latest link, hostile header values, concurrency."""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import saturate_links

from bucketdav.errors import StoreFull
from bucketdav.store.blobs import Store
from bucketdav.uploads import replicas
from bucketdav.uploads.outcome import Outcome, Tree
from bucketdav.uploads.replicas import (
    ReplicaRefused,
    Series,
    replica_folder,
    replicate,
    series_for,
    stamp_of,
)
from bucketdav.uploads.templates import parse_template

MOMENT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
STAMP = "20260102.0304"
TEMPLATE = parse_template("REPLICATE_0", "user/${Username}/${Topic}")
BOB = {"username": "bob", "topic": "demo"}


@pytest.fixture
def store(store_root: Path) -> Store:
    store = Store(store_root, "md5")
    store.open()
    return store


def file_outcome(store: Store, data: bytes = b"<xml/>", name: str = "results.xml") -> Outcome:
    return Outcome(blob=store.ingest([data]), filename=name)


def tree_outcome(store: Store, name: str = "results.tar.gz") -> Outcome:
    """An archive's outcome with a tree built by hand under explode/."""
    blob = store.ingest([b"pretend this is a tgz of " + name.encode()])
    path = store.tree_path(blob.digest)
    (path / "sub").mkdir(parents=True)
    (path / "sub" / "hello.txt").write_text("hello")
    return Outcome(blob=blob, filename=name, archive=Tree(blob.digest, path, 1, True))


def run(store: Store, outcome: Outcome, headers=None, templates=(TEMPLATE,), moment=MOMENT):
    replicate(store, templates, headers or BOB, outcome, now=lambda: moment)
    return outcome


def snapshot(root: Path) -> set[str]:
    """Every path below `root` (symlinks not followed)."""
    return {
        os.path.relpath(os.path.join(d, n), root)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
    }


# -- pure names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "tree", "stamped", "latest"),
    [
        ("results.xml", False, "results.20260102.0304.7.xml", "results.latest.xml"),
        ("data.json.gz", False, "data.json.20260102.0304.7.gz", "data.json.latest.gz"),
        ("notes", False, "notes.20260102.0304.7", "notes.latest"),
        ("results.tgz", True, "results.20260102.0304.7", "results.latest"),
        ("results.tar.gz", True, "results.20260102.0304.7", "results.latest"),
        ("results.TAR.XZ", True, "results.20260102.0304.7", "results.latest"),
        ("site.zip", True, "site.20260102.0304.7", "site.latest"),
        ("build.gz", True, "build.20260102.0304.7", "build.latest"),
        ("image.bin", True, "image.bin.20260102.0304.7", "image.bin.latest"),
    ],
)
def test_series_for_names_files_and_trees(filename, tree, stamped, latest):
    series = series_for(filename, tree=tree)
    assert series.stamped(STAMP, 7) == stamped
    assert series.latest == latest
    assert series.parse(stamped) == (STAMP, 7)


def test_series_parse_refuses_other_series_names():
    series = Series("results", ".xml")
    assert series.parse("results.20260102.0304.12.xml") == (STAMP, 12)
    for name in (
        "results.latest.xml",
        "results.20260102.0304.x.xml",
        "other.20260102.0304.1.xml",
        "results.20260102.0304.1.xml.bak",
        "../results.20260102.0304.1.xml",
    ):
        assert series.parse(name) is None


def test_stamp_of_is_utc():
    plus_two = datetime(2026, 1, 2, 5, 4, tzinfo=timezone(timedelta(hours=2)))
    assert stamp_of(plus_two) == STAMP


@pytest.mark.parametrize("segments", [[], [".."], ["."], ["a/b"], ["a\\b"], ["x\0"], [".h"], [""]])
def test_replica_folder_refuses_what_is_not_one_segment(store, segments):
    with pytest.raises(ReplicaRefused):
        replica_folder(store, segments)


# -- files --------------------------------------------------------------------------------


def test_replicate_file_is_a_hard_link_named_with_stamp_and_index(store):
    outcome = run(store, file_outcome(store))
    folder = store.replicas / "user" / "bob" / "demo"
    assert outcome.replicas == [folder / f"results.{STAMP}.0.xml"]
    assert outcome.skipped == []
    assert os.path.samestat(outcome.replicas[0].stat(), outcome.blob.path.stat())
    assert not outcome.replicas[0].is_symlink()


def test_replicate_file_indices_count_up_and_latest_follows(store):
    names = [run(store, file_outcome(store, bytes([i]))).replicas[0].name for i in range(3)]
    assert names == [f"results.{STAMP}.{n}.xml" for n in range(3)]
    latest = store.replicas / "user/bob/demo/results.latest.xml"
    assert os.readlink(latest) == f"results.{STAMP}.2.xml"
    assert latest.read_bytes() == bytes([2])


def test_replicate_new_minute_starts_at_zero_and_moves_latest(store):
    run(store, file_outcome(store, b"a"))
    run(store, file_outcome(store, b"b"))
    later = run(store, file_outcome(store, b"c"), moment=MOMENT + timedelta(minutes=1))
    assert later.replicas[0].name == "results.20260102.0305.0.xml"
    assert os.readlink(later.replicas[0].parent / "results.latest.xml") == later.replicas[0].name


def test_replicate_latest_follows_the_last_upload_when_the_clock_steps_back(store):
    run(store, file_outcome(store, b"a"), moment=MOMENT + timedelta(minutes=5))
    last = run(store, file_outcome(store, b"b"), moment=MOMENT)
    assert last.replicas[0].name == f"results.{STAMP}.0.xml"
    assert (last.replicas[0].parent / "results.latest.xml").read_bytes() == b"b"


def test_replicate_reads_the_clock_once_per_replica(store):
    calls = []
    templates = (TEMPLATE, parse_template("REPLICATE_1", "topic/${Topic}"))

    def clock():
        calls.append(1)
        return MOMENT

    replicate(store, templates, BOB, file_outcome(store), now=clock)
    assert len(calls) == 2


def test_replicate_takes_the_first_free_index_when_names_are_taken(store):
    folder = store.replicas / "user/bob/demo"
    folder.mkdir(parents=True)
    for n in (0, 1):
        (folder / f"results.{STAMP}.{n}.xml").write_text("someone else's")
    outcome = run(store, file_outcome(store))
    assert outcome.replicas == [folder / f"results.{STAMP}.2.xml"]
    assert (folder / f"results.{STAMP}.0.xml").read_text() == "someone else's"


def test_replicate_same_content_twice_gives_two_names(store):
    first = run(store, file_outcome(store)).replicas[0]
    second = run(store, file_outcome(store)).replicas[0]
    assert first != second and os.path.samestat(first.stat(), second.stat())


def test_replicate_compressed_file_keeps_its_uploaded_name_and_blob(store):
    gz = store.ingest([b"\x1f\x8b\x08 pretend gzip"])
    outcome = Outcome(blob=gz, filename="data.json.gz", decompressed=store.ingest([b"{}"]))
    run(store, outcome)
    assert outcome.replicas[0].name == f"data.json.{STAMP}.0.gz"
    assert os.path.samestat(outcome.replicas[0].stat(), gz.path.stat())


def test_replicate_copies_when_the_blob_has_too_many_links(store, monkeypatch):
    outcome = file_outcome(store)
    saturate_links(monkeypatch, outcome.blob.path)
    run(store, outcome)
    replica = outcome.replicas[0]
    assert replica.read_bytes() == b"<xml/>"
    assert not os.path.samestat(replica.stat(), outcome.blob.path.stat())
    assert os.readlink(replica.parent / "results.latest.xml") == replica.name


def test_replicate_disk_full_raises_store_full(store, monkeypatch):
    outcome = file_outcome(store)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", full)
    with pytest.raises(StoreFull, match=r"replica/user/bob/demo/ could not be made"):
        run(store, outcome)


# -- trees --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["results.tgz", "results.tar.gz", "results.zip"])
def test_replicate_tree_is_a_relative_symlink_without_the_suffix(store, name):
    outcome = run(store, tree_outcome(store, name))
    replica = store.replicas / "user/bob/demo" / f"results.{STAMP}.0"
    assert outcome.replicas == [replica]
    target = os.readlink(replica)
    assert not os.path.isabs(target) and target.startswith("../")
    assert os.path.realpath(replica) == os.path.realpath(outcome.archive.path)
    assert (replica / "sub" / "hello.txt").read_text() == "hello"


def test_replicate_tree_latest_points_at_the_newest(store):
    run(store, tree_outcome(store, "results.tgz"))
    newest = run(store, tree_outcome(store, "results.tar.gz"))
    latest = store.replicas / "user/bob/demo/results.latest"
    assert os.readlink(latest) == f"results.{STAMP}.1"
    assert os.path.realpath(latest) == os.path.realpath(newest.archive.path)


def test_replicate_tree_stays_inside_archive_dir_when_it_is_reached_by_a_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    store = Store(tmp_path / "alias", "md5")
    store.open()
    outcome = run(store, tree_outcome(store))
    assert os.path.realpath(outcome.replicas[0]).startswith(str(real / "explode") + os.sep)


# -- which templates ----------------------------------------------------------------------


def test_replicate_partial_match_is_skipped_with_a_message(store):
    templates = (
        TEMPLATE,
        parse_template("REPLICATE_1", "team/${Username}/${Job}"),
        parse_template("REPLICATE_2", "topic/${Topic}"),
    )
    outcome = run(store, file_outcome(store), templates=templates)
    assert [store.relative(p) for p in outcome.replicas] == [
        f"replica/user/bob/demo/results.{STAMP}.0.xml",
        f"replica/topic/demo/results.{STAMP}.0.xml",
    ]
    assert outcome.skipped == ["REPLICATE_1 team/${Username}/${Job}: missing header Job"]
    assert not (store.replicas / "team").exists()


def test_replicate_without_templates_makes_nothing(store):
    outcome = run(store, file_outcome(store), templates=())
    assert outcome.replicas == [] and outcome.skipped == []
    assert list(store.replicas.iterdir()) == []


# -- hostile values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "../../etc",
        "..",
        ".",
        "a/b",
        "a\\b",
        "%2e%2e",
        "x\0y",
        "\0",
        "bøb",
        "日本",
        ".hidden",
        "/etc/passwd",
        "a\r\nb",
        "\udcff\udcfe",
    ],
)
def test_replicate_hostile_value_stays_one_segment_inside_replica(store, tmp_path, value):
    before = snapshot(tmp_path / "outside")
    outcome = run(store, file_outcome(store), {"username": "bob", "topic": value})
    assert outcome.skipped == []
    (replica,) = outcome.replicas
    assert replica.parent.parent == store.replicas / "user" / "bob"
    assert replica.parent.name not in (".", "..") and not replica.parent.name.startswith(".")
    assert os.path.realpath(replica).startswith(str(store.replicas) + os.sep)
    assert [p.name for p in (store.replicas / "user" / "bob").iterdir()] == [replica.parent.name]
    assert snapshot(tmp_path / "outside") == before


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("x" * 10_000, "longer than 200 bytes"),
        ("", "empty"),
        ("  ", "empty"),
        ("é" * 101, "longer than 200 bytes"),
    ],
)
def test_replicate_unusable_value_skips_that_replica_only(store, value, why):
    templates = (TEMPLATE, parse_template("REPLICATE_1", "all/${Username}"))
    outcome = run(store, file_outcome(store), {"username": "bob", "topic": value}, templates)
    assert [p.parent.name for p in outcome.replicas] == ["bob"]
    assert outcome.skipped == [
        f"REPLICATE_0 user/${{Username}}/${{Topic}}: header Topic: the value is {why}"
    ]
    assert not (store.replicas / "user").exists()


def test_replicate_distinct_values_never_share_a_folder(store):
    values = ["a/b", "a%2Fb", "a\\b", "a%5Cb", "..", "%2E.", ".", "%2E"]
    folders = {
        run(store, file_outcome(store), {"username": "bob", "topic": v}).replicas[0].parent
        for v in values
    }
    assert len(folders) == len(values)


def test_replicate_does_not_follow_a_symlink_planted_in_replica(store, tmp_path):
    (store.replicas / "user").mkdir()
    (store.replicas / "user" / "bob").symlink_to(tmp_path / "outside")
    outcome = run(store, file_outcome(store))
    assert outcome.replicas == []
    assert outcome.skipped == [
        "REPLICATE_0 user/${Username}/${Topic}: user/bob/demo does not stay inside replica/"
    ]
    assert list((tmp_path / "outside").iterdir()) == []


def test_replicate_never_writes_into_a_tree_through_a_tree_replica(store):
    # REPLICATE_0 files trees under user/<name>/; REPLICATE_1 would use a tree replica's
    # name as a folder: it must be refused, not written into the tree under explode/.
    shallow = parse_template("REPLICATE_0", "user/${Username}")
    deep = parse_template("REPLICATE_1", "user/${Username}/${Topic}")
    tree = run(store, tree_outcome(store), templates=(shallow,))
    before = snapshot(tree.archive.path)
    headers = {"username": "bob", "topic": tree.replicas[0].name}
    outcome = run(store, file_outcome(store), headers, templates=(deep,))
    assert outcome.replicas == []
    assert outcome.skipped and "does not stay inside replica/" in outcome.skipped[0]
    assert snapshot(tree.archive.path) == before


def test_replicate_refuses_a_folder_name_held_by_a_file_replica(store):
    shallow = parse_template("REPLICATE_0", "user/${Username}")
    deep = parse_template("REPLICATE_1", "user/${Username}/${Topic}")
    first = run(store, file_outcome(store), templates=(shallow,)).replicas[0]
    headers = {"username": "bob", "topic": first.name}
    outcome = run(store, file_outcome(store, b"other"), headers, templates=(deep,))
    assert outcome.replicas == []
    assert outcome.skipped == [
        f"REPLICATE_1 user/${{Username}}/${{Topic}}: {first.name} is a replica, not a folder"
    ]
    assert first.read_bytes() == b"<xml/>"


def test_replicate_leaves_a_foreign_entry_at_the_latest_name_alone(store):
    folder = store.replicas / "user/bob/demo"
    folder.mkdir(parents=True)
    (folder / "results.latest.xml").write_text("not a link")
    outcome = run(store, file_outcome(store))
    assert outcome.replicas == [folder / f"results.{STAMP}.0.xml"]
    assert outcome.skipped == [
        "REPLICATE_0 user/${Username}/${Topic}: results.latest.xml is not a latest link; left alone"
    ]
    assert (folder / "results.latest.xml").read_text() == "not a link"


def test_replicate_latest_of_one_series_never_replaces_another_series_replica(store):
    # `q.latest` (a file) is stamped `q.<stamp>.0.latest`, which is exactly the latest name of
    # the tree series of `q.<stamp>.0.tgz`: that replica must survive.
    file_replica = run(store, file_outcome(store, b"q", "q.latest")).replicas[0]
    assert file_replica.name == f"q.{STAMP}.0.latest"
    outcome = run(store, tree_outcome(store, f"q.{STAMP}.0.tgz"))
    assert outcome.replicas and "left alone" in outcome.skipped[0]
    assert file_replica.read_bytes() == b"q" and not file_replica.is_symlink()


# -- concurrency --------------------------------------------------------------------------


def folder_lock_is_free(folder: Path) -> bool:
    """Whether a second descriptor of `folder` gets its exclusive flock at once."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        assert exc.errno == errno.EWOULDBLOCK
        return False
    finally:
        os.close(fd)
    return True


@pytest.mark.parametrize("step", ["_claim", "_point_latest"])
def test_replicate_claims_and_swaps_latest_under_the_folders_lock(store, monkeypatch, step):
    folder = store.replicas / "user/bob/demo"
    real = getattr(replicas, step)
    seen: list[bool] = []

    def observed(*args, **kwargs):
        seen.append(folder_lock_is_free(folder))
        return real(*args, **kwargs)

    monkeypatch.setattr(replicas, step, observed)
    run(store, file_outcome(store))
    run(store, file_outcome(store, b"second"))
    assert seen == [False, False]
    assert folder_lock_is_free(folder)


@pytest.fixture
def busy_switching():
    """Switch threads very often, so a reader lands between a writer's system calls."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


@pytest.mark.usefixtures("busy_switching")
def test_replicate_concurrent_uploads_get_distinct_names_and_latest_never_vanishes(store):
    run(store, file_outcome(store, b"seed"))
    latest = store.replicas / "user/bob/demo/results.latest.xml"
    outcomes = [file_outcome(store, b"%d" % i) for i in range(30)]
    failures: list[str] = []
    done = threading.Event()

    def read() -> None:
        for _ in range(200_000):
            if done.is_set():
                return
            try:
                os.readlink(latest)
                os.stat(latest)
            except OSError as exc:
                failures.append(repr(exc))

    reader = threading.Thread(target=read)
    reader.start()
    workers = [threading.Thread(target=run, args=(store, o)) for o in outcomes]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    done.set()
    reader.join(30)
    names = {o.replicas[0].name for o in outcomes}
    assert len(names) == 30 and all(len(o.replicas) == 1 for o in outcomes)
    assert failures == []
    assert os.readlink(latest) == f"results.{STAMP}.30.xml"
    leftovers = [p.name for p in latest.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
