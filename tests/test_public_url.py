"""The base URL of answers: BUCKETDAV_PUBLIC_URL, trusted proxies only, never a hostile header."""

from __future__ import annotations

import ipaddress

import pytest
from helpers import md5

from bucketdav.public_url import base_url, is_trusted, parse_host, parse_proxies, parse_public_url
from bucketdav.settings import SettingError, load_settings
from tests.test_settings import run_cli

PROXY = "10.1.2.3"
HOSTILE = {"X-Forwarded-Proto": "javascript", "X-Forwarded-Host": "evil.example"}
MALFORMED = {"X-Forwarded-Proto": "javascript", "X-Forwarded-Host": "evil.example/'$(id)"}


def url_of(environ: dict[str, str], *, public: str | None = None, proxies: str = "") -> str:
    return base_url(
        {"wsgi.url_scheme": "http", "SERVER_PORT": "8080", **environ},
        public_url=public,
        proxies=parse_proxies(proxies),
        listen_host="127.0.0.1",
    )


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("files.example", "files.example"),
        ("Files.Example:8443", "files.example:8443"),
        ("10.0.0.7:80", "10.0.0.7:80"),
        ("[::1]:8080", "[::1]:8080"),
        ("localhost", "localhost"),
    ],
)
def test_parse_host_accepts_plain_hosts(text, host):
    assert parse_host(text) == host


@pytest.mark.parametrize(
    "text",
    [
        "",
        "evil.example/x",
        "a b",
        "x'$(id)",
        "user@host",
        "host:0",
        "host:65536",
        "host:",
        "[::g]",
        "[::1",
        "-bad.example",
        "a" * 300,
        "files.example\r\nX: y",
    ],
)
def test_parse_host_refuses_anything_else(text):
    assert parse_host(text) is None


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("", None),
        ("https://files.example", "https://files.example"),
        ("HTTPS://Files.Example/", "https://files.example"),
        ("http://10.0.0.7:8080", "http://10.0.0.7:8080"),
        ("http://[2001:db8::1]:8080/", "http://[2001:db8::1]:8080"),
    ],
)
def test_parse_public_url_keeps_scheme_and_host(text, url):
    assert parse_public_url(text) == url


@pytest.mark.parametrize(
    "text",
    [
        "files.example",
        "ftp://files.example",
        "javascript://files.example",
        "https://",
        "https://files.example/bucket",
        "https://files.example/?x=1",
        "https://files.example/#top",
        "https://files.example:0",
        "https://user:pw@files.example",
        "https://fi les.example",
    ],
)
def test_parse_public_url_refuses_what_is_not_a_base_url(text):
    with pytest.raises(ValueError):
        parse_public_url(text)


def test_parse_proxies_reads_addresses_and_networks():
    assert parse_proxies("127.0.0.1, 10.0.0.0/8 ::1") == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert parse_proxies("") == ()
    with pytest.raises(ValueError, match=r"proxy\.example"):
        parse_proxies("proxy.example")


def test_is_trusted_matches_the_peer_address_only():
    proxies = parse_proxies("10.0.0.0/8")
    assert is_trusted("10.1.2.3", proxies)
    assert is_trusted("::ffff:10.1.2.3", proxies)
    assert not is_trusted("11.0.0.1", proxies)
    assert not is_trusted("", proxies)
    assert not is_trusted("10.1.2.3", ())


def test_base_url_ignores_forwarded_headers_from_an_untrusted_peer():
    environ = {
        "REMOTE_ADDR": "10.9.9.9",
        "HTTP_HOST": "files.example:8080",
        "HTTP_X_FORWARDED_PROTO": "https",
        "HTTP_X_FORWARDED_HOST": "evil.example",
    }
    assert url_of(environ) == "http://files.example:8080"
    assert url_of(environ, proxies=PROXY) == "http://files.example:8080"


def test_base_url_believes_a_trusted_proxy():
    environ = {
        "REMOTE_ADDR": PROXY,
        "HTTP_HOST": "127.0.0.1:8080",
        "HTTP_X_FORWARDED_PROTO": "HTTPS",
        "HTTP_X_FORWARDED_HOST": "files.example",
    }
    assert url_of(environ, proxies="10.0.0.0/8") == "https://files.example"


def test_base_url_takes_the_value_the_proxy_itself_appended():
    environ = {
        "REMOTE_ADDR": PROXY,
        "HTTP_HOST": "127.0.0.1:8080",
        "HTTP_X_FORWARDED_PROTO": "javascript, https",
        "HTTP_X_FORWARDED_HOST": "evil.example, files.example",
    }
    assert url_of(environ, proxies=PROXY) == "https://files.example"


@pytest.mark.parametrize(
    ("proto", "host"),
    [("javascript", "files.example'$(id)"), ("data", "evil.example/path"), ("", "")],
)
def test_base_url_ignores_a_trusted_proxy_s_hostile_values(proto, host):
    environ = {
        "REMOTE_ADDR": PROXY,
        "HTTP_HOST": "files.example:8080",
        "HTTP_X_FORWARDED_PROTO": proto,
        "HTTP_X_FORWARDED_HOST": host,
    }
    assert url_of(environ, proxies=PROXY) == "http://files.example:8080"


@pytest.mark.parametrize("host", ["x'$(id)", "evil.example/path", "a b", ""])
def test_base_url_hostile_host_falls_back_to_the_listening_address(host):
    assert url_of({"HTTP_HOST": host}) == "http://127.0.0.1:8080"


