"""The upload page, the listing and the Connect page in headless Chromium against a real server."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from helpers import md5, tar_gz

from tests.conftest import LiveServer

pytestmark = pytest.mark.slow

HOSTILE = "<img src=x onerror=alert(1)>.txt"
WAIT_MS = 15_000


class Tab:
    """A page in a fresh browser context that records script errors and dialogs."""

    def __init__(self, browser: Any, base: str, **options: Any) -> None:
        self.context = browser.new_context(**options)
        self.page = self.context.new_page()
        # Clipboard writes and file pickers need the page to have focus.
        self.page.bring_to_front()
        self.page.set_default_timeout(WAIT_MS)
        self.base = base.rstrip("/")
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("console", self._console)
        self.page.on("response", self._response)

        def dialog(d: Any) -> None:
            self.dialogs.append(d.message)
            d.dismiss()

        self.page.on("dialog", dialog)

    def _console(self, message: Any) -> None:
        # Chromium reports every HTTP error as a console error; _response judges those.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(f"console: {message.text}")

    def _response(self, response: Any) -> None:
        # Answers the page expects to be errors: unknown checksums, refused uploads.
        expected = ("/checksum/", "/upload")
        if response.status >= 400 and not urlsplit(response.url).path.startswith(expected):
            self.problems.append(f"{response.status} {response.url}")

    def goto(self, path: str) -> Any:
        """Open `path` on the server and wait for it to load."""
        return self.page.goto(self.base + path)

    def rows(self, state: str) -> Any:
        """The upload rows in `state` (done, failed)."""
        return self.page.locator(f"#uploads li.upload.{state}")

    def wait_rows(self, count: int, state: str = "done") -> None:
        """Wait until `count` rows are finished, then check none failed unexpectedly."""
        self.page.locator("#uploads li.upload.done, #uploads li.upload.failed").nth(
            count - 1
        ).wait_for()
        if state == "done":
            failed = self.rows("failed")
            assert failed.count() == 0, failed.all_inner_texts()

    def links(self, row: Any, term: str) -> list[str]:
        """The URLs a finished row lists under `term` (File, Tree, Replica)."""
        hrefs = row.locator(f"dt:text-is('{term}') + dd a").evaluate_all(
            "links => links.map(a => a.href)"
        )
        return list(hrefs)

    def close(self) -> None:
        """Close the context and check the page ran without script errors or dialogs."""
        self.context.close()
        assert self.problems == []
        assert self.dialogs == []


@pytest.fixture
def open_tab(browser: Any) -> Iterator[Callable[..., Tab]]:
    """Open pages on a live server: `open_tab(server, **context_options)`."""
    tabs: list[Tab] = []

    def make(server: LiveServer, **options: Any) -> Tab:
        tab = Tab(browser, server.url, **options)
        tabs.append(tab)
        return tab

    yield make
    for tab in tabs:
        tab.close()


def _get(server: LiveServer, url: str) -> bytes:
    response = server.request("GET", urlsplit(url).path)
    assert response.status == 200, (url, response.status)
    return response.body


def _payload(name: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "mimeType": "application/octet-stream", "buffer": data}


def _slow_uploads(tab: Any, rate: int) -> None:
    """Throttle the page's uploads to `rate` bytes a second, so they stay in flight."""
    cdp = tab.context.new_cdp_session(tab.page)
    cdp.send("Network.enable")
    conditions = {"offline": False, "latency": 0, "downloadThroughput": -1}
    cdp.send("Network.emulateNetworkConditions", {**conditions, "uploadThroughput": rate})


def test_upload_page_two_files_reach_done_with_working_links(live_server, open_tab, tmp_path):
    first, second = os.urandom(300_000), b"second file\n" * 100
    (tmp_path / "one.bin").write_bytes(first)
    (tmp_path / "two.txt").write_bytes(second)
    tab = open_tab(live_server)
    tab.goto("/upload")
    tab.page.set_input_files("#files", [str(tmp_path / "one.bin"), str(tmp_path / "two.txt")])
    tab.wait_rows(2)
    rows = tab.rows("done")
    assert rows.count() == 2
    for index, (name, data) in enumerate([("one.bin", first), ("two.txt", second)]):
        row = rows.nth(index)
        assert row.locator(".name").inner_text() == name
        assert row.locator("progress").evaluate("bar => bar.value") == 100
        assert md5(data) in row.inner_text()
        (blob,) = tab.links(row, "File")
        assert blob.endswith(f"?name={name}")  # saved under its own name, not the checksum
        assert _get(live_server, blob) == data
        assert row.locator("button.copy").count() == 2
    log = live_server.settled_log()
    assert re.search(r'"PUT /upload/one\.bin HTTP/1\.1" 200', log)
    assert re.search(r'"PUT /upload/two\.txt HTTP/1\.1" 200', log)


