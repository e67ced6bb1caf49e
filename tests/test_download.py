"""Folder downloads as zip and tar (`?download=`) and attachment names (`?name=`)."""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path
from urllib.parse import quote

import pytest
import webtest

from bucketdav.dav.download import attachment, saved_name
from bucketdav.dav.listing import render_listing
from bucketdav.dav.packing import deflates, tar_header, tar_stream, zip_stream
from bucketdav.dav.walk import (
    FILE,
    FOLDER,
    LINK,
    FolderTooLarge,
    Member,
    Readable,
    bounded,
    walk,
)
from bucketdav.dav.zipstream import ZipWriter
from bucketdav.store.blobs import Store
from tests.conftest import LiveServer, require_tool
from tests.helpers import tar_gz

BOB = {"Username": "bob", "Topic": "demo"}
TEMPLATE = "user/${Username}/${Topic}"
BIG = os.urandom(300_000)  # past one read block
GZIPPED = b"\x1f\x8b\x08\x00" + os.urandom(500)  # stored, not deflated, in a zip
SOURCE = {
    "docs/readme.txt": b"read me\n" * 50,
    "docs/sub/deep/\u00e9t\u00e9 \u00fcn\u00efcode.txt": "\u00e9t\u00e9\n".encode(),
    "docs/sub/empty.txt": b"",
    "docs/big.bin": BIG,
    "docs/data.gz": GZIPPED,
}
SOURCE_LINKS = {"docs/link-to-readme": "readme.txt", "docs/sub/up.txt": "../readme.txt"}


# -- pure parts ---------------------------------------------------------------------------


def test_attachment_ascii_name_is_quoted_as_is():
    assert attachment("docs.latest.zip") == 'attachment; filename="docs.latest.zip"'


def test_attachment_utf8_name_has_an_ascii_fallback_and_the_rfc_5987_form():
    value = attachment('r\u00e9sum\u00e9 "1".txt')
    assert value == (
        "attachment; filename=\"r_sum_ _1_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%221%22.txt"
    )


def test_saved_name_keeps_the_last_segment_without_control_characters():
    assert saved_name("../../etc/passwd") == "passwd"
    assert saved_name("C:\\Users\\x\\report.pdf") == "report.pdf"
    assert saved_name("a\r\nSet-Cookie: x.txt") == "aSet-Cookie: x.txt"
    assert saved_name("..") is None
    assert saved_name("") is None
    assert saved_name("x" * 256) is None


@pytest.mark.parametrize(
    ("name", "first", "expected"),
    [
        ("notes.txt", b"plain words, many times " * 100, True),
        ("photo.jpg", b"plain words, many times " * 100, False),  # by name
        ("blob", b"\x1f\x8b\x08" + b"plain words " * 100, False),  # gzip by its first bytes
        ("blob", os.urandom(20_000), False),  # by a trial on the first 16 KiB
        ("tiny.txt", b"aaaa", False),  # too small to gain anything
    ],
)
def test_deflates_only_what_is_not_compressed_already(name, first, expected):
    assert deflates(name, first, len(first)) is expected


