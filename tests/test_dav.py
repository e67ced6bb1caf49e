"""Read-only WebDAV conformance at the WSGI level: methods, paths, PROPFIND, GET."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote
from xml.etree import ElementTree

import pytest
import webtest
from defusedxml.ElementTree import fromstring as defused_fromstring

from bucketdav.dav.app import MAX_BODY, make_dav_app
from bucketdav.dav.get import Unsatisfiable, parse_range
from bucketdav.dav.lookup import PublicTree, confine, split_path
from bucketdav.store.blobs import Store
from tests.conftest import make_settings

NS = {"D": "DAV:", "oc": "http://owncloud.org/ns", "x": "urn:x"}
PROP_BODY = (
    b'<?xml version="1.0"?><d:propfind xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns">'
    b"<d:prop><d:getcontentlength/><d:getetag/><d:resourcetype/><oc:checksums/>"
    b"<d:getlastmodified/><x:odd xmlns:x='urn:x'/></d:prop></d:propfind>"
)
WRITE_METHODS = ("PUT", "DELETE", "MKCOL", "COPY", "MOVE", "PROPPATCH", "LOCK", "UNLOCK", "POST")


class Layout:
    """A store with a blob, an extracted tree, replicas and hostile links around them."""

    def __init__(self, root: Path) -> None:
        self.store = Store(root, "md5")
        self.store.open()
        self.hello = self.store.ingest([b"hello world\n"])
        self.page = self.store.ingest([b"<script>alert(1)</script>"])
        self.tree = self.store.tree_path("ab" * 16)
        (self.tree / "sub").mkdir(parents=True)
        self.store.place(self.hello.path, self.tree / "sub" / "hello.txt")
        self.store.place(self.page.path, self.tree / "page.html")
        os.symlink("sub/hello.txt", self.tree / "inner-link.txt")
        os.symlink("/etc", self.tree / "etc")
        os.symlink("../../../../../staging", self.tree / "staging-link")
        os.symlink("missing", self.tree / "dangling")
        os.symlink(".", self.tree / "self")
        os.symlink("..", self.tree / "sub" / "up")
        (root / "staging" / "secret.txt").write_bytes(b"private")
        (root.parent / "outside").mkdir(exist_ok=True)
        (root.parent / "outside" / "x.txt").write_bytes(b"outside")
        topic = root / "replica" / "user" / "bob"
        topic.mkdir(parents=True)
        self.store.place(self.hello.path, topic / "hello.20260101.0000.0.txt")
        os.symlink("hello.20260101.0000.0.txt", topic / "hello.latest.txt")
        os.symlink(os.path.relpath(self.tree, topic), topic / "archive.latest")
        os.symlink(os.path.relpath(root / "staging", topic), topic / "to-staging")
        os.symlink(os.path.relpath(root.parent / "outside", topic), topic / "to-outside")
        self.tree_url = "/" + self.store.relative(self.tree)


@pytest.fixture
def layout(store_root: Path) -> Layout:
    return Layout(store_root)


@pytest.fixture(params=[True, False], ids=["fast", "wsgidav"])
def dav(request: pytest.FixtureRequest, layout: Layout) -> webtest.TestApp:
    app = make_dav_app(make_settings(layout.store.root), layout.store, fast=request.param)
    return webtest.TestApp(app, lint=False)


@pytest.fixture
def fast_dav(layout: Layout) -> webtest.TestApp:
    return webtest.TestApp(make_dav_app(make_settings(layout.store.root), layout.store), lint=False)


def propfind(
    app: webtest.TestApp,
    path: str,
    depth: str | None = "1",
    body: bytes = b"",
    status: int | str = 207,
) -> webtest.TestResponse:
    headers = {"Depth": depth} if depth is not None else {}
    if body:
        headers["Content-Type"] = "application/xml"
    return app.request(path, method="PROPFIND", headers=headers, body=body, status=status)


def responses(resp: webtest.TestResponse) -> dict[str, ElementTree.Element]:
    root = defused_fromstring(resp.body)
    return {r.findtext("D:href", namespaces=NS): r for r in root.findall("D:response", NS)}


def prop_text(response: ElementTree.Element, name: str) -> str | None:
    for propstat in response.findall("D:propstat", NS):
        if "200" in (propstat.findtext("D:status", namespaces=NS) or ""):
            element = propstat.find(f"D:prop/{name}", NS)
            if element is not None:
                return "".join(element.itertext())
    return None


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def test_dav_root_lists_only_public_trees(dav):
    hrefs = set(responses(propfind(dav, "/")))
    assert hrefs == {"/", "/blob/", "/explode/", "/replica/"}


@pytest.mark.parametrize(
    "path",
    [
        "/staging/",
        "/staging/secret.txt",
        "/blob/../staging/",
        "/blob/%2e%2e/staging/secret.txt",
        "/%2e%2e/outside/x.txt",
        "//etc/passwd",
        "/etc/passwd",
        "/replica/user/bob/to-staging/",
        "/replica/user/bob/to-outside/x.txt",
    ],
)
def test_dav_hidden_paths_are_not_found(dav, path):
    assert dav.get(path, status="*").status_int == 404
    assert propfind(dav, path, status="*").status_int == 404


def test_dav_links_that_leave_dangle_or_loop_are_hidden(dav, layout):
    names = {
        href.rsplit("/", 2)[-2] if href.endswith("/") else href.rsplit("/", 1)[-1]
        for href in responses(propfind(dav, layout.tree_url + "/"))
    }
    assert "inner-link.txt" in names and "sub" in names
    assert not {"etc", "staging-link", "dangling", "self"} & names
    sub = responses(propfind(dav, layout.tree_url + "/sub/"))
    assert not any(href.endswith("/up/") for href in sub)
    assert dav.get(layout.tree_url + "/self/page.html", status="*").status_int == 404


def test_dav_followed_links_look_like_their_targets(dav, layout):
    bob = responses(propfind(dav, "/replica/user/bob/"))
    latest = bob["/replica/user/bob/archive.latest/"]
    assert latest.find("D:propstat/D:prop/D:resourcetype/D:collection", NS) is not None
    assert set(bob) == {
        "/replica/user/bob/",
        "/replica/user/bob/archive.latest/",
        "/replica/user/bob/hello.20260101.0000.0.txt",
        "/replica/user/bob/hello.latest.txt",
    }
    got = dav.get("/replica/user/bob/archive.latest/sub/hello.txt")
    assert got.body == b"hello world\n"


def test_dav_non_utf8_names_are_left_out(dav, layout):
    os.mkdir(os.fsencode(layout.tree) + b"/bad-\xff-dir")
    with open(os.fsencode(layout.tree) + b"/bad-\xfe.txt", "wb") as fh:
        fh.write(b"x")
    (layout.tree / "ctl\x01.txt").write_bytes(b"x")
    hrefs = responses(propfind(dav, layout.tree_url + "/"))
    assert f"{layout.tree_url}/page.html" in hrefs
    assert not any("bad" in h or "ctl" in h for h in hrefs)
    assert dav.get(layout.tree_url + "/bad-%FF-dir/", status="*").status_int == 404


def test_dav_propfind_depth_infinity_is_refused(dav):
    resp = propfind(dav, "/", depth="infinity", status=403)
    assert b"propfind-finite-depth" in resp.body


def test_dav_propfind_without_depth_lists_one_level(dav, layout):
    hrefs = set(responses(propfind(dav, "/explode/", depth=None)))
    assert hrefs == {"/explode/", "/explode/" + layout.tree.parent.parent.name + "/"}


def test_dav_propfind_depth_zero_is_the_resource_alone(dav, layout):
    assert list(responses(propfind(dav, "/replica/", depth="0"))) == ["/replica/"]


@pytest.mark.parametrize(
    "body",
    [
        b"<propfind",
        b"<a/>",
        b"not xml at all",
        b'<!DOCTYPE x [<!ENTITY e "boom">]><D:propfind xmlns:D="DAV:">'
        b"<D:prop>&e;</D:prop></D:propfind>",
    ],
)
def test_dav_propfind_malformed_body_is_400(dav, body):
    assert propfind(dav, "/", body=body, status="*").status_int == 400


def test_dav_propfind_oversized_body_is_413(dav):
    body = b'<D:propfind xmlns:D="DAV:"><D:allprop/>' + b" " * MAX_BODY + b"</D:propfind>"
    assert propfind(dav, "/", body=body, status="*").status_int == 413


def test_dav_propfind_bad_depth_is_400(dav):
    assert propfind(dav, "/", depth="2", status="*").status_int == 400


def test_dav_propfind_reports_size_etag_and_checksum(dav, layout):
    found = responses(propfind(dav, layout.tree_url + "/sub/", body=PROP_BODY))
    hello = found[layout.tree_url + "/sub/hello.txt"]
    assert prop_text(hello, "D:getcontentlength") == "12"
    assert prop_text(hello, "oc:checksums") == f"MD5:{layout.hello.digest}"
    assert layout.hello.digest in prop_text(hello, "D:getetag")
    assert prop_text(hello, "x:odd") is None
    blob_url = "/" + layout.store.relative(layout.hello.path)
    blob = responses(propfind(dav, blob_url, depth="0", body=PROP_BODY))[blob_url]
    assert prop_text(blob, "oc:checksums") == f"MD5:{layout.hello.digest}"


def test_dav_propfind_propname_lists_names(dav, layout):
    body = b'<D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>'
    found = responses(propfind(dav, layout.tree_url + "/page.html", depth="0", body=body))
    names = {child.tag for child in found[layout.tree_url + "/page.html"].iter()}
    assert "{DAV:}getcontentlength" in names and "{DAV:}lockdiscovery" not in names


def test_dav_fast_and_generic_propfind_agree(layout):
    settings = make_settings(layout.store.root)
    fast = webtest.TestApp(make_dav_app(settings, layout.store, fast=True), lint=False)
    slow = webtest.TestApp(make_dav_app(settings, layout.store, fast=False), lint=False)
    for path in ("/", layout.tree_url + "/", "/replica/user/bob/"):
        for body in (b"", PROP_BODY):
            a, b = (
                responses(propfind(fast, path, body=body)),
                responses(propfind(slow, path, body=body)),
            )
            assert set(a) == set(b)
            for href in a:
                for name in (
                    "D:getcontentlength",
                    "D:getlastmodified",
                    "D:creationdate",
                    "D:resourcetype",
                    "oc:checksums",
                ):
                    assert prop_text(a[href], name) == prop_text(b[href], name)
                assert (prop_text(a[href], "D:getetag") or "").strip('"') == (
                    prop_text(b[href], "D:getetag") or ""
                )


def test_dav_options_advertises_read_only(dav):
    resp = dav.request("/", method="OPTIONS")
    assert resp.headers["DAV"] == "1"
    allowed = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert allowed == {"OPTIONS", "GET", "HEAD", "PROPFIND"}


@pytest.mark.parametrize("method", WRITE_METHODS)
def test_dav_write_methods_are_refused_and_change_nothing(dav, layout, method):
    before = snapshot(layout.store.root)
    for path in ("/", "/blob/", layout.tree_url + "/page.html", layout.tree_url + "/new.txt"):
        resp = dav.request(
            path,
            method=method,
            body=b"data",
            status="*",
            headers={"Destination": "http://localhost/blob/x", "Depth": "0"},
        )
        assert resp.status_int in (403, 405)
    assert snapshot(layout.store.root) == before


def test_dav_get_file_with_etag_type_and_length(fast_dav, layout):
    resp = fast_dav.get(layout.tree_url + "/sub/hello.txt")
    assert resp.body == b"hello world\n"
    assert resp.headers["ETag"] == f'"{layout.hello.digest}"'
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert resp.headers["Content-Length"] == "12"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" not in resp.headers


def test_dav_get_active_content_is_sandboxed(fast_dav, layout):
    resp = fast_dav.get(layout.tree_url + "/page.html")
    assert resp.headers["Content-Security-Policy"] == "sandbox"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_dav_head_has_headers_and_no_body(fast_dav, layout):
    resp = fast_dav.head(layout.tree_url + "/sub/hello.txt")
    assert resp.headers["Content-Length"] == "12"
    assert resp.body == b""


@pytest.mark.parametrize(
    ("header", "status", "body"),
    [
        ("bytes=0-4", 206, b"hello"),
        ("bytes=6-", 206, b"world\n"),
        ("bytes=-3", 206, b"ld\n"),
        ("bytes=6-100", 206, b"world\n"),
        ("bytes=12-", 416, b""),
        ("bytes=-0", 416, b""),
        ("items=0-1", 200, b"hello world\n"),
    ],
)
def test_dav_get_range(fast_dav, layout, header, status, body):
    resp = fast_dav.get(layout.tree_url + "/sub/hello.txt", headers={"Range": header}, status="*")
    assert resp.status_int == status
    if status != 416:
        assert resp.body == body
    if status == 206:
        assert resp.headers["Content-Range"].endswith("/12")


def test_dav_get_conditional_not_modified(fast_dav, layout):
    url = layout.tree_url + "/sub/hello.txt"
    first = fast_dav.get(url)
    assert (
        fast_dav.get(url, headers={"If-None-Match": first.headers["ETag"]}, status="*").status_int
        == 304
    )
    since = {"If-Modified-Since": first.headers["Last-Modified"]}
    assert fast_dav.get(url, headers=since, status="*").status_int == 304
    assert fast_dav.get(url, headers={"If-None-Match": '"other"'}).status_int == 200


def test_dav_get_missing_is_404(dav):
    assert dav.get("/blob/no/such/file", status="*").status_int == 404


def test_confine_refuses_what_resolves_outside_public_trees(tmp_path):
    root = str(tmp_path)
    for tree in ("blob", "explode", "replica", "staging"):
        (tmp_path / tree).mkdir()
    os.symlink("../staging", tmp_path / "blob" / "leak")
    os.symlink("../explode", tmp_path / "blob" / "inside")
    os.symlink("/etc", tmp_path / "replica" / "abs")
    assert confine(root, f"{root}/blob") == f"{root}/blob"
    assert confine(root, f"{root}/blob/inside") == f"{root}/explode"
    assert confine(root, f"{root}/staging") is None
    assert confine(root, f"{root}/blob/leak") is None
    assert confine(root, f"{root}/replica/abs") is None
    assert confine(root, f"{root}/blob/../staging") is None
    assert confine(root, root) is None
    assert confine(root, "/etc/passwd") is None


def test_split_path_refuses_climbing_segments():
    assert split_path("/blob/../staging") is None
    assert split_path("/blob/./x") is None
    assert split_path("/blob/a\\..\\b") is None
    assert split_path("/blob/a\x00b") is None
    assert split_path("//blob//x/") == ["blob", "x"]


def test_parse_range_cases():
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("bytes=-20", 10) == (0, 9)
    assert parse_range("bytes=0-1,4-5", 10) is None
    assert parse_range("bytes=5-2", 10) is None
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=0-", 0)


def test_public_tree_hashes_non_blob_files_once(layout):
    tree = PublicTree(str(layout.store.root), "md5")
    node = tree.lookup(layout.tree_url + "/page.html")
    assert tree.known_checksum(node) is None
    assert tree.checksum(node) == layout.page.digest
    assert tree.known_checksum(node) == layout.page.digest
    assert tree.checksum(node, [0]) == layout.page.digest
    other = tree.lookup(layout.tree_url + "/sub/hello.txt")
    assert tree.checksum(other, [0]) is None


def test_dav_get_large_file_streams_exact_ranges(fast_dav, layout):
    data = bytes(range(256)) * 3000 + b"end"
    blob = layout.store.ingest([data])
    url = "/" + layout.store.relative(blob.path)
    assert fast_dav.get(url).body == data
    part = fast_dav.get(url, headers={"Range": "bytes=1000-700002"}, status=206)
    assert part.body == data[1000:700003]
    assert part.headers["Content-Range"] == f"bytes 1000-700002/{len(data)}"
    assert fast_dav.get(url, headers={"Range": "bytes=-5"}, status=206).body == data[-5:]


def test_dav_get_if_range_mismatch_sends_whole_file(fast_dav, layout):
    url = layout.tree_url + "/sub/hello.txt"
    resp = fast_dav.get(url, headers={"Range": "bytes=0-1", "If-Range": '"stale"'})
    assert resp.status_int == 200 and resp.body == b"hello world\n"


def test_dav_refused_write_with_big_body_closes_connection(fast_dav, layout):
    before = snapshot(layout.store.root)
    resp = fast_dav.request(
        "/replica/big.bin", method="PUT", body=b"x" * (MAX_BODY + 1), status=405
    )
    assert resp.headers["Connection"] == "close"
    assert snapshot(layout.store.root) == before
    small = fast_dav.request("/replica/small.bin", method="PUT", body=b"x", status=405)
    assert "Connection" not in small.headers


def test_dav_browser_listing_escapes_names_and_links_upload(fast_dav, layout):
    (layout.tree / "<img src=x onerror=alert(1)>.txt").write_bytes(b"x")
    page = fast_dav.get(layout.tree_url + "/")
    assert page.content_type == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    text = page.text
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in text and "<img src" not in text
    assert 'href="/upload"' in text
    assert "inner-link.txt" in text and "etc" not in text.split("<tbody>")[1]
    assert fast_dav.head(layout.tree_url + "/").body == b""


def test_dav_browser_listing_counts_folder_members(fast_dav, layout):
    folder = layout.tree / "three"
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / name).write_bytes(b"x")
    text = fast_dav.get(layout.tree_url + "/").text
    row = next(line for line in text.split("<tr") if ">three/<" in line or ">three<" in line)
    assert "3 items" in row


def test_dav_browser_listing_of_folder_without_slash_redirects(fast_dav, layout):
    resp = fast_dav.get(layout.tree_url, status=301)
    assert resp.headers["Location"] == layout.tree_url + "/"


def test_dav_decomposed_names_find_composed_files(fast_dav, layout):
    (layout.tree / "caf\u00e9.txt").write_bytes(b"coffee")
    decomposed = quote(layout.tree_url + "/cafe\u0301.txt")
    assert fast_dav.get(decomposed).body == b"coffee"
    assert fast_dav.get(quote(layout.tree_url + "/cafe.txt"), status="*").status_int == 404


def test_public_tree_remembers_immutable_files_only(layout, monkeypatch):
    tree = PublicTree(str(layout.store.root), "md5")
    blob_url = "/" + layout.store.relative(layout.hello.path)
    tree_file = layout.tree_url + "/sub/hello.txt"
    latest = "/replica/user/bob/hello.latest.txt"
    for path in (blob_url, tree_file, latest, layout.tree_url):
        assert tree.lookup(path) is not None
    calls = []
    real_lstat = os.lstat
    monkeypatch.setattr(os, "lstat", lambda p, *a, **k: calls.append(p) or real_lstat(p, *a, **k))
    assert tree.lookup(blob_url).real == str(layout.hello.path)
    assert tree.lookup(tree_file).size == len(b"hello world\n")
    # Files of blob/ and explode/: remembered, and only checked to be still there.
    assert calls == [str(layout.hello.path), str(layout.tree / "sub" / "hello.txt")]
    calls.clear()
    tree.lookup(latest)
    tree.lookup(layout.tree_url)
    assert calls  # replicas change (latest links) and folders gain members: looked up anew


def test_public_tree_replica_latest_follows_a_new_target_at_once(layout):
    tree = PublicTree(str(layout.store.root), "md5")
    topic = layout.store.root / "replica" / "user" / "bob"
    assert tree.lookup("/replica/user/bob/hello.latest.txt").size == len(b"hello world\n")
    newer = layout.store.ingest([b"hello again, longer\n"])
    layout.store.place(newer.path, topic / "hello.20260102.0000.0.txt")
    os.symlink("hello.20260102.0000.0.txt", topic / "next")
    os.replace(topic / "next", topic / "hello.latest.txt")
    assert tree.lookup("/replica/user/bob/hello.latest.txt").size == len(b"hello again, longer\n")


def test_dav_get_of_a_remembered_file_removed_by_hand_is_404(fast_dav, layout):
    extra = layout.store.ingest([b"soon gone\n"])
    url = "/" + layout.store.relative(extra.path)
    assert fast_dav.get(url).body == b"soon gone\n"
    os.chmod(extra.path.parent, 0o755)
    os.unlink(extra.path)
    fast_dav.get(url, status=404)
    fast_dav.head(url, status=404)  # forgotten after the failed open
