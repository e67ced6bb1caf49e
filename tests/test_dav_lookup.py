"""PublicTree at its edges: remembered look-ups, listings, checksums on a budget, retries."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from bucketdav.dav import lookup
from bucketdav.dav.lookup import (
    LATEST_RETRY_PAUSES,
    ChecksumCache,
    PublicTree,
    content_type,
    count_members,
)
from bucketdav.store.blobs import Store


@pytest.fixture
def store(store_root: Path) -> Store:
    opened = Store(store_root, "md5")
    opened.open()
    return opened


@pytest.fixture
def tree(store: Store) -> PublicTree:
    return PublicTree(str(store.root), "md5")


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The pauses lookup.py takes, recorded instead of slept."""
    taken: list[float] = []
    monkeypatch.setattr(lookup, "time", SimpleNamespace(sleep=taken.append))
    return taken


def folder(store: Store, name: str = "team") -> Path:
    path = store.replicas / name
    path.mkdir(parents=True)
    return path


# -- content types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("page.html", "text/html"),
        ("a.b.json", "application/json"),
        ("old.pict", "image/pict"),  # known to mimetypes only when not strict
        ("build.tar.gz", "application/octet-stream"),  # an encoding: the bytes as they are
        ("README", "application/octet-stream"),
        ("x.no-such-type", "application/octet-stream"),
    ],
)
def test_content_type_from_the_last_suffix(monkeypatch, name, media_type):
    monkeypatch.setattr(lookup, "_TYPES", {})
    assert content_type(name) == media_type
    suffix = name.rpartition(".")[2] if "." in name else ""
    remembered = lookup._TYPES
    assert remembered == {suffix: media_type}


def test_content_type_remembers_at_most_4096_suffixes(monkeypatch):
    monkeypatch.setattr(lookup, "_TYPES", {f"s{index}": "x/y" for index in range(4095)})
    assert content_type("a.html") == "text/html"
    assert content_type("a.json") == "application/json"
    assert len(lookup._TYPES) == 4096 and "json" not in lookup._TYPES


# -- checksums ----------------------------------------------------------------------------


def test_known_checksum_of_a_blob_is_its_name(store, tree):
    blob = store.ingest([b"named by content"])
    node = tree.lookup("/" + store.relative(blob.path))
    assert tree.known_checksum(node) == blob.digest
    assert tree.cache.get(node) is None  # not hashed


def test_checksum_of_other_files_is_bounded_by_size_and_budget(store, tree, monkeypatch):
    team = folder(store)
    (team / "six.txt").write_bytes(b"123456")
    (team / "seven.txt").write_bytes(b"1234567")
    six, seven = tree.lookup("/replica/team/six.txt"), tree.lookup("/replica/team/seven.txt")
    monkeypatch.setattr(lookup, "HASH_ON_DEMAND_MAX", 6)
    assert tree.checksum(seven) is None
    budget = [6]
    assert tree.checksum(six, budget) == "e10adc3949ba59abbe56e057f20f883e"
    assert budget == [0]
    assert tree.checksum(seven, [5]) is None


def test_etag_keeps_to_the_budget(store, tree):
    team = folder(store)
    (team / "f.txt").write_bytes(b"abc")
    node = tree.lookup("/replica/team/f.txt")
    assert tree.etag(node, [0]) == f"{node.ino:x}-{node.size:x}-{node.mtime_ns:x}"
    assert tree.etag(node, [3]) == "900150983cd24fb0d6963f7d28e17f72"


def test_checksum_cache_forgets_the_least_recently_used(store, tree):
    team = folder(store)
    nodes = []
    for name in "abc":
        (team / name).write_bytes(name.encode())
        nodes.append(tree.lookup(f"/replica/team/{name}"))
    cache = ChecksumCache("md5", limit=2)
    cache.compute(nodes[0])
    cache.compute(nodes[1])
    assert cache.get(nodes[0]) is not None  # a is now the most recent
    cache.compute(nodes[2])
    assert [cache.get(n) is not None for n in nodes] == [True, False, True]


# -- remembered look-ups -------------------------------------------------------------------


def test_lookup_remembers_an_immutable_file_under_any_spelling(store, tree, monkeypatch):
    blob = store.ingest([b"walk once"])
    path = "/" + store.relative(blob.path)
    walks = []
    real_walk = tree._walk
    monkeypatch.setattr(tree, "_walk", lambda parts: walks.append(parts) or real_walk(parts))
    first = tree.lookup(path)
    assert tree.lookup(path) is first
    assert tree.lookup("/" + path.replace("/", "//")) is first
    assert len(walks) == 1
    assert tree._held == len(first.path) + len(first.real) + 400


