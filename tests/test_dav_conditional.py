"""Conditional GET and HEAD: the four validators in pairs, in the order of RFC 9110 §13.2.2.

If-Match is evaluated first (412 when false) and, when present, If-Unmodified-Since is
ignored; then If-None-Match (304 when false) and, when present, If-Modified-Since is
ignored. The expected statuses are written out, not computed.
"""

from __future__ import annotations

import email.utils

import pytest
import webtest

DAY = 86400
# Each validator as a condition that holds ("ok") or fails ("no") for the file.
#   If-Match            ok: its ETag            no: another tag
#   If-Unmodified-Since ok: its Last-Modified   no: a day before (it changed since)
#   If-None-Match       ok: another tag         no: its ETag
#   If-Modified-Since   ok: a day before        no: its Last-Modified (unchanged since)
PAIRS = [
    # If-Match decides alone; If-Unmodified-Since is ignored beside it.
    ("If-Match", "ok", "If-Unmodified-Since", "ok", 200),
    ("If-Match", "ok", "If-Unmodified-Since", "no", 200),
    ("If-Match", "no", "If-Unmodified-Since", "ok", 412),
    ("If-Match", "no", "If-Unmodified-Since", "no", 412),
    # A failed If-Match is 412 before If-None-Match is looked at.
    ("If-Match", "ok", "If-None-Match", "ok", 200),
    ("If-Match", "ok", "If-None-Match", "no", 304),
    ("If-Match", "no", "If-None-Match", "ok", 412),
    ("If-Match", "no", "If-None-Match", "no", 412),
    ("If-Match", "ok", "If-Modified-Since", "ok", 200),
    ("If-Match", "ok", "If-Modified-Since", "no", 304),
    ("If-Match", "no", "If-Modified-Since", "ok", 412),
    ("If-Match", "no", "If-Modified-Since", "no", 412),
    # A failed If-Unmodified-Since is 412 before the 304 conditions.
    ("If-Unmodified-Since", "ok", "If-None-Match", "ok", 200),
    ("If-Unmodified-Since", "ok", "If-None-Match", "no", 304),
    ("If-Unmodified-Since", "no", "If-None-Match", "ok", 412),
    ("If-Unmodified-Since", "no", "If-None-Match", "no", 412),
    ("If-Unmodified-Since", "ok", "If-Modified-Since", "ok", 200),
    ("If-Unmodified-Since", "ok", "If-Modified-Since", "no", 304),
    ("If-Unmodified-Since", "no", "If-Modified-Since", "ok", 412),
    ("If-Unmodified-Since", "no", "If-Modified-Since", "no", 412),
    # If-None-Match decides alone; If-Modified-Since is ignored beside it: a client whose
    # copy has another tag gets the content, however recent its date.
    ("If-None-Match", "ok", "If-Modified-Since", "ok", 200),
    ("If-None-Match", "ok", "If-Modified-Since", "no", 200),
    ("If-None-Match", "no", "If-Modified-Since", "ok", 304),
    ("If-None-Match", "no", "If-Modified-Since", "no", 304),
]


class File:
    """A stored file's URL and validators, and the header values that make each hold or fail."""

    def __init__(self, client: webtest.TestApp) -> None:
        self.url = (
            "/" + client.put("/upload/notes.txt", b"conditional bytes\n").json["path"]["blob"]
        )
        first = client.get(self.url)
        self.etag = first.headers["ETag"]
        self.modified = first.headers["Last-Modified"]
        earlier = email.utils.parsedate_to_datetime(self.modified).timestamp() - DAY
        self.earlier = email.utils.formatdate(earlier, usegmt=True)

    def value(self, header: str, holds: str) -> str:
        """The value of `header` that makes its condition hold ("ok") or fail ("no")."""
        ok = holds == "ok"
        return {
            "If-Match": self.etag if ok else '"another"',
            "If-Unmodified-Since": self.modified if ok else self.earlier,
            "If-None-Match": '"another"' if ok else self.etag,
            "If-Modified-Since": self.earlier if ok else self.modified,
        }[header]


@pytest.fixture
def stored(client: webtest.TestApp) -> File:
    return File(client)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(("first", "holds", "second", "then", "status"), PAIRS)
def test_dav_get_conditional_pairs_follow_rfc9110_order(
    client, stored, method, first, holds, second, then, status
):
    headers = {first: stored.value(first, holds), second: stored.value(second, then)}
    got = client.request(stored.url, method=method, headers=headers, status="*")
    assert got.status_int == status
    expected = b"conditional bytes\n" if status == 200 and method == "GET" else b""
    assert got.body == expected


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"If-Match": "*"}, 200),
        ({"If-None-Match": "*"}, 304),
        ({"If-Match": '"another", {etag}'}, 200),
        ({"If-None-Match": '"another", {etag}'}, 304),
        ({"If-Unmodified-Since": "not a date"}, 200),
        ({"If-Modified-Since": "not a date"}, 200),
        ({"If-None-Match": "{etag}", "Range": "bytes=0-3"}, 304),
        ({"If-Match": '"another"', "Range": "bytes=0-3"}, 412),
        ({"If-Modified-Since": "{earlier}", "Range": "bytes=0-3"}, 206),
    ],
)
def test_dav_get_conditional_lists_stars_bad_dates_and_ranges(client, stored, headers, status):
    sent = {k: v.format(etag=stored.etag, earlier=stored.earlier) for k, v in headers.items()}
    assert client.get(stored.url, headers=sent, status="*").status_int == status
