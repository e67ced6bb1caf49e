"""Compressed uploads become a decompressed blob, tar and zip uploads a browsable tree."""

from __future__ import annotations

import bz2
import contextlib
import errno
import logging
import lzma
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from isal import igzip

from bucketdav.errors import UnknownContent, UnsafeArchive
from bucketdav.store.blobs import Blob, Store, make_folders
from bucketdav.store.files import disk_full_as_store_full, fsync_up
from bucketdav.store.holds import Holds, open_shared
from bucketdav.uploads.archives.members import refuse
from bucketdav.uploads.archives.readers import Member, malformed, tar_members, zip_members
from bucketdav.uploads.archives.tree import TreeBuilder
from bucketdav.uploads.outcome import Outcome, Tree

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20
HEAD_SIZE = 512
COMPRESSED = ("gzip", "bzip2", "xz")
ARCHIVES = ("tar", "zip")
_ATTEMPTS = 8
_TOO_BIG = "expands to more than BUCKETDAV_EXTRACT_MAX_BYTES ({} bytes)"
_OPENERS: dict[str, Callable[[BinaryIO], IO[bytes]]] = {
    # ISA-L's gzip: a third of zlib's CPU time, all of it outside the interpreter lock, so the
    # thread parsing the tar keeps the lock; read() returns at most what it is asked for.
    "gzip": lambda raw: igzip.GzipFile(fileobj=raw, mode="rb"),
    "bzip2": bz2.BZ2File,
    "xz": lzma.LZMAFile,
}


