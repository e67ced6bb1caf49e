"""Reading bodies without a server: exact bounds, short bodies, form fields, checksum headers."""

from __future__ import annotations

import hashlib
import io
from types import SimpleNamespace

import pytest

from bucketdav.errors import BadRequest, ClientGone, TooLarge, TooSlow
from bucketdav.uploads import receive
from bucketdav.uploads.receive import (
    MAX_OTHER_PARTS_BYTES,
    MIN_BYTES_PER_TIMEOUT,
    READ_SIZE,
    body_chunks,
    declared_length,
    deploy_digest,
    expected_checksums,
    read_multipart,
)

BOUNDARY = "b0undary"


class Sink:
    """Where a multipart file part goes (the part of StagedFile read_multipart uses)."""

    def __init__(self) -> None:
        self.data = bytearray()

    @property
    def size(self) -> int:
        return len(self.data)

    def write(self, data: bytes) -> None:
        self.data += data


class Read1Only(io.BytesIO):
    """A body whose read() must not be used: read1 hands over what has come."""

    def read(self, size: int | None = -1) -> bytes:
        raise AssertionError("read() waits for the whole size; read1() must be used")


class ReadOnly:
    """A body with read() alone, as some WSGI servers give."""

    def __init__(self, data: bytes) -> None:
        self.stream = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self.stream.read(size)


class Broken(io.BytesIO):
    def read1(self, size: int = -1) -> bytes:
        raise OSError("connection reset")


def part(name: str, data: bytes, *, filename: str | None = None, extra: int = 0) -> bytes:
    """One part of a multipart/form-data body, with `extra` header lines more."""
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    headers = [f"Content-Disposition: {disposition}"]
    headers += [f"X-Extra-{index}: {index}" for index in range(extra)]
    head = "".join(f"{line}\r\n" for line in headers)
    return f"--{BOUNDARY}\r\n{head}\r\n".encode() + data + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def multipart(body: bytes, *, max_file: int = 1 << 20, piece: int = 7) -> tuple[str, Sink]:
    """read_multipart over `body` in small pieces; (file name, what the file part held)."""
    sink = Sink()
    chunks = iter([body[i : i + piece] for i in range(0, len(body), piece)])
    return read_multipart(chunks, BOUNDARY, sink, max_file=max_file), sink  # type: ignore[arg-type]


# -- body_chunks ---------------------------------------------------------------------------


def chunks_of(stream: object, *, length: int | None, limit: int = 1 << 30) -> list[bytes]:
    return list(body_chunks({"wsgi.input": stream}, length=length, limit=limit))


def test_body_chunks_reads_no_further_than_the_declared_length():
    body = b"x" * (READ_SIZE + 1000)
    stream = io.BytesIO(body + b"NEXT REQUEST")
    assert b"".join(chunks_of(stream, length=len(body))) == body
    assert stream.read() == b"NEXT REQUEST"


def test_body_chunks_without_a_length_reads_to_the_end():
    body = b"y" * (2 * READ_SIZE + 5)
    assert b"".join(chunks_of(io.BytesIO(body), length=None)) == body


def test_body_chunks_short_body_is_client_gone_naming_the_bytes():
    with pytest.raises(ClientGone, match=r"^the body ended after 3 of 5 bytes$"):
        chunks_of(io.BytesIO(b"abc"), length=5)


def test_body_chunks_read_error_is_client_gone_with_the_reason():
    with pytest.raises(ClientGone, match=r"^the request body could not be read: connection reset$"):
        chunks_of(Broken(b"abc"), length=3)


def test_body_chunks_prefers_read1_and_falls_back_to_read():
    assert chunks_of(Read1Only(b"abc"), length=None) == [b"abc"]
    assert b"".join(chunks_of(ReadOnly(b"abcdef"), length=6)) == b"abcdef"


