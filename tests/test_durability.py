"""Durability: before any answer, every directory entry it names is flushed, whoever made it.

The file-system calls of an upload are recorded as (call, path relative to the store) and
their order checked: a staged file is flushed before it is linked in; every entry made in a
public tree is followed by an fsync of its folder; and every folder from a path the answer
names up to its tree is flushed after that path was linked or found, also when another
upload made it (a twin upload may be between its link and its flush).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_settings
from helpers import md5, saturate_links, tar_gz

from bucketdav.store.blobs import Store
from bucketdav.uploads.archives import extract, tree
from bucketdav.uploads.pipeline import process

PUBLIC = ("blob/", "explode/", "replica/")
REPLICA_ENV = {"REPLICATE_0": "team/${Topic}"}
TOPIC = {"topic": "nightly"}


class Recorder:
    """Records the calls that make entries and flush them, in order, as (call, path)."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.calls: list[tuple[str, str]] = []
        self.paths: dict[int, str] = {}

    def name(self, path: Any, dir_fd: int | None = None) -> str:
        """`path` relative to the store; staging/<node>/up-… as staging/up-*."""
        text = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(text):
            text = os.path.join(self.paths.get(dir_fd, "?"), text)
        text = os.path.normpath(text)
        if text == self.root:
            return "."
        if text.startswith(self.root + os.sep):
            text = text[len(self.root) + 1 :]
        return re.sub(r"^staging/[^/]+/([a-z]+-)[^/]+", r"staging/\1*", text)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Wrap os.open/fsync/link/rename/replace/symlink/mkdir and tree.syncfs."""
        real = {n: getattr(os, n) for n in ("open", "fsync", "link", "rename", "replace")}
        real |= {n: getattr(os, n) for n in ("symlink", "mkdir")}
        real_syncfs = tree.syncfs

        def opened(path, flags, mode=0o777, *, dir_fd=None):
            fd = real["open"](path, flags, mode, dir_fd=dir_fd)
            self.paths[fd] = os.path.join(self.root, self.name(path, dir_fd))
            return fd

        def fsync(fd):
            self.calls.append(("fsync", self.name(self.paths.get(fd, f"fd{fd}"))))
            return real["fsync"](fd)

        def moved(call):
            def wrapper(src, dst, *, src_dir_fd=None, dst_dir_fd=None, **kwargs):
                self.calls.append((call, self.name(dst, dst_dir_fd)))
                return real[call](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, **kwargs)

            return wrapper

        def symlink(target, dst, target_is_directory=False, *, dir_fd=None):
            self.calls.append(("symlink", self.name(dst, dir_fd)))
            return real["symlink"](target, dst, target_is_directory, dir_fd=dir_fd)

        def mkdir(path, mode=0o777, *, dir_fd=None):
            self.calls.append(("mkdir", self.name(path, dir_fd)))
            return real["mkdir"](path, mode, dir_fd=dir_fd)

        def syncfs(path):
            self.calls.append(("syncfs", self.name(path)))
            return real_syncfs(path)

        monkeypatch.setattr(os, "open", opened)
        monkeypatch.setattr(os, "fsync", fsync)
        for call in ("link", "rename", "replace"):
            monkeypatch.setattr(os, call, moved(call))
        monkeypatch.setattr(os, "symlink", symlink)
        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(tree, "syncfs", syncfs)

    def clear(self) -> None:
        self.calls.clear()


def chain(path: str) -> list[str]:
    """The folders from the one holding `path` up to its public tree: blob/ab/cd … blob."""
    parts = path.split("/")
    return ["/".join(parts[:n]) for n in range(len(parts) - 1, 0, -1)]


def is_flushed(calls: list[tuple[str, str]], folder: str, after: int) -> bool:
    """True when `folder` is flushed (fsync, or a whole-file-system syncfs) after index `after`."""
    return any(
        call == "syncfs" or (call == "fsync" and path == folder)
        for call, path in calls[after + 1 :]
    )


def assert_durable(calls: list[tuple[str, str]], answer: list[str]) -> None:
    """Every entry made in a public tree is flushed after it was made; and for each path of
    the answer, each folder on its way up is flushed after the last call on what it holds
    (any time, when the recorded calls never touched what it holds: it was there before)."""
    for index, (call, path) in enumerate(calls):
        if call in ("mkdir", "link", "rename", "replace", "symlink") and (
            path.startswith(PUBLIC) or path in ("blob", "explode", "replica")
        ):
            parent = os.path.dirname(path) or "."
            assert is_flushed(calls, parent, index), f"{call} {path}: {parent} is not flushed after"
    for path in answer:
        held = path
        for folder in chain(path):
            made = (i for i, (c, p) in enumerate(calls) if p == held and c != "fsync")
            last = max(made, default=-1)
            assert is_flushed(calls, folder, last), f"{path}: {folder} is not flushed, {calls}"
            held = folder


@pytest.fixture
def store(store_root: Path) -> Store:
    """An opened md5 store."""
    opened = Store(store_root, "md5")
    opened.open()
    return opened


@pytest.fixture
def recorder(store_root: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """The calls of the test, from now on."""
    recording = Recorder(store_root)
    recording.install(monkeypatch)
    return recording


@pytest.fixture
def upload(store: Store, recorder: Recorder) -> Callable[..., list[str]]:
    """Run one upload through the pipeline, recording only its calls; returns its answer's paths."""

    def run(data: bytes, name: str, headers: dict[str, str] | None = None) -> list[str]:
        settings = make_settings(store.root, **REPLICA_ENV)
        recorder.clear()
        blob = store.ingest([data])
        outcome = process(store, settings, blob, filename=name, headers=headers or {})
        found = [outcome.blob, outcome.decompressed, outcome.archive, *outcome.replicas]
        return [store.relative(getattr(f, "path", f)) for f in found if f is not None]

    return run


