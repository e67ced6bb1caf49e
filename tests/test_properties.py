"""Properties of the pure functions that guard the store, checked with hypothesis."""

from __future__ import annotations

import os
import string
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bucketdav.dav.lookup import PublicTree, confine, inside_public, split_path
from bucketdav.errors import UnsafeArchive
from bucketdav.settings import FreeSpace, format_size, parse_free_space, parse_size
from bucketdav.store.blobs import Store
from bucketdav.uploads.archives.members import member_path
from bucketdav.uploads.naming import (
    MAX_SEGMENT_BYTES,
    NameError_,
    filename_segment,
    header_segment,
    normalize_digest,
)
from bucketdav.uploads.replicas import ReplicaRefused, replica_folder
from bucketdav.uploads.templates import TemplateSkipped, parse_template, render_template

# Deterministic (derandomize, no example database) so that CI runs are repeatable.
BOUNDED = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Text that goes after the corners: separators, dots, controls, bidi marks, stray bytes.
NASTY = st.sampled_from(
    [
        "/",
        "\\",
        ".",
        "..",
        "\x00",
        "\n",
        "\r",
        "\t",
        " ",
        "%",
        "%2e",
        "%2F",
        "\u202e",
        "\u200b",
        "\u2028",
        "\x85",
        "\x7f",
        "\udc80",
        "\udcff",
        "~",
        "$",
        "{",
        "}",
        "é",
        "😀",
    ]
)
NAMES = st.lists(st.one_of(NASTY, st.text(max_size=8)), max_size=12).map("".join) | st.text(
    max_size=400
)


