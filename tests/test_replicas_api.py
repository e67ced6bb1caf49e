"""Replicas through the API (WebTest): response paths and URLs, partial matches, hostile values."""

from __future__ import annotations

import gzip
import os
import re
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

import pytest
from helpers import multipart_body, tar_gz

TEMPLATES = {"REPLICATE_0": "user/${Username}/${Topic}"}
BOB = {"Username": "bob", "Topic": "demo"}


def put(client, name, data, headers, *, status=200):
    return client.put(
        f"/upload/{quote(name)}",
        params=data,
        headers=headers,
        status=status,
        content_type="application/octet-stream",
        expect_errors=True,
    )


def stamps_now() -> set[str]:
    return {datetime.now(UTC).strftime("%Y%m%d.%H%M")}


def path_of(url: str) -> str:
    return urlsplit(url).path


def test_upload_response_lists_replica_paths_and_urls(make_client, store_root):
    client = make_client(**TEMPLATES)
    before = stamps_now()
    body = put(client, "results.xml", b"<ok/>", BOB).json
    stamps = before | stamps_now()
    (path,) = body["path"]["replicas"]
    match = re.fullmatch(r"replica/user/bob/demo/results\.(\d{8}\.\d{4})\.0\.xml", path)
    assert match and match.group(1) in stamps
    assert body["url"]["replicas"] == [f"http://localhost:80/{path}"]
    assert body["skipped"] == []
    assert os.path.samestat(os.stat(store_root / path), os.stat(store_root / body["path"]["blob"]))


def test_upload_replica_and_latest_are_readable_over_webdav(make_client):
    client = make_client(**TEMPLATES)
    put(client, "results.xml", b"first", BOB)
    url = put(client, "results.xml", b"second", BOB).json["url"]["replicas"][0]
    assert url.endswith(".1.xml")
    assert client.get(path_of(url)).body == b"second"
    assert client.get("/replica/user/bob/demo/results.latest.xml").body == b"second"


def test_upload_post_multipart_replicates_too(make_client):
    client = make_client(**TEMPLATES)
    body, content_type = multipart_body([("file", "report.html", b"<p>hi</p>")])
    resp = client.request(
        "/upload", method="POST", body=body, headers={"Content-Type": content_type, **BOB}
    )
    (path,) = resp.json["path"]["replicas"]
    assert re.fullmatch(r"replica/user/bob/demo/report\.\d{8}\.\d{4}\.0\.html", path)


def test_upload_replica_paths_carry_archive_uri(make_client):
    client = make_client(ARCHIVE_URI="https://files.example/bucket/", **TEMPLATES)
    body = put(client, "a.txt", b"a", BOB).json
    assert body["path"]["replicas"][0].startswith("https://files.example/bucket/replica/user/bob/")
    assert body["url"]["replicas"][0].startswith("http://localhost:80/replica/user/bob/demo/a.")


def test_upload_partial_match_is_reported_and_still_succeeds(make_client, store_root):
    client = make_client(REPLICATE_3="job/${Job}/${Username}", **TEMPLATES)
    resp = put(client, "a.txt", b"a", {"username": "bob", "TOPIC": "demo"})
    assert resp.status_int == 200
    assert len(resp.json["path"]["replicas"]) == 1
    assert resp.json["skipped"] == ["REPLICATE_3 job/${Job}/${Username}: missing header Job"]
    assert not (store_root / "replica" / "job").exists()


def test_upload_without_replication_headers_has_no_replicas(make_client, store_root):
    resp = put(make_client(**TEMPLATES), "a.txt", b"a", {})
    assert resp.json["path"]["replicas"] is None and resp.json["url"]["replicas"] is None
    assert resp.json["skipped"] == [
        "REPLICATE_0 user/${Username}/${Topic}: missing header Username, Topic"
    ]
    assert list((store_root / "replica").iterdir()) == []


HOSTILE = [
    "../../etc",
    "..",
    ".",
    "a/b",
    "a\\b",
    "%2e%2e",
    "%2F..%2F",
    ".hidden",
    "/etc/passwd",
    "x" * 200,
    "b\u00f8b \u65e5\u672c".encode().decode("latin-1"),  # UTF-8 bytes, as WSGI carries them
]


@pytest.mark.parametrize("value", HOSTILE)
def test_upload_hostile_header_value_is_one_segment_inside_replica(make_client, store_root, value):
    client = make_client(**TEMPLATES)
    resp = put(client, "a.txt", b"hostile", {"Username": "bob", "Topic": value})
    assert resp.status_int == 200
    (path,) = resp.json["path"]["replicas"]
    parts = path.split("/")
    assert parts[:3] == ["replica", "user", "bob"] and len(parts) == 5
    assert parts[3] not in (".", "..") and not parts[3].startswith(".")
    assert [p.name for p in (store_root / "replica" / "user" / "bob").iterdir()] == [parts[3]]
    assert os.path.realpath(store_root / path).startswith(str(store_root / "replica") + os.sep)
    assert list((store_root.parent / "outside").iterdir()) == []
    assert client.get(path_of(resp.json["url"]["replicas"][0])).body == b"hostile"