def classify(head: bytes) -> str | None:
    """What the first 512 bytes of a file say it is: gzip, bzip2, xz, tar, zip, or None."""
    if head.startswith(b"\x1f\x8b\x08"):
        return "gzip"
    if (
        head.startswith(b"BZh")
        and head[3:4] in b"123456789"
        and head[4:10] in (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")
    ):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    # POSIX ustar ("ustar\0") and GNU ("ustar  \0") headers; every current tar writes one.
    if len(head) >= 263 and head[257:262] == b"ustar":
        return "tar"
    return None


def kind_of(path: Path) -> str | None:
    """classify() applied to the file at `path`."""
    with open(path, "rb") as handle:
        return classify(handle.read(HEAD_SIZE))


def unpack(store: Store, outcome: Outcome, *, max_bytes: int, max_files: int) -> None:
    """Fill `outcome.decompressed` and `outcome.archive` from the upload's blob, as it allows.

    Raises UnsafeArchive (naming the member) when the content cannot be unpacked safely
    or within the bounds; the upload's blob is kept, and no partial tree is left.
    """
    source = outcome.blob
    holds = outcome.holds
    try:
        # Held until the upload is done, so collection leaves it alone (store/holds.py); it
        # may be gone already when deployed by checksum.
        if not holds.blob(source.path):
            raise UnknownContent(
                f"no content with {store.algorithm} {source.digest} (removed just now); "
                "send the bytes"
            )
        _unpack(store, outcome, holds, max_bytes=max_bytes, max_files=max_files)
    except BaseException:
        # The steps after this one (replicate) let go when they end; these never come now.
        holds.release()
        raise


def _unpack(
    store: Store, outcome: Outcome, holds: Holds, *, max_bytes: int, max_files: int
) -> None:
    name = outcome.filename
    source = outcome.blob
    kind = kind_of(source.path)
    if kind in COMPRESSED:
        # Known content was decompressed before: its note names the decompressed blob, and
        # through that the tree, so neither is made again.
        known = None if source.created else store.find_decompressed(source.digest)
        if known is not None and not holds.blob(known.path):
            known = None  # collected just now: decompressed again
        if known is not None and known.size > max_bytes:
            raise refuse(name, _TOO_BIG.format(max_bytes), what="compressed file")
        outcome.decompressed = known
        if known is None:
            with Inflation(store, source, kind, max_bytes=max_bytes, name=name) as inflation:
                if source.created and inflation.kind() == "tar":
                    # New content: its tar is extracted while it is being decompressed. (Known
                    # content may have its tree already, which only the tar's digest can tell.)
                    outcome.archive = _extract_inflating(
                        inflation, outcome, max_bytes=max_bytes, max_files=max_files
                    )
                    return
                outcome.decompressed = inflation.commit(holds)
        source = outcome.decompressed
        kind = kind_of(source.path)
    if kind in ARCHIVES:
        outcome.archive = extract(
            store, source, kind, max_bytes=max_bytes, max_files=max_files, name=name, holds=holds
        )


class Inflation:
    """Decompresses a blob into staging/ in a thread of its own; readers may follow behind.

    Used as a context manager: entering starts the thread, leaving stops it and removes
    the staged file unless commit() made it a blob.
    """

    def __init__(self, store: Store, blob: Blob, kind: str, *, max_bytes: int, name: str) -> None:
        self.store = store
        self.blob = blob
        self.opener = _OPENERS[kind]
        self.max_bytes = max_bytes
        self.name = name
        self.progress = threading.Condition()
        self.size = 0
        self.done = False
        self.stopping = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="inflate", daemon=True)
        self.exits = contextlib.ExitStack()

    def __enter__(self) -> Inflation:
        self.staged = self.exits.enter_context(self.store.staged())
        self.staged.on_written = self._written
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping = True
        self.thread.join()
        self.exits.close()

    @property
    def path(self) -> Path:
        """The staged file the decompressed bytes go to."""
        return self.staged.path

    def _run(self) -> None:
        try:
            with open(self.blob.path, "rb") as raw:
                with malformed(self.name, what="compressed file"):
                    stream = self.opener(raw)
                with stream:
                    while not self.stopping:
                        with malformed(self.name, what="compressed file"):
                            data = stream.read(READ_SIZE)
                        if not data:
                            break
                        if self.staged.size + len(data) > self.max_bytes:
                            raise refuse(
                                self.name, _TOO_BIG.format(self.max_bytes), what="compressed file"
                            )
                        self.staged.write(data)
            self.staged.finish()
        except BaseException as exc:  # handed to the thread that commits
            self.error = exc
        finally:
            with self.progress:
                self.done = True
                self.progress.notify_all()

    def _written(self, size: int) -> None:
        with self.progress:
            self.size = size
            self.progress.notify_all()

    def follow(self, end: int) -> None:
        """Return once the staged file holds `end` bytes, or will not grow any more."""
        if self.size >= end:
            return  # it only grows: no need for the lock
        with self.progress:
            while self.size < end and not self.done:
                self.progress.wait()

    def kind(self) -> str | None:
        """classify() of the decompressed bytes, as soon as the first of them are written."""
        self.follow(HEAD_SIZE)
        with open(self.path, "rb") as handle:
            return classify(handle.read(HEAD_SIZE))

    def wait(self) -> None:
        """Wait for the whole file; raise what stopped the decompression, if anything did."""
        self.thread.join()
        if self.error is not None:
            raise self.error

    def commit(self, holds: Holds, *, synced: bool = False) -> Blob:
        """The decompressed blob, once it is whole; noted as what the compressed blob gives.

        Held in `holds` for the rest of the upload: the staged name that keeps it from
        collection goes when the decompression ends. `synced`: the caller flushed the file
        system since the file was whole and flushes it again before answering (Store.commit).
        """
        self.wait()
        decompressed = self.store.commit(self.staged, synced=synced)
        if not holds.blob(decompressed.path):
            raise OSError(errno.ENOENT, "a blob vanished while linked", str(decompressed.path))
        self.store.remember_decompressed(self.blob.digest, decompressed, synced=synced)
        return decompressed


def _extract_inflating(
    inflation: Inflation, outcome: Outcome, *, max_bytes: int, max_files: int
) -> Tree:
    """Extract the tar that `inflation` is writing, following it; commits it as a blob too.

    A refusal waits for the decompression to end, as if it had come first: a fault of the
    compressed file is named before one of the tar, and a tar refused by its members is
    still kept as the decompressed blob.
    """
    members = tar_members(inflation.path, inflation.name, follow=inflation.follow)

    def finish() -> Blob:
        # Between the tree's two flushes, which cover the tar's bytes and its names.
        outcome.decompressed = inflation.commit(outcome.holds, synced=True)
        return outcome.decompressed

    try:
        return _extract(
            inflation.store,
            members,
            finish,
            ready=inflation.wait,
            max_bytes=max_bytes,
            max_files=max_files,
            holds=outcome.holds,
        )
    except UnsafeArchive:
        if outcome.decompressed is None:
            outcome.decompressed = inflation.commit(outcome.holds)
        raise


