"""Replication templates and header values as names: parsing, rendering, start-up refusal."""

from __future__ import annotations

import os
import posixpath
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bucketdav.settings import SettingError, load_settings
from bucketdav.uploads.naming import MAX_SEGMENT_BYTES, NameError_, header_segment
from bucketdav.uploads.templates import (
    TemplateError,
    TemplateSkipped,
    parse_template,
    render_template,
)

HOSTILE = ["../../etc", "..", ".", "a/b", "a\\b", "%2e%2e", "x\x00y", "bøb", ".hidden", "~root"]

# Every malformed kind of template, with the segment the message must name.
MALFORMED = [
    ("plain/only", "at least one"),
    ("", None),
    ("user//${A}", "(empty)"),
    ("/user/${A}", "(empty)"),
    ("user/${A}/", "(empty)"),
    ("../${A}", "'..'"),
    ("./${A}", "'.'"),
    (".hidden/${A}", "'.hidden'"),
    ("user/${A", "'${A'"),
    ("user/${}", "'${}'"),
    ("user/${A B}", "'${A B}'"),
    ("user/${A}${B}", "'${A}${B}'"),
    ("user/x-${A}", "'x-${A}'"),
    ("user/$A", "'$A'"),
    ("a\\b/${A}", "'a\\\\b'"),
    ("user/${-A}", "'${-A}'"),
    ("x" * (MAX_SEGMENT_BYTES + 1) + "/${A}", "longer than"),
]


def render(text: str, headers: dict[str, str]) -> list[str]:
    return render_template(parse_template("REPLICATE_0", text), headers)


def test_parse_template_reads_plain_names_and_tokens():
    template = parse_template("REPLICATE_4", " user/${Username}/ci_1.x/${Topic} ")
    assert template.text == "user/${Username}/ci_1.x/${Topic}"
    assert template.segments == (
        (False, "user"),
        (True, "Username"),
        (False, "ci_1.x"),
        (True, "Topic"),
    )
    assert template.headers == ("Username", "Topic")


@pytest.mark.parametrize(("text", "named"), [m for m in MALFORMED if m[0]])
def test_parse_template_refuses_malformed_naming_the_segment(text, named):
    with pytest.raises(TemplateError) as caught:
        parse_template("REPLICATE_0", text)
    assert named in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plain/only", "needs at least one ${Header-Name} token"),
        ("user//${A}", "segment '(empty)' is neither a plain name nor one ${Header-Name} token"),
        ("x" * 201 + "/${A}", f"segment {'x' * 20!r}... is longer than 200 bytes"),
    ],
)
def test_parse_template_messages_are_exact(text, message):
    with pytest.raises(TemplateError) as caught:
        parse_template("REPLICATE_0", text)
    assert str(caught.value) == message


def test_parse_template_longest_plain_segment_is_the_bound():
    template = parse_template("REPLICATE_0", "x" * MAX_SEGMENT_BYTES + "/${A}")
    assert template.segments[0] == (False, "x" * MAX_SEGMENT_BYTES)


def test_render_template_matches_headers_case_insensitively():
    assert render("user/${UserName}/${topic}", {"username": "bob", "topic": "demo"}) == [
        "user",
        "bob",
        "demo",
    ]


def test_render_template_underscore_header_matches_its_wsgi_spelling():
    # WSGI gives `User_Name` and `User-Name` the same key; the API sees `user-name`.
    assert render("u/${User_Name}", {"user-name": "q"}) == ["u", "q"]


def test_render_template_underscore_header_matches_a_key_spelled_as_written():
    assert render("u/${User_Name}", {"user_name": "q"}) == ["u", "q"]
    assert render("u/${User_Name}", {"user_name": "q", "user-name": "other"}) == ["u", "q"]


def test_render_template_partial_match_names_every_missing_header():
    with pytest.raises(TemplateSkipped, match=r"^missing header Topic, Job$"):
        render("${Username}/${Topic}/${Job}", {"username": "bob"})


@pytest.mark.parametrize("value", ["", "   ", "\t", "x" * (MAX_SEGMENT_BYTES + 1), "é" * 10_000])
def test_render_template_unusable_value_is_skipped_naming_the_header(value):
    with pytest.raises(TemplateSkipped, match=r"^header Topic: "):
        render("user/${Topic}", {"topic": value})


@pytest.mark.parametrize("value", HOSTILE)
def test_render_template_hostile_value_stays_one_segment(value):
    segments = render("user/${Topic}", {"topic": value})
    assert len(segments) == 2 and segments[0] == "user"
    assert "/" not in segments[1] and "\\" not in segments[1] and "\0" not in segments[1]
    assert not segments[1].startswith(".")


