"""Unit tests of the HTML listing of a WebDAV folder."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from bucketdav.dav.listing import Entry, breadcrumb, human_size, render_listing

HOSTILE = "<img src=x onerror=alert(1)>.txt"


def _file(name: str, size: int = 10, *, mtime: float = 0.0, checksum: str | None = None) -> Entry:
    return Entry(
        name=name,
        href="/x/" + name,
        is_dir=False,
        size=size,
        mtime=mtime,
        checksum=checksum,
        count=None,
    )


def _dir(name: str, count: int | None = None) -> Entry:
    return Entry(
        name=name, href=f"/x/{name}/", is_dir=True, size=None, mtime=0.0, checksum=None, count=count
    )


class _Tags(HTMLParser):
    """Collects the tag names and the text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


def test_listing_escapes_hostile_names_as_text() -> None:
    page = render_listing(path="/blob/", entries=[_file(HOSTILE)])
    parsed = _parse(page)
    assert "img" not in parsed.tags
    assert HOSTILE in "".join(parsed.text)


def test_listing_escapes_hostile_folder_path_in_title_and_breadcrumb() -> None:
    page = render_listing(path='/replica/"><b onclick=x>/', entries=[])
    parsed = _parse(page)
    assert "b" not in parsed.tags
    assert '"><b onclick=x>' in "".join(parsed.text)
    assert 'href="/replica/%22%3E%3Cb%20onclick%3Dx%3E/"' in page


def test_listing_has_no_inline_script_or_style() -> None:
    page = render_listing(path="/", entries=[_file("a.txt"), _dir("blob", 2)])
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None
    assert "<style" not in page
    assert " style=" not in page
    assert 'src="/static/listing.js"' in page
    assert 'href="/static/bucketdav.css"' in page


def test_listing_rows_come_in_name_order_folders_first() -> None:
    entries = [_file("b.txt"), _dir("zeta"), _file("A.txt"), _dir("alpha")]
    page = render_listing(path="/x/", entries=entries)
    names = re.findall(r'<td class="name"><a [^>]*>([^<]*)</a>', page)
    assert names == ["alpha/", "zeta/", "A.txt", "b.txt"]


def test_listing_shows_sizes_counts_and_checksums() -> None:
    entries = [_file("big.bin", 5 * 1024 * 1024, checksum="d41d8cd98f00b204e9800998ecf8427e")]
    entries += [_dir("one", 1), _dir("many", 12), _dir("unknown")]
    page = render_listing(path="/x/", entries=entries)
    assert "5.0 MiB" in page
    assert 'title="5242880 bytes"' in page
    assert "d41d8cd98f00b204e9800998ecf8427e" in page
    assert ">1 item<" in page
    assert ">12 items<" in page
    assert "1 file" in page and "3 folders" in page


def test_listing_links_upload_and_connect_pages_without_claiming_write_access() -> None:
    page = render_listing(path="/", entries=[], upload_url="/upload")
    assert 'href="/upload"' in page
    assert 'href="/connect"' in page
    assert "This folder is empty." in page
    lowered = page.lower()
    for claim in ("delete", "rename", "edit", "writable"):
        assert claim not in lowered


def test_listing_marks_the_current_breadcrumb() -> None:
    page = render_listing(path="/explode/ab/", entries=[])
    assert '<a href="/explode/ab/" aria-current="page">ab</a>' in page
    assert '<a href="/explode/">Up to explode</a>' in page


def test_listing_shows_dates_in_utc() -> None:
    page = render_listing(path="/x/", entries=[_file("a", mtime=1_700_000_000.0)])
    assert '<time datetime="2023-11-14T22:13:20Z">2023-11-14 22:13</time>' in page


def test_listing_survives_names_that_were_not_utf8() -> None:
    name = b"caf\xe9.txt".decode("utf-8", "surrogateescape")
    page = render_listing(path=f"/replica/{name}/", entries=[_file(name)])
    page.encode("utf-8")
    assert "caf\ufffd.txt" in page
    assert "/replica/caf%E9.txt/" in page


def test_human_size_reads_like_a_person_would_write_it() -> None:
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1024) == "1.0 KiB"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(100 * 1024 * 1024) == "100 MiB"
    assert human_size(3 * 1024**4) == "3.0 TiB"
    assert human_size(5000 * 1024**5) == "5000 PiB"


def test_breadcrumb_encodes_each_segment() -> None:
    assert breadcrumb("/a b/c%d/") == [
        ("bucketdav", "/"),
        ("a b", "/a%20b/"),
        ("c%d", "/a%20b/c%25d/"),
    ]


def test_listing_names_the_checksum_algorithm_when_given() -> None:
    assert ">Checksum (md5)</th>" in render_listing(path="/", entries=[_file("a")], algorithm="md5")
    assert ">Checksum</th>" in render_listing(path="/", entries=[_file("a")])
