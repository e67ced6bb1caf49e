"""WebDAV confinement against sibling names: `replica-old/` is not inside `replica/`.

Folders next to the public trees whose names start like one of them (`replica-old/`,
`blob.bak/`, `explodeX/`) hold a secret; symlinks in the public trees point into them. The
oracle knows nothing of the code: the secret's bytes are in no response body, and every way
to them is 404 or absent from listings, PROPFIND answers and folder downloads.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import zipfile
from pathlib import Path

import pytest
import webtest
from defusedxml.ElementTree import fromstring as defused_fromstring

from bucketdav.dav.app import make_dav_app
from bucketdav.store.blobs import Store
from tests.conftest import make_settings

SECRET = b"bucketdav confinement secret 5f1c0e9a7b2d4c68"
SIBLINGS = ("replica-old", "blob.bak", "explodeX")
TEAM = "/replica/team"
# Links in replica/team/ into the siblings: name -> target, relative or absolute (ROOT).
LEAKS = {
    "old.txt": "../../replica-old/secret.txt",
    "old": "../../replica-old",
    "bak.txt": "ROOT/blob.bak/secret.txt",
    "bak": "../../blob.bak",
    "x.txt": "../../explodeX/secret.txt",
    "x": "ROOT/explodeX",
    "nested.txt": "../../replica-old/deeper/secret.txt",
}


@pytest.fixture
def store(store_root: Path) -> Store:
    """A store whose siblings hold the secret, and whose replica/team/ links into them."""
    opened = Store(store_root, "md5")
    opened.open()
    for sibling in SIBLINGS:
        (store_root / sibling / "deeper").mkdir(parents=True)
        (store_root / sibling / "secret.txt").write_bytes(SECRET)
        (store_root / sibling / "deeper" / "secret.txt").write_bytes(SECRET)
    blob = opened.ingest([b"public bytes"])
    team = store_root / "replica" / "team"
    team.mkdir()
    (store_root / "replica" / "team-old").mkdir()
    (store_root / "replica" / "team-old" / "public.txt").write_bytes(b"peer bytes")
    for name, target in LEAKS.items():
        os.symlink(target.replace("ROOT", str(store_root)), team / name)
    os.symlink(os.path.relpath(blob.path, team), team / "ok.txt")
    os.symlink("../team-old/public.txt", team / "peer.txt")
    tree = opened.tree_path("ab" * 16)
    tree.mkdir(parents=True)
    os.symlink(os.path.relpath(store_root / "replica-old" / "secret.txt", tree), tree / "leak")
    os.symlink(os.path.relpath(store_root / "blob.bak", tree), tree / "leakdir")
    return opened


@pytest.fixture(params=["server", "wsgidav"])
def app(request: pytest.FixtureRequest, store: Store, make_client) -> webtest.TestApp:
    """The whole server (fast paths), or the WebDAV app with WsgiDAV answering every read."""
    if request.param == "server":
        return make_client()
    dav = make_dav_app(make_settings(store.root), store, fast=False)
    return webtest.TestApp(dav, lint=False)


def leak_paths(store: Store) -> list[str]:
    """Every URL path that would reach a secret if a link into a sibling were followed."""
    tree = "/" + store.relative(store.tree_path("ab" * 16))
    paths = [f"{TEAM}/{name}" for name in LEAKS]
    paths += [f"{TEAM}/{name}/secret.txt" for name in ("old", "bak", "x")]
    paths += [f"{TEAM}/{name}/deeper/secret.txt" for name in ("old", "bak", "x")]
    paths += [f"{tree}/leak", f"{tree}/leakdir/secret.txt", f"{tree}/leakdir/"]
    paths += [f"/{sibling}/secret.txt" for sibling in SIBLINGS]
    paths += [f"/{sibling}/" for sibling in SIBLINGS]
    return paths


def propfind(app: webtest.TestApp, path: str, depth: str) -> webtest.TestResponse:
    return app.request(path, method="PROPFIND", headers={"Depth": depth}, status="*")


def hrefs(response: webtest.TestResponse) -> set[str]:
    """The hrefs of a PROPFIND answer."""
    root = defused_fromstring(response.body)
    return {element.text or "" for element in root.iter("{DAV:}href")}


def test_dav_links_into_prefix_siblings_are_not_found(app, store):
    bodies: list[bytes] = []
    for path in leak_paths(store):
        got = app.get(path, status="*")
        head = app.head(path, status="*")
        found = propfind(app, path, "0")
        bodies += [got.body, head.body, found.body]
        assert (path, got.status_int, head.status_int, found.status_int) == (path, 404, 404, 404)
    assert not any(SECRET in body for body in bodies)


def test_dav_propfind_of_the_folder_lists_only_what_stays_inside(app, store):
    answer = propfind(app, f"{TEAM}/", "1")
    assert answer.status_int == 207
    assert hrefs(answer) == {f"{TEAM}/", f"{TEAM}/ok.txt", f"{TEAM}/peer.txt"}
    assert SECRET not in answer.body


def test_dav_propfind_of_a_tree_leaves_out_links_into_siblings(app, store):
    tree = "/" + store.relative(store.tree_path("ab" * 16)) + "/"
    answer = propfind(app, tree, "1")
    assert answer.status_int == 207
    assert hrefs(answer) == {tree}


def test_dav_listing_of_the_folder_links_only_what_stays_inside(make_client, store):
    page = make_client().get(f"{TEAM}/", headers={"Accept": "text/html"})
    assert page.content_type == "text/html"
    linked = {href for href in re.findall(r'href="([^"]+)"', page.text) if href.startswith(TEAM)}
    assert linked == {f"{TEAM}/", f"{TEAM}/ok.txt", f"{TEAM}/peer.txt"}
    assert SECRET not in page.body


def read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    assert handle is not None
    return handle.read()


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_dav_folder_download_holds_nothing_of_the_siblings(make_client, store, kind):
    got = make_client().get(f"{TEAM}/?download={kind}")
    if kind == "tar":
        with tarfile.open(fileobj=io.BytesIO(got.body)) as archive:
            members = archive.getmembers()
            links = [m.name for m in members if m.issym() or m.islnk()]
            files = {m.name: read_member(archive, m) for m in members if m.isfile()}
    else:
        with zipfile.ZipFile(io.BytesIO(got.body)) as archive:
            links = []
            files = {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")}
    # peer.txt leads out of the folder: followed, never kept as a link climbing out.
    assert links == []
    assert files == {"team/ok.txt": b"public bytes", "team/peer.txt": b"peer bytes"}
    assert SECRET not in got.body