def blob_of(data: bytes) -> str:
    digest = md5(data)
    return f"blob/{digest[:2]}/{digest[2:4]}/{digest}"


# -- blobs ---------------------------------------------------------------------------------


def test_store_open_flushes_the_layout_it_makes(store_root, recorder):
    Store(store_root, "md5").open()
    made = [path for call, path in recorder.calls if call == "mkdir"]
    assert {"blob", "explode", "replica", "staging"} <= set(made)
    assert_durable(recorder.calls, [])


def test_commit_flushes_the_staged_file_before_linking_it(store, recorder):
    store.ingest([b"first bytes"])
    calls = recorder.calls
    assert calls.index(("fsync", "staging/up-*")) < calls.index(("link", blob_of(b"first bytes")))


def test_commit_new_blob_flushes_its_folder_then_each_one_above(store, recorder):
    store.ingest([b"new content"])
    link = max(i for i, c in enumerate(recorder.calls) if c == ("link", blob_of(b"new content")))
    assert recorder.calls[link + 1 :] == [
        ("fsync", folder) for folder in chain(blob_of(b"new content"))
    ]


def test_commit_new_fanout_folder_flushes_its_parent(store, recorder):
    store.ingest([b"fresh prefix"])
    folder = os.path.dirname(os.path.dirname(blob_of(b"fresh prefix")))
    assert ("mkdir", folder) in recorder.calls
    assert_durable(recorder.calls, [blob_of(b"fresh prefix")])


def test_commit_existing_blob_flushes_only_the_way_down_to_it(store, recorder):
    # The upload that stored it may be between its link and its flush: its entries are ours
    # too. The staged copy, dropped (its name becomes a link of the blob, which keeps the
    # blob from collection while the upload runs), needs no flush.
    store.ingest([b"same bytes"])
    recorder.clear()
    blob = store.ingest([b"same bytes"])
    assert not blob.created
    assert recorder.calls == [
        ("link", "staging/up-*"),
        ("replace", "staging/up-*"),
        *[("fsync", folder) for folder in chain(blob_of(b"same bytes"))],
    ]


