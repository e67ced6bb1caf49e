"""Pure decisions about archive members: safe names, a consistent layout, links that stay inside."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence

from bucketdav.errors import UnsafeArchive

MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 4096
# Linux gives up after 40 symlinks in one lookup; so do we, which also catches loops.
MAX_SYMLINK_HOPS = 40

MemberPath = tuple[str, ...]
# Control characters, and the surrogates that stand for bytes that were not UTF-8.
_DUBIOUS = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class Kind(enum.Enum):
    """What a member is, as far as extraction cares."""

    FILE = "file"
    DIR = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hard link"
    DEVICE = "device file"
    FIFO = "fifo"
    SOCKET = "socket"
    OTHER = "unsupported member type"


def shown(name: str) -> str:
    """A member name as a message shows it: control characters and stray bytes escaped."""
    text = repr(name)[1:-1] if not name.isprintable() else name
    return text if len(text) <= 300 else text[:300] + "…"


def refuse(name: str, reason: str, *, what: str = "archive member") -> UnsafeArchive:
    """The error for a member (or a whole file) that makes extraction unsafe; names it."""
    return UnsafeArchive(
        f"{what} '{shown(name)}' {reason}; nothing was extracted "
        "(the uploaded file is kept as its blob)",
        member=name,
    )


def _check_text(text: str, what: str, *, member: str | None = None) -> None:
    """Refuse text no file system path should hold: NUL, control characters, stray bytes."""
    name = text if member is None else member
    if not text:
        raise refuse(name, f"has an empty {what}")
    if _DUBIOUS.search(text):
        if "\x00" in text:
            raise refuse(name, f"has a NUL byte in its {what}")
        if _SURROGATE.search(text):
            raise refuse(name, f"has a {what} that is not valid UTF-8")
        raise refuse(name, f"has a control character in its {what}")
    if len(text) * 4 > MAX_PATH_BYTES and len(text.encode("utf-8")) > MAX_PATH_BYTES:
        raise refuse(name, f"has a {what} longer than {MAX_PATH_BYTES} bytes")


def member_path(name: str) -> MemberPath:
    """The path segments a member name stands for, or UnsafeArchive when it is dubious.

    `.` and empty segments are dropped (`./a//b` is `a/b`, as tar reads it); anything
    that could mean another place on some system is refused, never rewritten.
    """
    _check_text(name, "name")
    if name.startswith("/"):
        raise refuse(name, "is an absolute path")
    if "\\" in name:
        # Windows tools read a backslash as a separator, so `..\x` would climb there.
        raise refuse(name, "has a backslash in its name")
    segments = tuple(s for s in name.split("/") if s not in ("", "."))
    if ".." in segments:
        raise refuse(name, "climbs out with '..'")
    if _longest_segment(segments) > MAX_SEGMENT_BYTES:
        raise refuse(name, f"has a path segment longer than {MAX_SEGMENT_BYTES} bytes")
    return segments


def _longest_segment(segments: Sequence[str]) -> int:
    """The UTF-8 length of the longest segment, encoding only those that could be too long."""
    if not segments or max(map(len, segments)) * 4 <= MAX_SEGMENT_BYTES:
        return 0  # no segment of n characters takes more than 4n bytes
    return max(len(s.encode("utf-8")) for s in segments if len(s) * 4 > MAX_SEGMENT_BYTES)


def check_symlink_text(name: str, target: str) -> None:
    """Refuse a symlink target that is absolute or not a plain relative path."""
    _check_text(target, "link target", member=name)
    if len(target.encode("utf-8")) >= MAX_PATH_BYTES:
        # symlink() takes at most PATH_MAX - 1 bytes.
        raise refuse(name, f"is a link whose target is {MAX_PATH_BYTES} bytes or longer")
    if target.startswith("/"):
        raise refuse(name, f"is a link to the absolute path '{shown(target)}'")
    if "\\" in target:
        raise refuse(name, "is a link whose target has a backslash")
    if _longest_segment(target.split("/")) > MAX_SEGMENT_BYTES:
        raise refuse(name, f"is a link whose target has a segment over {MAX_SEGMENT_BYTES} bytes")


class Entry:
    """One path of the tree being built: what it is, which member made it, where it sits."""

    __slots__ = ("children", "cost", "explicit", "kind", "member", "name", "parent", "target", "to")

    def __init__(
        self,
        kind: Kind,
        member: str,
        *,
        name: str = "",
        parent: Entry | None = None,
        explicit: bool = True,
        target: str = "",
    ) -> None:
        self.kind = kind
        self.member = member
        self.name = name
        self.parent = parent
        self.explicit = explicit
        self.target = target
        self.children: dict[str, Entry] | None = {} if kind is Kind.DIR else None
        # A symlink's resolution, once known: where it leads and how many links that took.
        self.to: Place | None = None
        self.cost = 0

    @property
    def path(self) -> MemberPath:
        """The segments from the archive's top down to this entry."""
        names = []
        entry: Entry | None = self
        while entry is not None and entry.parent is not None:
            names.append(entry.name)
            entry = entry.parent
        return tuple(reversed(names))