def extract(
    store: Store,
    blob: Blob,
    kind: str,
    *,
    max_bytes: int,
    max_files: int,
    name: str,
    holds: Holds | None = None,
) -> Tree:
    """The tree of the tar or zip `blob`: an existing one, or one built now and renamed in.

    Either is held in `holds` (store/holds.py); a tree collected just now is built again.
    """
    holds = holds if holds is not None else Holds()
    final = store.tree_path(blob.digest)
    if final.is_dir() and holds.tree(final):
        # The upload that published it may not have flushed its way down yet.
        with disk_full_as_store_full():
            store.flush_way(final)
        return Tree(blob.digest, final, count_files(final), created=False)
    members: Iterator[Member] = (
        tar_members(blob.path, name)
        if kind == "tar"
        else zip_members(blob.path, name, max_files=max_files)
    )
    return _extract(
        store, members, lambda: blob, max_bytes=max_bytes, max_files=max_files, holds=holds
    )


def _extract(
    store: Store,
    members: Iterator[Member],
    finish: Callable[[], Blob],
    *,
    ready: Callable[[], None] = lambda: None,
    max_bytes: int,
    max_files: int,
    holds: Holds,
) -> Tree:
    """Build the tree of `members` in staging/ and rename it in under the archive's digest.

    `ready()` returns once the archive's own file is whole (it may still be being written
    when the last member is read); `finish()` gives the archive's blob, between the tree's
    two flushes (TreeBuilder.link).
    """
    with store.staging_dir() as root:
        # Any digest of the store's algorithm names a path of the same length.
        longest = store.tree_path("0" * 2 * store.digest_size)
        builder = TreeBuilder(store, root, max_bytes=max_bytes, max_files=max_files, final=longest)
        builder.build(members)
        ready()
        blob = builder.link(finish)
        final = store.tree_path(blob.digest)
        created = publish(root, final, holds=holds)
    if not created:
        log.info(
            "archive %s=%s was extracted meanwhile; using that tree", store.algorithm, blob.digest
        )
        return Tree(blob.digest, final, count_files(final), created=False)
    return Tree(blob.digest, final, builder.files, created=True)


def publish(root: Path, final: Path, *, holds: Holds | None = None) -> bool:
    """Rename the finished tree into place; False when the same tree got there first.

    Either way the answer names `final`: its entry and those of its fan-out folders are
    flushed, up to explode/, also when the upload that won has not flushed them yet; and
    it is held in `holds`, from before it appears, so collection never takes it meanwhile.
    """
    holds = holds if holds is not None else Holds()
    with disk_full_as_store_full():
        ours = open_shared(root, directory=True)
        if ours is None:
            raise OSError(errno.ENOENT, "the tree being built vanished", str(root))
        try:
            created = _rename_in(root, final, holds)
        except BaseException:
            os.close(ours)
            raise
        if created:
            holds.adopt(final, ours)
        else:
            os.close(ours)
        fsync_up(final.parent, final.parents[2])
    return created


def _rename_in(root: Path, final: Path, holds: Holds) -> bool:
    """Rename `root` to `final`, or hold the tree already there; True when ours went in.

    Collection may remove the fan-out folders (left empty) or the tree that won, between
    our steps; each round that fails did so because it acted.
    """
    for _ in range(_ATTEMPTS):
        make_folders(final.parent)
        try:
            os.rename(root, final)
            return True
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        if holds.tree(final):
            return False
    raise OSError(errno.EAGAIN, "the tree kept appearing and vanishing", str(final))


def count_files(tree: Path) -> int:
    """How many regular files an extracted tree holds, without following symlinks."""
    count = 0
    pending = [tree]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    count += 1
    return count
