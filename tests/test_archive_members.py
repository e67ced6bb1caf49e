"""Archive member decisions at their edges: link targets, exact refusals, deep look-ups."""

from __future__ import annotations

import pytest

from bucketdav.errors import UnsafeArchive
from bucketdav.uploads.archives.members import Kind, Layout, check_symlink_text

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
