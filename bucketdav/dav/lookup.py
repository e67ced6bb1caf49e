"""The public view of the store for WebDAV: confined lookups, listings and file checksums."""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import re
import stat
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from stat import S_ISDIR, S_ISLNK, S_ISREG

from bucketdav.store.blobs import PUBLIC_TREES

log = logging.getLogger(__name__)

# Files up to this size are hashed on demand for an ETag or checksum; bigger ones only
# get a checksum when they are blobs (named by it), so one request never reads gigabytes.
HASH_ON_DEMAND_MAX = 64 << 20
CACHE_ENTRIES = 65536
# Files under these trees never change once there (named by content, or inside an archive's
# published tree), so a lookup of one is remembered: its folders need no lstat again.
IMMUTABLE_TREES = ("/blob/", "/explode/")
LOOKUP_CACHE_ENTRIES = 16384
# Bytes the remembered lookups may hold; a client chooses how long the paths it sends are.
LOOKUP_CACHE_BYTES = 8 << 20
# What one remembered lookup holds besides its two paths: the node, its numbers, a dict slot.
_ENTRY_OVERHEAD = 400
_HASH_BLOCK = 1 << 20
# Pauses before looking a path through a `latest` link up again when it was missing: on a
# shared file system (JuiceFS) a reader can see ENOENT while another node renames a new
# `latest` over the old one, which is never missing on a local disk. 155 ms in all.
LATEST_RETRY_PAUSES = (0.005, 0.01, 0.02, 0.04, 0.08)
# Content a browser would run or render as a document of this origin.
# Control characters XML cannot carry, and the surrogates os.fsdecode makes of non-UTF-8 bytes.
_NONE: frozenset[str] = frozenset()
_TYPES: dict[str, str] = {}
_SEGMENT = re.compile("[^/]+")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_ACTIVE_TYPE = re.compile(r"html|xml|svg|javascript|ecmascript|xsl", re.IGNORECASE)


@dataclass(slots=True)
class Node:
    """One visible file or folder: its public path, where it really is, and one stat of it."""

    path: str
    real: str
    is_dir: bool
    size: int
    mtime: float
    dev: int
    ino: int
    mtime_ns: int
    # Real folders passed on the way here; a link back to one of them would loop.
    seen: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        """The last segment of the public path ("" for the root)."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]


def split_path(path: str) -> list[str] | None:
    """The segments of a decoded URL path, or None when one of them could climb or is unsafe."""
    # Not str.split: a path of 60,000 slashes would make a list of 60,000 empty strings.
    parts = _SEGMENT.findall(path)
    for part in parts:
        if part in (".", "..") or "\x00" in part or "\\" in part:
            return None
    return parts


def confine(root: str, path: str) -> str | None:
    """`path` with every symlink resolved, or None when that is outside the public trees."""
    real = os.path.realpath(path)
    return real if inside_public(root, real) else None


def inside_public(root: str, real: str) -> bool:
    """True when the resolved path `real` is one of the public trees or below one."""
    for tree in PUBLIC_TREES:
        base = os.path.join(root, tree)
        if real == base or real.startswith(base + os.sep):
            return True
    return False


def content_type(name: str) -> str:
    """The media type a file name suggests; unknown names download as octet-stream."""
    # Only the last suffix decides (an encoding suffix such as .gz means octet-stream anyway).
    suffix = name.rpartition(".")[2] if "." in name else ""
    known = _TYPES.get(suffix)
    if known is None:
        guessed, encoding = mimetypes.guess_type("x." + suffix, strict=False)
        known = "application/octet-stream" if encoding or not guessed else guessed
        if len(_TYPES) < 4096:
            _TYPES[suffix] = known
    return known


def is_active(media_type: str) -> bool:
    """True for content a browser would run (HTML, SVG, XML, JavaScript)."""
    return bool(_ACTIVE_TYPE.search(media_type))


class ChecksumCache:
    """Digests of non-blob files, computed on demand and kept in memory (LRU, bounded)."""

    def __init__(self, algorithm: str, limit: int = CACHE_ENTRIES) -> None:
        self.algorithm = algorithm
        self.limit = limit
        self._items: OrderedDict[tuple[int, int, int, int], str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, node: Node) -> str | None:
        """The cached digest of `node`'s content, if known."""
        key = (node.dev, node.ino, node.size, node.mtime_ns)
        with self._lock:
            digest = self._items.get(key)
            if digest is not None:
                self._items.move_to_end(key)
            return digest

    def compute(self, node: Node) -> str | None:
        """Hash `node`'s file and remember it; None when it cannot be read."""
        hasher = hashlib.new(self.algorithm)
        try:
            with open(node.real, "rb") as fh:
                st = os.fstat(fh.fileno())
                if (st.st_ino, st.st_size, st.st_mtime_ns) != (node.ino, node.size, node.mtime_ns):
                    return None
                while block := fh.read(_HASH_BLOCK):
                    hasher.update(block)
        except OSError:
            return None
        digest = hasher.hexdigest()
        with self._lock:
            self._items[(node.dev, node.ino, node.size, node.mtime_ns)] = digest
            while len(self._items) > self.limit:
                self._items.popitem(last=False)
        return digest