def test_upload_page_folder_becomes_a_tree(live_server, open_tab, tmp_path):
    folder = tmp_path / "results"
    deep = folder / "sub" / ("long-directory-name-" * 4) / "more"
    deep.mkdir(parents=True)
    members = {
        "top.txt": b"top\n",
        "sub/été.log": "ünïcode\n".encode(),
        f"sub/{'long-directory-name-' * 4}/more/{'x' * 90}.xml": b"<x/>\n" * 500,
    }
    for rel, data in members.items():
        (folder / rel).write_bytes(data)
    tab = open_tab(live_server)
    tab.goto("/upload")
    tab.page.set_input_files("#folder", str(folder))
    tab.wait_rows(1)
    row = tab.rows("done").first
    assert "results/ (3 files, as results.tar)" in row.locator(".name").inner_text()
    (blob,) = tab.links(row, "File")
    with tarfile.open(fileobj=io.BytesIO(_get(live_server, blob))) as archive:
        files = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    assert files == {f"results/{rel}": data for rel, data in members.items()}
    (tree,) = tab.links(row, "Tree")
    for rel, data in members.items():
        path = urlsplit(tree).path + quote(f"results/{rel}")
        assert live_server.request("GET", path).body == data
    assert re.search(r'"PUT /upload/results\.tar HTTP/1\.1" 200', live_server.settled_log())


def test_upload_page_files_replicas_under_the_header_fields(
    live_server_factory, open_tab, tmp_path
):
    server = live_server_factory(REPLICATE_0="user/${Username}/${Topic}")
    (tmp_path / "report.xml").write_bytes(b"<report/>\n")
    tab = open_tab(server)
    tab.goto("/upload")
    where = tab.page.locator("#where")
    assert "fill Username, Topic" in where.inner_text()
    tab.page.get_by_label("Username").fill("bob")
    tab.page.get_by_label("Topic").fill("nightly")
    assert where.inner_text() == "replica/user/bob/nightly/"
    tab.page.set_input_files("#files", str(tmp_path / "report.xml"))
    forecast = tab.page.locator("#uploads li .hint").first
    assert forecast.text_content() == "Will be filed under replica/user/bob/nightly/"
    tab.wait_rows(1)
    row = tab.rows("done").first
    (replica,) = tab.links(row, "Replica")
    assert re.search(r"/replica/user/bob/nightly/report\.\d{8}\.\d{4}\.0\.xml$", replica)
    assert _get(server, replica) == b"<report/>\n"
    latest = server.request("GET", "/replica/user/bob/nightly/report.latest.xml")
    assert latest.body == b"<report/>\n"
    tab.goto("/upload")
    assert tab.page.get_by_label("Username").input_value() == "bob"
    assert tab.page.get_by_label("Topic").input_value() == "nightly"


def test_upload_page_refuses_an_oversized_file_with_the_limit(live_server_factory, open_tab):
    server = live_server_factory(MAX_CONTENT_LENGTH="1kb")
    tab = open_tab(server)
    tab.goto("/upload")
    tab.page.set_input_files("#files", _payload("big.bin", b"x" * 5000))
    tab.wait_rows(1, "failed")
    error = tab.rows("failed").first.locator(".error")
    assert "MAX_CONTENT_LENGTH 1kb" in error.inner_text()
    assert "PUT /upload/big.bin" not in server.settled_log()