def test_commit_losing_the_link_race_flushes_the_twins_way_down(store, monkeypatch):
    twin = store.blob_path(md5(b"raced bytes"))
    twin.parent.mkdir(parents=True)
    real_link = os.link

    def twin_first(src, dst, **kwargs):
        # The twin upload links the same content just before this one.
        if Path(dst) == twin and not twin.exists():
            twin.write_bytes(b"raced bytes")
        return real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", twin_first)
    recorder = Recorder(store.root)
    recorder.install(monkeypatch)
    blob = store.ingest([b"raced bytes"])
    assert not blob.created
    assert recorder.calls == [
        ("fsync", "staging/up-*"),
        ("link", blob_of(b"raced bytes")),
        ("link", "staging/up-*"),
        ("replace", "staging/up-*"),
        *[("fsync", folder) for folder in chain(blob_of(b"raced bytes"))],
    ]


def test_commit_existing_blob_weak_digest_compares_then_flushes(store, recorder):
    store.ingest([b"compared"])
    recorder.clear()
    store.ingest([b"compared"])
    assert_durable(recorder.calls, [blob_of(b"compared")])


def test_place_past_emlink_flushes_the_copy_before_linking_it(store, recorder, monkeypatch):
    blob = store.ingest([b"too many links"])
    (store.replicas / "team").mkdir()
    saturate_links(monkeypatch, blob.path)  # through the recorder's os.link
    recorder.clear()
    store.place(blob.path, store.replicas / "team" / "copy.txt")
    calls = recorder.calls
    assert calls.index(("fsync", "staging/copy-*")) < calls.index(("link", "replica/team/copy.txt"))


# -- trees ---------------------------------------------------------------------------------


def test_upload_tree_published_flushes_its_way_down(upload, recorder):
    data = tar_gz({"a/report.txt": b"report"})
    answer = upload(data, "build.tgz")
    assert any(call == "rename" and path.startswith("explode/") for call, path in recorder.calls)
    assert_durable(recorder.calls, answer)


def test_upload_tree_flushes_its_files_before_linking_them_as_blobs(upload, recorder):
    upload(tar_gz({"a/member.txt": b"member bytes"}), "build.tgz")
    calls = recorder.calls
    link = calls.index(("link", blob_of(b"member bytes")))
    assert any(call == "syncfs" and path.startswith("staging/") for call, path in calls[:link])


def test_upload_tgz_tree_links_its_tar_between_its_two_flushes_without_flushes_of_its_own(
    upload, recorder
):
    data = tar_gz({"a/one.txt": b"first member", "a/two.txt": b"second member"})
    answer = upload(data, "build.tgz")
    calls = recorder.calls
    flushes = [index for index, (call, _path) in enumerate(calls) if call == "syncfs"]
    assert len(flushes) == 2
    first, second = flushes
    digest = md5(data)
    note = f"decompressed/{digest[:2]}/{digest[2:4]}/{digest}"
    for made in (
        ("link", blob_of(b"first member")),
        ("link", blob_of(b"second member")),
        ("link", blob_of(gzip.decompress(data))),
        ("replace", note),
    ):
        assert first < calls.index(made) < second, made
    rename = next(i for i, (call, path) in enumerate(calls) if call == "rename")
    assert calls[rename][1] == answer[2] and second < rename
    assert [call for call in calls[first:rename] if call[0] == "fsync"] == []
    assert_durable(calls, answer)


def test_upload_large_tree_starts_flushing_while_it_is_written(upload, recorder, monkeypatch):
    monkeypatch.setattr(tree, "_WRITEBACK_EVERY", 64 << 10)
    members = {f"f{index}.bin": os.urandom(100 << 10) for index in range(4)}
    upload(tar_gz(members), "big.tgz")
    calls = recorder.calls
    first_link = min(calls.index(("link", blob_of(data))) for data in members.values())
    assert sum(call == "syncfs" for call, _path in calls[:first_link]) >= 2


