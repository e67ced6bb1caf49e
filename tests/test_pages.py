"""Unit and WSGI tests of the upload page, the Connect page and their static files."""

from __future__ import annotations

import re
import shlex
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bucketdav.pages import FALLBACK_BASE, connect_page, recipes, safe_base_url, upload_page
from bucketdav.settings import load_settings

STATIC = Path(__file__).resolve().parent.parent / "bucketdav" / "static"


class _Scan(HTMLParser):
    """Collects script sources, inline scripts and styles, ids, labels and copy buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str | None] = []
        self.inline: list[str] = []
        self.ids: list[str] = []
        self.label_for: list[str] = []
        self.copies: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self.scripts.append(found.get("src"))
        if tag == "style" or "style" in found or any(k.startswith("on") for k in found):
            self.inline.append(tag)
        if found.get("id"):
            self.ids.append(found["id"] or "")
        if tag == "label" and found.get("for"):
            self.label_for.append(found["for"] or "")
        if tag == "button" and "copy" in (found.get("class") or "").split():
            self.copies.append(found.get("data-copy") or "")


def _scan(page: str) -> _Scan:
    scan = _Scan()
    scan.feed(page)
    return scan


def _settings(**env: str):
    return load_settings(environ={"ARCHIVE_DIR": "/tmp/bucketdav-pages-test", **env})


def test_upload_page_has_only_static_scripts_and_styles() -> None:
    scan = _scan(upload_page(_settings()))
    assert scan.inline == []
    assert scan.scripts and all(src and src.startswith("/static/") for src in scan.scripts)
    for src in scan.scripts:
        assert (STATIC / src.removeprefix("/static/")).is_file()


def test_upload_page_labels_every_file_input() -> None:
    page = upload_page(_settings())
    scan = _scan(page)
    assert "files" in scan.label_for
    assert 'aria-label="Folder to upload"' in page
    assert set(scan.label_for) <= set(scan.ids)


def test_upload_page_shows_the_limit() -> None:
    page = upload_page(_settings(MAX_CONTENT_LENGTH="5mb"))
    assert '<span id="limit">5mb</span>' in page


def test_upload_page_form_posts_multipart_file_part() -> None:
    page = upload_page(_settings())
    assert (
        '<form id="upload-form" method="post" action="/upload" enctype="multipart/form-data">'
        in page
    )
    assert '<input id="files" type="file" name="file" required>' in page


def test_connect_page_gives_exact_commands_for_the_address() -> None:
    commands = [c for r in recipes("http://files.example:8080") for c in r.commands]
    assert (
        "mount -t davfs -o ro,conf=/etc/davfs2/bucketdav.conf http://files.example:8080/ "
        "/mnt/bucket" in commands
    )
    assert (
        "rclone mount \":webdav,url='http://files.example:8080/':\" ~/bucket --read-only"
        in commands
    )
    assert "rclone copy \":webdav,url='http://files.example:8080/':replica\" ./replica" in commands
    assert "\\\\files.example@8080\\DavWWWRoot" in commands
    assert "http://files.example:8080/" in commands


@pytest.mark.parametrize("base", ["http://files.example:8080", "https://[::1]:8443"])
def test_connect_page_rclone_remotes_keep_their_quotes_in_a_shell(base: str) -> None:
    (rclone,) = [r for r in recipes(base) if r.key == "rclone"]
    # What rclone receives once a shell has split the pasted line.
    remotes = [shlex.split(c)[2] for c in rclone.commands if c.startswith("rclone ")]
    assert remotes == [f":webdav,url='{base}/':", f":webdav,url='{base}/':replica"]


def test_connect_page_davfs2_mounts_with_its_own_configuration() -> None:
    (davfs2,) = [r for r in recipes("http://files.example:8080") if r.key == "davfs2"]
    assert davfs2.commands == (
        "mkdir -p /mnt/bucket",
        "printf 'ask_auth 0\\nuse_locks 0\\nbuf_size 64\\n' > /etc/davfs2/bucketdav.conf",
        "mount -t davfs -o ro,conf=/etc/davfs2/bucketdav.conf http://files.example:8080/ "
        "/mnt/bucket",
    )


@pytest.mark.parametrize(
    ("base", "unc"),
    [
        ("http://files.example", "\\\\files.example\\DavWWWRoot"),
        ("https://files.example", "\\\\files.example@SSL\\DavWWWRoot"),
        ("https://files.example:8443", "\\\\files.example@SSL@8443\\DavWWWRoot"),
        ("http://[::1]:8080", "\\\\--1.ipv6-literal.net@8080\\DavWWWRoot"),
    ],
)
def test_connect_page_windows_path_follows_scheme_and_port(base: str, unc: str) -> None:
    (windows,) = [r for r in recipes(base) if r.key == "windows"]
    assert windows.commands[0] == unc


@pytest.mark.parametrize(
    "host",
    [
        "http://evil'$(touch x)",
        "http://a b",
        "http://a:8080/path",
        "javascript:alert(1)",
        "http://a;b",
    ],
)
def test_connect_page_never_puts_a_strange_host_into_commands(host: str) -> None:
    assert safe_base_url(host) == FALLBACK_BASE
    page = connect_page(host)
    assert "touch" not in page and "javascript" not in page
    assert FALLBACK_BASE + "/" in page


def test_connect_page_has_a_copy_button_per_command() -> None:
    page = connect_page("http://127.0.0.1:9000")
    scan = _scan(page)
    assert scan.inline == []
    expected = [c for r in recipes("http://127.0.0.1:9000") for c in r.commands]
    assert scan.copies == expected
    assert "50 MB" in page


def test_connect_route_uses_the_request_host_and_the_page_policy(client) -> None:
    page = client.get("/connect", headers={"Host": "builds.example:8123"})
    assert page.content_type == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in page.headers["Content-Security-Policy"]
    assert "conf=/etc/davfs2/bucketdav.conf http://builds.example:8123/ /mnt/bucket" in page.text


def test_connect_route_refuses_to_echo_a_hostile_host(client) -> None:
    page = client.get("/connect", headers={"Host": "x'$(id)"})
    assert "$(id)" not in page.text
    assert "<code>http://127.0.0.1/</code>" in page.text  # the listening address instead


@pytest.mark.parametrize("name", sorted(p.name for p in STATIC.glob("*.js")))
def test_static_scripts_are_served_as_javascript(client, name: str) -> None:
    response = client.get(f"/static/{name}")
    # Module scripts only run when served with a JavaScript type.
    assert response.content_type in ("text/javascript", "application/javascript")
    assert response.body == (STATIC / name).read_bytes()


def test_static_folder_holds_every_module_the_pages_import() -> None:
    imported = set()
    for path in STATIC.glob("*.js"):
        imported |= set(re.findall(r'from "\./([\w-]+\.js)"', path.read_text()))
    assert {"copy.js", "dom.js", "filing.js", "md5.js", "row.js", "tar.js"} <= imported
    assert all((STATIC / name).is_file() for name in imported)


def test_static_files_never_leave_the_static_folder(client) -> None:
    response = client.get("/static/../pages.py", expect_errors=True)
    assert response.status_int in (400, 403, 404)
    assert b"def upload_page" not in response.body


def test_static_scripts_have_no_eval_or_inline_handlers() -> None:
    for path in STATIC.glob("*.js"):
        text = path.read_text()
        assert not re.search(r"\beval\(|new Function\(|innerHTML|\.on\w+\s*=", text), path.name