def test_lookup_of_a_remembered_file_replaced_finds_the_new_one(store, tree):
    tree_dir = store.tree_path("ab" * 16)
    tree_dir.mkdir(parents=True)
    (tree_dir / "f").write_bytes(b"old")
    path = "/" + store.relative(tree_dir / "f")
    old = tree.lookup(path)
    os.link(tree_dir / "f", store.staging / "kept")  # so its inode is not reused at once
    (tree_dir / "f").unlink()
    (tree_dir / "f").write_bytes(b"newer")
    new = tree.lookup(path)
    assert new is not None and new.size == 5 and new.ino != old.ino
    (tree_dir / "f").unlink()
    assert tree.lookup(path) is None
    assert tree.files == {} and tree._held == 0


def test_lookup_remembering_is_bounded(store, tree, monkeypatch):
    monkeypatch.setattr(lookup, "LOOKUP_CACHE_ENTRIES", 2)
    paths = ["/" + store.relative(store.ingest([bytes([n])]).path) for n in range(3)]
    for path in paths:
        tree.lookup(path)
    assert list(tree.files) == [paths[2]]
    assert tree._held == lookup._entry_cost(tree.files[paths[2]])


def test_lookup_remembering_is_bounded_in_bytes(store, tree, monkeypatch):
    blob = store.ingest([b"too dear"])
    node = tree.lookup("/" + store.relative(blob.path))
    cost = lookup._entry_cost(node)
    tree.forget(node)
    assert (tree.files, tree._held) == ({}, 0)
    monkeypatch.setattr(lookup, "LOOKUP_CACHE_BYTES", cost - 1)
    tree.lookup(node.path)
    assert (tree.files, tree._held) == ({}, 0)
    monkeypatch.setattr(lookup, "LOOKUP_CACHE_BYTES", cost)
    tree.lookup(node.path)
    assert (list(tree.files), tree._held) == ([node.path], cost)
    other = tree.lookup("/" + store.relative(store.ingest([b"next"]).path))
    assert (list(tree.files), tree._held) == ([other.path], cost)


def test_lookup_of_a_folder_has_size_zero(store, tree):
    folder(store)
    assert tree.lookup("/replica/team").size == 0


# -- listings ------------------------------------------------------------------------------


def test_children_are_the_nodes_a_lookup_gives(store, tree):
    team = folder(store, "teamX")
    (team / "f.txt").write_bytes(b"12345")
    (team / "sub").mkdir()
    wanted = ("path", "real", "is_dir", "size", "mtime", "dev", "ino", "mtime_ns")
    listed = list(tree.children(tree.lookup("/replica/teamX")))
    assert [child.path for child in listed] == ["/replica/teamX/f.txt", "/replica/teamX/sub"]
    for child in listed:
        looked_up = tree.lookup(child.path)
        assert [getattr(child, k) for k in wanted] == [getattr(looked_up, k) for k in wanted]


def test_children_of_the_root_are_the_trees_there(store, tree):
    (store.root / "replica").rename(store.root / "replica-gone")
    root = tree.lookup("/")
    listed = list(tree.children(root))
    assert [(c.path, c.real) for c in listed] == [
        ("/blob", str(store.root / "blob")),
        ("/explode", str(store.root / "explode")),
    ]


def test_children_leave_out_bad_names_and_go_on(store, tree):
    team = folder(store)
    for name in (b"a", b"b-\xff", b"c\x01", b"z"):
        with open(os.path.join(os.fsencode(team), name), "wb") as out:
            out.write(b"x")
    listed = [c.name for c in tree.children(tree.lookup("/replica/team"))]
    assert listed == ["a", "z"]


def test_children_hide_a_loop_of_two_links(store, tree):
    top = store.tree_path("cd" * 16)
    (top / "a").mkdir(parents=True)
    (top / "b").mkdir()
    os.symlink("../b", top / "a" / "to-b")
    os.symlink("../a", top / "b" / "to-a")
    base = "/" + store.relative(top)
    through = tree.lookup(base + "/a/to-b")
    assert [c.name for c in tree.children(through)] == []


def test_children_follow_a_link_at_the_top_of_a_tree(store, tree):
    folder(store)
    os.symlink("team", store.replicas / "team.latest")
    listed = [c.path for c in tree.children(tree.lookup("/replica"))]
    assert listed == ["/replica/team", "/replica/team.latest"]


