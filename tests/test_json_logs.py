"""Logs: JSON lines with the access fields, request ids, and the upload's facts on its line."""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from typing import Any
from urllib.parse import quote

import pytest
import webtest

from bucketdav.observe.logs import IDENTITY, JsonFormatter, redact_query, request_id
from bucketdav.server import with_headers_and_log
from tests.helpers import md5, tar_gz

ACCESS_FIELDS = {
    "time",
    "level",
    "logger",
    "request_id",
    "remote",
    "identity",
    "method",
    "path",
    "query",
    "protocol",
    "status",
    "bytes_in",
    "bytes_out",
    "seconds",
}
HEX_ID = re.compile(r"[0-9a-f]{32}")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of the log, each parsed as one JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def access_lines(text: str) -> list[dict[str, Any]]:
    return [line for line in json_lines(text) if line["logger"] == "bucketdav.access"]


@pytest.fixture
def json_server(live_server_factory):
    return live_server_factory(BUCKETDAV_LOG_FORMAT="json")


def test_json_logs_one_object_per_line_per_request_with_the_fields(json_server):
    marker = uuid.uuid4().hex
    data = f"{marker}\n".encode()
    upload = json_server.upload(f"{marker}.txt", data)
    missing = json_server.request("GET", quote(f"/blob/{marker}/é ….txt"))
    listing = json_server.request("PROPFIND", "/blob/", headers={"Depth": "0"})
    assert (upload.status, missing.status, listing.status) == (200, 404, 207)
    lines = access_lines(json_server.settled_log())
    ids = [response.headers["X-Request-Id"] for response in (upload, missing, listing)]
    mine = {line["request_id"]: line for line in lines if line["request_id"] in ids}
    assert len(mine) == 3
    assert len(lines) == len({line["request_id"] for line in lines})  # one line per request
    for line in lines:
        assert set(line) >= ACCESS_FIELDS, line
    put, get, propfind = (mine[rid] for rid in ids)
    assert put["method"] == "PUT" and put["path"] == f"/upload/{marker}.txt"
    assert (put["status"], put["bytes_in"], put["remote"]) == (200, len(data), "127.0.0.1")
    assert put["bytes_out"] == len(upload.body)
    assert put["identity"] is None and put["query"] is None
    assert put["checksum"] == md5(data) and put["algorithm"] == "md5"
    assert (put["size"], put["made"], put["replicas"]) == (len(data), ["blob"], 0)
    assert get["path"] == f"/blob/{marker}/é ….txt"  # the decoded text
    assert (get["status"], get["bytes_out"]) == (404, len(missing.body))
    assert "checksum" not in get
    assert propfind["status"] == 207 and propfind["bytes_out"] == len(listing.body)
    assert 0 <= put["seconds"] < 30
    # Every other line is JSON too, such as the start-up line.
    assert any("listening on" in line.get("message", "") for line in json_lines(json_server.log()))


def test_json_logs_upload_line_says_what_was_made_and_no_second_line(json_server):
    archive = tar_gz({"a.txt": b"a\n"})
    response = json_server.upload("results.tgz", archive)
    assert response.status == 200
    body = response.json()
    text = json_server.settled_log()
    (line,) = [
        line
        for line in access_lines(text)
        if line["request_id"] == response.headers["X-Request-Id"]
    ]
    assert line["checksum"] == body["checksum"]["blob"]
    assert line["decompressed"] == body["checksum"]["decompressed"]
    assert line["archive"] == body["checksum"]["archive"]
    assert line["made"] == ["blob", "decompressed", "tree"]
    assert line["files"] == 1
    assert [entry for entry in json_lines(text) if body["checksum"]["blob"] in str(entry)] == [line]


def test_json_logs_request_id_sent_comes_back_and_is_logged(json_server):
    sent = f"ci-{uuid.uuid4()}:step/7"
    response = json_server.request("GET", "/healthz", headers={"X-Request-Id": sent})
    assert response.headers["X-Request-Id"] == sent
    lines = [line for line in access_lines(json_server.settled_log()) if line["request_id"] == sent]
    assert len(lines) == 1 and lines[0]["path"] == "/healthz"


@pytest.mark.parametrize(
    "sent",
    ["x" * 201, "bad\x01id", "with space", 'quote"d', "back\\slash", "caf\xe9"],
)
def test_json_logs_unusable_request_id_is_replaced(json_server, sent):
    marker = uuid.uuid4().hex
    response = json_server.request(
        "GET", f"/healthz?m={marker}", headers={"X-Request-Id": sent.encode("latin-1")}
    )
    made = response.headers["X-Request-Id"]
    assert HEX_ID.fullmatch(made)
    (line,) = [
        line for line in access_lines(json_server.settled_log()) if line["query"] == f"m={marker}"
    ]
    assert line["request_id"] == made


