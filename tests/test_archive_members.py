"""Archive member decisions at their edges: link targets, exact refusals, deep look-ups."""

from __future__ import annotations

import pytest

from bucketdav.errors import UnsafeArchive
from bucketdav.uploads.archives.members import Kind, Layout, check_symlink_text, member_path, shown

KEPT = "; nothing was extracted (the uploaded file is kept as its blob)"


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("", "has an empty link target"),
        ("a\x00b", "has a NUL byte in its link target"),
        ("a\nb", "has a control character in its link target"),
        ("bad\udcff", "has a link target that is not valid UTF-8"),
        ("/etc/passwd", "is a link to the absolute path '/etc/passwd'"),
        ("..\\..\\evil", "is a link whose target has a backslash"),
        ("ok\\x", "is a link whose target has a backslash"),
        ("ok/" + "s" * 256, "is a link whose target has a segment over 255 bytes"),
        ("é" * 128, "is a link whose target has a segment over 255 bytes"),
        ("x" * 4096, "is a link whose target is 4096 bytes or longer"),
    ],
)
def test_check_symlink_text_refuses_naming_the_member(target, reason):
    with pytest.raises(UnsafeArchive) as caught:
        check_symlink_text("dir/link", target)
    assert str(caught.value) == f"archive member 'dir/link' {reason}{KEPT}"
    assert caught.value.member == "dir/link"


@pytest.mark.parametrize("target", ["s" * 255, "é" * 127, "../a/./b", "a/" * 1000 + "b"])
def test_check_symlink_text_accepts_relative_targets_up_to_the_bounds(target):
    check_symlink_text("link", target)


def test_layout_get_of_a_path_below_a_missing_name_or_a_file_is_none():
    layout = Layout()
    layout.add(("d", "f"), Kind.FILE, "d/f")
    assert layout.get(("missing", "deeper")) is None
    assert layout.get(("d", "f", "below")) is None
    assert layout.get(("d", "f")) is not None


def test_layout_resolve_follows_a_chain_of_40_links_on_its_own():
    layout = Layout()
    layout.add(("d", "f"), Kind.FILE, "d/f")
    for index in range(40):
        target = f"l{index + 1}" if index + 1 < 40 else "d/f"
        layout.add((f"l{index}",), Kind.SYMLINK, f"l{index}", target=target)
    layout.add(("start",), Kind.SYMLINK, "start", target="l0")
    # Not through check_symlinks, which would resolve l0 first: from `start` the last link
    # is the 40th one followed.
    assert layout.resolve(("start",)) == (("d", "f"), 0)


def test_layout_resolve_refusal_names_the_link_asked_about():
    layout = Layout()
    layout.add(("a", "out"), Kind.SYMLINK, "a/out", target="../..")
    with pytest.raises(UnsafeArchive) as caught:
        layout.resolve(("a", "out"))
    assert caught.value.member == "a/out"
    assert (
        str(caught.value)
        == f"archive member 'a/out' is a link that points outside the archive{KEPT}"
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("plain é 名", "plain é 名"),
        ("back\\slash 'and\" quotes", "back\\slash 'and\" quotes"),
        ("a\nb", "a\\nb"),
        ("x" * 300, "x" * 300),
        ("x" * 301, "x" * 300 + "…"),
        ("\x01" * 100, "\\x01" * 75 + "…"),
    ],
)
def test_shown_escapes_and_bounds_a_name(name, text):
    assert shown(name) == text


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "has an empty name"),
        ("a\x00b", "has a NUL byte in its name"),
        ("/etc/passwd", "is an absolute path"),
        ("..\\x", "has a backslash in its name"),
        ("a/../b", "climbs out with '..'"),
        ("x" * 256, "has a path segment longer than 255 bytes"),
    ],
)
def test_member_path_refusals_are_exact(name, reason):
    with pytest.raises(UnsafeArchive) as caught:
        member_path(name)
    assert str(caught.value) == f"archive member '{shown(name)}' {reason}{KEPT}"


def test_member_path_segment_of_255_bytes_is_kept():
    assert member_path("d/" + "x" * 255) == ("d", "x" * 255)
    assert member_path("é" * 127 + "x") == ("é" * 127 + "x",)


def test_layout_add_below_a_file_names_both_members():
    layout = Layout()
    layout.add(("a", "b"), Kind.FILE, "a/b")
    with pytest.raises(UnsafeArchive) as caught:
        layout.add(("a", "b", "c", "d"), Kind.FILE, "a/b/c/d")
    reason = "needs 'a/b' as a directory, but member 'a/b' made it a file"
    assert str(caught.value) == f"archive member 'a/b/c/d' {reason}{KEPT}"


@pytest.mark.parametrize(
    ("target", "place"),
    [
        ("d//f", (("d", "f"), 0)),
        ("./d/./f", (("d", "f"), 0)),
        ("d/", (("d",), 0)),
        ("d/f/x/..", (("d", "f"), 0)),
    ],
)
def test_layout_resolve_skips_empty_and_dot_segments(target, place):
    layout = Layout()
    layout.add(("d", "f"), Kind.FILE, "d/f")
    layout.add(("l",), Kind.SYMLINK, "l", target=target)
    assert layout.resolve(("l",)) == place


def chain(layout: Layout, length: int) -> None:
    """`start` -> l0 -> l1 … -> l<length-1> -> d/f, `start` added first."""
    layout.add(("d", "f"), Kind.FILE, "d/f")
    layout.add(("start",), Kind.SYMLINK, "start", target="l0")
    for index in range(length):
        target = f"l{index + 1}" if index + 1 < length else "d/f"
        layout.add((f"l{index}",), Kind.SYMLINK, f"l{index}", target=target)


def test_layout_check_symlinks_from_the_head_of_a_chain_allows_40_and_refuses_41():
    allowed = Layout()
    chain(allowed, 40)
    allowed.check_symlinks()
    refused = Layout()
    chain(refused, 41)
    with pytest.raises(UnsafeArchive, match="chain of more than 40 links") as caught:
        refused.check_symlinks()
    assert caught.value.member == "start"


def test_layout_chain_of_a_thousand_links_is_refused_without_deep_recursion():
    layout = Layout()
    chain(layout, 1000)
    with pytest.raises(UnsafeArchive, match="chain of more than 40 links"):
        layout.check_symlinks()


@pytest.mark.parametrize(("links", "refused"), [(40, False), (41, True)])
def test_layout_links_followed_in_one_target_add_up(links, refused):
    # Each link is cheap on its own; one target going through 41 of them is too many.
    layout = Layout()
    layout.add(("d",), Kind.DIR, "d")
    for index in range(links):
        layout.add((f"a{index}",), Kind.SYMLINK, f"a{index}", target="d")
    target = "/".join(f"a{index}/.." for index in range(links)) + "/d"
    layout.add(("l",), Kind.SYMLINK, "l", target=target)
    if refused:
        with pytest.raises(UnsafeArchive, match="chain of more than 40 links"):
            layout.check_symlinks()
    else:
        layout.check_symlinks()
        assert layout.resolve(("l",)) == (("d",), 0)