def test_upload_page_without_javascript_posts_the_form(live_server_factory, open_tab):
    server = live_server_factory(MAX_CONTENT_LENGTH="1kb")
    tab = open_tab(server, java_script_enabled=False)
    tab.goto("/upload")
    assert tab.page.locator("#choose-files").is_visible() is False
    tab.page.get_by_label("File", exact=True).set_input_files(_payload("small.txt", b"hello\n"))
    with tab.page.expect_navigation():
        tab.page.get_by_role("button", name="Upload").click()
    answer = json.loads(tab.page.locator("body").inner_text())
    assert answer["checksum"]["blob"] == md5(b"hello\n")
    tab.goto("/upload")
    tab.page.get_by_label("File", exact=True).set_input_files(_payload("big.txt", b"y" * 5000))
    with tab.page.expect_navigation():
        tab.page.get_by_role("button", name="Upload").click()
    answer = json.loads(tab.page.locator("body").inner_text())
    assert answer["code"] == 413
    assert "1kb" in answer["error"]


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_upload_page_deploys_known_content_by_checksum(live_server_factory, open_tab, algorithm):
    server = live_server_factory(CHECKSUM_TYPE=algorithm)
    data = os.urandom(200_000)
    digest = hashlib.new(algorithm, data).hexdigest()
    assert server.upload("first.bin", data).status == 200
    tab = open_tab(server)
    tab.goto("/upload")
    tab.page.set_input_files("#files", _payload("again.bin", data))
    tab.wait_rows(1)
    row = tab.rows("done").first
    assert "deployed by checksum, no bytes sent" in row.inner_text()
    assert digest in row.inner_text()
    log = server.settled_log()
    assert f"{algorithm}={digest} size={len(data)} made=- replicas=0 deployed=true" in log
    assert f'"HEAD /checksum/{digest} HTTP/1.1" 200' in log
    assert len(re.findall(r'"PUT /upload/again\.bin HTTP/1\.1" 200', log)) == 1


def test_upload_page_sends_new_content_with_its_checksum(live_server, open_tab):
    data = b"new content\n"
    tab = open_tab(live_server)
    tab.goto("/upload")
    tab.page.set_input_files("#files", _payload("new.txt", data))
    tab.wait_rows(1)
    assert "deployed by checksum" not in tab.rows("done").first.inner_text()
    digest = md5(data)
    log = live_server.settled_log()
    assert f'"HEAD /checksum/{digest} HTTP/1.1" 404' in log
    assert re.search(
        rf'"PUT /upload/new\.txt HTTP/1\.1" 200 .* md5={digest} size={len(data)} made=blob ', log
    )


def test_hostile_file_name_is_text_on_the_page_and_in_the_listing(live_server_factory, open_tab):
    server = live_server_factory(REPLICATE_0="user/${Username}")
    tab = open_tab(server)
    tab.goto("/upload")
    tab.page.get_by_label("Username").fill("eve")
    tab.page.set_input_files("#files", _payload(HOSTILE, b"harmless\n"))
    tab.wait_rows(1)
    row = tab.rows("done").first
    assert row.locator(".name").inner_text() == HOSTILE
    assert tab.page.locator("#uploads img").count() == 0
    tab.goto("/replica/user/eve/")
    names = tab.page.locator("#listing td.name a").all_inner_texts()
    assert HOSTILE.replace(".txt", ".latest.txt") in names
    assert tab.page.locator("img").count() == 0


def test_listing_sorts_by_name_size_and_date(live_server, open_tab):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, size in [("b.txt", 300), ("a.txt", 20), ("C.txt", 4000)]:
            info = tarfile.TarInfo(f"set/{name}")
            info.size = size
            archive.addfile(info, io.BytesIO(name.encode()[:1] * size))
    answer = live_server.upload("set.tar", buffer.getvalue()).json()
    tree = urlsplit(answer["url"]["archive"]).path + "set/"
    # Files in a tree are links of their blobs, so their times are set here, not in the tar.
    folder = live_server.root / answer["path"]["archive"] / "set"
    for name, mtime in [("b.txt", 3000), ("a.txt", 1000), ("C.txt", 2000)]:
        os.utime(folder / name, (mtime, mtime))
    tab = open_tab(live_server)
    tab.goto(tree)
    names = tab.page.locator("#listing tbody td.name a")
    assert names.all_inner_texts() == ["a.txt", "b.txt", "C.txt"]
    header = tab.page.get_by_role("button", name="Size")
    header.click()
    assert names.all_inner_texts() == ["C.txt", "b.txt", "a.txt"]
    assert tab.page.locator("th[data-key=size]").get_attribute("aria-sort") == "descending"
    header.click()
    assert names.all_inner_texts() == ["a.txt", "b.txt", "C.txt"]
    tab.page.get_by_role("button", name="Modified").click()
    assert names.all_inner_texts() == ["b.txt", "C.txt", "a.txt"]
    tab.page.get_by_role("button", name="Name").click()
    assert names.all_inner_texts() == ["a.txt", "b.txt", "C.txt"]
    assert tab.page.locator("th[data-key=name]").get_attribute("aria-sort") == "ascending"