def test_upload_tree_that_already_exists_flushes_its_way_down(upload, recorder):
    data = tar_gz({"a/report.txt": b"again"})
    upload(data, "build.tgz")
    answer = upload(data, "build.tgz")
    assert not any(call == "rename" for call, _ in recorder.calls)
    assert len(answer) == 3
    assert_durable(recorder.calls, answer)


def test_publish_losing_the_race_flushes_the_tree_it_answers_with(store, recorder):
    final = store.tree_path("ab" * 16)
    final.mkdir(parents=True)
    (final / "theirs").write_bytes(b"")
    ours = Path(store.staging) / "tree-ours"
    ours.mkdir()
    (ours / "mine").write_bytes(b"")
    recorder.clear()
    assert extract.publish(ours, final) is False
    assert_durable(recorder.calls, [store.relative(final)])


def test_upload_plain_tar_existing_tree_flushes_its_way_down(upload, recorder):
    data = tar_gz({"x": b"plain"})
    plain = gzip.decompress(data)
    upload(plain, "plain.tar")
    answer = upload(plain, "plain.tar")
    digest = hashlib.md5(plain).hexdigest()  # noqa: S324 - md5 store
    assert f"explode/{digest[:2]}/{digest[2:4]}/{digest}" in answer
    assert_durable(recorder.calls, answer)


# -- replicas ------------------------------------------------------------------------------


def test_upload_replica_in_a_new_folder_flushes_each_folder_made(upload, recorder):
    answer = upload(b"<xml/>", "results.xml", TOPIC)
    assert ("mkdir", "replica/team") in recorder.calls
    assert any(path.startswith("replica/team/nightly/results.") for path in answer)
    assert_durable(recorder.calls, answer)


def test_upload_replica_in_an_existing_folder_flushes_its_way_down(upload, recorder):
    # The folder may have been made by an upload that has not flushed it yet.
    upload(b"<first/>", "results.xml", TOPIC)
    answer = upload(b"<second/>", "results.xml", TOPIC)
    assert_durable(recorder.calls, answer)


def test_upload_tree_replica_flushes_its_way_down(upload, recorder):
    data = tar_gz({"r.txt": b"tree replica"})
    upload(data, "build.tgz", TOPIC)
    answer = upload(data, "build.tgz", TOPIC)
    assert any(path.startswith("replica/team/nightly/build.") for path in answer)
    assert_durable(recorder.calls, answer)


# -- deploy by checksum --------------------------------------------------------------------


@pytest.fixture
def client_recorded(make_client, store_root, monkeypatch) -> Iterator[tuple[Any, Recorder]]:
    client = make_client(**REPLICA_ENV)
    recording = Recorder(store_root)
    recording.install(monkeypatch)
    yield client, recording


def test_deploy_by_checksum_flushes_the_blob_it_answers_with(client_recorded):
    client, recorder = client_recorded
    client.put("/upload/known.txt", b"known content")
    recorder.clear()
    headers = {"X-Checksum-Deploy": "true", "X-Checksum": md5(b"known content")}
    body = client.put("/upload/again.txt", b"", headers=headers).json
    assert body["path"]["blob"] == blob_of(b"known content")
    assert not any(call == "link" and path.startswith("blob/") for call, path in recorder.calls)
    assert_durable(recorder.calls, [body["path"]["blob"]])


def test_deploy_by_checksum_of_a_tgz_flushes_every_path_it_answers_with(client_recorded):
    client, recorder = client_recorded
    data = tar_gz({"d/x.txt": b"deployed tree"})
    client.put("/upload/build.tgz", data)
    recorder.clear()
    headers = {"X-Checksum-Deploy": "true", "X-Checksum": md5(data), "Topic": "nightly"}
    body = client.put("/upload/build.tgz", b"", headers=headers).json
    answer = [body["path"][k] for k in ("blob", "decompressed", "archive")]
    answer += body["path"]["replicas"]
    assert None not in answer
    assert_durable(recorder.calls, answer)
