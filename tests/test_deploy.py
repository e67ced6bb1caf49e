"""Deploy by checksum: an upload slot and the space check like any upload, an empty chunked
body like an empty Content-Length one, and known compressed content never decompressed again."""

from __future__ import annotations

import errno
import gzip
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import LiveServer, require_tool
from helpers import files_under, md5, staged, tar_gz

from bucketdav.store.blobs import Store
from bucketdav.store.check import check_store
from bucketdav.store.files import remove_tree
from bucketdav.uploads.archives import extract

REPORT = {"ci/report.txt": b"all green\n" * 1000, "ci/log.txt": b"step\n" * 500}


def deploy_headers(data: bytes, **extra: str) -> dict[str, str]:
    return {"X-Checksum-Deploy": "true", "X-Checksum": md5(data), **extra}


@pytest.fixture
def inflations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the uploads whose compressed content was decompressed, in order."""
    seen: list[str] = []
    real = extract.Inflation.__init__

    def counted(self, store, blob, kind, *, max_bytes, name):
        seen.append(name)
        real(self, store, blob, kind, max_bytes=max_bytes, name=name)

    monkeypatch.setattr(extract.Inflation, "__init__", counted)
    return seen


def without_created(body: dict) -> dict:
    """The answer without what differs between the first upload and a later one."""
    return {k: v for k, v in body.items() if k not in ("created", "filename")}


# -- known compressed content ---------------------------------------------------------------


def test_deploy_of_a_known_tgz_does_not_decompress_it_again(make_client, inflations):
    client = make_client()
    data = tar_gz(REPORT)
    first = client.put("/upload/build.tgz", data).json
    assert inflations == ["build.tgz"]
    again = client.put("/upload/again.tgz", b"", headers=deploy_headers(data)).json
    assert inflations == ["build.tgz"]
    assert without_created(again) == without_created(first)
    assert again["files"] == 2 and again["checksum"]["archive"] is not None


def test_upload_of_a_known_tgz_does_not_decompress_it_again(make_client, inflations):
    client = make_client()
    data = tar_gz(REPORT)
    first = client.put("/upload/build.tgz", data).json
    again = client.put("/upload/build.tgz", data).json
    assert inflations == ["build.tgz"]
    assert without_created(again) == without_created(first)


def test_deploy_of_a_known_gz_finds_its_decompressed_blob(make_client, inflations):
    client = make_client()
    data = gzip.compress(b'{"rows": []}\n' * 100, mtime=0)
    first = client.put("/upload/rows.json.gz", data).json
    again = client.put("/upload/rows.json.gz", b"", headers=deploy_headers(data)).json
    assert inflations == ["rows.json.gz"]
    assert again["checksum"]["decompressed"] == md5(b'{"rows": []}\n' * 100)
    assert without_created(again) == without_created(first)


def test_known_tgz_with_its_tree_gone_is_extracted_from_its_tar_blob(
    make_client, store_root, inflations
):
    client = make_client()
    data = tar_gz(REPORT)
    first = client.put("/upload/build.tgz", data).json
    remove_tree(store_root / first["path"]["archive"])
    again = client.put("/upload/build.tgz", b"", headers=deploy_headers(data)).json
    assert inflations == ["build.tgz"]
    assert again["files"] == 2
    assert (store_root / again["path"]["archive"] / "ci" / "report.txt").read_bytes() == (
        REPORT["ci/report.txt"]
    )


@pytest.mark.parametrize("loss", ["note removed", "decompressed blob removed", "note garbled"])
def test_lost_note_means_one_more_decompression_and_the_same_answer(
    make_client, store_root, inflations, loss
):
    client = make_client()
    data = tar_gz(REPORT)
    first = client.put("/upload/build.tgz", data).json
    store = Store(store_root, "md5")
    note = store.note_path(md5(data))
    if loss == "note removed":
        note.unlink()
    elif loss == "decompressed blob removed":
        (store_root / first["path"]["decompressed"]).unlink()
    else:
        note.unlink()
        note.symlink_to("../../../explode/" + first["path"]["archive"].split("/", 1)[1])
    again = client.put("/upload/build.tgz", b"", headers=deploy_headers(data)).json
    assert inflations == ["build.tgz", "build.tgz"]
    assert without_created(again) == without_created(first)
    assert os.readlink(note) == os.path.relpath(
        store_root / first["path"]["decompressed"], note.parent
    )


def test_known_gz_larger_than_the_extraction_bound_is_still_refused(make_client, store_root):
    data = gzip.compress(b"z" * 100_000, mtime=0)
    make_client().put("/upload/z.gz", data)
    small = make_client(BUCKETDAV_EXTRACT_MAX_BYTES="10kb")
    refused = small.put("/upload/z.gz", b"", headers=deploy_headers(data), status=422).json
    assert "BUCKETDAV_EXTRACT_MAX_BYTES" in refused["error"]
    assert refused["error"].startswith("'z.gz'") or "z.gz" in refused["error"]


def test_notes_are_private_and_the_store_checks_clean(make_client, store_root):
    client = make_client()
    data = tar_gz(REPORT)
    client.put("/upload/build.tgz", data)
    client.put("/upload/build.tgz", b"", headers=deploy_headers(data))
    digest = md5(data)
    note = f"/decompressed/{digest[:2]}/{digest[2:4]}/{digest}"
    assert (store_root / note.lstrip("/")).is_symlink()
    assert client.get(note, status="*").status_int == 404
    listing = client.request("/", method="PROPFIND", headers={"Depth": "1"}, status="*")
    assert b"decompressed" not in listing.body
    report = check_store(store_root, "md5", full=True)
    assert report.clean, report.examples


# -- slot and space ------------------------------------------------------------------------


def test_deploy_below_the_free_space_watermark_is_507(make_client, store_root):
    make_client().put("/upload/known.txt", b"known")
    full = make_client(BUCKETDAV_MIN_FREE="99%")
    refused = full.put("/upload/k.txt", b"", headers=deploy_headers(b"known"), status=507).json
    assert refused["code"] == 507


def test_deploy_copy_past_the_link_limit_is_refused_below_the_watermark(
    make_client, store_root, monkeypatch
):
    client = make_client(REPLICATE_0="team/${Topic}")
    data = b"m" * 1_000_000
    blob = client.put("/upload/big.bin", data).json["path"]["blob"]
    real_link = os.link

    def saturated(src, dst, **kwargs):
        if os.fspath(src).endswith(blob):
            raise OSError(errno.EMLINK, "Too many links")
        return real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", saturated)
    # Room for the deploy itself, not for another copy of its megabyte.
    monkeypatch.setattr(Store, "free_bytes", lambda self: (1_500_000, 1_000_000))
    headers = deploy_headers(data, Topic="nightly")
    refused = client.put("/upload/big.bin", b"", headers=headers, status=507).json
    assert "replica/team/nightly/" in refused["error"]
    assert files_under(store_root / "replica") == []
    assert staged(store_root) == []


def start_body(server: LiveServer, name: str, length: int) -> socket.socket:
    """A connection that has sent the head of a PUT and none of its body yet."""
    sock = socket.create_connection((server.host, server.port), timeout=30)
    sock.sendall(
        f"PUT /upload/{name} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n".encode()
    )
    return sock


@pytest.fixture
def slot_held(live_server_factory: Callable[..., LiveServer]) -> Iterator[LiveServer]:
    """A server with one upload slot, taken by an upload that keeps sending its body."""
    server = live_server_factory(BUCKETDAV_MAX_UPLOADS="1", BUCKETDAV_TIMEOUT="2")
    assert server.upload("known.txt", b"known content").status == 200
    holder = start_body(server, "hold.bin", length=30_000_000)
    done = threading.Event()

    def keep_sending() -> None:
        # Fast enough that the slow-body rule never cuts it off, for as long as the test runs.
        deadline = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < deadline:
            holder.sendall(b"h" * 50_000)
            done.wait(0.05)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    deadline = time.monotonic() + 10
    while not any(p.name.startswith("up-") for p in staged(server.root)):
        assert time.monotonic() < deadline, "the holding upload never started"
        time.sleep(0.02)
    try:
        yield server
    finally:
        done.set()
        sender.join(10)
        holder.close()


def test_deploy_waits_for_an_upload_slot_then_is_503_with_retry_after(slot_held):
    started = time.monotonic()
    refused = slot_held.upload("k.txt", b"", deploy_headers(b"known content"))
    waited = time.monotonic() - started
    assert refused.status == 503
    assert refused.headers["Retry-After"].isdigit()
    assert refused.json()["code"] == 503
    assert 1.5 < waited < 10


def test_deploy_with_an_empty_chunked_body_waits_for_a_slot_too(slot_held):
    conn = slot_held.connection()
    conn.request(
        "PUT",
        "/upload/k.txt",
        body=iter([]),
        encode_chunked=True,
        headers=deploy_headers(b"known content"),
    )
    assert conn.getresponse().status == 503


# -- an empty chunked body -----------------------------------------------------------------


def test_deploy_with_curl_t_dev_null_deploys(live_server_factory):
    curl = require_tool("curl")
    # One slot: the chunked deploy must not wait for a second one while it holds the first.
    server = live_server_factory(BUCKETDAV_MAX_UPLOADS="1", BUCKETDAV_TIMEOUT="5")
    data = b"deployed with curl"
    stored = server.upload("first.txt", data).json()
    command = [curl, "-sS", "-T", "/dev/null", "-v"]
    for name, value in deploy_headers(data).items():
        command += ["-H", f"{name}: {value}"]
    done = subprocess.run(
        [*command, server.url + "upload/again.txt"], capture_output=True, timeout=30, check=True
    )
    assert b"Transfer-Encoding: chunked" in done.stderr
    body = json.loads(done.stdout)
    assert body["code"] == 200 and body["created"] is False
    assert body["checksum"] == stored["checksum"] and body["filename"] == "again.txt"


def test_deploy_with_only_the_last_chunk_deploys_and_keeps_the_connection(live_server):
    data = b"deployed with a raw chunked request"
    live_server.upload("first.txt", data)
    head = "".join(f"{k}: {v}\r\n" for k, v in deploy_headers(data).items())
    request = (
        f"PUT /upload/raw.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n{head}\r\n"
        "0\r\n\r\n"
        "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((live_server.host, live_server.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        deadline = time.monotonic() + 10
        while (chunk := sock.recv(65536)) and time.monotonic() < deadline:
            received += chunk
    first, _, rest = received.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    assert b'"checksum": {"blob": "' + md5(data).encode() in rest
    assert rest.count(b"HTTP/1.1 200") == 1  # the pipelined /healthz, answered in turn


def test_empty_chunked_deploy_of_unknown_content_is_404(live_server):
    conn = live_server.connection()
    conn.request(
        "PUT",
        "/upload/x.txt",
        body=iter([]),
        encode_chunked=True,
        headers=deploy_headers(b"never sent"),
    )
    answer = conn.getresponse()
    assert answer.status == 404
    assert json.loads(answer.read())["code"] == 404
    assert files_under(live_server.root / "blob") == []
