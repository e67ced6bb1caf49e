"""Several nodes on one store: node names, staging/<node>/, start-up clean-up, look-ups."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import md5

from bucketdav.dav import lookup
from bucketdav.dav.lookup import PublicTree
from bucketdav.settings import SettingError, load_settings
from bucketdav.store.blobs import LEFTOVER_AGE, Store, StoreError
from bucketdav.store.check import check_store

DAY_AND_AN_HOUR_AGO = time.time() - LEFTOVER_AGE - 3600
HOUR_AGO = time.time() - 3600


def age(path: Path, when: float) -> None:
    """Set the modification time of `path` (not following links)."""
    os.utime(path, (when, when), follow_symlinks=False)


def staging_names(root: Path) -> set[str]:
    """Every path below staging/, relative to it."""
    return {p.relative_to(root / "staging").as_posix() for p in (root / "staging").rglob("*")}


# -- the node name ---------------------------------------------------------------------------


def test_settings_node_defaults_to_the_host_name():
    assert load_settings(environ={}).node == socket.gethostname()
    assert load_settings(environ={"BUCKETDAV_NODE": " node-2.example "}).node == "node-2.example"


@pytest.mark.parametrize(
    "value", ["../up", "a/b", ".hidden", "-flag", "a b", "nödé", "a\\b", "x" * 254, "."]
)
def test_settings_node_refuses_what_is_not_one_safe_segment(value):
    with pytest.raises(SettingError) as caught:
        load_settings(environ={"BUCKETDAV_NODE": value})
    assert caught.value.name == "BUCKETDAV_NODE"
    assert str(caught.value).startswith(f"BUCKETDAV_NODE={value!r}: a node name is")


def test_cli_serve_bad_node_stops_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKETDAV_", "ARCHIVE_"))}
    result = subprocess.run(
        [sys.executable, "-m", "bucketdav", "serve", "--port", "0"],
        env={**env, "ARCHIVE_DIR": str(tmp_path), "BUCKETDAV_NODE": "../a"},
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "bucketdav: BUCKETDAV_NODE='../a': a node name is 1 to 253 letters, digits, '.', '_' "
        "or '-', not starting with '.' or '-'"
    ]
    assert not (tmp_path / "staging").exists()


def test_healthz_and_config_name_the_node(make_client):
    client = make_client(BUCKETDAV_NODE="node-a")
    assert client.get("/healthz").json["node"] == "node-a"
    assert client.get("/config").json["BUCKETDAV_NODE"] == "node-a"


# -- staging/<node>/ -------------------------------------------------------------------------


def test_store_stages_in_its_own_node_folder(tmp_path):
    store = Store(tmp_path, "md5", node="node-a")
    store.open()
    with store.staged() as staged:
        assert staged.path.parent == tmp_path / "staging" / "node-a"
        staged.write(b"hello")
        blob = store.commit(staged)
    assert blob.path == tmp_path / "blob" / md5(b"hello")[:2] / md5(b"hello")[2:4] / blob.digest
    assert staging_names(tmp_path) == {"node-a"}


def test_store_open_clears_own_leftovers_and_only_old_ones_of_other_nodes(tmp_path):
    staging = tmp_path / "staging"
    for node in ("node-a", "node-b", "node-c"):
        (staging / node).mkdir(parents=True)
    (staging / "node-a" / "up-mine").write_bytes(b"half of my upload")
    (staging / "node-a" / "tree-mine").mkdir()
    (staging / "node-b" / "up-receiving").write_bytes(b"an upload node-b receives now")
    (staging / "node-b" / "tree-old" / "deep").mkdir(parents=True)
    (staging / "node-b" / "tree-old" / "deep" / "f").write_bytes(b"x")
    (staging / "node-b" / "tree-building" / "deep").mkdir(parents=True)
    (staging / "node-b" / "tree-building" / "deep" / "new").write_bytes(b"just written")
    (staging / "node-c" / "up-dead").write_bytes(b"a node that died a while ago")
    (staging / "up-from-an-earlier-layout").write_bytes(b"x")
    (staging / "up-young-earlier-layout").write_bytes(b"x")
    for path in (
        staging / "node-b" / "tree-old" / "deep" / "f",
        staging / "node-b" / "tree-old" / "deep",
        staging / "node-b" / "tree-old",
        staging / "node-b" / "tree-building" / "deep",
        staging / "node-b" / "tree-building",
        staging / "node-c" / "up-dead",
        staging / "up-from-an-earlier-layout",
    ):
        age(path, DAY_AND_AN_HOUR_AGO)
    age(staging / "up-young-earlier-layout", HOUR_AGO)

    Store(tmp_path, "md5", node="node-a").open()

    assert staging_names(tmp_path) == {
        "node-a",
        "node-b",
        "node-b/up-receiving",
        "node-b/tree-building",
        "node-b/tree-building/deep",
        "node-b/tree-building/deep/new",
        "node-c",
        "up-young-earlier-layout",
    }


def test_store_restart_of_one_node_keeps_the_other_nodes_upload(tmp_path):
    node_a = Store(tmp_path, "md5", node="node-a")
    node_a.open()
    node_b = Store(tmp_path, "md5", node="node-b")
    node_b.open()
    with node_a.staged() as in_flight:
        in_flight.write(b"the first half")
        Store(tmp_path, "md5", node="node-b").open()  # node-b restarts meanwhile
        assert in_flight.path.read_bytes() == b"the first half"
        in_flight.write(b", then the rest")
        blob = node_a.commit(in_flight)
    assert blob.path.read_bytes() == b"the first half, then the rest"


@pytest.mark.parametrize(
    ("part", "apart"),
    [
        ("decompressed", "decompressed/ is"),
        ("replica", "replica/ is"),
        ("staging/node-a", "staging/, blob/, explode/, replica/, decompressed/ are"),
        ("staging", "blob/, explode/, replica/, decompressed/ are"),
    ],
)
def test_store_open_refuses_parts_on_two_file_systems(tmp_path, part, apart):
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second file system at /dev/shm")
    elsewhere = other / f"bucketdav-test-nodes-{os.getpid()}"
    elsewhere.mkdir()
    try:
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / part).symlink_to(elsewhere)
        with pytest.raises(StoreError) as caught:
            Store(tmp_path, "md5", node="node-a").open()
        assert str(caught.value) == (
            f"ARCHIVE_DIR={tmp_path}: staging, blob, explode, replica and decompressed must be "
            f"on one file system (hard links), but {apart} not on the one of staging/node-a/"
        )
    finally:
        for path in sorted(elsewhere.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() else path.rmdir()
        elsewhere.rmdir()


# -- check -----------------------------------------------------------------------------------


def test_check_finds_old_leftovers_in_every_node_folder_and_repairs_only_those(tmp_path):
    Store(tmp_path, "md5", node="node-a").open()
    Store(tmp_path, "md5", node="node-b").open()
    old = tmp_path / "staging" / "node-a" / "up-old"
    old.write_bytes(b"x")
    age(old, HOUR_AGO - 600)
    fresh = tmp_path / "staging" / "node-b" / "up-fresh"
    fresh.write_bytes(b"in flight")

    report = check_store(tmp_path, "md5", node="node-b")
    assert report.problems["leftover"] == 1
    assert report.examples["leftover"][0].startswith("staging/node-a/up-old")
    assert report.scanned["staging folders of nodes"] == 2

    repaired = check_store(tmp_path, "md5", repair=True, node="node-b")
    assert repaired.repaired["leftover"] == 1
    assert staging_names(tmp_path) == {"node-a", "node-b", "node-b/up-fresh"}


# -- reading through `latest` while another node swaps it ------------------------------------


def test_lookup_of_latest_looks_again_while_it_is_briefly_missing(tmp_path, monkeypatch):
    store = Store(tmp_path, "md5", node="node-a")
    store.open()
    folder = tmp_path / "replica" / "bob"
    folder.mkdir()
    (folder / "r.20260101.0000.0.txt").write_bytes(b"one")
    (folder / "r.latest.txt").symlink_to("r.20260101.0000.0.txt")
    real_lstat = lookup._lstat_member
    misses = []

    def renamed_meanwhile(folder: str, name: str):
        # What a reader on JuiceFS sees during another node's rename of a new latest: ENOENT.
        if name == "r.latest.txt" and len(misses) < 3:
            misses.append(name)
            return None
        return real_lstat(folder, name)

    monkeypatch.setattr(lookup, "_lstat_member", renamed_meanwhile)
    node = PublicTree(str(tmp_path), "md5").lookup("/replica/bob/r.latest.txt")
    assert node is not None and node.real.endswith("/replica/bob/r.20260101.0000.0.txt")
    assert len(misses) == 3


def test_lookup_of_a_missing_name_without_latest_answers_at_once(tmp_path, monkeypatch):
    Store(tmp_path, "md5", node="node-a").open()
    (tmp_path / "replica" / "bob").mkdir()
    monkeypatch.setattr(lookup.time, "sleep", lambda pause: pytest.fail("slept"))
    tree = PublicTree(str(tmp_path), "md5")
    assert tree.lookup("/replica/bob/r.20260101.0000.0.txt") is None
    assert tree.lookup("/blob/ab/cd/latest") is None


def test_lookup_of_a_latest_that_stays_missing_is_none_after_the_pauses(tmp_path, monkeypatch):
    Store(tmp_path, "md5", node="node-a").open()
    (tmp_path / "replica" / "bob").mkdir()
    pauses: list[float] = []
    monkeypatch.setattr(lookup.time, "sleep", pauses.append)
    assert PublicTree(str(tmp_path), "md5").lookup("/replica/bob/r.latest.txt") is None
    assert pauses == list(lookup.LATEST_RETRY_PAUSES)


def test_listing_keeps_a_latest_link_that_is_briefly_missing(tmp_path, monkeypatch):
    Store(tmp_path, "md5", node="node-a").open()
    folder = tmp_path / "replica" / "bob"
    folder.mkdir()
    (folder / "r.20260101.0000.0.txt").write_bytes(b"one")
    (folder / "r.latest.txt").symlink_to("r.20260101.0000.0.txt")
    real_stat = os.stat
    misses = []

    def renamed_meanwhile(path, *args, **kwargs):
        if path == "r.latest.txt" and not misses:
            misses.append(path)
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_stat(path, *args, **kwargs)

    tree = PublicTree(str(tmp_path), "md5")
    parent = tree.lookup("/replica/bob")
    monkeypatch.setattr(lookup.os, "stat", renamed_meanwhile)
    names = [child.name for child in tree.children(parent)]
    assert names == ["r.20260101.0000.0.txt", "r.latest.txt"]
    assert misses == ["r.latest.txt"]