# Where a walk is: an entry of the tree, and how many segments it went on below it
# into names the archive does not have (which only `..` can climb back out of).
Place = tuple[Entry, int]


class Layout:
    """The tree an archive describes, checked member by member before anything is written.

    A tree of entries rather than a map of paths, so that adding a member, looking one
    up and following links each take time linear in the path, however deep it is.
    """

    def __init__(self) -> None:
        self.root = Entry(Kind.DIR, "")
        self.symlinks: list[Entry] = []

    def add(
        self, path: MemberPath, kind: Kind, member: str, *, target: str = ""
    ) -> list[MemberPath]:
        """Record `path` as `kind`; returns the directories to create for it, parents first.

        Refuses a path below a file or link, a file where a directory is, and duplicates.
        """
        if not path:
            if kind is Kind.DIR:
                return []
            raise refuse(member, f"is a {kind.value} in place of the archive's top directory")
        new_dirs: list[MemberPath] = []
        parent = self.root
        for depth, segment in enumerate(path[:-1], 1):
            assert parent.children is not None  # only directories are walked into
            entry = parent.children.get(segment)
            if entry is None:
                entry = Entry(Kind.DIR, member, name=segment, parent=parent, explicit=False)
                parent.children[segment] = entry
                new_dirs.append(path[:depth])
            elif entry.kind is not Kind.DIR:
                raise refuse(
                    member,
                    f"needs '{'/'.join(path[:depth])}' as a directory, but member "
                    f"'{shown(entry.member)}' made it a {entry.kind.value}",
                )
            parent = entry
        assert parent.children is not None
        existing = parent.children.get(path[-1])
        if existing is not None:
            if kind is Kind.DIR and existing.kind is Kind.DIR and not existing.explicit:
                existing.explicit = True
                return new_dirs
            if existing.kind is kind or existing.explicit:
                raise refuse(
                    member,
                    f"appears twice in the archive (as a {existing.kind.value} "
                    f"and as a {kind.value})",
                )
            raise refuse(member, f"is a {kind.value} where other members need a directory")
        entry = Entry(kind, member, name=path[-1], parent=parent, target=target)
        parent.children[path[-1]] = entry
        if kind is Kind.SYMLINK:
            self.symlinks.append(entry)
        if kind is Kind.DIR:
            new_dirs.append(path)
        return new_dirs

    def get(self, path: MemberPath) -> Entry | None:
        """The entry at `path`, if any."""
        entry: Entry | None = self.root
        for segment in path:
            if entry is None or entry.children is None:
                return None
            entry = entry.children.get(segment)
        return entry

    def check_symlinks(self) -> None:
        """Refuse the archive if any symlink, followed through the others, leaves the tree."""
        for link in self.symlinks:
            self._resolve(link, link.member, 0)

    def resolve(self, path: MemberPath) -> tuple[MemberPath, int]:
        """Where the symlink at `path` leads: the deepest entry there, and the segments below it.

        UnsafeArchive when it leaves the tree.
        """
        link = self.get(path)
        assert link is not None and link.kind is Kind.SYMLINK
        entry, below = self._resolve(link, link.member, 0)
        return entry.path, below

    def _resolve(self, link: Entry, member: str, nesting: int) -> Place:
        """Where `link` leads, worked out once; its cost is the links followed on the way."""
        if link.to is not None:
            return link.to
        if link.cost < 0 or nesting > MAX_SYMLINK_HOPS:
            raise refuse(
                member, f"is a link in a loop or a chain of more than {MAX_SYMLINK_HOPS} links"
            )
        link.cost = -1  # being resolved: meeting it again on the way is a loop
        assert link.parent is not None
        place, cost = self._walk((link.parent, 0), link.target, member, nesting)
        link.to, link.cost = place, cost
        return place

    def _walk(self, place: Place, target: str, member: str, nesting: int) -> tuple[Place, int]:
        # Symlinks are expanded where they occur, as the kernel does, so `a/l/..` goes
        # where `l` points and then up, not back to `a`; each is worked out only once.
        entry, below = place
        hops = 0
        for segment in target.split("/"):
            if segment in ("", "."):
                continue
            if segment == "..":
                if below:
                    below -= 1
                elif entry.parent is None:
                    raise refuse(member, "is a link that points outside the archive")
                else:
                    entry = entry.parent
                continue
            child = None if below or entry.children is None else entry.children.get(segment)
            if child is None:
                below += 1
            elif child.kind is Kind.SYMLINK:
                (entry, below) = self._resolve(child, member, nesting + 1)
                hops += 1 + child.cost
                if hops > MAX_SYMLINK_HOPS:
                    raise refuse(
                        member,
                        f"is a link in a loop or a chain of more than {MAX_SYMLINK_HOPS} links",
                    )
            else:
                entry = child
        return (entry, below), hops