def test_json_logs_every_response_has_a_request_id(make_client):
    client = make_client()
    answers = [
        client.get("/healthz"),
        client.get("/blob/nothing", status=404),
        client.request("/", method="PROPFIND", headers={"Depth": "0"}),
        client.put("/upload/", b"x", status=400),
        client.get("/static/nothing.js", status=404),
    ]
    ids = [answer.headers["X-Request-Id"] for answer in answers]
    assert all(HEX_ID.fullmatch(rid) for rid in ids)
    assert len(set(ids)) == len(ids)


def test_json_logs_query_secrets_are_not_logged(json_server):
    marker = uuid.uuid4().hex
    json_server.request("GET", f"/healthz?m={marker}&token=s3cret&api_key=k3y&download=zip")
    text = json_server.settled_log()
    (line,) = [line for line in access_lines(text) if marker in (line["query"] or "")]
    assert line["query"] == f"m={marker}&token=REDACTED&api_key=REDACTED&download=zip"
    assert "s3cret" not in text and "k3y" not in text


def test_text_logs_upload_line_has_checksum_and_made_and_no_second_line(live_server):
    marker = uuid.uuid4().hex
    data = f"{marker}\n".encode()
    response = live_server.upload(f"{marker}.txt", data, headers={"X-Request-Id": marker})
    assert response.headers["X-Request-Id"] == marker
    lines = [line for line in live_server.settled_log().splitlines() if md5(data) in line]
    assert len(lines) == 1
    assert re.search(
        rf'"PUT /upload/{marker}\.txt HTTP/1\.1" 200 \d+ [\d.]+s id={marker} '
        rf"md5={md5(data)} size={len(data)} made=blob replicas=0$",
        lines[0],
    )


def test_request_id_keeps_sane_tokens_only():
    assert request_id({"HTTP_X_REQUEST_ID": "Root=1-abc;Parent=42"}) == "Root=1-abc;Parent=42"
    assert request_id({"HTTP_X_REQUEST_ID": "a" * 200}) == "a" * 200
    assert HEX_ID.fullmatch(request_id({"HTTP_X_REQUEST_ID": "a" * 201}))
    assert HEX_ID.fullmatch(request_id({"HTTP_X_REQUEST_ID": ""}))
    assert HEX_ID.fullmatch(request_id({}))


def test_redact_query_leaves_out_values_of_secret_names():
    assert redact_query("a=1&token=x&b=2") == "a=1&token=REDACTED&b=2"
    assert redact_query("Access_Token=x&sig=y") == "Access_Token=REDACTED&sig=REDACTED"
    assert redact_query("download=zip&name=a.txt") == "download=zip&name=a.txt"
    assert redact_query("settle") == "settle"


def test_json_formatter_writes_messages_and_errors_as_one_line():
    formatter = JsonFormatter()
    try:
        raise ValueError("broken\nacross lines")
    except ValueError:
        record = logging.LogRecord(
            "bucketdav.x", logging.ERROR, __file__, 1, "it %s\u2028", ("broke",), sys.exc_info()
        )
    text = formatter.format(record)
    assert "\n" not in text and "\u2028" not in text
    parsed = json.loads(text)
    assert parsed["message"] == "it broke\u2028"
    assert parsed["level"] == "ERROR" and parsed["logger"] == "bucketdav.x"
    assert "ValueError: broken\nacross lines" in parsed["exception"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", parsed["time"])


def identified(environ, start_response):
    """An app behind access control: the identity is set for the log line."""
    environ[IDENTITY] = "alice"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


@pytest.mark.parametrize("json_log", [False, True])
def test_access_log_names_the_identity_when_known(json_log, caplog):
    client = webtest.TestApp(with_headers_and_log(identified, json_log=json_log), lint=False)
    with caplog.at_level(logging.INFO, logger="bucketdav.access"):
        client.get("/x?token=abc")
    (record,) = [r for r in caplog.records if r.name == "bucketdav.access"]
    if json_log:
        fields = json.loads(JsonFormatter().format(record))
        assert (fields["identity"], fields["query"], fields["bytes_out"]) == (
            "alice",
            "token=REDACTED",
            2,
        )
    else:
        assert '"GET /x?token=REDACTED HTTP/1.0" 200 2 ' in record.getMessage()
        assert record.getMessage().endswith(" identity=alice")


def test_json_logs_deploy_by_checksum_is_said_on_its_one_line(json_server):
    data = f"{uuid.uuid4()}\n".encode()
    assert json_server.upload("first.txt", data).status == 200
    response = json_server.upload(
        "again.txt", b"", headers={"X-Checksum-Deploy": "true", "X-Checksum": md5(data)}
    )
    assert response.status == 200
    text = json_server.settled_log()
    rid = response.headers["X-Request-Id"]
    lines = [line for line in json_lines(text) if rid in str(line) or "deploy by" in str(line)]
    assert len(lines) == 1
    assert lines[0]["checksum"] == md5(data)
    assert (lines[0]["made"], lines[0]["deployed"], lines[0]["bytes_in"]) == ([], True, 0)
