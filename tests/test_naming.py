"""Safe names from client text: exact results at the edges (surrogates, lengths, cuts)."""

from __future__ import annotations

import pytest

from bucketdav.uploads.naming import (
    MAX_SEGMENT_BYTES,
    NameError_,
    encode_segment,
    filename_segment,
    header_segment,
    split_suffix,
)


@pytest.mark.parametrize(
    ("value", "segment"),
    [
        ("\udc80", "%80"),  # undecodable bytes, as surrogateescape keeps them
        ("\udcff", "%FF"),
        ("\udd00", "%ED%B4%80"),  # other lone surrogates: their UTF-8 (surrogatepass)
        ("\ud800", "%ED%A0%80"),
        ("\udfff", "%ED%BF%BF"),
        ("\ue000", "\ue000"),  # private use, past the surrogates: kept
        ("\u200b", "%E2%80%8B"),  # invisible format character
        ("é", "é"),
        (".hidden", "%2Ehidden"),
        ("a.b", "a.b"),
    ],
)
def test_encode_segment_edges(value, segment):
    assert encode_segment(value) == segment


@pytest.mark.parametrize(
    ("value", "segment"),
    [("\udc80", "%80"), ("\udcff", "%FF"), ("\ue000", "\ue000"), (" \tXmasX\t ", "XmasX")],
)
def test_header_segment_keeps_bytes_and_text_trimming_only_blanks(value, segment):
    assert header_segment(value) == segment


@pytest.mark.parametrize("value", ["\ud800", "\udbff", "\udc7f", "\udd00", "\udfff"])
def test_header_segment_refuses_other_lone_surrogates(value):
    with pytest.raises(NameError_, match=r"^the value is not text \(a lone surrogate\)$"):
        header_segment(value)


def test_header_segment_longest_value_is_the_bound():
    assert header_segment("a" * MAX_SEGMENT_BYTES) == "a" * MAX_SEGMENT_BYTES
    with pytest.raises(NameError_, match="longer than 200 bytes"):
        header_segment("a" * (MAX_SEGMENT_BYTES + 1))


@pytest.mark.parametrize(
    ("name", "segment"),
    [
        (None, "upload"),
        ("", "upload"),
        (".", "upload"),
        ("..", "upload"),
        ("dir/..", "upload"),
        ("dir/report.txt/", "report.txt"),
        ("C:\\Users\\me\\report.txt", "report.txt"),
        ("build/LOGX", "LOGX"),
        ("  spaced.txt ", "spaced.txt"),
    ],
)
def test_filename_segment_takes_the_last_component(name, segment):
    assert filename_segment(name) == segment


def test_filename_segment_longest_name_is_kept_whole():
    name = "a" * (MAX_SEGMENT_BYTES - 4) + ".txt"
    assert filename_segment(name) == name


def test_filename_segment_cut_keeps_an_extension_of_32_characters():
    ext = "." + "b" * 31
    assert filename_segment("a" * 300 + ext) == "a" * (MAX_SEGMENT_BYTES - 32) + ext


def test_filename_segment_cut_drops_a_longer_extension():
    assert filename_segment("a" * 300 + "." + "b" * 32) == "a" * MAX_SEGMENT_BYTES


def test_filename_segment_cut_never_splits_a_character():
    assert filename_segment("a" + "é" * 150 + ".txt") == "a" + "é" * 97 + ".txt"


@pytest.mark.parametrize(
    ("name", "segment"),
    [
        # The cut lands on the "%" or the first digit of an escape: the escape goes whole.
        ("a" * 195 + "\x01" * 10 + ".txt", "a" * 195 + ".txt"),
        ("a" * 194 + "\x01" * 10 + ".txt", "a" * 194 + ".txt"),
        # The cut lands right after an escape: it stays, and so does an earlier one.
        ("a" * 193 + "\x01" * 10 + ".txt", "a" * 193 + "%01.txt"),
        ("a" * 190 + "\x01" * 10 + ".txt", "a" * 190 + "%01%01.txt"),
    ],
)
def test_filename_segment_cut_never_leaves_half_an_escape(name, segment):
    assert filename_segment(name) == segment


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("r.tar.gz", ("r", ".tar.gz")),
        ("R.TGZ", ("R", ".TGZ")),
        (".tgz", (".tgz", "")),
        (".tar.gz", (".tar", ".gz")),
        ("notes", ("notes", "")),
    ],
)
def test_split_suffix_needs_a_stem(name, parts):
    assert split_suffix(name) == parts
