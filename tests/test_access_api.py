"""Access control through the whole WSGI app: every route and WebDAV method, listings, uploads."""

from __future__ import annotations

import json

import pytest
from access_setup import ALICE_PW, BOB_PW, OLD_TOKEN, TEMPLATES, TOKEN, basic, sha, team_access
from defusedxml.ElementTree import fromstring
from helpers import files_under, multipart_body, tar_gz

PROPFIND = b'<?xml version="1.0"?><propfind xmlns="DAV:"><allprop/></propfind>'


ALICE = basic("alice", ALICE_PW)
BOB = basic("bob", BOB_PW)
NIGHTLY = {"Authorization": f"Bearer {TOKEN}"}
WRONG = basic("alice", "not her password")
EXPIRED = basic("ci", OLD_TOKEN)


@pytest.fixture
def team(make_client, tmp_path):
    """A guarded app and a store holding a public file, a nightly build and another team's."""
    access = tmp_path / "access.toml"
    access.write_text(team_access(old_uploads=True))
    client = make_client(BUCKETDAV_ACCESS_FILE=str(access), **TEMPLATES)
    archive = tar_gz({"build/notes.txt": b"nightly notes\n"})
    made = {}
    for name, data, headers in [
        ("build.tgz", archive, {"Team": "nightly"}),
        ("secret.txt", b"other team's secret\n", {"Team": "other"}),
        ("hello.txt", b"hello, world\n", {"Public": "docs"}),
    ]:
        resp = client.put(f"/upload/{name}", data, headers={**ALICE, **headers})
        made[name] = resp.json
    client.made = made
    return client


def status(client, method, path, headers=None, body=b""):
    return client.request(
        path, method=method, headers=headers or {}, body=body, expect_errors=True
    ).status_int


def names_in(body: bytes) -> list[str]:
    root = fromstring(body)
    return [href.text for href in root.iter("{DAV:}href")]


ROUTES = [
    # (method, path, no credentials, wrong, expired, alice, bob)
    ("GET", "/healthz", 200, 200, 200, 200, 200),
    ("GET", "/config", 200, 401, 401, 200, 200),
    ("GET", "/connect", 200, 401, 401, 200, 200),
    ("GET", "/upload", 401, 401, 401, 200, 403),
    ("GET", "/static/bucketdav.css", 200, 401, 401, 200, 200),
    ("GET", "/replica/public/docs/hello.latest.txt", 200, 401, 401, 200, 200),
    ("GET", "/replica/team/nightly/build.latest/build/notes.txt", 401, 401, 401, 200, 200),
    ("GET", "/replica/team/other/", 401, 401, 401, 200, 403),
    ("HEAD", "/replica/team/nightly/build.latest/build/notes.txt", 401, 401, 401, 200, 200),
    ("PROPFIND", "/replica/team/nightly/", 401, 401, 401, 207, 207),
    ("PROPFIND", "/explode/", 401, 401, 401, 207, 403),
    ("OPTIONS", "/replica/team/nightly/", 401, 401, 401, 200, 200),
    ("PUT", "/replica/team/nightly/x.txt", 401, 401, 401, 405, 405),
    ("DELETE", "/replica/public/docs/hello.latest.txt", 405, 401, 401, 405, 405),
    ("MKCOL", "/explode/new/", 401, 401, 401, 405, 403),
]


@pytest.mark.parametrize(("method", "path", *"nwexab"[:5]), ROUTES)
def test_access_api_every_route_with_no_wrong_expired_and_right_credentials(
    team, method, path, n, w, e, x, a
):
    got = [
        status(team, method, path, headers)
        for headers in ({"Depth": "0"}, WRONG, EXPIRED, ALICE, BOB)
    ]
    assert got == [n, w, e, x, a]


def test_access_api_checksum_needs_blob_read_or_upload(team):
    digest = team.made["hello.txt"]["checksum"]["blob"]
    assert status(team, "HEAD", f"/checksum/{digest}") == 401
    assert status(team, "HEAD", f"/checksum/{digest}", BOB) == 403
    assert status(team, "HEAD", f"/checksum/{digest}", NIGHTLY) == 200
    assert status(team, "GET", f"/checksum/{digest}", ALICE) == 200


def test_access_api_metrics_needs_the_metrics_right(team):
    assert status(team, "GET", "/metrics") == 401
    assert status(team, "GET", "/metrics", BOB) == 403
    assert status(team, "GET", "/metrics", ALICE) not in (401, 403)