@pytest.mark.parametrize(
    ("name", "kind", "size", "mtime", "target"),
    [
        ("top/a.txt", FILE, 12345, 1_700_000_000, ""),
        ("top/sub", FOLDER, 0, 1, ""),
        ("top/link", LINK, 0, 5, "../a.txt"),
        ("top/\u00e9t\u00e9.txt", FILE, 3, 10, ""),  # pax: not ASCII
        ("top/" + "x" * 120, FILE, 3, 10, ""),  # pax: longer than 100 bytes
        ("top/huge", FILE, 9 << 30, 10, ""),  # pax: past 8 GiB
        ("top/old", FILE, 1, -100, ""),  # pax: before 1970
    ],
)
def test_tar_header_is_the_one_tarfile_writes(name, kind, size, mtime, target):
    member = Member("x", "/x", kind, 0o100640 if kind == FILE else 0o40755, size, mtime, target)
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(member.mode)
    info.mtime = mtime
    info.size = size
    info.type = {FILE: tarfile.REGTYPE, FOLDER: tarfile.DIRTYPE, LINK: tarfile.SYMTYPE}[kind]
    info.linkname = target
    assert tar_header(name, member) == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def test_zip_writer_past_4_gib_uses_zip64_sizes_and_offsets(tmp_path):
    size = (4 << 30) + 12345
    zero = bytes(1 << 20)

    def zeros():
        for _ in range(size // len(zero)):
            yield zero
        yield zero[: size % len(zero)]

    writer = ZipWriter()
    out = tmp_path / "big.zip"
    with open(out, "wb") as handle:
        # Blocks of zeros become holes: the 4 GiB archive takes no disk space.
        pieces = writer.file("big.bin", zeros(), size=size, mode=0o644, mtime=0, deflate=False)
        for piece in pieces:
            if piece is zero:
                handle.seek(len(piece), os.SEEK_CUR)
            else:
                handle.write(piece)
        for piece in writer.file(
            "after.txt", [b"hello"], size=5, mode=0o644, mtime=0, deflate=False
        ):
            handle.write(piece)
        handle.write(writer.finish())
    with zipfile.ZipFile(out) as archive:
        big, after = archive.infolist()
        assert (big.filename, big.file_size, big.compress_size) == ("big.bin", size, size)
        assert after.header_offset > 1 << 32
        assert archive.read("after.txt") == b"hello"
    with open(out, "rb") as handle:
        # The data descriptor after the data: signature, the CRC the central directory has
        # too (the CRC itself is checked on the small files of the other tests), then 8-byte
        # sizes (Zip64).
        handle.seek(big.header_offset + 30 + len("big.bin") + 9 + 20 + size)
        assert handle.read(24) == b"PK\x07\x08" + big.CRC.to_bytes(4, "little") + (
            size.to_bytes(8, "little") * 2
        )


# -- the walk -----------------------------------------------------------------------------


@pytest.fixture
def store(store_root: Path) -> Store:
    store = Store(store_root, "md5")
    store.open()
    return store


def _tree(store: Store) -> Path:
    """explode/…/docs: files, an empty folder, links inside, and links that leave."""
    top = store.tree_path("ab" * 16) / "docs"
    (top / "sub").mkdir(parents=True)
    (top / "empty").mkdir()
    (top / "a.txt").write_bytes(b"a")
    (top / "sub" / "b.txt").write_bytes(b"bb")
    os.symlink("../a.txt", top / "sub" / "up.txt")
    os.symlink("sub", top / "sub-link")
    os.symlink("..", top / "sub" / "loop")
    os.symlink("/etc", top / "etc")
    os.symlink(os.path.relpath(store.root / "staging", top), top / "staging")
    os.symlink("missing", top / "dangling")
    other = store.tree_path("cd" * 16)
    other.mkdir(parents=True)
    (other / "c.txt").write_bytes(b"ccc")
    os.symlink(os.path.relpath(other, top), top / "other")
    return top


def _shape(members: list[Member]) -> dict[str, tuple[str, str]]:
    return {m.rel: (m.kind, m.target) for m in members}


def test_walk_for_tar_keeps_links_inside_and_follows_the_rest_within_the_public_trees(store):
    top = _tree(store)
    assert _shape(list(walk(str(store.root), str(top), keep_links=True))) == {
        "": (FOLDER, ""),
        "a.txt": (FILE, ""),
        "empty": (FOLDER, ""),
        "other": (FOLDER, ""),
        "other/c.txt": (FILE, ""),
        "sub": (FOLDER, ""),
        "sub/b.txt": (FILE, ""),
        "sub/loop": (LINK, ".."),
        "sub/up.txt": (LINK, "../a.txt"),
        "sub-link": (LINK, "sub"),
    }


def test_walk_for_zip_follows_links_and_leaves_out_loops(store):
    top = _tree(store)
    assert _shape(list(walk(str(store.root), str(top), keep_links=False))) == {
        "": (FOLDER, ""),
        "a.txt": (FILE, ""),
        "empty": (FOLDER, ""),
        "other": (FOLDER, ""),
        "other/c.txt": (FILE, ""),
        "sub": (FOLDER, ""),
        "sub/b.txt": (FILE, ""),
        "sub/up.txt": (FILE, ""),
        "sub-link": (FOLDER, ""),
        "sub-link/b.txt": (FILE, ""),
        "sub-link/up.txt": (FILE, ""),
    }


def test_walk_keeps_what_is_readable_and_enters_only_folders_on_the_way(store):
    top = _tree(store)
    readable = Readable(
        may_read=lambda path: path not in ("sub/", "other/", "a.txt"),
        may_enter=lambda path: path == "sub/",
    )
    members = walk(str(store.root), str(top), keep_links=False, readable=readable)
    assert [m.rel for m in members] == [
        "",
        "empty",
        "sub/b.txt",
        "sub/up.txt",
        "sub-link",
        "sub-link/b.txt",
        "sub-link/up.txt",
    ]


def test_walk_leaves_out_names_webdav_hides(store):
    top = store.tree_path("ef" * 16)
    top.mkdir(parents=True)
    (top / "fine.txt").write_bytes(b"x")
    with open(os.fsencode(top) + b"/bad\xff.txt", "wb") as handle:
        handle.write(b"x")
    (top / "new\nline.txt").write_bytes(b"x")
    assert [m.rel for m in walk(str(store.root), str(top), keep_links=True)] == ["", "fine.txt"]


def test_bounded_refuses_one_member_past_each_bound():
    members = [Member(str(n), "/x", FILE, 0o100644, 10, 0) for n in range(5)]
    assert len(list(bounded(members, max_files=5, max_bytes=50))) == 5
    with pytest.raises(FolderTooLarge, match="BUCKETDAV_DOWNLOAD_MAX_FILES"):
        list(bounded(members, max_files=4, max_bytes=50))
    with pytest.raises(FolderTooLarge, match="BUCKETDAV_DOWNLOAD_MAX_BYTES"):
        list(bounded(members, max_files=5, max_bytes=49))


def test_streams_read_by_python_match_the_files_byte_for_byte(store):
    top = _tree(store)
    root = str(store.root)
    tar = b"".join(tar_stream(walk(root, str(top), keep_links=True), "docs"))
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        files = {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}
        links = {m.name: m.linkname for m in archive if m.issym()}
    assert files == {"docs/a.txt": b"a", "docs/sub/b.txt": b"bb", "docs/other/c.txt": b"ccc"}
    assert links == {"docs/sub/up.txt": "../a.txt", "docs/sub-link": "sub", "docs/sub/loop": ".."}
    assert len(tar) % tarfile.RECORDSIZE == 0
    data = b"".join(zip_stream(walk(root, str(top), keep_links=False), "docs"))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        files = {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}
    assert files == {
        "docs/a.txt": b"a",
        "docs/sub/b.txt": b"bb",
        "docs/sub/up.txt": b"a",
        "docs/sub-link/b.txt": b"bb",
        "docs/sub-link/up.txt": b"a",
        "docs/other/c.txt": b"ccc",
    }


# -- HTTP, in process ---------------------------------------------------------------------


@pytest.fixture
def tree_url(client: webtest.TestApp) -> str:
    """An uploaded tree with a replica; returns the tree's folder URL path."""
    answer = client.put("/upload/docs.tgz", tar_gz({"docs/a.txt": b"aaa", "docs/b/c.txt": b"c"}))
    return "/" + answer.json["path"]["archive"] + "/docs/"


def test_download_is_named_after_the_folder(client, tree_url):
    for kind, media in (("zip", "application/zip"), ("tar", "application/x-tar")):
        answer = client.get(tree_url + f"?download={kind}")
        assert answer.status_int == 200
        assert answer.headers["Content-Type"] == media
        assert answer.headers["Content-Disposition"] == f'attachment; filename="docs.{kind}"'


def test_download_head_answers_the_headers_only(client, tree_url):
    answer = client.head(tree_url + "?download=tar")
    assert answer.status_int == 200
    assert answer.headers["Content-Disposition"] == 'attachment; filename="docs.tar"'
    assert answer.body == b""


def test_download_of_another_kind_or_of_the_root_is_400(client, tree_url):
    assert client.get(tree_url + "?download=rar", status=400).text == (
        "download must be zip or tar\n"
    )
    assert client.get("/?download=zip", status=400).text.startswith("the root is the whole store")


def test_download_over_the_bounds_is_413_before_any_archive_byte(make_client):
    for env in ({"BUCKETDAV_DOWNLOAD_MAX_FILES": "2"}, {"BUCKETDAV_DOWNLOAD_MAX_BYTES": "3"}):
        client = make_client(**env)
        answer = client.put("/upload/docs.tgz", tar_gz({"docs/a.txt": b"aaa", "docs/c.txt": b"c"}))
        url = "/" + answer.json["path"]["archive"] + "/docs/?download=zip"
        refused = client.get(url, status=413)
        assert refused.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert next(iter(env)) in refused.text
        assert "Content-Disposition" not in refused.headers


def test_download_of_a_folder_on_the_way_holds_only_what_the_client_may_read(
    make_client, store_root, tmp_path
):
    access = tmp_path / "access.toml"
    access.write_text('[anonymous]\nread = ["/replica/team/a/"]\n')
    client = make_client(BUCKETDAV_ACCESS_FILE=str(access))
    for rel in ("team/a/x.txt", "team/b/y.txt", "top.txt"):
        (store_root / "replica" / rel).parent.mkdir(parents=True, exist_ok=True)
        (store_root / "replica" / rel).write_bytes(rel.encode())
    with tarfile.open(fileobj=io.BytesIO(client.get("/replica/?download=tar").body)) as archive:
        assert archive.getnames() == ["replica", "replica/team/a", "replica/team/a/x.txt"]
        assert archive.extractfile("replica/team/a/x.txt").read() == b"team/a/x.txt"
    assert client.get("/replica/team/b/?download=zip", status=401).status_int == 401


def test_file_with_name_is_an_attachment_in_full_and_in_part(client):
    blob = "/" + client.put("/upload/x.bin", b"0123456789").json["path"]["blob"]
    named = "attachment; filename=\"r_sum_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt"
    whole = client.get(blob + "?name=" + quote("../r\u00e9sum\u00e9.txt"))
    assert (whole.body, whole.headers["Content-Disposition"]) == (b"0123456789", named)
    part = client.get(blob + "?name=r%C3%A9sum%C3%A9.txt", headers={"Range": "bytes=2-3"})
    assert (part.status_int, part.body, part.headers["Content-Disposition"]) == (206, b"23", named)
    assert client.head(blob + "?name=a.txt").headers["Content-Disposition"] == (
        'attachment; filename="a.txt"'
    )
    assert "Content-Disposition" not in client.get(blob).headers
    assert "Content-Disposition" not in client.get(blob + "?name=..").headers


def test_listing_offers_both_downloads_of_a_folder_but_not_of_the_root():
    page = render_listing(path="/replica/team/", entries=[])
    assert '<a href="?download=zip">Download .zip</a>' in page
    assert '<a href="?download=tar">Download .tar</a>' in page
    assert "?download=" not in render_listing(path="/", entries=[])


# -- the real server ----------------------------------------------------------------------


@pytest.fixture
def published(live_server_factory) -> tuple[LiveServer, Path]:
    """A live server with docs.tgz filed as replica/user/bob/demo/docs.latest, plus links.

    Links that leave the folder are added to the extracted tree on disk: to /etc, to
    staging/, dangling, to itself, and to another tree of the store.
    """
    server = live_server_factory(REPLICATE_0=TEMPLATE)
    other = server.upload("other.tgz", tar_gz({"c.txt": b"ccc"})).json()
    answer = server.upload("docs.tgz", tar_gz(SOURCE, SOURCE_LINKS), headers=BOB).json()
    assert answer["code"] == 200, answer
    top = server.root / answer["path"]["archive"] / "docs"
    (top / "empty-folder").mkdir()
    (top / "sub" / "link-to-sub").symlink_to(".")
    (top / "etc").symlink_to("/etc")
    (top / "staging").symlink_to(os.path.relpath(server.root / "staging", top))
    (top / "dangling").symlink_to("missing")
    (top / "other").symlink_to(os.path.relpath(server.root / other["path"]["archive"], top))
    return server, top


def _fetch(server: LiveServer, path: str, out: Path) -> dict[str, str]:
    response = server.request("GET", path)
    assert response.status == 200, response.body[:300]
    out.write_bytes(response.body)
    return response.headers


def test_live_zip_through_latest_round_trips_through_unzip_and_python(published, tmp_path):
    require_tool("unzip")
    server, top = published
    out = tmp_path / "docs.zip"
    headers = _fetch(server, "/replica/user/bob/demo/docs.latest/?download=zip", out)
    assert headers["Content-Disposition"] == 'attachment; filename="docs.latest.zip"'
    assert headers["Transfer-Encoding"] == "chunked"  # streamed as it is made
    assert subprocess.run(["unzip", "-tq", out], capture_output=True).returncode == 0
    expected = {f"docs.latest/{name}": data for name, data in SOURCE.items()}
    expected["docs.latest/docs/link-to-readme"] = SOURCE["docs/readme.txt"]
    expected["docs.latest/docs/sub/up.txt"] = SOURCE["docs/readme.txt"]
    expected["docs.latest/docs/other/c.txt"] = b"ccc"
    with zipfile.ZipFile(out) as archive:
        files = {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}
        folders = {i.filename for i in archive.infolist() if i.is_dir()}
        gz = archive.getinfo("docs.latest/docs/data.gz")
        text = archive.getinfo("docs.latest/docs/readme.txt")
    assert files == expected
    assert folders == {
        "docs.latest/",
        "docs.latest/docs/",
        "docs.latest/docs/empty-folder/",
        "docs.latest/docs/other/",
        "docs.latest/docs/sub/",
        "docs.latest/docs/sub/deep/",
    }
    assert (gz.compress_type, text.compress_type) == (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
    unpacked = tmp_path / "unzipped"
    subprocess.run(["unzip", "-q", out, "-d", unpacked], check=True)
    for name in SOURCE:
        source, copy = (top.parent / name).stat(), (unpacked / "docs.latest" / name).stat()
        assert (copy.st_mode, copy.st_mtime) == (source.st_mode, int(source.st_mtime)), name


def test_live_tar_keeps_links_and_round_trips_through_tar_and_python(published, tmp_path):
    require_tool("tar")
    server, top = published
    out = tmp_path / "docs.tar"
    path = "/replica/user/bob/demo/docs.latest/docs/?download=tar"
    assert _fetch(server, path, out)["Content-Disposition"] == 'attachment; filename="docs.tar"'
    listed = subprocess.run(["tar", "tf", out], capture_output=True, text=True, check=True)
    assert "docs/sub/deep/\u00e9t\u00e9 \u00fcn\u00efcode.txt" in listed.stdout.splitlines()
    unpacked = tmp_path / "untarred"
    unpacked.mkdir()
    subprocess.run(["tar", "xf", out, "-C", unpacked], check=True)
    for name, data in SOURCE.items():
        copy = unpacked / name
        assert copy.read_bytes() == data, name
        source = (top.parent / name).stat()
        assert (copy.stat().st_mode, copy.stat().st_mtime) == (
            source.st_mode,
            int(source.st_mtime),
        )
    assert os.readlink(unpacked / "docs/link-to-readme") == "readme.txt"
    assert os.readlink(unpacked / "docs/sub/up.txt") == "../readme.txt"
    assert os.readlink(unpacked / "docs/sub/link-to-sub") == "."
    assert (unpacked / "docs/other/c.txt").read_bytes() == b"ccc"
    assert (unpacked / "docs/empty-folder").is_dir()
    assert sorted(p.name for p in (unpacked / "docs").iterdir()) == [
        "big.bin",
        "data.gz",
        "empty-folder",
        "link-to-readme",
        "other",
        "readme.txt",
        "sub",
    ]
    with tarfile.open(out) as archive:
        files = {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}
    assert files == {**SOURCE, "docs/other/c.txt": b"ccc"}


def _fan_out(top: Path, width: int, depth: int) -> int:
    """`width` empty files, then `depth` levels of `width` links each to the level below.

    The last level downloads as a zip of width ** (depth + 1) files from a few entries on
    disk (links that leave the downloaded folder are followed). Returns the member count.
    """
    (top / "leaf").mkdir(parents=True)
    for n in range(width):
        (top / "leaf" / f"f{n:02d}").touch()
    below = "leaf"
    for level in range(depth):
        (top / f"l{level}").mkdir()
        for n in range(width):
            (top / f"l{level}" / f"d{n:02d}").symlink_to(f"../{below}")
        below = f"l{level}"
    return 1 + sum(width**k for k in range(1, depth + 2))


def test_live_zip_of_more_than_65535_files_is_zip64(live_server, tmp_path):
    require_tool("unzip")
    top = live_server.root / "explode" / "fa" / "n0" / "many"
    count = _fan_out(top, 16, 3)
    out = tmp_path / "many.zip"
    _fetch(live_server, "/explode/fa/n0/many/l2/?download=zip", out)
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
    assert (len(names), count) == (69_905, 69_905)
    assert "l2/d15/d15/d15/f15" in names
    tail = out.read_bytes()[-200:]
    assert b"PK\x06\x06" in tail and b"PK\x06\x07" in tail  # Zip64 end records
    assert subprocess.run(["unzip", "-tq", out], capture_output=True).returncode == 0


def _status(server: LiveServer, field: str) -> int:
    """A number from the server process's /proc status (VmHWM in KiB, Threads)."""
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(
        next(line for line in status.splitlines() if line.startswith(f"{field}:")).split()[1]
    )


def _drain(server: LiveServer, path: str) -> tuple[float, int]:
    """Seconds to the first byte of the body of GET `path`, and the body's length.

    HTTP/1.0, so the body ends with the connection and is counted without decoding it.
    """
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        first = time.monotonic() - started
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        size = len(head.partition(b"\r\n\r\n")[2])
        while chunk := sock.recv(1 << 20):
            size += len(chunk)
    return first, size


def test_live_download_of_10000_files_starts_at_once_and_memory_stays_flat(live_server):
    top = live_server.root / "explode" / "fa" / "n1" / "wide"
    _fan_out(top, 10, 3)
    # Sparse files: 10,000 of 20 KiB are 200 MiB to send and nothing on disk.
    for n in range(10):
        os.truncate(top / "leaf" / f"f{n:02d}", 20 << 10)
    before = _status(live_server, "VmHWM")
    first_byte, size = _drain(live_server, "/explode/fa/n1/wide/l2/?download=tar")
    assert first_byte < 1.0
    assert size > 10_000 * (20 << 10)
    assert _status(live_server, "VmHWM") - before < 40 << 10


def test_live_client_hanging_up_mid_download_frees_the_only_worker(live_server_factory):
    server = live_server_factory(BUCKETDAV_THREADS="1")
    top = server.root / "explode" / "fa" / "n2" / "huge"
    top.mkdir(parents=True)
    with open(top / "sparse.bin", "wb") as handle:
        handle.truncate(32 << 30)  # minutes to send whole
    path = "/explode/fa/n2/huge/?download=tar"
    threads = _status(server, "Threads")
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = 0
        while received < 4 << 20:
            received += len(sock.recv(1 << 20))
    started = time.monotonic()
    assert server.request("GET", "/healthz").status == 200
    assert time.monotonic() - started < 5
    assert f'"GET {path} HTTP/1.1" 200' in server.settled_log()
    assert _status(server, "Threads") == threads  # nothing goes on reading in the background