def test_listing_downloads_the_folder_as_zip_and_tar(live_server, open_tab, tmp_path):
    members = {"site/index.html": b"<p>hi</p>\n", "site/css/a.css": b"p { color: red }\n"}
    answer = live_server.upload("site.tgz", tar_gz(members)).json()
    tab = open_tab(live_server)
    tab.goto(urlsplit(answer["url"]["archive"]).path + "site/")
    for kind in ("zip", "tar"):
        with tab.page.expect_download() as started:
            tab.page.get_by_role("link", name=f"Download .{kind}").click()
        download = started.value
        assert download.suggested_filename == f"site.{kind}"
        saved = tmp_path / download.suggested_filename
        download.save_as(saved)
        if kind == "zip":
            with zipfile.ZipFile(saved) as archive:
                files = {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}
        else:
            with tarfile.open(saved) as archive:
                files = {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}
        assert files == members


def test_connect_page_copies_the_mount_command(live_server, open_tab):
    tab = open_tab(live_server, permissions=["clipboard-read", "clipboard-write"])
    tab.goto("/connect")
    command = f"mount -t davfs -o ro,conf=/etc/davfs2/bucketdav.conf {live_server.url} /mnt/bucket"
    assert command in tab.page.locator("#davfs2").inner_text()
    tab.page.get_by_role("button", name=f"Copy: {command}").click()
    assert tab.page.evaluate("navigator.clipboard.readText()") == command
    unc = f"\\\\127.0.0.1@{live_server.port}\\DavWWWRoot"
    assert unc in tab.page.locator("#windows").inner_text()


def test_pages_fit_a_phone_width_window(live_server, open_tab):
    long_name = "nightly-" + "n" * 120 + ".txt"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(long_name)
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    tree = urlsplit(live_server.upload("wide.tar", buffer.getvalue()).json()["url"]["archive"])
    tab = open_tab(live_server, viewport={"width": 360, "height": 740})
    tab.goto("/upload")
    tab.page.set_input_files("#files", _payload(long_name, b"y"))
    tab.wait_rows(1)
    pages = {"/upload": None, "/connect": None, tree.path: None}
    for path in pages:
        if path != "/upload":
            tab.goto(path)
        # Wider content than the window means sideways scrolling on a phone.
        pages[path] = tab.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
    assert pages == dict.fromkeys(pages, 0)
    assert long_name in tab.page.locator("#listing").inner_text()


def test_browser_md5_matches_hashlib(live_server, open_tab):
    tab = open_tab(live_server)
    tab.goto("/upload")
    sizes = [0, 1, 55, 56, 63, 64, 65, 127, 128, 1000, 70_000]
    got = tab.page.evaluate(
        """async (sizes) => {
            const { Md5, md5Blob } = await import("/static/md5.js");
            const out = [];
            for (const n of sizes) {
                const bytes = new Uint8Array(n).map((_, i) => (i * 31 + n) & 255);
                const md5 = new Md5();
                // Odd piece sizes cross the 64-byte block edges in every way.
                for (let at = 0; at < n; at += 37) md5.update(bytes.subarray(at, at + 37));
                out.push([md5.hex(), await md5Blob(new Blob([bytes]), null, 1000)]);
            }
            return out;
        }""",
        sizes,
    )
    for n, (incremental, sliced) in zip(sizes, got, strict=True):
        data = bytes((i * 31 + n) & 255 for i in range(n))
        assert incremental == sliced == md5(data), n