def test_access_api_401_challenges_basic_and_is_json(team):
    for headers in ({}, WRONG, EXPIRED):
        resp = team.get("/replica/team/", headers=headers, expect_errors=True)
        assert resp.status_int == 401
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="bucketdav"'
        assert resp.json["code"] == 401
        assert set(resp.json) == {"code", "status", "error"}
    forbidden = team.get("/explode/", headers=BOB, expect_errors=True)
    assert forbidden.status_int == 403
    assert "WWW-Authenticate" not in forbidden.headers
    assert forbidden.json["error"] == "bob may not GET /explode/"


def test_access_api_bearer_and_a_token_as_basic_password_are_the_same(team):
    for headers in (NIGHTLY, basic("anyone", TOKEN), basic("alice", TOKEN)):
        resp = team.put("/upload/n.txt", b"n", headers={**headers, "Team": "nightly"})
        assert resp.json["path"]["replicas"][0].startswith("replica/team/nightly/n.")


def test_access_api_propfind_shows_only_the_way_to_what_is_readable(team):
    resp = team.request("/", method="PROPFIND", headers={"Depth": "1", **BOB}, body=PROPFIND)
    assert names_in(resp.body) == ["/", "/replica/"]
    resp = team.request("/replica/team/", method="PROPFIND", headers={"Depth": "1", **BOB})
    assert names_in(resp.body) == ["/replica/team/", "/replica/team/nightly/"]
    # Without credentials a folder on the way asks for them: drives send them only when asked.
    resp = team.request("/replica/", method="PROPFIND", headers={"Depth": "1"}, status=401)
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="bucketdav"'
    resp = team.request("/replica/public/", method="PROPFIND", headers={"Depth": "1"})
    assert names_in(resp.body) == ["/replica/public/", "/replica/public/docs/"]
    assert "public/" in team.get("/replica/").text
    everything = team.request("/replica/team/", method="PROPFIND", headers={"Depth": "1", **ALICE})
    assert names_in(everything.body) == [
        "/replica/team/",
        "/replica/team/nightly/",
        "/replica/team/other/",
    ]


def test_access_api_listing_shows_only_the_way_without_counts(team):
    page = team.get("/replica/team/", headers=BOB).text
    assert "nightly/" in page
    assert "other" not in page
    assert "2 items" in page  # nightly/ is readable: its count is shown
    root = team.get("/", headers=BOB).text
    assert "replica/" in root and "explode/" not in root and "blob/" not in root
    # How much a folder on the way holds is not told.
    assert "item" not in root
    assert "other" in team.get("/replica/team/", headers=ALICE).text


def test_access_api_a_file_on_the_way_is_not_readable(team, make_client, tmp_path):
    # A read prefix below a file makes the file a step on the way, never readable itself.
    file = "/replica/team/other/secret.latest.txt"
    access = tmp_path / "odd.toml"
    access.write_text(f'[tokens.odd]\nhash = "sha256:{sha("odd")}"\nread = ["{file}/below/"]\n')
    client = make_client(BUCKETDAV_ACCESS_FILE=str(access))
    odd = {"Authorization": "Bearer odd"}
    assert "secret.latest.txt" in client.get("/replica/team/other/", headers=odd).text
    assert status(client, "GET", file, odd) == 403
    assert status(client, "HEAD", file, odd) == 403
    assert status(client, "PROPFIND", file, {**odd, "Depth": "0"}) == 403


def test_access_api_upload_filed_outside_its_prefixes_is_403_and_stores_nothing(team, store_root):
    before = files_under(store_root)
    data = b"would be a new blob\n"
    put = team.put("/upload/x.txt", data, headers={**NIGHTLY, "Team": "other"}, expect_errors=True)
    assert put.status_int == 403
    assert put.json["error"] == "nightly may not file uploads under replica/team/other/"
    body, kind = multipart_body([("file", "x.txt", data)])
    post = team.post(
        "/upload",
        body,
        headers={**NIGHTLY, "Team": "nightly", "Public": "x", "Content-Type": kind},
        expect_errors=True,
    )
    assert post.status_int == 403
    digest = team.made["hello.txt"]["checksum"]["blob"]
    deploy = team.put(
        "/upload/again.txt",
        b"",
        headers={
            **NIGHTLY,
            "Team": "other",
            "X-Checksum-Deploy": "true",
            "X-Checksum": digest,
        },
        expect_errors=True,
    )
    assert deploy.status_int == 403
    assert files_under(store_root) == before


