"""HTTP/1.1 framing on the live server: one answer per request, strict chunks, bounded reads."""

from __future__ import annotations

import contextlib
import http.client
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import LiveServer
from helpers import files_under, md5, multipart_body, staged

from bucketdav.uploads.receive import chunk_size

MIB = 1 << 20
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
# Larger than any body the server reads before it decides (WebDAV reads up to 64 KiB).
BIG = b"b" * 300_000


def head(line: str, *fields: str) -> bytes:
    """A request head: the request line, Host, the given fields, the empty line."""
    return "\r\n".join([line, "Host: t", *fields, "", ""]).encode("latin-1")


def chunked(data: bytes, size: int = 0x10000) -> bytes:
    """`data` as a chunked body, in chunks of `size` bytes, with its last chunk."""
    pieces = [
        b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size])
        for i in range(0, len(data), size)
    ]
    return b"".join(pieces) + b"0\r\n\r\n"


def exchange(server: LiveServer, data: bytes, *, half_close: bool = True) -> bytes:
    """Send `data` in one write and return all the server answers until it closes.

    With `half_close` the client then says it has nothing more to send, so a server that
    reads what is left before closing (to not lose its answer to a reset) stops at once.
    """
    received = bytearray()
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            received += chunk
    return bytes(received)


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Each response in `data` in order: status, headers (lower-case names), body."""
    found = []
    while data:
        head_bytes, blank, rest = data.partition(b"\r\n\r\n")
        assert blank, f"an incomplete response: {data[:300]!r}"
        status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
        fields = {}
        for line in lines:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        length = int(fields.get("content-length", "0"))
        found.append((int(status_line.split(" ")[1]), fields, rest[:length]))
        data = rest[length:]
    return found


def assert_one_closing_answer(data: bytes, status: int) -> dict[str, str]:
    """`data` is exactly one response of `status` that says the connection ends."""
    answers = responses(data)
    assert [code for code, _, _ in answers] == [status], answers
    fields = answers[0][1]
    assert fields["connection"] == "close"
    return fields


def nothing_stored(server: LiveServer) -> bool:
    """No blob, nothing in staging/."""
    return not files_under(server.root / "blob") and not staged(server.root)


def wait_until(predicate: Callable[[], object], *, timeout: float = 10.0) -> object:
    """Poll `predicate` until it is true or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def kib_of(server: LiveServer, field: str) -> int:
    """A memory figure (VmRSS, VmHWM) of the live server process, in KiB."""
    text = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


# -- an answer given before the body is read ends the connection ---------------------------

