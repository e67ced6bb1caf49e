"""Take the README screenshots: the upload page mid-upload, a listing and the Connect page.

Starts its own server over a temporary store, fills it with a few uploads, and drives the
Debian chromium through Playwright. Run from the repository: `python scripts/screenshots.py`.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from bucketdav import launch

HOST_NAME = "bucket.internal"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    # A readable name in the pictures instead of 127.0.0.1; it still reaches the local server.
    f"--host-resolver-rules=MAP {HOST_NAME} 127.0.0.1",
]


def start_server(root: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start `bucketdav serve` on 127.0.0.1 and a free port; return the process and port."""
    env = launch.environ_with(
        ARCHIVE_DIR=str(root),
        BUCKETDAV_MIN_FREE="0",
        MAX_CONTENT_LENGTH="8mb",
        REPLICATE_0="team/${Team}/${Pipeline}",
    )
    return launch.start(env, log_path)


def put(port: int, name: str, data: bytes, headers: dict[str, str]) -> None:
    """Upload `data` as `name` straight over HTTP."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("PUT", f"/upload/{name}", body=data, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"upload of {name} failed with {response.status}")
    finally:
        conn.close()


def build_tar(files: dict[str, bytes]) -> bytes:
    """A small tar of `files`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def fill_store(port: int) -> None:
    """Uploads that make the listing worth a picture."""
    nightly = {"Team": "web", "Pipeline": "nightly"}
    put(port, "junit.xml", b'<testsuite tests="412" failures="0"/>\n' * 40, nightly)
    put(port, "coverage.json", b'{"lines": 91.4}\n' * 3000, nightly)
    put(port, "build.log", b"compiling module ...\n" * 60000, nightly)
    put(port, "junit.xml", b'<testsuite tests="413" failures="1"/>\n' * 40, nightly)
    tree = {
        "site/index.html": b"<h1>docs</h1>\n" * 50,
        "site/assets/app.js": b"console.log(1)\n" * 4000,
        "site/assets/app.css": b"body{}\n" * 900,
    }
    put(port, "site.tar", build_tar(tree), nightly)


def write_inputs(folder: Path) -> list[Path]:
    """Files for the mid-upload picture: a few big ones, one too big, one already stored."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"firmware.img": 6_000_000, "symbols.zip": 4_500_000, "report.pdf": 2_500_000}
    paths = []
    for name, size in sizes.items():
        path = folder / name
        path.write_bytes(os.urandom(size))
        paths.append(path)
    too_big = folder / "disk-image.qcow2"
    too_big.write_bytes(b"\0" * 9_000_000)
    again = folder / "junit.xml"
    again.write_bytes(b'<testsuite tests="413" failures="1"/>\n' * 40)
    return [again, *paths, too_big]


def shoot_upload(browser: Any, base: str, inputs: list[Path], out: Path) -> None:
    """The upload page while several uploads are part-way."""
    context = browser.new_context(viewport={"width": 1100, "height": 1000})
    page = context.new_page()
    # Slow the link down so the bars are caught mid-way.
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 20,
            "downloadThroughput": 50_000_000,
            "uploadThroughput": 1_500_000,
        },
    )
    page.goto(f"{base}/upload")
    page.get_by_label("Team").fill("web")
    page.get_by_label("Pipeline").fill("nightly")
    page.get_by_label("Pipeline").blur()
    page.set_input_files("#files", [str(p) for p in inputs])
    page.locator("#uploads li.done").first.wait_for(timeout=20_000)
    page.locator("#uploads li.failed").first.wait_for(timeout=20_000)
    # Wait until the biggest upload is visibly under way but not finished.
    deadline = time.monotonic() + 20
    bar = page.locator("#uploads li", has_text="firmware.img").locator("progress")
    while time.monotonic() < deadline and (bar.evaluate("b => b.value") or 0) < 45:
        time.sleep(0.1)
    page.screenshot(path=str(out / "upload.png"), full_page=True)
    context.close()


def shoot(browser: Any, url: str, path: Path, width: int, height: int, *, full: bool) -> None:
    """One picture of `url` in a fresh browser window of the given size."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.goto(url)
    page.screenshot(path=str(path), full_page=full)
    context.close()


def shoot_listing(browser: Any, base: str, out: Path) -> None:
    """A replica folder as a browser shows it, and the same at phone width."""
    url = f"{base}/replica/team/web/nightly/"
    shoot(browser, url, out / "listing.png", 1100, 560, full=True)
    shoot(browser, url, out / "listing-phone.png", 390, 760, full=False)


def shoot_connect(browser: Any, base: str, out: Path) -> None:
    """The Connect page with this server's commands."""
    shoot(browser, f"{base}/connect", out / "connect.png", 1100, 900, full=True)


def main() -> None:
    """Start a server, fill it, and write the PNGs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bucketdav-shots-") as temp:
        work = Path(temp)
        proc, port = start_server(work / "store", work / "server.log")
        try:
            fill_store(port)
            inputs = write_inputs(work / "inputs")
            base = f"http://{HOST_NAME}:{port}"
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=args.chromium, args=CHROMIUM_ARGS
                )
                shoot_upload(browser, base, inputs, args.out)
                shoot_listing(browser, base, args.out)
                shoot_connect(browser, base, args.out)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    for name in ("upload.png", "listing.png", "listing-phone.png", "connect.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()