@pytest.mark.parametrize(
    ("value", "segment"),
    [
        ("bob", "bob"),
        ("a/b", "a%2Fb"),
        ("a\\b", "a%5Cb"),
        ("..", "%2E."),
        (".", "%2E"),
        ("../../etc", "%2E.%2F..%2Fetc"),
        ("%2e%2e", "%252e%252e"),
        ("x\x00y", "x%00y"),
        ("bøb", "bøb"),
        ("a\x85b", "a%C2%85b"),
        ("\u202eexe.txt", "%E2%80%AEexe.txt"),
        ("  padded\t", "padded"),
        ("\udcff", "%FF"),
    ],
)
def test_header_segment_encodes_what_is_unsafe(value, segment):
    assert header_segment(value) == segment


@pytest.mark.parametrize("value", ["", " \t ", "a" * 201, "\ud800x", "/" * 67])
def test_header_segment_refuses_unusable_values(value):
    with pytest.raises(NameError_):
        header_segment(value)


def test_header_segment_does_not_trim_characters_http_keeps():
    # str.strip() would make these collide with "a".
    assert len({header_segment(v) for v in ("a", "\x1fa", "a\x85", "a\u2028")}) == 4


@pytest.mark.parametrize(("text", "named"), MALFORMED)
def test_load_settings_refuses_each_malformed_template(text, named):
    if not text:
        # An empty REPLICATE_n means "unset", not malformed.
        assert load_settings(environ={"REPLICATE_5": text}).replicate == ()
        return
    with pytest.raises(SettingError) as caught:
        load_settings(environ={"ARCHIVE_DIR": "/tmp/x", "REPLICATE_5": text})
    assert caught.value.name == "REPLICATE_5"
    assert str(caught.value).startswith("REPLICATE_5=")
    assert named in str(caught.value)


def test_load_settings_reads_templates_from_the_config_file_too():
    settings = load_settings(
        environ={"REPLICATE_1": "env/${A}"},
        file_values={"REPLICATE_0": "file/${B}", "REPLICATE_1": "overridden/${C}"},
    )
    assert [(t.variable, t.text) for t in settings.replicate] == [
        ("REPLICATE_0", "file/${B}"),
        ("REPLICATE_1", "env/${A}"),
    ]


def test_load_settings_refuses_malformed_template_in_the_config_file():
    with pytest.raises(SettingError) as caught:
        load_settings(environ={}, file_values={"REPLICATE_7": "a/../${B}"})
    assert caught.value.name == "REPLICATE_7" and "'..'" in str(caught.value)


@pytest.mark.parametrize(
    "text", ["plain/only", "user//${A}", "../${A}", "user/${A", "user/x-${A}", "user/${A}${B}"]
)
def test_cli_serve_malformed_template_stops_with_one_line(tmp_path, text):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKETDAV_", "ARCHIVE_"))}
    env.update({"ARCHIVE_DIR": str(tmp_path), "REPLICATE_8": text})
    result = subprocess.run(
        [sys.executable, "-m", "bucketdav", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "REPLICATE_8" in lines[0]
    assert not (tmp_path / "replica").exists()


# -- properties ---------------------------------------------------------------------------

# Values as HTTP delivers them: optional whitespace already trimmed; undecodable bytes as
# surrogate escapes (U+DC80..U+DCFF).
header_values = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"), st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)
    ),
    min_size=1,
    max_size=80,
).filter(lambda v: v.strip(" \t") == v and v)


@settings(max_examples=400, deadline=None)
@given(header_values)
def test_header_segment_is_one_segment_property(value):
    try:
        segment = header_segment(value)
    except NameError_:
        assert len(value.encode("utf-8", "surrogateescape")) * 3 > MAX_SEGMENT_BYTES
        return
    assert segment and segment not in (".", "..")
    assert not segment.startswith(".")
    assert not any(c in segment for c in "/\\\0")
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in segment)
    assert len(segment.encode("utf-8")) <= MAX_SEGMENT_BYTES
    assert posixpath.normpath(f"replica/{segment}") == f"replica/{segment}"


@settings(max_examples=400, deadline=None)
@given(header_values, header_values)
def test_header_segment_is_injective_property(a, b):
    try:
        pair = header_segment(a), header_segment(b)
    except NameError_:
        return
    assert (pair[0] == pair[1]) == (a == b)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.just(True), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,10}", fullmatch=True)
            ),
            st.tuples(
                st.just(False), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,10}", fullmatch=True)
            ),
        ),
        min_size=1,
        max_size=5,
    ).filter(lambda segs: any(is_header for is_header, _ in segs)),
    st.lists(header_values, min_size=5, max_size=5),
)
def test_render_template_stays_under_replica_property(parts, values):
    text = "/".join(f"${{{v}}}" if is_header else v for is_header, v in parts)
    template = parse_template("REPLICATE_0", text)
    headers = {name.lower(): values[i % 5] for i, name in enumerate(template.headers)}
    try:
        segments = render_template(template, headers)
    except TemplateSkipped:
        return
    assert len(segments) == len(parts)
    path = posixpath.join("/store/replica", *segments)
    assert posixpath.normpath(path) == path
    assert path.startswith("/store/replica/")
