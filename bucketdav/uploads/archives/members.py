"""Pure decisions about archive members: safe names, a consistent layout, links that stay inside."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

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
    for segment in segments:
        if (
            len(segment) * 4 > MAX_SEGMENT_BYTES
            and len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES
        ):
            raise refuse(name, f"has a path segment longer than {MAX_SEGMENT_BYTES} bytes")
    return segments


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
    if any(len(s.encode("utf-8")) > MAX_SEGMENT_BYTES for s in target.split("/")):
        raise refuse(name, f"is a link whose target has a segment over {MAX_SEGMENT_BYTES} bytes")


@dataclass
class Entry:
    """One path of the tree being built: what it is and which member made it."""

    kind: Kind
    member: str
    explicit: bool = True
    target: str = ""


class Layout:
    """The tree an archive describes, checked member by member before anything is written."""

    def __init__(self) -> None:
        self.entries: dict[MemberPath, Entry] = {}

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
        for depth in range(1, len(path)):
            parent = path[:depth]
            entry = self.entries.get(parent)
            if entry is None:
                self.entries[parent] = Entry(Kind.DIR, member, explicit=False)
                new_dirs.append(parent)
            elif entry.kind is not Kind.DIR:
                raise refuse(
                    member,
                    f"needs '{'/'.join(parent)}' as a directory, but member "
                    f"'{shown(entry.member)}' made it a {entry.kind.value}",
                )
        existing = self.entries.get(path)
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
        self.entries[path] = Entry(kind, member, target=target)
        if kind is Kind.DIR:
            new_dirs.append(path)
        return new_dirs

    def get(self, path: MemberPath) -> Entry | None:
        """The entry at `path`, if any."""
        return self.entries.get(path)

    def check_symlinks(self) -> None:
        """Refuse the archive if any symlink, followed through the others, leaves the tree."""
        for path, entry in self.entries.items():
            if entry.kind is Kind.SYMLINK:
                self.resolve(path, entry)

    def resolve(self, path: MemberPath, entry: Entry) -> MemberPath:
        """Where the symlink at `path` leads, inside the tree; UnsafeArchive when it leaves."""
        hops = [0]
        return self._walk(path[:-1], entry.target, entry.member, hops)

    def _walk(self, base: MemberPath, target: str, member: str, hops: list[int]) -> MemberPath:
        # Symlinks are expanded where they occur, as the kernel does, so `a/l/..` goes
        # where `l` points and then up, not back to `a`.
        stack = list(base)
        for segment in target.split("/"):
            if segment in ("", "."):
                continue
            if segment == "..":
                if not stack:
                    raise refuse(member, "is a link that points outside the archive")
                stack.pop()
                continue
            stack.append(segment)
            entry = self.entries.get(tuple(stack))
            if entry is not None and entry.kind is Kind.SYMLINK:
                hops[0] += 1
                if hops[0] > MAX_SYMLINK_HOPS:
                    raise refuse(
                        member,
                        f"is a link in a loop or a chain of more than {MAX_SYMLINK_HOPS} links",
                    )
                stack = list(self._walk(tuple(stack[:-1]), entry.target, member, hops))
        return tuple(stack)