def test_browser_tar_is_valid_with_long_and_unicode_names(live_server, open_tab):
    tab = open_tab(live_server)
    tab.goto("/upload")
    long_name = "dir/" + "d" * 120 + "/" + "f" * 150 + ".txt"
    names = ["dir/plain.txt", "dir/ünï/ç.txt", long_name, "dir/empty/"]
    data = tab.page.evaluate(
        """async (names) => {
            const { tarBlob } = await import("/static/tar.js");
            const entries = names.map((path, i) => path.endsWith("/")
                ? { path, dir: true }
                : { path, file: new File([`content ${i}\\n`.repeat(i + 1)], "x",
                                         { lastModified: 1700000000000 }) });
            const bytes = new Uint8Array(await tarBlob(entries).arrayBuffer());
            return Array.from(bytes);
        }""",
        names,
    )
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as archive:
        members = {m.name: m for m in archive.getmembers()}
        contents = {n: archive.extractfile(m).read() for n, m in members.items() if m.isfile()}
    assert {"dir", "dir/ünï", "dir/empty", "dir/" + "d" * 120}.issubset(members)
    for index, name in enumerate(names[:3]):
        assert contents[name] == f"content {index}\n".encode() * (index + 1)
        assert members[name].mtime == 1_700_000_000
    assert members["dir/empty"].isdir()
    assert len(data) % 512 == 0


def test_upload_page_dropped_folder_keeps_its_empty_folders(live_server, open_tab, tmp_path):
    folder = tmp_path / "dropped"
    (folder / "empty").mkdir(parents=True)
    (folder / "logs").mkdir()
    (folder / "logs" / "run.log").write_bytes(b"ran\n")
    (tmp_path / "loose.txt").write_bytes(b"loose\n")
    tab = open_tab(live_server)
    tab.goto("/upload")
    # A real drop from the file manager, as Chromium's input layer delivers it.
    cdp = tab.context.new_cdp_session(tab.page)
    data = {
        "items": [],
        "files": [str(folder), str(tmp_path / "loose.txt")],
        "dragOperationsMask": 1,
    }
    for kind in ("dragEnter", "dragOver", "drop"):
        cdp.send("Input.dispatchDragEvent", {"type": kind, "x": 100, "y": 100, "data": data})
    tab.wait_rows(2)
    folder_row = tab.page.locator("#uploads li.folder")
    assert "Unpacked 1 file into the tree." in folder_row.inner_text()
    (tree,) = tab.links(folder_row, "Tree")
    base = urlsplit(tree).path
    assert live_server.request("GET", base + "dropped/logs/run.log").body == b"ran\n"
    empty = live_server.request("PROPFIND", base + "dropped/empty/", headers={"Depth": "0"})
    assert empty.status == 207
    (loose,) = tab.links(tab.page.locator("#uploads li.file"), "File")
    assert _get(live_server, loose) == b"loose\n"


def test_upload_page_names_the_refused_archive_member(live_server, open_tab):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"evil"))
    tab = open_tab(live_server)
    tab.goto("/upload")
    tab.page.set_input_files("#files", _payload("evil.tar", buffer.getvalue()))
    tab.wait_rows(1, "failed")
    error = tab.rows("failed").first.locator(".error").inner_text()
    assert error.startswith("Refused: ")
    assert "../escape.txt" in error
    assert tab.page.locator("#announce").inner_text().startswith("evil.tar failed: Refused")


def test_upload_page_works_from_the_keyboard(live_server, open_tab):
    tab = open_tab(live_server)
    tab.goto("/upload")
    focused = ""
    for _ in range(10):
        tab.page.keyboard.press("Tab")
        focused = tab.page.evaluate("document.activeElement.id")
        if focused == "choose-files":
            break
    assert focused == "choose-files"
    # Count the clicks Enter passes on to the hidden file input; the dialog itself is the
    # operating system's, so the click is stopped before it opens one.
    tab.page.evaluate(
        """() => {
            window.pickerClicks = 0;
            document.getElementById("files").addEventListener("click", (event) => {
                window.pickerClicks++;
                event.preventDefault();
            });
        }"""
    )
    tab.page.keyboard.press("Enter")
    tab.page.keyboard.press("Space")
    assert tab.page.evaluate("window.pickerClicks") == 2
    tab.page.set_input_files("#files", _payload("typed.txt", b"from the keyboard\n"))
    tab.wait_rows(1)
    tab.page.keyboard.press("Tab")
    tab.page.keyboard.press("Tab")
    assert tab.page.evaluate("document.activeElement.textContent") == "Copy"
    assert tab.page.evaluate("document.activeElement.getAttribute('aria-label')").startswith(
        "Copy checksum"
    )


