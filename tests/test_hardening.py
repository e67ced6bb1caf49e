"""Every response carries the security headers, every API error has one shape, and hostile
requests (huge headers, long URLs, many ranges, active content) get a clear answer, not harm."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import tarfile

import pytest
from helpers import MD5_COLLISION_A, MD5_COLLISION_B, files_under, md5, multipart_body, staged

from bucketdav.store.files import remove_tree

ERROR_KEYS = {"code", "status", "error"}


@pytest.fixture
def filled(make_client):
    """A client over a store holding a text file, an HTML file, an SVG and a replica."""
    client = make_client(REPLICATE_0="u/${User}")
    for name, data in [
        ("notes.txt", b"plain"),
        ("page.html", b"<script>alert(document.cookie)</script>"),
        ("pic.svg", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'),
    ]:
        put = client.put(
            f"/upload/{name}", params=data, headers={"User": "bob"}, content_type="text/plain"
        )
        assert put.status_int == 200
    return client


def blob_url(data: bytes) -> str:
    digest = md5(data)
    return f"/blob/{digest[:2]}/{digest[2:4]}/{digest}"


def assert_security_headers(response, *, page: bool = False) -> None:
    """nosniff, no referrer, and a CSP: a sandbox unless it is one of our own pages."""
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    csp = response.headers["Content-Security-Policy"]
    if page:
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    else:
        assert csp.startswith("sandbox")


RESPONSE_KINDS = [
    ("GET", "/healthz", {}, 200, False),
    ("GET", "/config", {}, 200, False),
    ("GET", "/checksum/" + md5(b"plain"), {}, 200, False),
    ("HEAD", "/checksum/" + md5(b"plain"), {}, 200, False),
    ("GET", "/checksum/nothex", {}, 400, False),
    ("GET", "/nowhere-in-the-api/../upload/x", {}, 404, False),
    ("DELETE", "/upload", {}, 405, False),
    ("GET", "/upload", {}, 200, True),
    ("GET", blob_url(b"plain"), {}, 200, False),
    ("HEAD", blob_url(b"plain"), {}, 200, False),
    ("GET", blob_url(b"plain"), {"Range": "bytes=1-2"}, 206, False),
    ("GET", "/replica/u/bob/notes.latest.txt", {}, 200, False),
    ("GET", "/replica/u/bob/", {"Accept": "text/html"}, 200, True),
    ("GET", "/blob/00/00/missing", {}, 404, False),
    ("PROPFIND", "/", {"Depth": "1"}, 207, False),
    ("PROPFIND", "/", {"Depth": "infinity"}, 403, False),
    ("OPTIONS", "/", {}, 200, False),
    ("PUT", "/blob/x", {}, 405, False),
    ("DELETE", blob_url(b"plain"), {}, 405, False),
    ("MKCOL", "/replica/new", {}, 405, False),
]


@pytest.mark.parametrize(("method", "path", "headers", "status", "page"), RESPONSE_KINDS)
def test_hardening_security_headers_on_every_response_kind(
    filled, method, path, headers, status, page
):
    response = filled.request(path, method=method, headers=headers, expect_errors=True)
    if method in ("PUT", "DELETE", "MKCOL") and not path.startswith("/upload"):
        assert response.status_int in (403, 405)
    else:
        assert response.status_int == status
    assert_security_headers(response, page=page)


@pytest.mark.parametrize(
    ("path", "media"),
    [("page.latest.html", "text/html"), ("pic.latest.svg", "image/svg+xml")],
)
def test_hardening_uploaded_active_content_cannot_act_on_this_origin(filled, path, media):
    response = filled.get(f"/replica/u/bob/{path}")
    assert response.body.startswith(b"<")
    csp = response.headers["Content-Security-Policy"]
    # Sandboxed without allow-scripts or allow-same-origin: no script, no origin.
    assert csp.startswith("sandbox")
    assert "allow-scripts" not in csp and "allow-same-origin" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert (
        media in response.headers["Content-Type"]
        or "octet-stream" in (response.headers["Content-Type"])
    )


# -- one shape for every API error --------------------------------------------------------


def tar_leaving() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../outside/x.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


def raw(client, method, path, body=b"", **headers):
    return client.request(path, method=method, body=body, headers=headers, expect_errors=True)


def post_form(client, fields):
    body, ctype = multipart_body(fields)
    return raw(client, "POST", "/upload", body, **{"Content-Type": ctype})


ERROR_PATHS = {
    "400 no file part": (400, lambda c: post_form(c, [("other", None, b"x")])),
    "400 empty filename": (400, lambda c: post_form(c, [("file", "", b"x")])),
    "400 cut multipart": (
        400,
        lambda c: raw(
            c,
            "POST",
            "/upload",
            b"--b\r\nContent-Dis",
            **{"Content-Type": "multipart/form-data; boundary=b"},
        ),
    ),
    "400 no name in PUT": (400, lambda c: raw(c, "PUT", "/upload/", b"x")),
    "400 broken Content-MD5": (
        400,
        lambda c: raw(c, "PUT", "/upload/x", b"x", **{"Content-MD5": "nope"}),
    ),
    "400 not a digest": (400, lambda c: raw(c, "GET", "/checksum/zz")),
    "400 bad Content-Length": (
        400,
        lambda c: raw(c, "PUT", "/upload/x", b"", **{"Content-Length": "-1"}),
    ),
    "404 unknown checksum": (404, lambda c: raw(c, "GET", "/checksum/" + "0" * 32)),
    "404 deploy of unknown content": (
        404,
        lambda c: raw(
            c, "PUT", "/upload/x", b"", **{"X-Checksum-Deploy": "true", "X-Checksum": "1" * 32}
        ),
    ),
    "404 no such API path": (404, lambda c: raw(c, "GET", "/config/more")),
    "405 wrong method": (405, lambda c: raw(c, "PATCH", "/upload")),
    "409 md5 collision": (
        409,
        lambda c: (
            raw(c, "PUT", "/upload/a", MD5_COLLISION_A),
            raw(c, "PUT", "/upload/b", MD5_COLLISION_B),
        )[1],
    ),
    "411 no length": (411, lambda c: c.request("/upload/x", method="PUT", expect_errors=True)),
    "413 too large": (413, lambda c: raw(c, "PUT", "/upload/big", b"x" * 20_000)),
    "415 not multipart": (
        415,
        lambda c: raw(c, "POST", "/upload", b"x", **{"Content-Type": "text/plain"}),
    ),
    "422 checksum mismatch": (
        422,
        lambda c: raw(c, "PUT", "/upload/x", b"data", **{"X-Checksum-Md5": md5(b"other")}),
    ),
    "422 unsafe archive": (422, lambda c: raw(c, "PUT", "/upload/evil.tar", tar_leaving())),
}


@pytest.mark.parametrize("case", list(ERROR_PATHS))
def test_hardening_every_api_error_has_the_one_json_shape(make_client, store_root, tmp_path, case):
    code, send = ERROR_PATHS[case]
    client = make_client(MAX_CONTENT_LENGTH="16kb")
    response = send(client)
    assert response.status_int == code, response.text
    assert response.content_type == "application/json"
    body = json.loads(response.text)
    assert set(body) == ERROR_KEYS
    assert body["code"] == code
    assert body["status"] == response.status.split(" ", 1)[1]
    assert body["error"] and "Traceback" not in body["error"]
    assert_security_headers(response)
    assert staged(store_root) == []
    assert list((tmp_path / "outside").iterdir()) == []


def test_hardening_507_has_the_one_json_shape(make_client, store_root):
    client = make_client(BUCKETDAV_MIN_FREE="99%")
    response = raw(client, "PUT", "/upload/x", b"data")
    assert response.status_int == 507
    body = json.loads(response.text)
    assert set(body) == ERROR_KEYS and body["code"] == 507
    assert files_under(store_root / "blob") == []


# -- hostile requests to the real server --------------------------------------------------


def exchange(server, request: bytes) -> bytes:
    """Send raw bytes, return whatever the server answers before it closes or resets."""
    chunks = []
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        # The server may refuse and close before it has read everything we send.
        with contextlib.suppress(OSError):
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-Many: 1\r\n" * 20_000 + b"\r\n",
        b"GET /" + b"a/" * 40_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n",
        b"PUT /upload/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
    ],
    ids=["huge-header", "many-headers", "long-url", "bad-length", "bad-chunk", "tls-hello"],
)
def test_hardening_hostile_requests_get_4xx_and_the_server_lives(live_server, request_bytes):
    reply = exchange(live_server, request_bytes)
    assert reply.startswith(b"HTTP/1.1 4"), reply[:200]
    assert live_server.request("GET", "/healthz").status == 200
    assert files_under(live_server.root / "blob") == []


def test_hardening_many_ranges_are_answered_without_5xx(live_server):
    data = bytes(range(256)) * 400
    live_server.upload("ranges.bin", data)
    ranges = ",".join(f"{i}-{i}" for i in range(0, 20_000, 2))
    response = live_server.request(
        "GET", blob_url(data), headers={"Range": f"bytes={ranges}"[:8000]}
    )
    assert response.status in (200, 206, 416)
    if response.status == 200:
        assert response.body == data
    assert live_server.request("GET", "/healthz").status == 200


def test_hardening_archive_path_too_long_for_the_disk_is_422_not_500(make_client, store_root):
    client = make_client()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("/".join(["d"] * 2040) + "/f.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    try:
        response = raw(client, "PUT", "/upload/long.tar", buf.getvalue())
        assert response.status_int == 422, response.text
    finally:
        # pytest removes old temporary folders with shutil.rmtree, which recurses too deep.
        remove_tree(store_root)
