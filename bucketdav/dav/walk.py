"""The members of a folder download: a confined walk of one folder, and its bounds."""

from __future__ import annotations

import logging
import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from bucketdav.dav.lookup import confine
from bucketdav.errors import TooLarge

log = logging.getLogger(__name__)

MayRead = Callable[[str], bool]
FILE, FOLDER, LINK = "file", "folder", "link"
# Names WebDAV hides (not UTF-8 on disk, or control characters) stay out of archives too.
HIDDEN = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


class FolderTooLarge(TooLarge):
    """A folder holds more files or bytes than one download may carry."""


@dataclass(frozen=True)
class Readable:
    """What a client may have of a folder it may not read whole (paths relative to it).

    `may_read` decides files, links and folders (with a trailing slash); a folder it refuses is
    walked through, without an entry of its own, when `may_enter` says it leads to readable
    members, and left alone otherwise.
    """

    may_read: MayRead
    may_enter: MayRead


@dataclass(slots=True)
class Member:
    """One entry of a folder download: its path below the folder and what it is on disk."""

    rel: str
    real: str
    kind: str
    mode: int
    size: int
    mtime: float
    # A kept link's target, relative to the link's folder in the archive.
    target: str = ""


def walk(
    root: str, top: str, *, keep_links: bool, readable: Readable | None = None
) -> Iterator[Member]:
    """The members of the real folder `top` of the store at `root`, in name order, top first.

    Symlinks are followed only where they resolve inside the public trees (as WebDAV shows
    them); with `keep_links` a link whose target lies in `top` stays a link instead. Dangling
    links, and folders that would contain themselves, are left out. With `readable`, only
    what the client may read is in (paths relative to `top`, folders with a trailing slash).
    """
    try:
        st = os.stat(top)
    except OSError:
        return
    yield Member("", top, FOLDER, st.st_mode, 0, st.st_mtime)
    allowed = readable.may_read if readable else _everything
    enters = readable.may_enter if readable else _everything
    stack = [(top, "", iter(_names(top)))]
    ancestors = {top}
    while stack:
        folder, prefix, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            ancestors.discard(folder)
            continue
        rel, path = prefix + name, f"{folder}/{name}"
        try:
            st = os.lstat(path)
            real = path
            if stat.S_ISLNK(st.st_mode):
                resolved = confine(root, path)
                if resolved is None:
                    continue
                target_st = os.stat(resolved)  # a dangling link is left out
                if keep_links:
                    kept = _kept_link(folder, path, top)
                    if kept is not None:
                        if allowed(rel):
                            target = posixpath.relpath(kept, prefix or ".")
                            yield Member(rel, path, LINK, 0o777, 0, st.st_mtime, target)
                        continue
                st, real = target_st, resolved
        except (OSError, ValueError):
            continue
        if stat.S_ISDIR(st.st_mode):
            if real in ancestors or folder.startswith(real + os.sep):
                continue
            if allowed(rel + "/"):
                yield Member(rel, real, FOLDER, st.st_mode, 0, st.st_mtime)
            elif not enters(rel + "/"):
                continue
            ancestors.add(real)
            stack.append((real, rel + "/", iter(_names(real))))
        elif stat.S_ISREG(st.st_mode) and allowed(rel):
            yield Member(rel, real, FILE, st.st_mode, st.st_size, st.st_mtime)


def _everything(_path: str) -> bool:
    return True


def _names(folder: str) -> list[str]:
    try:
        names = os.listdir(folder)
    except OSError as exc:
        log.warning("cannot read %s for a download: %s", folder, exc)
        return []
    names.sort()
    if HIDDEN.search("".join(names)) is None:
        return names
    return [name for name in names if HIDDEN.search(name) is None]


def _kept_link(folder: str, path: str, top: str) -> str | None:
    """Where in `top` the link at `path` points, one hop (relative to `top`), or None.

    The link's own folder part is resolved, its last name is not: a link to a sibling link
    (`latest` to a stamped replica) stays a link to that sibling.
    """
    text = os.readlink(path)
    head, last = os.path.split(text)
    if last in ("", ".", ".."):
        hop = os.path.realpath(os.path.join(folder, text))
    else:
        hop = os.path.join(os.path.realpath(os.path.join(folder, head or ".")), last)
    if hop == top:
        return "."
    if not hop.startswith(top + os.sep):
        return None
    return hop[len(top) + 1 :]


def bounded(members: Iterable[Member], *, max_files: int, max_bytes: int) -> Iterator[Member]:
    """`members`, raising FolderTooLarge as soon as there are too many or too large."""
    size = 0
    for count, member in enumerate(members, 1):
        size += member.size
        if count > max_files:
            raise FolderTooLarge(
                f"this folder holds more than {max_files} files and folders, the most one "
                "download may (BUCKETDAV_DOWNLOAD_MAX_FILES): download the folders inside it, "
                "or copy it with rclone"
            )
        if size > max_bytes:
            raise FolderTooLarge(
                f"this folder holds more than {max_bytes} bytes, the most one download may "
                "(BUCKETDAV_DOWNLOAD_MAX_BYTES): download the folders inside it, or copy it "
                "with rclone"
            )
        yield member