REFUSED_BEFORE_THE_BODY = {
    "api 415": (
        head("POST /upload HTTP/1.1", "Content-Type: text/plain", "Content-Length: 300000") + BIG,
        415,
        {},
    ),
    "api 415 chunked": (
        head("POST /upload HTTP/1.1", "Content-Type: text/plain", "Transfer-Encoding: chunked")
        + chunked(BIG),
        415,
        {},
    ),
    "api 400 no name": (head("PUT /upload/ HTTP/1.1", "Content-Length: 300000") + BIG, 400, {}),
    "api 400 bad checksum header": (
        head("PUT /upload/x HTTP/1.1", "X-Checksum: nothex", "Content-Length: 300000") + BIG,
        400,
        {},
    ),
    "api 404": (head("POST /config/none HTTP/1.1", "Content-Length: 300000") + BIG, 404, {}),
    "api 405": (head("POST /healthz HTTP/1.1", "Content-Length: 300000") + BIG, 405, {}),
    "api 411": (head("PUT /upload/x.bin HTTP/1.1") + b"a body sent without a length\r\n", 411, {}),
    "api 413 declared": (
        head("PUT /upload/x.bin HTTP/1.1", "Content-Length: 40000000") + BIG,
        413,
        {},
    ),
    "api 413 chunked": (
        head("PUT /upload/x.bin HTTP/1.1", "Transfer-Encoding: chunked") + chunked(BIG),
        413,
        {"MAX_CONTENT_LENGTH": "100kb"},
    ),
    "api 413 multipart chunked": (
        head(
            "POST /upload HTTP/1.1",
            "Content-Type: multipart/form-data; boundary=bucketdavtestboundary",
            "Transfer-Encoding: chunked",
        )
        + chunked(multipart_body([("file", "x.bin", BIG)])[0]),
        413,
        {"MAX_CONTENT_LENGTH": "100kb"},
    ),
    "api 507": (
        head("PUT /upload/x.bin HTTP/1.1", "Content-Length: 300000") + BIG,
        507,
        {"BUCKETDAV_MIN_FREE": "99%"},
    ),
    "dav PUT": (head("PUT /blob/x.bin HTTP/1.1", "Content-Length: 300000") + BIG, 405, {}),
    "dav PUT chunked": (
        head("PUT /blob/x.bin HTTP/1.1", "Transfer-Encoding: chunked") + chunked(BIG),
        405,
        {},
    ),
    "dav DELETE": (head("DELETE /blob HTTP/1.1", "Content-Length: 300000") + BIG, 405, {}),
    "dav MKCOL": (head("MKCOL /new HTTP/1.1", "Content-Length: 300000") + BIG, 405, {}),
    "dav GET": (head("GET /missing HTTP/1.1", "Content-Length: 300000") + BIG, 413, {}),
    "dav PROPFIND chunked": (
        head("PROPFIND / HTTP/1.1", "Depth: 1", "Transfer-Encoding: chunked") + chunked(BIG),
        413,
        {},
    ),
}


@pytest.mark.parametrize("kind", REFUSED_BEFORE_THE_BODY)
def test_refusal_before_the_body_ends_the_connection(live_server_factory, kind):
    request, status, env = REFUSED_BEFORE_THE_BODY[kind]
    server = live_server_factory(**env)
    # The rest of the body, and a request pipelined after it, are never read as requests.
    data = exchange(server, request + HEALTHZ)
    assert_one_closing_answer(data, status)
    assert nothing_stored(server)


def test_refusal_before_the_body_closes_without_waiting_for_the_client(live_server):
    request = REFUSED_BEFORE_THE_BODY["api 415"][0]
    started = time.monotonic()
    data = exchange(live_server, request + HEALTHZ, half_close=False)
    assert_one_closing_answer(data, 415)
    assert time.monotonic() - started < 5


@pytest.mark.slow
def test_busy_refusal_ends_the_connection(live_server_factory):
    server = live_server_factory(BUCKETDAV_MAX_UPLOADS="1", BUCKETDAV_TIMEOUT="1")
    done = threading.Event()
    with socket.create_connection((server.host, server.port), timeout=10) as holder:
        holder.sendall(head("PUT /upload/holder.bin HTTP/1.1", "Content-Length: 30000000"))

        def keep_sending() -> None:
            # Steady and fast enough: the upload keeps its slot for the whole test.
            with contextlib.suppress(OSError):
                while not done.wait(0.05):
                    holder.sendall(b"h" * 50_000)

        sender = threading.Thread(target=keep_sending)
        sender.start()
        try:
            assert wait_until(lambda: staged(server.root))
            request = head("PUT /upload/x.bin HTTP/1.1", "Content-Length: 300000") + BIG
            data = exchange(server, request + HEALTHZ)
        finally:
            done.set()
            sender.join(10)
    fields = assert_one_closing_answer(data, 503)
    assert fields["retry-after"].isdigit()


@pytest.mark.parametrize(
    "request_bytes, statuses",
    [
        (head("PUT /blob/x.bin HTTP/1.1", "Content-Length: 10") + b"0123456789", [405, 200]),
        (head("GET /missing HTTP/1.1", "Content-Length: 10") + b"0123456789", [404, 200]),
        (head("GET /missing HTTP/1.1", "Transfer-Encoding: chunked") + chunked(b"x"), [404, 200]),
    ],
    ids=["dav PUT", "dav GET", "dav GET chunked"],
)
def test_small_body_read_before_the_answer_keeps_the_connection_in_step(
    live_server, request_bytes, statuses
):
    answers = responses(exchange(live_server, request_bytes + HEALTHZ))
    assert [code for code, _, _ in answers] == statuses
    assert b'"status": "ok"' in answers[1][2]


