"""The content-addressed store on disk: staging, blobs, and placing links of blobs."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bucketdav.errors import ChecksumCollision, StoreFull
from bucketdav.settings import FreeSpace

log = logging.getLogger(__name__)

PUBLIC_TREES = ("blob", "explode", "replica")
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
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_TREE_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Inodes an upload may need (staging file, fan-out folders, replica names); with fewer free,
# uploads are refused and /healthz fails, as below the byte watermark.
MIN_FREE_INODES = 32
_COMPARE_CHUNK = 1 << 20
_SPACE_CHECK_EVERY = 16 << 20
# Chunks at least this large are hashed in a thread of their own, overlapping the next read.
_PIPE_MIN_CHUNK = 256 << 10
_PIPE_DEPTH = 4
# Start writing back every this many bytes, so the final fsync has little left to do.
_WRITEBACK_EVERY = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)


class StoreError(Exception):
    """The store cannot be used as configured (start-up)."""


@contextlib.contextmanager
def disk_full_as_store_full() -> Iterator[None]:
    """Turn ENOSPC/EDQUOT from any file operation into StoreFull."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL_ERRNOS:
            raise StoreFull("the store's disk is full; nothing of this upload was kept") from exc
        raise


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a link or rename in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Blob:
    """A stored content: its digest, where it is, its size, and whether this call stored it."""

    digest: str
    path: Path
    size: int
    created: bool = False


class _Pipe:
    """Runs `work` on each chunk in a thread of its own, in order; keeps the first error.

    hashlib and os.write release the GIL, so hashing, writing and reading the next chunk
    proceed at once. After an error the thread keeps taking chunks (dropping them), so the
    feeding side never blocks; it sees the error at its next feed or at finish.
    """

    def __init__(self, work: Callable[[bytes], None], name: str) -> None:
        self.work = work
        self.error: BaseException | None = None
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=_PIPE_DEPTH)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (chunk := self.chunks.get()) is not None:
            if self.error is None:
                try:
                    self.work(chunk)
                except BaseException as exc:  # handed to the feeding thread
                    self.error = exc

    def feed(self, chunk: bytes) -> None:
        self.raise_error()
        self.chunks.put(chunk)

    def finish(self) -> None:
        if self.thread.is_alive():
            self.chunks.put(None)
            self.thread.join()
        self.raise_error()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