def test_access_api_anonymous_upload_out_of_scope_asks_for_credentials(make_client, tmp_path):
    access = tmp_path / "access.toml"
    access.write_text('[anonymous]\nupload = true\nreplicas = ["drop/"]\n')
    client = make_client(BUCKETDAV_ACCESS_FILE=str(access), **TEMPLATES)
    ok = client.put("/upload/a.txt", b"a", headers={"Team": "x"}, expect_errors=True)
    assert ok.status_int == 401
    assert ok.headers["WWW-Authenticate"] == 'Basic realm="bucketdav"'
    assert client.put("/upload/a.txt", b"a").status_int == 200


def test_access_api_latest_link_is_checked_on_the_requested_path_only(team):
    tree = "/" + team.made["build.tgz"]["path"]["archive"]
    via_link = "/replica/team/nightly/build.latest/build/notes.txt"
    assert team.get(via_link, headers=BOB).body == b"nightly notes\n"
    assert status(team, "GET", f"{tree}/build/notes.txt", BOB) == 403
    assert status(team, "GET", "/replica/team/other/", BOB) == 403


def test_access_api_config_and_answers_hold_no_secret(team, tmp_path):
    config = team.get("/config", headers=ALICE)
    text = config.text
    for secret in (ALICE_PW, BOB_PW, TOKEN, sha(TOKEN), "$2b$"):
        assert secret not in text
    assert config.json["BUCKETDAV_ACCESS_FILE"] == str(tmp_path / "access.toml")
    wrong = team.get("/config", headers=basic("alice", "guess-123"), expect_errors=True)
    assert "guess-123" not in wrong.text and "alice" not in wrong.text


def test_access_api_connect_page_passes_credentials_as_the_signed_in_user(team):
    page = team.get("/connect", headers=BOB).text
    assert "--webdav-user bob --webdav-pass" in page
    assert "/etc/davfs2/secrets" in page
    anonymous = team.get("/connect").text
    assert "--webdav-user USER" in anonymous


def test_access_api_identity_reaches_the_environ_for_the_log(team):
    seen = {}
    app = team.app

    def spy(environ, start_response):
        result = app(environ, start_response)
        seen.update(environ)
        return result

    type(team)(spy, lint=False).get("/replica/team/nightly/", headers=BOB)
    assert seen["bucketdav.identity"] == "bob"
    assert all(BOB_PW not in str(v) for k, v in seen.items() if k != "HTTP_AUTHORIZATION")


def test_access_api_open_server_is_unchanged(client):
    resp = client.get("/")
    assert resp.status_int == 200
    assert "WWW-Authenticate" not in resp.headers
    assert client.put("/upload/a.txt", b"a", headers=ALICE).status_int == 200
    assert json.loads(client.get("/config").text)["BUCKETDAV_ACCESS_FILE"] is None


def test_access_api_credentials_are_never_filed_by_a_template(make_client, store_root, tmp_path):
    access = tmp_path / "access.toml"
    access.write_text(team_access(old_uploads=True))
    client = make_client(
        BUCKETDAV_ACCESS_FILE=str(access), REPLICATE_0="cred/${Authorization}/${Team}"
    )
    resp = client.put("/upload/a.txt", b"a", headers={**ALICE, "Team": "x"})
    assert resp.json["path"]["replicas"] is None
    assert "missing header Authorization" in resp.json["skipped"][0]
    assert not (store_root / "replica" / "cred").exists()


def test_access_api_sign_in_link_asks_only_those_without_credentials(team, client):
    anonymous = team.get("/replica/").text
    assert 'href="?sign-in"' in anonymous
    assert 'href="?sign-in"' not in team.get("/replica/", headers=BOB).text
    asked = team.get("/replica/?sign-in", expect_errors=True)
    assert asked.status_int == 401
    assert asked.headers["WWW-Authenticate"] == 'Basic realm="bucketdav"'
    signed_in = team.get("/replica/?sign-in", headers=BOB)
    assert "team/" in signed_in.text
    assert team.get("/replica/?sign-inx").status_int == 200
    assert 'href="?sign-in"' not in client.get("/").text
