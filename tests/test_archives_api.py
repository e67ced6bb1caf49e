"""Archives through the API: the response fields, 422 refusals, repeats, concurrency, EMLINK."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import threading
from pathlib import Path

import pytest
from helpers import MD5_COLLISION_A, MD5_COLLISION_B, staged
from test_archives import (
    D,
    F,
    S,
    T,
    make_source_tree,
    pack_tar,
    snapshot,
    tar_bytes,
    zip_bytes,
)

MiB = 1 << 20


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324 - the store's default checksum


def put(client, name, data, *, status=200):
    return client.put(
        f"/upload/{name}", params=data, status=status, content_type="application/octet-stream"
    )


def test_archives_api_tgz_fills_the_response_and_the_tree(client, store_root, tmp_path):
    source = make_source_tree(tmp_path / "src")
    data = pack_tar(source, "gz")
    body = put(client, "src.tgz", data).json
    tar_sum = body["checksum"]["decompressed"]
    assert body["checksum"] == {"blob": md5(data), "decompressed": tar_sum, "archive": tar_sum}
    assert body["path"]["archive"] == f"explode/{tar_sum[:2]}/{tar_sum[2:4]}/{tar_sum}"
    assert body["path"]["decompressed"] == f"blob/{tar_sum[:2]}/{tar_sum[2:4]}/{tar_sum}"
    assert body["url"]["archive"] == f"http://localhost:80/{body['path']['archive']}/"
    assert body["files"] == 9
    tree = store_root / body["path"]["archive"]
    assert snapshot(tree) == snapshot(source)
    readme = store_root / "blob" / md5(b"# demo\n")[:2] / md5(b"# demo\n")[2:4] / md5(b"# demo\n")
    assert os.stat(tree / "README.md").st_ino == os.stat(readme).st_ino
    got = client.get("/" + body["path"]["archive"] + "/src/main.py")
    assert got.body == (source / "src" / "main.py").read_bytes()


def test_archives_api_tree_is_listed_over_webdav(client):
    body = put(
        client, "site.tgz", tar_bytes([F("index.html", b"<p>"), D("img")], compression="gz")
    ).json
    tree = "/" + body["path"]["archive"] + "/"
    listing = client.request(tree, method="PROPFIND", headers={"Depth": "1"}, status=207)
    assert f"{tree}index.html".encode() in listing.body
    assert f"{tree}img/".encode() in listing.body
    parent = tree.rsplit("/", 2)[0] + "/"
    assert (
        tree.encode()
        in client.request(parent, method="PROPFIND", headers={"Depth": "1"}, status=207).body
    )


def test_archives_api_zip_names_its_tree_by_the_zip(client, store_root):
    data = zip_bytes([F("a/b.txt", b"b"), D("c")])
    body = put(client, "x.zip", data).json
    assert body["checksum"] == {"blob": md5(data), "decompressed": None, "archive": md5(data)}
    assert sorted(p.name for p in (store_root / body["path"]["archive"]).iterdir()) == ["a", "c"]


def test_archives_api_plain_gzip_gets_a_decompressed_blob(client, store_root):
    import gzip

    body = put(client, "log.gz", gzip.compress(b"line\n" * 1000)).json
    assert body["checksum"]["decompressed"] == md5(b"line\n" * 1000)
    assert body["checksum"]["archive"] is None and body["files"] is None
    assert (store_root / body["path"]["decompressed"]).read_bytes() == b"line\n" * 1000


@pytest.mark.parametrize(
    ("members", "member"),
    [
        ([F("/tmp/bucketdav-archive-escape")], "/tmp/bucketdav-archive-escape"),
        ([F("../outside/evil")], "../outside/evil"),
        ([S("l", "../outside")], "l"),
        (
            [D("a"), S("a/l1", ".."), S("a/l2", "l1/.."), F("a/l2/outside/evil")],
            "a/l2/outside/evil",
        ),
        ([T("dev/null", "chr")], "dev/null"),
        ([F("a"), F("a/b")], "a/b"),
    ],
)
def test_archives_api_unsafe_archive_is_422_and_keeps_the_blob(client, store_root, members, member):
    data = tar_bytes(members, compression="gz")
    resp = put(client, "evil.tgz", data, status=422)
    body = resp.json
    assert resp.content_type == "application/json"
    assert set(body) == {"code", "status", "error"} and body["code"] == 422
    assert f"'{member}'" in body["error"]
    client.head(f"/checksum/{md5(data)}", status=200)
    assert staged(store_root) == []
    assert list((store_root / "explode").iterdir()) == []
    assert list((store_root.parent / "outside").iterdir()) == []
    assert not Path("/tmp/bucketdav-archive-escape").exists()


def test_archives_api_bomb_is_422(make_client, store_root):
    client = make_client(BUCKETDAV_EXTRACT_MAX_BYTES="1mb")
    data = zip_bytes([F("zeros", bytes(16 * MiB))])
    body = put(client, "bomb.zip", data, status=422).json
    assert "'zeros'" in body["error"] and "BUCKETDAV_EXTRACT_MAX_BYTES" in body["error"]
    assert list((store_root / "explode").iterdir()) == []


def test_archives_api_too_many_members_is_422(make_client):
    client = make_client(BUCKETDAV_EXTRACT_MAX_FILES="3")
    body = put(client, "many.tar", tar_bytes([F(f"f{i}") for i in range(4)]), status=422).json
    assert "'f3'" in body["error"] and "BUCKETDAV_EXTRACT_MAX_FILES" in body["error"]


def test_archives_api_truncated_archive_is_422_not_500(client):
    data = tar_bytes([F("a", os.urandom(20_000))], compression="gz")
    body = put(client, "cut.tgz", data[: len(data) // 2], status=422).json
    assert "truncated or malformed" in body["error"] and "'cut.tgz'" in body["error"]


def test_archives_api_member_colliding_with_a_stored_blob_is_409(client, store_root):
    put(client, "a.bin", MD5_COLLISION_A)
    body = put(client, "b.tar", tar_bytes([F("b.bin", MD5_COLLISION_B)]), status=409).json
    assert "already stored with different content" in body["error"]
    blob = store_root / "blob" / md5(MD5_COLLISION_A)[:2] / md5(MD5_COLLISION_A)[2:4]
    assert (blob / md5(MD5_COLLISION_A)).read_bytes() == MD5_COLLISION_A
    assert list((store_root / "explode").iterdir()) == []
    assert staged(store_root) == []


@pytest.mark.parametrize(("pack", "name"), [(tar_bytes, "pair.tar"), (zip_bytes, "pair.zip")])
@pytest.mark.parametrize("size", [128, 2 * MiB], ids=["small", "streamed"])
def test_archives_api_members_colliding_with_each_other_are_409(
    client, store_root, pack, name, size
):
    # Both halves of the pair, grown alike (same suffix keeps the MD5s equal), in one archive.
    suffix = b"\0" * (size - len(MD5_COLLISION_A))
    first, second = MD5_COLLISION_A + suffix, MD5_COLLISION_B + suffix
    assert md5(first) == md5(second) and first != second
    data = pack([F("a.bin", first), F("b.bin", second)])
    body = put(client, name, data, status=409).json
    assert "already stored with different content" in body["error"]
    assert list((store_root / "explode").iterdir()) == []
    assert staged(store_root) == []
    held = store_root / "blob" / md5(first)[:2] / md5(first)[2:4] / md5(first)
    assert not held.exists() or held.read_bytes() == first


def test_archives_api_repeat_upload_does_not_extract_again(client, store_root, monkeypatch):
    data = tar_bytes([F("a", b"1"), F("d/b", b"2")], compression="gz")
    first = put(client, "x.tgz", data).json
    tree = store_root / first["path"]["archive"]
    inode = tree.stat().st_ino
    monkeypatch.setattr(
        "bucketdav.uploads.archives.extract.TreeBuilder", None
    )  # would fail if used
    second = put(client, "again.tgz", data).json
    assert second["path"]["archive"] == first["path"]["archive"] and second["files"] == 2
    assert tree.stat().st_ino == inode


def test_archives_api_concurrent_identical_uploads_make_one_tree(live_server):
    data = tar_bytes(
        [F(f"d{i % 7}/f{i}", str(i).encode() * 50) for i in range(300)], compression="gz"
    )
    barrier = threading.Barrier(6)
    answers: list = []

    def upload() -> None:
        barrier.wait(10)
        answers.append(live_server.upload("same.tgz", data))

    threads = [threading.Thread(target=upload) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [a.status for a in answers] == [200] * 6
    assert len({a.json()["path"]["archive"] for a in answers}) == 1
    assert {a.json()["files"] for a in answers} == {300}
    root = live_server.root
    assert len(list((root / "explode").glob("*/*/*"))) == 1
    assert staged(root) == []
    tree = root / answers[0].json()["path"]["archive"]
    assert (tree / "d3" / "f10").read_bytes() == b"10" * 50


@pytest.mark.slow
def test_archives_api_emlink_falls_back_to_copies(client, store_root):
    # ext4 allows 65,000 links per inode; 70,000 empty files all have the empty blob's content.
    count = 70_000
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for i in range(count):
            tar.addfile(tarfile.TarInfo(f"d{i % 100}/e{i}"))
    body = put(client, "empties.tgz", buf.getvalue()).json
    assert body["files"] == count
    tree = store_root / body["path"]["archive"]
    empty_blob = store_root / "blob" / md5(b"")[:2] / md5(b"")[2:4] / md5(b"")
    blob_inode = os.stat(empty_blob).st_ino
    linked = copies = 0
    for i in range(count):
        info = os.stat(tree / f"d{i % 100}" / f"e{i}")
        assert info.st_size == 0
        if info.st_ino == blob_inode:
            linked += 1
        else:
            copies += 1
            assert stat.S_IMODE(info.st_mode) == 0o444
    assert linked + copies == count
    if os.stat(empty_blob).st_nlink < count:  # the file system has a link limit below 70,000
        assert copies > 0
    assert staged(store_root) == []