def test_base_url_listening_on_every_address_falls_back_to_localhost():
    environ = {"wsgi.url_scheme": "http", "SERVER_PORT": "80", "HTTP_HOST": "a b"}
    assert base_url(environ, public_url=None, proxies=(), listen_host="::") == "http://localhost"
    environ["SERVER_PORT"] = "8080"
    assert base_url(environ, public_url=None, proxies=(), listen_host="::1") == "http://[::1]:8080"


def test_base_url_public_url_wins_over_every_header():
    environ = {
        "REMOTE_ADDR": PROXY,
        "HTTP_HOST": "127.0.0.1:8080",
        "HTTP_X_FORWARDED_PROTO": "http",
        "HTTP_X_FORWARDED_HOST": "other.example",
    }
    assert url_of(environ, public="https://files.example", proxies=PROXY) == "https://files.example"


@pytest.mark.parametrize("value", ["files.example", "https://files.example/sub", "gopher://x"])
def test_load_settings_bad_public_url_names_the_setting(value):
    with pytest.raises(SettingError) as caught:
        load_settings(environ={"BUCKETDAV_PUBLIC_URL": value})
    assert caught.value.name == "BUCKETDAV_PUBLIC_URL"
    assert str(caught.value).startswith(f"BUCKETDAV_PUBLIC_URL={value!r}: ")


def test_load_settings_bad_trusted_proxy_names_the_setting():
    with pytest.raises(SettingError) as caught:
        load_settings(environ={"BUCKETDAV_TRUSTED_PROXIES": "10.0.0.1/8"})
    assert caught.value.name == "BUCKETDAV_TRUSTED_PROXIES"


# -- through the app ----------------------------------------------------------------------


def blob_url(digest: str) -> str:
    return f"blob/{digest[:2]}/{digest[2:4]}/{digest}"


def test_upload_url_ignores_forwarded_headers_by_default(client):
    body = client.put("/upload/a.txt", b"forwarded", headers=HOSTILE).json
    assert body["url"]["blob"] == f"http://localhost:80/{blob_url(md5(b'forwarded'))}"


def test_upload_url_hostile_host_falls_back_to_the_listening_address(client):
    body = client.put("/upload/a.txt", b"host", headers={"Host": "x'$(id)"}).json
    assert body["url"]["blob"] == f"http://127.0.0.1/{blob_url(md5(b'host'))}"


def test_upload_url_from_a_trusted_proxy(make_client):
    client = make_client(BUCKETDAV_TRUSTED_PROXIES="10.0.0.0/8")
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "files.example"}
    environ = {"REMOTE_ADDR": PROXY}
    body = client.put("/upload/a.txt", b"proxied", headers=headers, extra_environ=environ).json
    assert body["url"]["blob"] == f"https://files.example/{blob_url(md5(b'proxied'))}"
    bad = client.put("/upload/a.txt", b"proxied", headers=MALFORMED, extra_environ=environ).json
    assert bad["url"]["blob"] == f"http://localhost:80/{blob_url(md5(b'proxied'))}"


def test_public_url_is_used_by_uploads_checksums_and_the_connect_page(make_client):
    client = make_client(BUCKETDAV_PUBLIC_URL="https://files.example/")
    headers = {**HOSTILE, "Host": "other.example"}
    digest = md5(b"public")
    upload = client.put("/upload/a.txt", b"public", headers=headers).json
    assert upload["url"]["blob"] == f"https://files.example/{blob_url(digest)}"
    facts = client.get(f"/checksum/{digest}", headers=headers).json
    assert facts["url"] == f"https://files.example/{blob_url(digest)}"
    page = client.get("/connect", headers=headers).text
    assert "<code>https://files.example/</code>" in page
    assert "evil.example" not in page and "other.example" not in page


def test_config_shows_public_url_and_trusted_proxies(make_client):
    client = make_client(
        BUCKETDAV_PUBLIC_URL="https://files.example", BUCKETDAV_TRUSTED_PROXIES="10.0.0.0/8, ::1"
    )
    body = client.get("/config").json
    assert body["BUCKETDAV_PUBLIC_URL"] == "https://files.example"
    assert body["BUCKETDAV_TRUSTED_PROXIES"] == ["10.0.0.0/8", "::1/128"]
    defaults = make_client().get("/config").json
    assert defaults["BUCKETDAV_PUBLIC_URL"] is None
    assert defaults["BUCKETDAV_TRUSTED_PROXIES"] == []


# -- the real server ----------------------------------------------------------------------


def test_live_upload_url_ignores_forwarded_headers_from_an_untrusted_client(live_server):
    body = live_server.upload("a.txt", b"live forwarded", headers=HOSTILE).json()
    assert body["url"]["blob"] == (
        f"http://127.0.0.1:{live_server.port}/{blob_url(md5(b'live forwarded'))}"
    )


def test_live_upload_url_believes_a_trusted_proxy(live_server_factory):
    server = live_server_factory(BUCKETDAV_TRUSTED_PROXIES="127.0.0.1")
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "files.example"}
    body = server.upload("a.txt", b"live proxied", headers=headers).json()
    assert body["url"]["blob"] == f"https://files.example/{blob_url(md5(b'live proxied'))}"
    body = server.upload("a.txt", b"live proxied", headers=MALFORMED).json()
    assert body["url"]["blob"] == f"http://127.0.0.1:{server.port}/{blob_url(md5(b'live proxied'))}"


def test_live_bad_public_url_stops_start_up_with_one_line(tmp_path):
    result = run_cli(
        "serve",
        "--port",
        "0",
        env={"ARCHIVE_DIR": str(tmp_path), "BUCKETDAV_PUBLIC_URL": "files.example"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "bucketdav: BUCKETDAV_PUBLIC_URL='files.example'"
    )
