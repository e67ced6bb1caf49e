"""The access decision at its edges: roots that are not prefixes, nested uploads, readers."""

from __future__ import annotations

from bucketdav.access.decide import (
    ACCESS_KEY,
    Decision,
    decide,
    may_upload,
    normal_path,
    reader_of,
)
from bucketdav.access.rules import Grant, Identity

NOBODY = Identity("anonymous", (Grant(),), known=False)
READER = Identity("reader", (Grant(read=("/",)),))
UPLOADER = Identity("ci", (Grant(upload=True, replicas=("team/", "X/")),))


def test_decide_metrics_needs_the_metrics_right_even_for_who_reads_everything():
    assert decide(READER, "GET", "/metrics") is Decision.FORBIDDEN
    assert decide(Identity("ops", (Grant(metrics=True),)), "GET", "/metrics") is Decision.ALLOW


def test_decide_open_roots_are_whole_segments():
    assert decide(NOBODY, "GET", "/healthz") is Decision.ALLOW
    assert decide(NOBODY, "GET", "/Xhealthz") is Decision.UNAUTHORIZED
    assert decide(NOBODY, "GET", "/healthzX/") is Decision.UNAUTHORIZED


def test_decide_upload_to_a_nested_name_is_an_upload():
    assert decide(UPLOADER, "PUT", "/upload/dir/name.txt") is Decision.ALLOW
    assert decide(READER, "PUT", "/upload/dir/name.txt") is Decision.FORBIDDEN


def test_may_upload_compares_folders_without_their_outer_slashes():
    assert may_upload(UPLOADER, ["/team/nightly/"])
    assert may_upload(UPLOADER, ["X/a"])
    assert not may_upload(UPLOADER, ["teamsecret/a"])


def test_normal_path_refuses_dot_segments():
    assert normal_path("/a/./b") is None
    assert normal_path("/a/../b") is None
    assert normal_path("//a//b") == "/a/b/"


def test_reader_of_is_may_read_for_the_requests_identity():
    anything = reader_of({})
    assert anything("/staging/x") and anything("/")
    assert reader_of({ACCESS_KEY: READER})("/any/where")
    limited = reader_of({ACCESS_KEY: Identity("bob", (Grant(read=("/replica/bob/",)),))})
    assert limited("/replica/bob/x.txt")
    assert not limited("/replica/bobby/x.txt")
    assert not limited("/blob/")