def test_body_chunks_limit_is_inclusive_and_named():
    assert chunks_of(io.BytesIO(b"12345"), length=5, limit=5) == [b"12345"]
    with pytest.raises(TooLarge, match=r"^the upload is larger than MAX_CONTENT_LENGTH \(4\)$"):
        chunks_of(io.BytesIO(b"12345"), length=None, limit=4)


class Trickle:
    """A body arriving in the given pieces, one per read."""

    def __init__(self, pieces: list[int]) -> None:
        self.pieces = iter(pieces)
        self.stopped = False

    def read1(self, size: int) -> bytes:
        return b"t" * next(self.pieces, 0)


def trickled(monkeypatch, pieces: list[int], seconds_apart: float) -> Trickle:
    """A Trickle whose pieces arrive `seconds_apart` apart on the clock body_chunks reads."""
    ticks = iter(float(n) * seconds_apart for n in range(len(pieces) + 2))
    monkeypatch.setattr(receive, "time", SimpleNamespace(monotonic=lambda: next(ticks)))
    return Trickle(pieces)


def rated(stream: Trickle, timeout: float = 10) -> list[bytes]:
    return list(body_chunks({"wsgi.input": stream}, length=None, limit=1 << 30, timeout=timeout))


def test_body_chunks_too_slow_at_the_end_of_a_window_stops_reading(monkeypatch):
    stream = trickled(monkeypatch, [1000, 1000, 1000], seconds_apart=5)
    message = "the body came at 2000 bytes in 10s; send at least 16384 bytes per 10s"
    with pytest.raises(TooSlow, match=f"^{message}$"):
        rated(stream)
    assert stream.stopped


def test_body_chunks_window_with_just_enough_bytes_goes_on(monkeypatch):
    half = MIN_BYTES_PER_TIMEOUT // 2
    stream = trickled(monkeypatch, [half, half, 5000], seconds_apart=5)
    assert [len(chunk) for chunk in rated(stream)] == [half, half, 5000]


def test_body_chunks_each_window_counts_afresh(monkeypatch):
    half = MIN_BYTES_PER_TIMEOUT // 2
    stream = trickled(monkeypatch, [half, half, 500, 500, 500], seconds_apart=5)
    message = "the body came at 1000 bytes in 10s; send at least 16384 bytes per 10s"
    with pytest.raises(TooSlow, match=f"^{message}$"):
        rated(stream)


@pytest.mark.parametrize(
    ("environ", "length"),
    [
        ({}, 0),
        ({"CONTENT_LENGTH": " 12 "}, 12),
        ({"CONTENT_LENGTH": "5", "HTTP_TRANSFER_ENCODING": "gzip, Chunked"}, None),
        ({"CONTENT_LENGTH": "5", "HTTP_TRANSFER_ENCODING": "identity"}, 5),
    ],
)
def test_declared_length_reads_content_length_unless_chunked(environ, length):
    assert declared_length(environ) == length


def test_declared_length_refuses_what_is_not_a_byte_count():
    with pytest.raises(BadRequest) as caught:
        declared_length({"CONTENT_LENGTH": "-1"})
    assert str(caught.value) == "Content-Length '-1' is not a byte count"


# -- read_multipart ------------------------------------------------------------------------


def test_read_multipart_other_fields_before_and_after_the_file_are_skipped():
    body = form(part("comment", b"hello"), part("file", b"DATA", filename="a.txt"), part("x", b"1"))
    name, sink = multipart(body)
    assert (name, bytes(sink.data)) == ("a.txt", b"DATA")


def test_read_multipart_other_fields_add_up_to_their_bound():
    half = MAX_OTHER_PARTS_BYTES // 2
    exact = form(part("a", b"a" * half), part("b", b"b" * half), part("file", b"F", filename="f"))
    assert multipart(exact, piece=4096)[0] == "f"
    over = form(
        part("a", b"a" * half), part("b", b"b" * (half + 1)), part("file", b"F", filename="f")
    )
    with pytest.raises(BadRequest, match=r"^form fields other than 'file' are too large$"):
        multipart(over, piece=4096)