# -- strict chunked framing ---------------------------------------------------------------

LOOSE_SIZES = [b"+5", b"0x5", b" 5", b"5 ", b"", b"-5", b"5\t", b"5;", b"5;=x", b"g", b"5\x00"]
LOOSE_SIZES += [b"1" + b"0" * 16, b"0" * 16 + b"5"]


@pytest.mark.parametrize("size", LOOSE_SIZES)
def test_chunk_size_refuses_anything_but_hex_digits_and_extensions(size):
    with pytest.raises(ValueError, match="bad chunk-size line"):
        chunk_size(size + b"\r\n")


@pytest.mark.parametrize(
    "line, size",
    [
        (b"5", 5),
        (b"00a", 10),
        (b"Ff", 255),
        (b"ffffffffffffffff", (1 << 64) - 1),
        (b"5;name", 5),
        (b"5 ; name = value", 5),
        (b'5;a=b;c="quoted \\" ;"', 5),
    ],
)
def test_chunk_size_reads_hex_digits_and_skips_extensions(line, size):
    assert chunk_size(line + b"\r\n") == size


@pytest.mark.parametrize("size", [b"+5", b"0x5", b" 5", b"5 ", b"", b"1" + b"0" * 16], ids=repr)
def test_chunked_upload_with_a_loose_chunk_size_is_400_and_stores_nothing(live_server, size):
    request = head("PUT /upload/loose.txt HTTP/1.1", "Transfer-Encoding: chunked")
    data = exchange(live_server, request + size + b"\r\nhello\r\n0\r\n\r\n" + HEALTHZ)
    assert_one_closing_answer(data, 400)
    assert nothing_stored(live_server)


@pytest.mark.parametrize(
    "body",
    [
        b"5\r\nhello\r\n0\r\n\r\n",
        b"05;name=value\r\nhello\r\n000\r\n\r\n",
        b'2 ; a="x;y"\r\nhe\r\n3\r\nllo\r\n0\r\nX-Trailer: yes\r\n\r\n',
    ],
    ids=["plain", "extension", "quoted extension and trailer"],
)
def test_chunked_upload_with_strict_framing_is_stored(live_server, body):
    request = head("PUT /upload/strict.txt HTTP/1.1", "Transfer-Encoding: chunked")
    answers = responses(exchange(live_server, request + body + HEALTHZ))
    assert [code for code, _, _ in answers] == [200, 200]
    assert f'"{md5(b"hello")}"' in answers[0][2].decode()


def test_chunked_propfind_with_a_loose_chunk_size_is_400(live_server):
    request = head("PROPFIND / HTTP/1.1", "Depth: 1", "Transfer-Encoding: chunked")
    data = exchange(live_server, request + b"+5\r\n<a/>\n\r\n0\r\n\r\n" + HEALTHZ)
    assert b"bad chunk-size line '+5'" in responses(data)[0][2]
    assert_one_closing_answer(data, 400)