class PublicTree:
    """Read-only access to blob/, explode/ and replica/ of one store, and nothing else."""

    def __init__(self, root: str, algorithm: str) -> None:
        self.root = os.path.realpath(root)
        self.algorithm = algorithm
        self.digest_len = hashlib.new(algorithm).digest_size * 2
        self.blobs = os.path.join(self.root, "blob") + os.sep
        self.cache = ChecksumCache(algorithm)
        # Remembered lookups by normalised path ("/blob/ab/…", no empty segments).
        self.files: dict[str, Node] = {}
        self._held = 0
        self._lock = threading.Lock()

    def lookup(self, path: str, *, recheck: bool = True) -> Node | None:
        """The node at a decoded URL path, or None when it is missing, hidden or outside.

        Each lstat on the way releases the interpreter lock, which under load costs far more
        than the call; files in the immutable trees are looked up once and remembered. A
        remembered file is checked with one lstat (collection, or a person, may remove it),
        unless `recheck` is off for a caller that opens the file anyway.
        """
        node = self.files.get(path)
        if node is None:
            parts = split_path(path)
            if parts is None:
                return None
            node = self.files.get("/" + "/".join(parts))
            if node is None:
                return self._remember(self._walk_latest(parts))
        if recheck and not _unchanged(node):
            self.forget(node)
            return self._remember(self._walk(split_path(node.path) or []))
        return node

    def forget(self, node: Node) -> None:
        """Drop the remembered lookup of a file that turned out to be gone or changed."""
        with self._lock:
            if self.files.get(node.path) is node:
                del self.files[node.path]
                self._held -= _entry_cost(node)

    def _remember(self, node: Node | None) -> Node | None:
        if node is None or node.is_dir or not node.path.startswith(IMMUTABLE_TREES):
            return node
        cost = _entry_cost(node)
        with self._lock:
            if node.path in self.files or cost > LOOKUP_CACHE_BYTES:
                return node
            if len(self.files) >= LOOKUP_CACHE_ENTRIES or self._held + cost > LOOKUP_CACHE_BYTES:
                self.files.clear()
                self._held = 0
            self.files[node.path] = node
            self._held += cost
        return node

    def _walk_latest(self, parts: list[str]) -> Node | None:
        """_walk, looking a path through a `latest` link up again briefly while it is missing."""
        node = self._walk(parts)
        if node is None and _through_latest(parts):
            for pause in LATEST_RETRY_PAUSES:
                time.sleep(pause)
                node = self._walk(parts)
                if node is not None:
                    break
        return node

    def _walk(self, parts: list[str]) -> Node | None:
        if not parts:
            return self._node("/", self.root, frozenset())
        if parts[0] not in PUBLIC_TREES:
            return None
        real = self.root
        seen = [real]
        st = None
        for part in parts:
            found = _lstat_member(real, part)
            if found is None:
                return None
            candidate, st = found
            try:
                if S_ISLNK(st.st_mode):
                    candidate = confine(self.root, candidate)
                    if candidate is None or candidate in seen:
                        return None
                    st = os.stat(candidate)
            except (OSError, ValueError):
                return None
            real = candidate
            seen.append(real)
        if st is None or not inside_public(self.root, real):
            return None
        return _make_node(
            "/" + "/".join(parts), real, st, frozenset(seen) if S_ISDIR(st.st_mode) else _NONE
        )

    def _node(self, path: str, real: str, seen: frozenset[str]) -> Node | None:
        try:
            st = os.stat(real)
        except (OSError, ValueError):
            return None
        return _make_node(path, real, st, seen)

    def children(self, node: Node) -> Iterator[Node]:
        """The visible members of a folder, sorted by name; unreadable ones are left out."""
        base = node.path.rstrip("/")
        if node.path == "/":
            for tree in PUBLIC_TREES:
                child = self._node(f"/{tree}", os.path.join(self.root, tree), frozenset())
                if child is not None and child.is_dir:
                    yield child
            return
        try:
            fd = os.open(node.real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("cannot list %s: %s", node.path, exc)
            return
        # stat relative to the open folder: no path walk per member, and no DirEntry objects.
        try:
            names = sorted(os.listdir(fd))
            checked = _UNPRINTABLE.search("".join(names)) is not None
            real_base = node.real + os.sep
            seen = node.seen
            for name in names:
                if checked and not _printable(name):
                    continue
                st = _lstat_listed(fd, name)
                if st is None:
                    continue
                mode = st.st_mode
                if S_ISREG(mode):
                    yield Node(
                        f"{base}/{name}",
                        real_base + name,
                        False,
                        st.st_size,
                        st.st_mtime,
                        st.st_dev,
                        st.st_ino,
                        st.st_mtime_ns,
                        seen,
                    )
                elif S_ISDIR(mode):
                    yield Node(
                        f"{base}/{name}",
                        real_base + name,
                        True,
                        0,
                        st.st_mtime,
                        st.st_dev,
                        st.st_ino,
                        st.st_mtime_ns,
                        seen,
                    )
                elif S_ISLNK(mode):
                    child = self._follow(node, real_base + name, f"{base}/{name}")
                    if child is not None:
                        yield child
        finally:
            os.close(fd)

    def _follow(self, parent: Node, link: str, path: str) -> Node | None:
        """The node a member symlink stands for, or None when it leaves, dangles or loops."""
        try:
            real = confine(self.root, link)
            if real is None:
                return None
            st = os.stat(real)
        except (OSError, ValueError):
            return None
        if stat.S_ISDIR(st.st_mode) and (
            real in parent.seen or parent.real == real or parent.real.startswith(real + os.sep)
        ):
            return None
        return _make_node(path, real, st, parent.seen)

    def known_checksum(self, node: Node) -> str | None:
        """The digest of a file when it costs nothing: a blob's name, or a cached result."""
        if node.is_dir:
            return None
        if node.real.startswith(self.blobs):
            name = node.real.rsplit(os.sep, 1)[-1]
            if len(name) == self.digest_len:
                return name
        return self.cache.get(node)

    def checksum(self, node: Node, budget: list[int] | None = None) -> str | None:
        """The digest of a file, hashing it if small enough and `budget` (bytes left) allows."""
        digest = self.known_checksum(node)
        if digest is not None or node.is_dir or node.size > HASH_ON_DEMAND_MAX:
            return digest
        if budget is not None:
            if budget[0] < node.size:
                return None
            budget[0] -= node.size
        return self.cache.compute(node)

    def etag(self, node: Node, budget: list[int] | None = None) -> str | None:
        """A strong ETag value (unquoted): the checksum when known, else the file's identity."""
        if node.is_dir:
            return None
        digest = self.checksum(node, budget)
        if digest is not None:
            return digest
        return f"{node.ino:x}-{node.size:x}-{node.mtime_ns:x}"


def _lstat_member(folder: str, name: str) -> tuple[str, os.stat_result] | None:
    """The path and lstat of `name` in `folder`, trying the NFC form of a name sent as NFD."""
    path = f"{folder}/{name}"
    try:
        return path, os.lstat(path)
    except FileNotFoundError:
        # macOS clients send names decomposed (NFD); uploads mostly arrive composed (NFC).
        composed = unicodedata.normalize("NFC", name)
        if composed == name:
            return None
        path = f"{folder}/{composed}"
        try:
            return path, os.lstat(path)
        except (OSError, ValueError):
            return None
    except (OSError, ValueError):
        return None


def _through_latest(parts: list[str]) -> bool:
    """True for a replica path with a `latest` link on the way (`….latest…`)."""
    return len(parts) > 1 and parts[0] == "replica" and any(".latest" in p for p in parts[1:])


def _lstat_listed(fd: int, name: str) -> os.stat_result | None:
    """The lstat of a listed member; a `latest` link being replaced is waited for briefly."""
    pauses = iter(LATEST_RETRY_PAUSES if ".latest" in name else ())
    while True:
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            pause = next(pauses, None)
            if pause is None:
                return None
            time.sleep(pause)
        except OSError:
            return None


def count_members(real: str, limit: int) -> int | None:
    """How many entries the folder `real` holds; None past `limit` (reading stops there).

    Raises OSError when the folder cannot be read.
    """
    count = 0
    with os.scandir(real) as entries:
        for _ in entries:
            count += 1
            if count > limit:
                return None
    return count


def _entry_cost(node: Node) -> int:
    """The bytes a remembered lookup of `node` holds, about."""
    return len(node.path) + len(node.real) + _ENTRY_OVERHEAD


def _unchanged(node: Node) -> bool:
    """True when the file `node` stands for is still there, the same file (one lstat)."""
    try:
        st = os.lstat(node.real)
    except (OSError, ValueError):
        return False
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns) == (
        node.ino,
        node.dev,
        node.size,
        node.mtime_ns,
    )


def _make_node(path: str, real: str, st: os.stat_result, seen: frozenset[str]) -> Node | None:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        is_dir = True
    elif stat.S_ISREG(mode):
        is_dir = False
    else:
        return None
    return Node(
        path,
        real,
        is_dir,
        0 if is_dir else st.st_size,
        st.st_mtime,
        st.st_dev,
        st.st_ino,
        st.st_mtime_ns,
        seen,
    )


def _printable(name: str) -> bool:
    """False for names that are not UTF-8 on disk or hold control characters XML cannot carry."""
    return _UNPRINTABLE.search(name) is None