def test_read_multipart_file_part_is_bounded_by_max_file():
    body = form(part("file", b"z" * 11, filename="big"))
    assert bytes(multipart(body, max_file=11)[1].data) == b"z" * 11
    with pytest.raises(TooLarge, match=r"^the upload is larger than MAX_CONTENT_LENGTH \(10\)$"):
        multipart(body, max_file=10)


def test_read_multipart_takes_16_header_lines_per_part_and_refuses_17():
    assert multipart(form(part("file", b"d", filename="f", extra=15)))[0] == "f"
    with pytest.raises(BadRequest, match=r"^malformed multipart/form-data body: "):
        multipart(form(part("file", b"d", filename="f", extra=16)))


def test_read_multipart_takes_64_parts_and_refuses_65():
    fields = [part(f"f{index}", b"") for index in range(63)]
    assert multipart(form(*fields, part("file", b"d", filename="f")), piece=4096)[0] == "f"
    with pytest.raises(BadRequest, match=r"^malformed multipart/form-data body: "):
        multipart(form(*fields, part("x", b""), part("file", b"d", filename="f")), piece=4096)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            form(part("other", b"x")),
            "no part named 'file': send it as curl -F 'file=@name' URL/upload",
        ),
        (form(part("file", b"x", filename=" ")), "the 'file' part has an empty filename"),
        (
            form(part("file", b"1", filename="a"), part("file", b"2", filename="b")),
            "send one part named 'file' per request",
        ),
    ],
)
def test_read_multipart_refusals_are_exact(body, message):
    with pytest.raises(BadRequest) as caught:
        multipart(body)
    assert str(caught.value) == message


# -- checksum headers ----------------------------------------------------------------------


def test_deploy_digest_reads_the_header_of_an_algorithm_with_an_underscore():
    digest = hashlib.sha3_256(b"x").hexdigest()
    assert deploy_digest({"x-checksum-sha3-256": digest.upper()}, "sha3_256", 32) == digest


def test_deploy_digest_refusal_names_the_header_and_the_length():
    with pytest.raises(BadRequest) as caught:
        deploy_digest({"x-checksum-md5": "abc"}, "md5", 16)
    assert str(caught.value) == "x-checksum-md5 must be 32 hex digits of md5"


def test_expected_checksums_lists_every_header_sent():
    md5 = hashlib.md5(b"x").hexdigest()  # noqa: S324 - the checksums clients send
    sha1 = hashlib.sha1(b"x").hexdigest()  # noqa: S324
    headers = {"x-checksum-sha1": sha1, "x-checksum": md5}
    assert expected_checksums(headers, "md5") == [
        ("x-checksum-sha1", "sha1", sha1),
        ("x-checksum", "md5", md5),
    ]


def test_expected_checksums_reads_content_md5_as_rfc_1864_base64():
    digest = hashlib.md5(b"").hexdigest()  # noqa: S324 - what Content-MD5 carries
    assert expected_checksums({"content-md5": " 1B2M2Y8AsgTpgAmY7PhCfg== "}, "sha256") == [
        ("Content-MD5", "md5", digest)
    ]


@pytest.mark.parametrize("value", ["1B2M2Y8AsgTpgAmY7PhCfg==!", "1B2M2Y8AsgTpgAmY7PhC", "x"])
def test_expected_checksums_refuses_a_content_md5_that_is_not_16_bytes_of_base64(value):
    with pytest.raises(BadRequest) as caught:
        expected_checksums({"content-md5": value}, "md5")
    message = "Content-MD5 must be the base64 of a 16-byte MD5 digest (RFC 1864)"
    assert str(caught.value) == message


def test_expected_checksums_refusal_names_the_header_and_the_length():
    with pytest.raises(BadRequest) as caught:
        expected_checksums({"x-checksum-sha1": "abc"}, "md5")
    assert str(caught.value) == "x-checksum-sha1 must be 40 hex digits of sha1"