@pytest.mark.parametrize(
    "fields",
    [
        ("Content-Length: 5", "Content-Length: 6"),
        ("Content-Length: 5, 6",),
        ("Content-Length: 5", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: chunked", "Content-Length: 5"),
        ("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: chunked, identity",),
        ("Content-Length: +5",),
        ("Content-Length : 5",),
    ],
    ids=repr,
)
def test_ambiguous_body_framing_is_400_and_closes(live_server, fields):
    request = head("PUT /upload/framing.txt HTTP/1.1", *fields) + b"5\r\nhello\r\n0\r\n\r\n"
    answers = responses(exchange(live_server, request + HEALTHZ))
    assert [(code, said.get("connection")) for code, said, _ in answers] == [(400, "close")]
    assert nothing_stored(live_server)


def test_transfer_encoding_in_http_1_0_is_400(live_server):
    request = (
        b"PUT /upload/old.txt HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    assert [code for code, _, _ in responses(exchange(live_server, request))] == [400]
    assert nothing_stored(live_server)


def test_repeated_equal_content_length_is_accepted(live_server):
    request = head("PUT /upload/twice.txt HTTP/1.1", "Content-Length: 5", "Content-Length: 5")
    answers = responses(exchange(live_server, request + b"hello" + HEALTHZ))
    assert [code for code, _, _ in answers] == [200, 200]


# -- chunked bodies are read in bounded pieces --------------------------------------------


def test_huge_chunk_is_refused_at_the_limit_in_bounded_memory(live_server):
    before = kib_of(live_server, "VmRSS")
    Path(f"/proc/{live_server.proc.pid}/clear_refs").write_text("5")  # restart VmHWM here
    sent = 0
    piece = b"c" * MIB
    with socket.create_connection((live_server.host, live_server.port), timeout=10) as sock:
        sock.sendall(head("PUT /upload/huge.bin HTTP/1.1", "Transfer-Encoding: chunked"))
        sock.sendall(b"%x\r\n" % (256 * MIB))
        # 256 MiB declared in one chunk, 32 MiB allowed: the answer comes once the limit passes.
        with contextlib.suppress(OSError):
            while sent < 128 * MIB and not select.select([sock], [], [], 0)[0]:
                sock.sendall(piece)
                sent += len(piece)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        status, fields = answer.status, dict(answer.getheaders())
    assert status == 413
    assert fields["Connection"] == "close"
    assert sent < 64 * MIB
    assert kib_of(live_server, "VmHWM") - before < 64 * 1024
    assert wait_until(lambda: nothing_stored(live_server))


@pytest.mark.slow
@pytest.mark.parametrize(
    "start, trickle",
    [(b"100000\r\n", b"t"), (b"", b"1")],
    ids=["inside a chunk", "in a chunk-size line"],
)
def test_trickled_chunk_is_408_in_bounded_time_and_healthz_answers(
    live_server_factory, start, trickle
):
    server = live_server_factory(BUCKETDAV_TIMEOUT="2")
    slowest = 0.0
    started = time.monotonic()
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(head("PUT /upload/trickle.bin HTTP/1.1", "Transfer-Encoding: chunked") + start)
        # One byte a second: never silent long enough for the socket timeout.
        while time.monotonic() - started < 15:
            sock.sendall(trickle)
            probe = time.monotonic()
            assert server.request("GET", "/healthz").status == 200
            slowest = max(slowest, time.monotonic() - probe)
            if select.select([sock], [], [], 1.0)[0]:
                break
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        status, fields = answer.status, dict(answer.getheaders())
    assert status == 408
    assert fields["Connection"] == "close"
    assert time.monotonic() - started < 10
    assert slowest < 1
    assert wait_until(lambda: nothing_stored(server))


# -- chunked bodies still reach every reader ----------------------------------------------


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    """`data` in pieces of `size` bytes (http.client sends each as one chunk)."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_chunked_multipart_upload_is_stored(live_server):
    content = bytes(range(256)) * 4000
    body, ctype = multipart_body([("file", "form.bin", content)])
    conn = live_server.connection()
    conn.request(
        "POST",
        "/upload",
        body=chunks_of(body, 70_000),
        headers={"Content-Type": ctype},
        encode_chunked=True,
    )
    resp = conn.getresponse()
    assert resp.status == 200
    assert f'"{md5(content)}"' in resp.read().decode()


def test_chunked_propfind_is_answered(live_server):
    body = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
    conn = live_server.connection()
    conn.request(
        "PROPFIND", "/", body=chunks_of(body, 10), headers={"Depth": "1"}, encode_chunked=True
    )
    resp = conn.getresponse()
    assert resp.status == 207
    assert b"blob/" in resp.read()