@dataclass
class StagedFile:
    """A file being written in staging/, hashed in the same pass as it is written.

    Small chunks are hashed and written at once; from the first large chunk on, hashing and
    writing each run in a thread of their own while the caller reads the next chunk.
    """

    path: Path
    fd: int
    hasher: hashlib._Hash
    extra: dict[str, hashlib._Hash] = field(default_factory=dict)
    size: int = 0
    space_check: int = _SPACE_CHECK_EVERY
    written: int = 0
    written_back: int = 0
    store: Store | None = None
    pipes: tuple[_Pipe, ...] = ()
    # Told the size on disk after every write, so a reader can follow the file as it grows.
    on_written: Callable[[int], None] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append `data`, hashing it as it goes (in a second thread for large chunks)."""
        data = bytes(data) if not isinstance(data, bytes) else data
        if not self.pipes and len(data) >= _PIPE_MIN_CHUNK:
            self.pipes = (_Pipe(self._hash, "hash"), _Pipe(self._write, "write"))
        if self.pipes:
            for pipe in self.pipes:
                pipe.feed(data)
        else:
            self._hash(data)
            self._write(data)
        self.size += len(data)
        if self.store is not None and self.size >= self.space_check:
            self.space_check = self.size + _SPACE_CHECK_EVERY
            self.store.check_space(0)

    def _hash(self, data: bytes) -> None:
        self.hasher.update(data)
        for extra in self.extra.values():
            extra.update(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        with disk_full_as_store_full():
            while view:
                view = view[os.write(self.fd, view) :]
        self.written += len(data)
        if self.written - self.written_back >= _WRITEBACK_EVERY and _sync_file_range is not None:
            _sync_file_range(
                self.fd,
                self.written_back,
                self.written - self.written_back,
                _SYNC_FILE_RANGE_WRITE,
            )
            self.written_back = self.written
        if self.on_written is not None:
            self.on_written(self.written)

    def finish(self) -> None:
        """Wait until every chunk given so far is hashed and written; raise what failed."""
        for pipe in self.pipes:
            pipe.finish()

    def hexdigest(self) -> str:
        """The digest of everything written so far."""
        self.finish()
        return self.hasher.hexdigest()

    def extra_hexdigest(self, algorithm: str) -> str:
        """The digest in one of the extra algorithms asked for."""
        self.finish()
        return self.extra[algorithm].hexdigest()


class Store:
    """The store below one ARCHIVE_DIR: every write goes to staging/ first, then is linked in."""

    def __init__(self, root: Path, algorithm: str, *, min_free: FreeSpace | None = None) -> None:
        self.root = Path(os.path.abspath(root))
        self.algorithm = algorithm
        self.digest_size = hashlib.new(algorithm).digest_size
        self.min_free = min_free or FreeSpace()
        self.staging = self.root / "staging"
        self.blobs = self.root / "blob"
        self.trees = self.root / "explode"
        self.replicas = self.root / "replica"
        self.trusts_digest = algorithm in STRONG_ALGORITHMS

    # -- start-up ----------------------------------------------------------------------

    def open(self) -> None:
        """Create the layout, empty staging/, and check the store is one writable file system."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for path in (self.staging, self.blobs, self.trees, self.replicas):
                path.mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreError(f"ARCHIVE_DIR={self.root}: cannot create the store: {exc}") from None
        if not os.access(self.root, os.W_OK | os.X_OK) or not self.writable():
            raise StoreError(f"ARCHIVE_DIR={self.root}: not writable by this user")
        devices = {
            p.name: p.stat().st_dev for p in (self.staging, self.blobs, self.trees, self.replicas)
        }
        if len(set(devices.values())) > 1:
            raise StoreError(
                f"ARCHIVE_DIR={self.root}: staging, blob, explode and replica must be on one "
                f"file system (hard links), but are on {len(set(devices.values()))}"
            )
        self.clear_staging()

    def clear_staging(self) -> int:
        """Remove whatever an earlier run left in staging/; returns how many entries went."""
        count = 0
        for entry in os.scandir(self.staging):
            count += 1
            if entry.is_dir(follow_symlinks=False):
                _remove_quietly(entry.path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        if count:
            log.info("cleared %d leftover entries from staging/", count)
        return count

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
        return self.blobs / digest[:2] / digest[2:4] / digest

    def tree_path(self, digest: str) -> Path:
        """Where the extracted tree of the archive with `digest` lives: explode/ab/cd/abcd…/"""
        return self.trees / digest[:2] / digest[2:4] / digest

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
            store=self,
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

    def commit(self, staged: StagedFile) -> Blob:
        """Flush the staged file and link it in as its blob; dedup, never substitute content."""
        digest = staged.hexdigest()
        dest = self.blob_path(digest)
        with disk_full_as_store_full():
            os.fsync(staged.fd)
            os.close(staged.fd)
            staged.fd = -1
            os.chmod(staged.path, 0o444)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(staged.path, dest)
            except FileExistsError:
                if not self.trusts_digest and not same_bytes(staged.path, dest):
                    log.error(
                        "checksum collision: %s %s differs from the stored blob",
                        self.algorithm,
                        digest,
                    )
                    raise ChecksumCollision(
                        f"{self.algorithm} {digest} is already stored with different content; "
                        "the stored blob is kept and this upload is refused"
                    ) from None
                return Blob(digest, dest, staged.size, created=False)
            fsync_dir(dest.parent)
            fsync_dir(dest.parent.parent)
        return Blob(digest, dest, staged.size, created=True)

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
            fd, name = tempfile.mkstemp(dir=self.staging, prefix="copy-")
            try:
                with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out, _COMPARE_CHUNK)
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
                _remove_quietly(path)


def same_bytes(a: Path, b: Path) -> bool:
    """True when the two files hold the same bytes."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        if os.fstat(fa.fileno()).st_size != os.fstat(fb.fileno()).st_size:
            return False
        while True:
            ca, cb = fa.read(_COMPARE_CHUNK), fb.read(_COMPARE_CHUNK)
            if ca != cb:
                return False
            if not ca:
                return True


def _remove_quietly(path: str | Path) -> None:
    """remove_tree, logging instead of raising: a clean-up must not hide the real outcome."""
    try:
        remove_tree(path)
    except OSError as exc:
        log.warning("could not remove %s from staging/: %s", path, exc)


def remove_tree(path: str | Path) -> None:
    """Remove a directory tree of any depth, making read-only folders writable on the way.

    An archive may be thousands of folders deep: shutil.rmtree and os.walk recurse (Python
    3.11) and full paths can pass PATH_MAX, so this walks with one open folder and names.
    """
    try:
        fd = os.open(path, _TREE_FLAGS)
    except FileNotFoundError:
        return
    names: list[str] = []  # the folders from `path` down to `fd`
    pending: list[list[str]] = []  # per level: subfolders still to remove
    try:
        while True:
            with contextlib.suppress(OSError):
                os.fchmod(fd, 0o755)
            subfolders = []
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        subfolders.append(entry.name)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.name, dir_fd=fd)
            pending.append(subfolders)
            while not pending[-1]:
                pending.pop()
                if not names:
                    break
                parent = os.open("..", _TREE_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = parent
                os.rmdir(names.pop(), dir_fd=fd)
            if not pending:
                break
            child = pending[-1].pop()
            descend = os.open(child, _TREE_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = descend
            names.append(child)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)
