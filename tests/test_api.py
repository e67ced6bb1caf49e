"""The upload, checksum, config and health API at the WSGI level (WebTest)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat

import pytest
from helpers import (
    MD5_COLLISION_A,
    MD5_COLLISION_B,
    assert_blobs_sound,
    files_under,
    md5,
    multipart_body,
    own_staging,
    staged,
)

ERROR_KEYS = {"code", "status", "error"}


def put(client, name, data, *, status=200, headers=None):
    return client.put(
        f"/upload/{name}",
        params=data,
        headers=headers or {},
        status=status,
        content_type="application/octet-stream",
    )


def post_file(client, filename, data, *, status=200, headers=None, name="file"):
    body, content_type = multipart_body([(name, filename, data)])
    return post_raw(client, body, content_type, status=status, headers=headers)


def post_raw(client, body, content_type, *, status=200, headers=None):
    # WebTest re-encodes a multipart body given to post(); request() sends these exact bytes.
    resp = client.request(
        "/upload",
        method="POST",
        body=body,
        expect_errors=True,
        headers={"Content-Type": content_type, **(headers or {})},
    )
    assert resp.status_int == status, resp.text
    return resp


def assert_error(resp, code):
    assert resp.status_int == code
    assert resp.content_type == "application/json"
    body = resp.json
    assert set(body) == ERROR_KEYS
    assert body["code"] == code
    assert body["error"]
    return body


def test_upload_post_multipart_stores_blob(client, store_root):
    resp = post_file(client, "results.xml", b"<ok/>")
    body = resp.json
    digest = md5(b"<ok/>")
    assert body["code"] == 200 and body["status"] == "Success"
    assert body["checksum"] == {"blob": digest, "decompressed": None, "archive": None}
    assert body["path"]["blob"] == f"blob/{digest[:2]}/{digest[2:4]}/{digest}"
    assert body["path"]["replicas"] is None
    assert body["url"]["blob"] == f"http://localhost:80/blob/{digest[:2]}/{digest[2:4]}/{digest}"
    assert body["size"] == 5 and body["algorithm"] == "md5"
    blob = store_root / body["path"]["blob"]
    assert blob.read_bytes() == b"<ok/>"
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444


def test_upload_put_raw_body(client, store_root):
    body = put(client, "build.log", b"line\n" * 100).json
    assert body["checksum"]["blob"] == md5(b"line\n" * 100)
    assert body["filename"] == "build.log"
    assert staged(store_root) == []


def test_upload_same_content_is_stored_once(client, store_root):
    first = put(client, "a.txt", b"same").json
    second = post_file(client, "b.txt", b"same").json
    assert first["path"]["blob"] == second["path"]["blob"]
    assert first["created"] is True and second["created"] is False
    assert len(files_under(store_root / "blob")) == 1


def test_upload_empty_file_is_content(client):
    assert put(client, "empty", b"").json["checksum"]["blob"] == md5(b"")


def test_upload_post_without_file_part_is_400(client):
    assert_error(post_file(client, "x.txt", b"data", name="other", status=400), 400)


def test_upload_post_empty_filename_is_400(client):
    assert_error(post_file(client, "", b"data", status=400), 400)


def test_upload_post_two_file_parts_is_400(client, store_root):
    body, ctype = multipart_body([("file", "a", b"1"), ("file", "b", b"2")])
    resp = post_raw(client, body, ctype, status=400)
    assert "one part" in assert_error(resp, 400)["error"]
    assert files_under(store_root / "blob") == []


def test_upload_post_not_multipart_is_415(client):
    resp = post_raw(client, b"raw", "text/plain", status=415)
    assert "multipart" in assert_error(resp, 415)["error"]


def test_upload_post_truncated_multipart_is_400_and_keeps_nothing(client, store_root):
    body, ctype = multipart_body([("file", "a.bin", b"x" * 1000)])
    resp = post_raw(client, body[:-40], ctype, status=400)
    assert_error(resp, 400)
    assert files_under(store_root / "blob") == []
    assert staged(store_root) == []


def test_upload_put_without_name_is_400(client):
    assert_error(client.put("/upload/", params=b"x", status=400), 400)
    assert_error(client.put("/upload", params=b"x", status=400), 400)


def test_upload_put_larger_than_limit_is_413_before_storing(make_client, store_root):
    client = make_client(MAX_CONTENT_LENGTH="1kb")
    resp = put(client, "big", b"x" * 1025, status=413)
    assert "1kb" in assert_error(resp, 413)["error"]
    assert files_under(store_root / "blob") == []
    assert staged(store_root) == []
    put(client, "fits", b"x" * 1024)


def test_upload_post_larger_than_limit_is_413(make_client, store_root):
    client = make_client(MAX_CONTENT_LENGTH="1kb")
    assert_error(post_file(client, "big", b"x" * 1025, status=413), 413)
    assert files_under(store_root / "blob") == []
    post_file(client, "fits", b"x" * 1024)


@pytest.mark.parametrize(
    ("header", "value_of"),
    [
        ("Content-MD5", lambda d: base64.b64encode(hashlib.md5(d).digest()).decode()),  # noqa: S324
        ("X-Checksum", lambda d: hashlib.md5(d).hexdigest()),  # noqa: S324
        ("X-Checksum-Md5", lambda d: hashlib.md5(d).hexdigest()),  # noqa: S324
        ("X-Checksum-Sha1", lambda d: hashlib.sha1(d).hexdigest()),  # noqa: S324
        ("X-Checksum-Sha256", lambda d: hashlib.sha256(d).hexdigest()),
    ],
)
def test_upload_checksum_headers_are_verified(client, store_root, header, value_of):
    put(client, "good", b"payload", headers={header: value_of(b"payload")})
    resp = put(client, "bad", b"tampered", headers={header: value_of(b"payload")}, status=422)
    assert "nothing was kept" in assert_error(resp, 422)["error"]
    assert [p.name for p in files_under(store_root / "blob")] == [md5(b"payload")]
    resp = post_file(client, "bad", b"tampered", headers={header: value_of(b"payload")}, status=422)
    assert_error(resp, 422)
    assert staged(store_root) == []


def test_upload_malformed_checksum_header_is_400(client, store_root):
    assert_error(put(client, "x", b"x", headers={"X-Checksum": "zz"}, status=400), 400)
    assert_error(put(client, "x", b"x", headers={"Content-MD5": "!!"}, status=400), 400)
    assert files_under(store_root / "blob") == []


def test_upload_deploy_by_checksum_unknown_is_404(client):
    headers = {"X-Checksum-Deploy": "true", "X-Checksum": md5(b"never sent")}
    assert_error(put(client, "a.txt", b"", headers=headers, status=404), 404)


def test_upload_deploy_by_checksum_known_is_processed(client):
    put(client, "orig.txt", b"known bytes")
    headers = {"X-Checksum-Deploy": "true", "X-Checksum-Md5": md5(b"known bytes")}
    body = put(client, "again.txt", b"", headers=headers).json
    assert body["checksum"]["blob"] == md5(b"known bytes")
    assert body["filename"] == "again.txt" and body["size"] == len(b"known bytes")


def test_upload_deploy_by_checksum_without_checksum_is_400(client):
    assert_error(put(client, "a", b"", headers={"X-Checksum-Deploy": "true"}, status=400), 400)


def test_upload_md5_collision_is_409_and_keeps_stored_blob(client, store_root):
    assert md5(MD5_COLLISION_A) == md5(MD5_COLLISION_B)
    put(client, "a.bin", MD5_COLLISION_A)
    resp = put(client, "b.bin", MD5_COLLISION_B, status=409)
    assert "different content" in assert_error(resp, 409)["error"]
    blobs = files_under(store_root / "blob")
    assert len(blobs) == 1 and blobs[0].read_bytes() == MD5_COLLISION_A
    assert staged(store_root) == []


def test_upload_strong_checksum_type_names_blobs(make_client, store_root):
    client = make_client(CHECKSUM_TYPE="sha256")
    body = put(client, "x", b"abc").json
    assert body["algorithm"] == "sha256"
    assert body["checksum"]["blob"] == hashlib.sha256(b"abc").hexdigest()
    assert_blobs_sound(store_root, "sha256")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\report.txt", "report.txt"),
        ("..", "upload"),
        ("a\x01b", "a%01b"),
        (".hidden", "%2Ehidden"),
        ("résumé.pdf", "résumé.pdf"),
    ],
)
def test_upload_filename_becomes_one_safe_segment(client, raw, expected):
    assert post_file(client, raw, b"data").json["filename"] == expected


def test_upload_overlong_filename_is_shortened_keeping_suffix(client):
    name = post_file(client, "n" * 1000 + ".xml", b"data").json["filename"]
    assert name.endswith(".xml") and len(name.encode()) <= 200


def test_upload_put_non_utf8_name_is_encoded_not_dropped(client):
    assert put(client, "caf%E9.txt", b"x").json["filename"] == "caf%E9.txt"
    assert put(client, "caf%C3%A9.txt", b"x").json["filename"] == "café.txt"
    assert put(client, "dir/sub/name.txt", b"x").json["filename"] == "name.txt"


def test_upload_archive_uri_prefixes_paths(make_client):
    client = make_client(ARCHIVE_URI="https://files.example/bucket/")
    body = put(client, "x", b"abc").json
    assert body["path"]["blob"].startswith("https://files.example/bucket/blob/")
    assert body["url"]["blob"].startswith("http://localhost:80/blob/")


def test_checksum_head_and_get(client):
    put(client, "x", b"abc")
    digest = md5(b"abc")
    assert client.head(f"/checksum/{digest}").status_int == 200
    assert client.head(f"/checksum/{digest.upper()}").status_int == 200
    body = client.get(f"/checksum/{digest}").json
    assert body == {
        "checksum": digest,
        "algorithm": "md5",
        "size": 3,
        "path": f"blob/{digest[:2]}/{digest[2:4]}/{digest}",
        "url": f"http://localhost:80/blob/{digest[:2]}/{digest[2:4]}/{digest}",
    }


def test_checksum_unknown_is_404_and_malformed_is_400(client):
    assert client.head(f"/checksum/{md5(b'nope')}", status=404).status_int == 404
    assert_error(client.get(f"/checksum/{md5(b'nope')}", status=404), 404)
    for bad in ("abc", "z" * 32, md5(b"x") + "00"):
        assert_error(client.get(f"/checksum/{bad}", status=400), 400)
        assert client.head(f"/checksum/{bad}", status=400).status_int == 400


def test_config_shows_effective_settings(make_client, store_root):
    client = make_client(MAX_CONTENT_LENGTH="5MB", REPLICATE_0="user/${Username}")
    body = client.get("/config").json
    assert body["ARCHIVE_DIR"] == str(store_root)
    assert body["MAX_CONTENT_LENGTH"] == 5 * 1024 * 1024
    assert body["CHECKSUM_TYPE"] == "md5"
    assert body["REPLICATE_0"] == "user/${Username}"
    assert body["replication"] == [
        {"variable": "REPLICATE_0", "template": "user/${Username}", "headers": ["Username"]}
    ]


def test_healthz_ok_then_503_when_store_unwritable(client, store_root):
    assert client.get("/healthz").json["status"] == "ok"
    os.rmdir(own_staging(store_root))
    own_staging(store_root).write_bytes(b"not a directory")
    assert client.get("/healthz", status=503).status_int == 503


def test_upload_page_is_a_working_form(client):
    page = client.get("/upload")
    assert page.content_type == "text/html"
    form = page.forms[0]
    assert form.method.lower() == "post" and form.action == "/upload"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("DELETE", "/upload", 405),
        ("GET", "/checksum/", 404),
        ("POST", "/config", 405),
        ("GET", "/upload/x/y", 405),
    ],
)
def test_api_routing_errors_are_json(client, method, path, code):
    assert_error(client.request(path, method=method, expect_errors=True), code)


def test_api_every_response_has_security_headers(client):
    for resp in (
        client.get("/config"),
        client.get("/nope-not-api", expect_errors=True),
        put(client, "x", b"x"),
        client.get("/checksum/zz", status=400),
    ):
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert "Content-Security-Policy" in resp.headers


def test_api_error_body_is_never_a_traceback(client):
    resp = post_raw(client, b"--x\r\ngarbage", "multipart/form-data; boundary=x", status=400)
    assert "Traceback" not in resp.text
    json.loads(resp.text)


def test_upload_below_free_space_watermark_is_507_and_healthz_503(make_client, store_root):
    client = make_client(BUCKETDAV_MIN_FREE="99%")
    assert "keeps" in assert_error(put(client, "x", b"data", status=507), 507)["error"]
    assert files_under(store_root / "blob") == []
    assert client.get("/healthz", status=503).json["status"] == "unavailable"


def test_upload_disk_full_while_writing_is_507_and_keeps_nothing(client, store_root, monkeypatch):
    import errno

    real_write = os.write

    def full(fd, data):
        if len(data) > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    assert_error(put(client, "big", b"x" * 5000, status=507), 507)
    monkeypatch.undo()
    assert files_under(store_root / "blob") == []
    assert staged(store_root) == []


def test_upload_put_without_length_is_411(client):
    resp = client.request("/upload/x", method="PUT", expect_errors=True)
    assert_error(resp, 411)


def test_upload_post_non_utf8_filename_is_kept_as_one_segment(client, store_root):
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="caf\xe9.txt"\r\n\r\n'
        b"data\r\n--b--\r\n"
    )
    resp = post_raw(client, body, "multipart/form-data; boundary=b")
    assert resp.json["filename"] == "caf%E9.txt"
    utf8 = body.replace(b"caf\xe9", "café".encode())
    assert post_raw(client, utf8, "multipart/form-data; boundary=b").json["filename"] == "café.txt"


def test_upload_disk_full_in_the_writer_thread_is_507(client, store_root, monkeypatch):
    import errno

    real_write = os.write
    written = [0]

    def fills_up(fd, data):
        if written[0] > 1024 * 1024:
            raise OSError(errno.ENOSPC, "No space left on device")
        written[0] += len(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", fills_up)
    resp = client.put(
        "/upload/big.bin",
        params=b"z" * (4 * 1024 * 1024),
        status=507,
        content_type="application/octet-stream",
    )
    monkeypatch.undo()
    assert_error(resp, 507)
    assert written[0] > 256 * 1024  # large chunks went through the writer thread
    assert files_under(store_root / "blob") == []
    assert staged(store_root) == []