def is_one_safe_segment(segment: str) -> bool:
    """True when `segment` can only ever mean one entry inside its folder."""
    return (
        bool(segment)
        and segment not in (".", "..")
        and not segment.startswith(".")
        and not any(c in segment for c in "/\\\x00")
        and not any(ord(c) < 32 or ord(c) == 0x7F for c in segment)
        and len(segment.encode("utf-8", "surrogateescape")) <= MAX_SEGMENT_BYTES
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A store with a link inside the public trees and one that leaves them."""
    root = tmp_path_factory.mktemp("props") / "store"
    store = Store(root, "md5")
    store.open()
    (root / "blob" / "ab").mkdir()
    (root / "replica" / "in").symlink_to("../blob/ab")
    (root / "replica" / "out").symlink_to(root.parent)
    (root / "replica" / "up").symlink_to("..")
    return store


# -- names --------------------------------------------------------------------------------


@BOUNDED
@given(NAMES)
def test_property_filename_segment_is_one_safe_segment(name):
    segment = filename_segment(name)
    assert is_one_safe_segment(segment), segment
    assert os.path.dirname(os.path.normpath(os.path.join("/s/replica", segment))) == "/s/replica"


@BOUNDED
@given(NAMES)
def test_property_header_segment_is_one_safe_segment_and_decodes_back(value):
    try:
        segment = header_segment(value)
    except NameError_:
        return
    assert is_one_safe_segment(segment), segment
    # Percent-decoding gives the value back, so two values never share a segment.
    assert unquote(segment, errors="surrogateescape") == value.strip(" \t")


@BOUNDED
@given(NAMES, NAMES)
def test_property_header_segment_is_injective(first, second):
    assume(first.strip(" \t") != second.strip(" \t"))
    try:
        a, b = header_segment(first), header_segment(second)
    except NameError_:
        return
    assert a != b


@BOUNDED
@given(st.dictionaries(st.sampled_from(["user", "topic", "build"]), NAMES, min_size=3))
def test_property_rendered_templates_stay_under_replica(store, headers):
    template = parse_template("REPLICATE_0", "u/${User}/${Topic}/b/${Build}")
    try:
        segments = render_template(template, headers)
    except TemplateSkipped:
        return
    assert all(is_one_safe_segment(s) for s in segments)
    try:
        folder = replica_folder(store, segments)
    except ReplicaRefused:
        pytest.fail(f"safe segments {segments} were refused")
    real = os.path.realpath(folder)
    assert real.startswith(os.path.realpath(store.replicas) + os.sep)


# -- paths --------------------------------------------------------------------------------

URL_SEGMENTS = st.sampled_from(
    [
        "blob",
        "explode",
        "replica",
        "staging",
        "in",
        "out",
        "up",
        "ab",
        "..",
        ".",
        "",
        "%2e%2e",
        "\x00",
        "\\..",
        "..\\..",
        "etc",
        "passwd",
        "/",
    ]
)


@BOUNDED
@given(st.lists(URL_SEGMENTS, max_size=8).map("/".join))
def test_property_confined_paths_stay_in_the_public_trees(store, path):
    root = os.path.realpath(store.root)
    parts = split_path(path)
    if parts is None:
        assert any(p in (".", "..") or "\x00" in p or "\\" in p for p in path.split("/"))
        return
    real = confine(root, os.path.join(root, *parts))
    if real is not None:
        assert inside_public(root, real)
        assert os.path.realpath(real) == real
    node = PublicTree(root, "md5").lookup(path)
    if node is not None:
        assert node.real == root or inside_public(root, os.path.realpath(node.real))


@BOUNDED
@given(st.lists(st.one_of(NASTY, st.sampled_from(["a", "b", "c/"])), max_size=10).map("".join))
def test_property_archive_member_paths_stay_in_the_tree(name):
    try:
        segments = member_path(name)
    except UnsafeArchive:
        return
    assert all(s not in ("", ".", "..") and "/" not in s and "\\" not in s for s in segments)
    joined = os.path.normpath(os.path.join("/tree", *segments))
    assert joined == "/tree" or joined.startswith("/tree/")


# -- sizes and digests --------------------------------------------------------------------


@BOUNDED
@given(st.integers(min_value=0, max_value=1 << 60))
def test_property_parse_size_reads_format_size_back(size):
    assert parse_size(format_size(size)) == size


@BOUNDED
@given(
    st.integers(min_value=0, max_value=1 << 30),
    st.sampled_from(["", "b", "kb", "mb", "gb", "tb"]),
    st.booleans(),
)
def test_property_parse_size_units_in_any_case(count, unit, upper):
    text = f"{count}{unit.upper() if upper else unit}"
    factor = {"": 1, "b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}[unit]
    assert parse_size(text) == count * factor


@BOUNDED
@given(st.text(max_size=12))
def test_property_parse_size_refuses_or_gives_a_count(text):
    try:
        size = parse_size(text)
    except ValueError:
        return
    assert size >= 0 and any(c.isdigit() for c in text)


@BOUNDED
@given(
    st.one_of(
        st.integers(0, 1 << 50).map(lambda n: FreeSpace(size=n)),
        st.integers(0, 99).map(lambda p: FreeSpace(percent=float(p))),
    )
)
def test_property_free_space_reads_its_own_text_back(space):
    assert parse_free_space(str(space)).bytes_for(1 << 40) == space.bytes_for(1 << 40)


@BOUNDED
@given(st.binary(min_size=16, max_size=16), st.booleans(), st.sampled_from(["", " ", "\t"]))
def test_property_normalize_digest_accepts_any_case_of_a_digest(raw, upper, pad):
    text = raw.hex().upper() if upper else raw.hex()
    assert normalize_digest(pad + text + pad, 16) == raw.hex()


@BOUNDED
@given(
    st.text(alphabet=string.hexdigits + "xg-/.\x00 é", max_size=40), st.sampled_from([16, 20, 32])
)
def test_property_normalize_digest_gives_lower_hex_of_the_size_or_none(text, size):
    digest = normalize_digest(text, size)
    if digest is not None:
        assert len(digest) == 2 * size
        assert set(digest) <= set("0123456789abcdef")
        assert digest == text.strip().lower()
    else:
        stripped = text.strip()
        assert len(stripped) != 2 * size or not set(stripped) <= set(string.hexdigits)


def test_property_store_paths_of_a_valid_digest_stay_in_their_trees(store):
    digest = normalize_digest("AB" * 16, 16)
    assert digest is not None
    assert store.blob_path(digest).parent.parent.parent == store.blobs
    assert Path(store.tree_path(digest)).parent.parent.parent == store.trees
