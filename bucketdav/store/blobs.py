"""The store below ARCHIVE_DIR: its layout, start-up, free space, and blobs committed and linked."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bucketdav.errors import ChecksumCollision, StoreFull
from bucketdav.settings import FreeSpace, parse_node
from bucketdav.store.files import (
    COPY_CHUNK,
    disk_full_as_store_full,
    fsync_dir,
    fsync_up,
    newest_mtime,
    remove_quietly,
    same_bytes,
)
from bucketdav.store.holds import shared
from bucketdav.store.staging import StagedFile

log = logging.getLogger(__name__)

PUBLIC_TREES = ("blob", "explode", "replica")
# decompressed/ab/cd/<sum of a compressed blob> is a symlink to the blob of its decompressed
# bytes (../../../blob/ef/gh/<sum>), so that known compressed content (uploaded again, or
# deployed by checksum) is not decompressed again to learn that sum. The note lives in the
# tree, which stays the only state; it is private (never served), and only a hint: a missing
# or dangling note costs one decompression, which writes it again.
DECOMPRESSED = "decompressed"
# Digests strong enough that equal digests mean equal bytes; any other is checked byte by byte.
STRONG_ALGORITHMS = frozenset(
    {
        "sha224",
        "sha256",
        "sha384",
        "sha512",
        "sha512_224",
        "sha512_256",
        "blake2b",
        "blake2s",
        "sha3_224",
        "sha3_256",
        "sha3_384",
        "sha3_512",
    }
)
# Inodes an upload may need (staging file, fan-out folders, replica names); with fewer free,
# uploads are refused and /healthz fails, as below the byte watermark.
MIN_FREE_INODES = 32
# Rounds of a link or rename that collection can undo under our feet (a folder it removed
# as empty, a blob it took); each round that fails did so because collection acted.
_ATTEMPTS = 8
# Seconds another node's staging entry must be untouched before this node's start-up removes it.
LEFTOVER_AGE = 24 * 3600


def fanned(digest: str) -> str:
    """`ab/cd/abcd…`: where `digest` lives below blob/, explode/ and decompressed/.

    A string, for the loops over thousands of digests where a Path per digest costs.
    """
    return f"{digest[:2]}/{digest[2:4]}/{digest}"


class StoreError(Exception):
    """The store cannot be used as configured (start-up)."""


@dataclass(frozen=True)
class Blob:
    """A stored content: its digest, where it is, its size, and whether this call stored it."""

    digest: str
    path: Path
    size: int
    created: bool = False


class Store:
    """The store below one ARCHIVE_DIR: every write goes to staging/ first, then is linked in."""

    def __init__(
        self,
        root: Path,
        algorithm: str,
        *,
        min_free: FreeSpace | None = None,
        node: str | None = None,
    ) -> None:
        self.root = Path(os.path.abspath(root))
        self.algorithm = algorithm
        self.digest_size = hashlib.new(algorithm).digest_size
        self.min_free = min_free or FreeSpace()
        # Several servers may share the store: each writes only in its own staging/<node>/.
        self.node = node or parse_node("")
        self.staging_root = self.root / "staging"
        self.staging = self.staging_root / self.node
        self.blobs = self.root / "blob"
        self.trees = self.root / "explode"
        self.replicas = self.root / "replica"
        self.notes = self.root / DECOMPRESSED
        self.trusts_digest = algorithm in STRONG_ALGORITHMS

    # -- start-up ----------------------------------------------------------------------

    def open(self) -> None:
        """Create the layout, clear staging leftovers, check it is one writable file system."""
        parts = (
            self.staging_root,
            self.staging,
            self.blobs,
            self.trees,
            self.replicas,
            self.notes,
        )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for path in parts:
                path.mkdir(exist_ok=True)
            # Every answer relies on these entries; later flushes stop at blob/, explode/, ...
            fsync_dir(self.root)
            fsync_dir(self.staging_root)
        except OSError as exc:
            raise StoreError(f"ARCHIVE_DIR={self.root}: cannot create the store: {exc}") from None
        if not os.access(self.root, os.W_OK | os.X_OK) or not self.writable():
            raise StoreError(f"ARCHIVE_DIR={self.root}: not writable by this user")
        # Staged files are linked and renamed into every other part: one file system, or
        # uploads fail one by one (EXDEV) instead of the start-up.
        home = self.staging.stat().st_dev
        apart = [f"{self.relative(p)}/" for p in parts if p.stat().st_dev != home]
        if apart:
            raise StoreError(
                f"ARCHIVE_DIR={self.root}: staging, blob, explode, replica and decompressed "
                f"must be on one file system (hard links), but {', '.join(apart)} "
                f"{'is' if len(apart) == 1 else 'are'} not on the one of "
                f"{self.relative(self.staging)}/"
            )
        self.clear_staging()

    def clear_staging(self, *, now: float | None = None) -> int:
        """Remove this node's staging leftovers and other nodes' untouched for a day.

        Another node's entries may be uploads it is receiving right now; only once nothing
        in one has changed for LEFTOVER_AGE is it a leftover of a node that died or left.
        Entries directly in staging/ (an earlier layout) count as another node's. Returns
        how many entries went.
        """
        now = time.time() if now is None else now
        own = 0
        for entry in os.scandir(self.staging):
            own += 1
            _remove_entry(entry)
        others = 0
        for top in os.scandir(self.staging_root):
            if top.name == self.node:
                continue
            entries = [top]
            if top.is_dir(follow_symlinks=False):
                try:
                    entries = list(os.scandir(top.path))
                except OSError:
                    continue
            for entry in entries:
                newest = newest_mtime(entry.path)
                if newest is not None and now - newest > LEFTOVER_AGE:
                    others += 1
                    _remove_entry(entry)
        if own or others:
            log.info(
                "cleared %d leftover entries from staging/%s/ and %d of other nodes "
                "untouched for a day",
                own,
                self.node,
                others,
            )
        return own + others

    # -- health and space --------------------------------------------------------------

    def free_bytes(self) -> tuple[int, int]:
        """Free bytes for this user and the watermark below which uploads are refused."""
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize, self.min_free.bytes_for(stat.f_blocks * stat.f_frsize)

    def free_inodes(self) -> int | None:
        """Free inodes for this user; None when the file system does not count them."""
        stat = os.statvfs(self.root)
        return stat.f_favail if stat.f_files else None

    def check_space(self, incoming: int) -> None:
        """Raise StoreFull when `incoming` more bytes would take the disk below the watermark."""
        free, watermark = self.free_bytes()
        if free - incoming < watermark:
            raise StoreFull(
                f"the store keeps {watermark} bytes free and has {free}; "
                f"{incoming} more do not fit. Try again once space is freed"
            )
        inodes = self.free_inodes()
        if inodes is not None and inodes < MIN_FREE_INODES:
            raise StoreFull(
                f"the store's file system has {inodes} free inodes (files) left and keeps "
                f"{MIN_FREE_INODES}. Try again once files are deleted"
            )

    def writable(self) -> bool:
        """True while a file can be created, written and removed in staging/."""
        try:
            fd, name = tempfile.mkstemp(dir=self.staging, prefix="health-")
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
                os.unlink(name)
        except OSError:
            return False
        return True

    def healthy(self) -> tuple[bool, str]:
        """Whether uploads can be taken now, and why not."""
        if not self.writable():
            return False, "the store is not writable"
        free, watermark = self.free_bytes()
        if free < watermark:
            return False, f"free space {free} is below the watermark {watermark}"
        inodes = self.free_inodes()
        if inodes is not None and inodes < MIN_FREE_INODES:
            return False, f"free inodes {inodes} are below the reserve {MIN_FREE_INODES}"
        return True, "ok"

    # -- names -------------------------------------------------------------------------

    def new_hasher(self) -> hashlib._Hash:
        """A fresh hash object of CHECKSUM_TYPE."""
        return hashlib.new(self.algorithm)

    def blob_path(self, digest: str) -> Path:
        """Where the blob of `digest` lives: blob/ab/cd/abcd…"""
        return self.blobs / fanned(digest)

    def tree_path(self, digest: str) -> Path:
        """Where the extracted tree of the archive with `digest` lives: explode/ab/cd/abcd…/"""
        return self.trees / fanned(digest)

    def relative(self, path: Path) -> str:
        """`path` relative to ARCHIVE_DIR, with `/` separators."""
        return path.relative_to(self.root).as_posix()

    def find(self, digest: str) -> Blob | None:
        """The stored blob of `digest` (already validated), or None."""
        path = self.blob_path(digest)
        try:
            return Blob(digest, path, path.stat().st_size)
        except FileNotFoundError:
            return None

    def note_path(self, digest: str) -> Path:
        """Where the note of what the compressed blob `digest` decompresses to lives."""
        return self.notes / fanned(digest)

    def remember_decompressed(
        self, compressed: str, decompressed: Blob, *, synced: bool = False
    ) -> None:
        """Note that the blob `compressed` decompresses to `decompressed` (see DECOMPRESSED).

        Called once `decompressed` is committed (flushed), so a note never names a blob that
        a crash could lose. Made in staging/ and renamed over whatever note is there (twins
        write the same one; a damaged one is mended). It is flushed: it is also how a tree
        remembers the compressed upload it came from, which collection keeps with the tree.
        `synced`: the blob was committed with synced=True and the caller flushes the whole
        file system before it relies on either (a tree's second flush): no flush here.
        """
        note = self.note_path(compressed)
        temp = self.staging / f"note-{uuid.uuid4().hex}"
        with disk_full_as_store_full():
            os.symlink(os.path.relpath(decompressed.path, note.parent), temp)
            try:
                for _ in range(_ATTEMPTS):
                    try:
                        os.replace(temp, note)
                        break
                    except FileNotFoundError:
                        # Missing, or removed as empty by collection just now.
                        make_folders(note.parent)
                else:
                    os.replace(temp, note)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
            if not synced:
                fsync_up(note.parent, self.notes)

    def find_decompressed(self, compressed: str) -> Blob | None:
        """The blob noted as what `compressed` decompresses to, while stored (find_flushed)."""
        note = self.note_path(compressed)
        try:
            target = os.readlink(note)
        except OSError:
            return None
        digest = os.path.basename(target)
        if (
            len(digest) != 2 * self.digest_size
            or not all(c in "0123456789abcdef" for c in digest)
            or target != os.path.relpath(self.blob_path(digest), note.parent)
        ):
            log.warning("ignoring a note that is not a blob's path: %s", self.relative(note))
            return None
        found = self.find_flushed(digest)
        if found is not None:
            # The request that wrote the note may not have flushed it yet.
            with disk_full_as_store_full(), contextlib.suppress(FileNotFoundError):
                fsync_up(note.parent, self.notes)
        return found

    # -- writing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def staged(self, *, extra: Iterable[str] = ()) -> Iterator[StagedFile]:
        """A new file in staging/; removed on exit unless commit() took it."""
        with disk_full_as_store_full():
            fd, name = tempfile.mkstemp(dir=self.staging, prefix="up-")
        staged = StagedFile(
            path=Path(name),
            fd=fd,
            hasher=self.new_hasher(),
            extra={algo: hashlib.new(algo) for algo in extra},
            check_space=self.check_space,
        )
        try:
            yield staged
        finally:
            with contextlib.suppress(Exception):
                staged.finish()
            if staged.fd >= 0:
                os.close(staged.fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged.path)

    def commit(self, staged: StagedFile, *, synced: bool = False) -> Blob:
        """Flush the staged file and link it in as its blob; dedup, never substitute content.

        Known content is not flushed (its staged copy is dropped, see _adopt); either way
        every folder down to the blob is flushed before the caller answers. `synced`: the
        caller flushed the whole file system after the staged file was whole, and flushes it
        again before it answers or relies on the blob (a tree's two flushes, TreeBuilder.link),
        so neither the file nor the folders are flushed here.
        """
        digest = staged.hexdigest()
        dest = self.blob_path(digest)
        with disk_full_as_store_full():
            # Collection may take a known blob between our look and our link: then this copy
            # becomes the blob (and a twin may link its own first); a few rounds settle it.
            for _ in range(_ATTEMPTS):
                if not dest.exists() and _link_flushed(staged, dest, synced=synced):
                    created = True
                    break
                if self._adopt(staged, dest):
                    created = False
                    break
            else:
                raise OSError(errno.EAGAIN, "the blob kept appearing and vanishing", str(dest))
            if not synced:
                self.flush_way(dest)
        return Blob(digest, dest, staged.size, created=created)

    def _adopt(self, staged: StagedFile, dest: Path) -> bool:
        """Make the staged name a link of the stored blob `dest`; False when `dest` is gone.

        The link keeps the blob from collection (which takes only blobs linked from nowhere
        else) until the staged name goes at the end of the upload; the staged copy is dropped.
        """
        with shared(dest) as fd:
            if fd is None:
                return False
            if not self.trusts_digest and not same_bytes(staged.path, dest):
                log.error(
                    "checksum collision: %s %s differs from the stored blob",
                    self.algorithm,
                    dest.name,
                )
                raise ChecksumCollision(
                    f"{self.algorithm} {dest.name} is already stored with different content; "
                    "the stored blob is kept and this upload is refused"
                )
            pin = staged.path.with_name(staged.path.name + ".pin")
            try:
                os.link(dest, pin)
            except OSError as exc:
                # A blob with all the links the file system allows is in no danger.
                if exc.errno != errno.EMLINK:
                    raise
                return True
            try:
                os.replace(pin, staged.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(pin)
                raise
        return True

    def flush_way(self, path: Path) -> None:
        """Flush every folder from `path`'s own up to its tree (blob/ab/cd, blob/ab, blob/).

        Called before answering with `path`, whether this request made it or found it:
        the request that made it may not have flushed it yet.
        """
        fsync_up(path.parent, self.root / path.relative_to(self.root).parts[0])

    def find_flushed(self, digest: str) -> Blob | None:
        """find(), for an answer that relies on the blob: its way down is flushed first."""
        blob = self.find(digest)
        if blob is not None:
            with disk_full_as_store_full():
                self.flush_way(blob.path)
        return blob

    def ingest(self, chunks: Iterable[bytes]) -> Blob:
        """Store the bytes of `chunks` as a blob (deduplicated) and return it."""
        with self.staged() as staged:
            for chunk in chunks:
                staged.write(chunk)
            return self.commit(staged)

    def place(self, source: Path, dest: Path) -> None:
        """Make `dest` (which must not exist) a hard link of the blob `source`.

        When the file system refuses another link (EMLINK), `dest` becomes a
        read-only copy instead, made in staging/ and linked in, so it appears whole.
        """
        with disk_full_as_store_full():
            try:
                os.link(source, dest)
                return
            except OSError as exc:
                if exc.errno != errno.EMLINK:
                    raise
            # A copy takes the blob's size again: past the watermark it is refused as any upload.
            self.check_space(os.stat(source).st_size)
            fd, name = tempfile.mkstemp(dir=self.staging, prefix="copy-")
            try:
                with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out, COPY_CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(name, 0o444)
                os.link(name, dest)
            finally:
                os.unlink(name)

    @contextlib.contextmanager
    def staging_dir(self, prefix: str = "tree-") -> Iterator[Path]:
        """A private directory in staging/ to build a tree in; removed on exit if still there."""
        with disk_full_as_store_full():
            path = Path(tempfile.mkdtemp(dir=self.staging, prefix=prefix))
        try:
            yield path
        finally:
            if path.exists():
                remove_quietly(path)


def _remove_entry(entry: os.DirEntry[str]) -> None:
    """Remove one staging entry, a file or a whole tree; gone already is fine."""
    if entry.is_dir(follow_symlinks=False):
        remove_quietly(entry.path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)


def _link_flushed(staged: StagedFile, dest: Path, *, synced: bool = False) -> bool:
    """Flush `staged` (unless `synced`: flushed already), then link it as `dest`, making its
    fan-out folders when missing.

    False when `dest` is there already (a twin upload linked the same content first).
    """
    if staged.fd >= 0:
        if not synced:
            os.fsync(staged.fd)
        os.close(staged.fd)
        staged.fd = -1
        os.chmod(staged.path, 0o444)
    try:
        link_making_folders(staged.path, dest)
    except FileExistsError:
        return False
    return True


def link_making_folders(source: str | Path, dest: str | Path) -> None:
    """os.link, making `dest`'s fan-out folders when missing.

    Collection removes fan-out folders it leaves empty, possibly between our mkdir and our
    link; a few rounds settle it.
    """
    for _ in range(_ATTEMPTS):
        try:
            os.link(source, dest)
            return
        except FileNotFoundError:
            if not os.path.lexists(source):
                raise
            _make_fanout(os.path.dirname(dest))
    os.link(source, dest)


def _make_fanout(path: str) -> None:
    """make_folders for a blob's fan-out folder, in one call when its parent exists.

    os.makedirs asks first whether the path exists, a second system call for every new
    folder (an extraction makes thousands); a racing twin (another upload) is no error.
    """
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        make_folders(path)


def make_folders(path: str | Path) -> None:
    """mkdir -p, also when collection removes a parent it left empty between two mkdirs."""
    for _ in range(_ATTEMPTS):
        try:
            os.makedirs(path, exist_ok=True)
            return
        except FileNotFoundError:
            continue
    os.makedirs(path, exist_ok=True)