def test_upload_non_ascii_header_value_names_the_folder_in_utf8(make_client, store_root):
    client = make_client(**TEMPLATES)
    topic = "d\u00e9mo \u65e5\u672c"
    resp = put(
        client, "a.txt", b"x", {"Username": "bob", "Topic": topic.encode().decode("latin-1")}
    )
    assert resp.json["path"]["replicas"][0].startswith(f"replica/user/bob/{topic}/")
    assert (store_root / "replica" / "user" / "bob" / topic).is_dir()


def test_upload_ten_kilobyte_header_value_skips_that_replica(make_client, store_root):
    client = make_client(REPLICATE_1="all/${Username}", **TEMPLATES)
    resp = put(client, "a.txt", b"x", {"Username": "bob", "Topic": "t" * 10_240})
    assert resp.status_int == 200
    assert [p.split("/")[1] for p in resp.json["path"]["replicas"]] == ["all"]
    assert resp.json["skipped"] == [
        "REPLICATE_0 user/${Username}/${Topic}: header Topic: the value is longer than 200 bytes"
    ]
    assert not (store_root / "replica" / "user").exists()


def test_upload_header_value_that_is_not_utf8_is_not_a_5xx(make_client, store_root):
    client = make_client(**TEMPLATES)
    resp = put(client, "a.txt", b"x", {"Username": "bob", "Topic": "b\xffb"})
    assert resp.status_int == 200
    assert resp.json["path"]["replicas"][0].startswith("replica/user/bob/b%FFb/")


def test_upload_archive_replica_is_a_browsable_tree_named_without_suffix(make_client, store_root):
    client = make_client(**TEMPLATES)
    data = tar_gz({"site/index.html": b"<h1>one</h1>", "notes.txt": b"notes"})
    body = put(client, "results.tar.gz", data, BOB).json
    (path,) = body["path"]["replicas"]
    assert re.fullmatch(r"replica/user/bob/demo/results\.\d{8}\.\d{4}\.0", path)
    link = store_root / path
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert os.path.realpath(link) == os.path.realpath(store_root / body["path"]["archive"])
    assert body["url"]["replicas"] == [f"http://localhost:80/{path}/"]
    assert client.get(f"/{path}/notes.txt").body == b"notes"
    assert client.get("/replica/user/bob/demo/results.latest/site/index.html").body == (
        b"<h1>one</h1>"
    )


def test_upload_archive_latest_moves_to_the_newest_tree(make_client, store_root):
    client = make_client(**TEMPLATES)
    put(client, "results.tgz", tar_gz({"v.txt": b"1"}), BOB)
    body = put(client, "results.tgz", tar_gz({"v.txt": b"2"}), BOB).json
    assert body["path"]["replicas"][0].endswith(".1")
    latest = store_root / "replica/user/bob/demo/results.latest"
    assert os.readlink(latest) == body["path"]["replicas"][0].rsplit("/", 1)[1]
    assert client.get("/replica/user/bob/demo/results.latest/v.txt").body == b"2"


def test_upload_compressed_file_replica_keeps_its_name(make_client, store_root):
    client = make_client(**TEMPLATES)
    body = put(client, "data.json.gz", gzip.compress(b'{"a": 1}'), BOB).json
    assert body["path"]["decompressed"] and body["path"]["archive"] is None
    (path,) = body["path"]["replicas"]
    assert re.fullmatch(r"replica/user/bob/demo/data\.json\.\d{8}\.\d{4}\.0\.gz", path)
    assert os.path.samestat(os.stat(store_root / path), os.stat(store_root / body["path"]["blob"]))


def test_upload_replica_folder_lists_over_propfind(make_client):
    client = make_client(**TEMPLATES)
    name = put(client, "a.txt", b"x", BOB).json["path"]["replicas"][0].rsplit("/", 1)[1]
    resp = client.request(
        "/replica/user/bob/demo/", method="PROPFIND", headers={"Depth": "1"}, expect_errors=True
    )
    assert resp.status_int == 207
    assert f"/replica/user/bob/demo/{name}" in resp.text
    assert "/replica/user/bob/demo/a.latest.txt" in resp.text


def test_upload_archive_latest_shows_as_a_folder_over_propfind(make_client):
    client = make_client(**TEMPLATES)
    name = put(client, "results.tgz", tar_gz({"v.txt": b"1"}), BOB).json["path"]["replicas"][0]
    resp = client.request(
        "/replica/user/bob/demo/", method="PROPFIND", headers={"Depth": "1"}, expect_errors=True
    )
    assert resp.status_int == 207
    assert f"/{name}/<" in resp.text
    assert "/replica/user/bob/demo/results.latest/<" in resp.text
    inside = client.request(
        "/replica/user/bob/demo/results.latest/", method="PROPFIND", headers={"Depth": "1"}
    )
    assert "/replica/user/bob/demo/results.latest/v.txt<" in inside.text