def test_upload_page_runs_three_uploads_at_a_time(live_server, open_tab):
    tab = open_tab(live_server)
    tab.goto("/upload")
    # A slow link keeps the first uploads in flight while the rest wait.
    _slow_uploads(tab, 150_000)
    files = [_payload(f"part{i}.bin", os.urandom(40_000)) for i in range(5)]
    tab.page.set_input_files("#files", files)
    states = tab.page.locator("#uploads li .state")
    busiest = 0
    waited = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        texts = states.all_inner_texts()
        active = [t for t in texts if "waiting" not in t and not t.startswith(("done", "failed"))]
        busiest = max(busiest, len(active))
        waited = waited or any("waiting" in t for t in texts[3:])
        if len(texts) == 5 and all(t.startswith("done") for t in texts):
            break
        time.sleep(0.05)
    assert all(t.startswith("done") for t in states.all_inner_texts())
    assert busiest == 3
    assert waited


def test_upload_page_sends_non_ascii_field_values_as_utf8(live_server_factory, open_tab):
    server = live_server_factory(REPLICATE_0="user/${Username}")
    tab = open_tab(server)
    tab.goto("/upload")
    tab.page.get_by_label("Username").fill("Zoë")
    tab.page.set_input_files("#files", _payload("notes.txt", b"n\n"))
    tab.wait_rows(1)
    (replica,) = tab.links(tab.rows("done").first, "Replica")
    assert urlsplit(replica).path.startswith("/replica/user/Zo%C3%AB/notes.")
    assert (server.root / "replica" / "user" / "Zoë" / "notes.latest.txt").read_bytes() == b"n\n"


def test_upload_page_retries_when_the_server_is_busy(live_server_factory, open_tab):
    server = live_server_factory(BUCKETDAV_MAX_UPLOADS="1", BUCKETDAV_TIMEOUT="3")
    tab = open_tab(server)
    tab.goto("/upload")
    piece = os.urandom(20_000)
    seconds = 7
    conn = server.connection()
    # Hold the only upload slot for a while: headers first, then the body at 20 kB/s, fast
    # enough for the server's minimum rate (16 KiB per BUCKETDAV_TIMEOUT).
    conn.putrequest("PUT", "/upload/slow.bin")
    conn.putheader("Content-Length", str(len(piece) * seconds))
    conn.endheaders(piece)

    def trickle() -> None:
        for _ in range(seconds - 1):
            time.sleep(1)
            conn.send(piece)

    holder = threading.Thread(target=trickle)
    holder.start()
    try:
        time.sleep(0.3)
        tab.page.set_input_files("#files", _payload("quick.txt", b"quick\n"))
        tab.page.locator("#uploads li .state", has_text="server busy").wait_for()
        tab.page.locator("#uploads li.done, #uploads li.failed").first.wait_for(timeout=20_000)
        assert tab.rows("done").count() == 1
    finally:
        holder.join(timeout=30)
    assert conn.getresponse().status == 200
    conn.close()
    assert '"PUT /upload/quick.txt HTTP/1.1" 503' in server.settled_log()


def test_upload_page_cancels_waiting_and_running_uploads(live_server, open_tab):
    tab = open_tab(live_server)
    tab.goto("/upload")
    _slow_uploads(tab, 100_000)
    files = [_payload(f"file{i}.bin", os.urandom(100_000)) for i in range(3)]
    tab.page.set_input_files("#files", [*files, _payload("queued.txt", b"never sent\n")])
    page = tab.page
    page.get_by_role("button", name="Cancel the upload of queued.txt").click()
    page.locator("#uploads li.upload.file", has_text="file0.bin").locator(
        ".state", has_text=" of "
    ).wait_for()
    page.get_by_role("button", name="Cancel the upload of file0.bin").click()
    tab.wait_rows(2)
    cancelled = page.locator("#uploads li.cancelled .name").all_inner_texts()
    assert sorted(cancelled) == ["file0.bin", "queued.txt"]
    assert page.locator("#uploads li.done .name").all_inner_texts() == ["file1.bin", "file2.bin"]
    log = live_server.settled_log()
    assert "queued.txt" not in log
    assert not re.search(r'"PUT /upload/file0\.bin HTTP/1\.1" 200', log)
    stored = [live_server.request("HEAD", f"/checksum/{md5(f['buffer'])}").status for f in files]
    assert stored == [404, 200, 200]