def test_count_members_stops_past_the_limit(store):
    team = folder(store)
    for name in "abc":
        (team / name).write_bytes(b"")
    assert count_members(str(team), 3) == 3
    assert count_members(str(team), 2) is None


# -- a latest link being replaced ----------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "retried"),
    [
        (["replica", "a.latest"], True),
        (["replica", "team", "r.latest", "f.txt"], True),
        (["replica", "team", "r.20260101.0000.0"], False),
        (["explode", "r.latest"], False),
        (["replica"], False),
    ],
)
def test_through_latest_only_for_replica_paths_with_a_latest_link(parts, retried):
    assert lookup._through_latest(parts) is retried


def test_walk_latest_tries_again_while_the_link_is_missing(tree, monkeypatch, sleeps):
    answers = iter([None, None, "found"])
    monkeypatch.setattr(tree, "_walk", lambda parts: next(answers))
    assert tree._walk_latest(["replica", "r.latest"]) == "found"
    assert sleeps == list(LATEST_RETRY_PAUSES[:2])


def test_walk_latest_gives_up_after_its_pauses(tree, monkeypatch, sleeps):
    monkeypatch.setattr(tree, "_walk", lambda parts: None)
    assert tree._walk_latest(["replica", "r.latest"]) is None
    assert sleeps == list(LATEST_RETRY_PAUSES)
    sleeps.clear()
    assert tree._walk_latest(["replica", "r.20260101.0000.0"]) is None
    assert sleeps == []


def test_listed_latest_link_missing_for_a_moment_is_waited_for(store, monkeypatch, sleeps):
    team = folder(store)
    (team / "r.latest.txt").write_bytes(b"x")
    (team / "gone.txt").write_bytes(b"x")
    real_stat = os.stat
    misses = {"r.latest.txt": 2, "gone.txt": 1}

    def flaky(name, *args, **kwargs):
        if misses.get(name, 0):
            misses[name] -= 1
            raise FileNotFoundError(name)
        return real_stat(name, *args, **kwargs)

    monkeypatch.setattr(lookup.os, "stat", flaky)
    fd = os.open(team, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert lookup._lstat_listed(fd, "r.latest.txt") is not None
        assert sleeps == list(LATEST_RETRY_PAUSES[:2])
        assert lookup._lstat_listed(fd, "gone.txt") is None
        assert sleeps == list(LATEST_RETRY_PAUSES[:2])
        os.symlink("r.latest.txt", team / "link.latest")
        assert lookup._lstat_listed(fd, "link.latest").st_mode & 0o170000 == 0o120000
    finally:
        os.close(fd)


def test_lookup_remembers_files_up_to_exactly_the_byte_bound(store, tree, monkeypatch):
    first = tree.lookup("/" + store.relative(store.ingest([b"one"]).path))
    cost = lookup._entry_cost(first)
    tree.forget(first)
    monkeypatch.setattr(lookup, "LOOKUP_CACHE_BYTES", 2 * cost)
    tree.lookup(first.path)
    second = tree.lookup("/" + store.relative(store.ingest([b"two"]).path))
    assert (sorted(tree.files), tree._held) == (sorted([first.path, second.path]), 2 * cost)


def test_known_checksum_only_for_files_under_blob(store, tree):
    team = folder(store)
    (team / ("0" * 32)).write_bytes(b"named like a digest")
    node = tree.lookup("/replica/team/" + "0" * 32)
    assert tree.known_checksum(node) is None


def test_children_go_on_past_a_member_gone_meanwhile(store, tree, monkeypatch):
    team = folder(store)
    for name in "abc":
        (team / name).write_bytes(b"x")
    real_lstat = lookup._lstat_listed
    monkeypatch.setattr(
        lookup, "_lstat_listed", lambda fd, name: None if name == "b" else real_lstat(fd, name)
    )
    assert [c.name for c in tree.children(tree.lookup("/replica/team"))] == ["a", "c"]


def test_children_of_a_folder_named_with_a_trailing_blank(store, tree):
    team = folder(store, "sp ")
    (team / "f").write_bytes(b"x")
    assert [c.path for c in tree.children(tree.lookup("/replica/sp "))] == ["/replica/sp /f"]


def test_walk_latest_looks_the_same_path_up_again(tree, monkeypatch, sleeps):
    asked = []
    monkeypatch.setattr(tree, "_walk", lambda parts: asked.append(parts))
    tree._walk_latest(["replica", "r.latest", "f"])
    assert asked == [["replica", "r.latest", "f"]] * (1 + len(LATEST_RETRY_PAUSES))
