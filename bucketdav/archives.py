"""Compressed uploads become a decompressed blob, tar and zip uploads a browsable tree."""

from __future__ import annotations

import bz2
import errno
import gzip
import logging
import lzma
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO

from bucketdav.archive_members import refuse
from bucketdav.archive_readers import Member, malformed, tar_members, zip_members
from bucketdav.archive_tree import TreeBuilder
from bucketdav.store import Blob, Store, disk_full_as_store_full, fsync_dir

if TYPE_CHECKING:
    from bucketdav.uploads import Outcome, Tree

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20
HEAD_SIZE = 512
COMPRESSED = ("gzip", "bzip2", "xz")
ARCHIVES = ("tar", "zip")
_OPENERS: dict[str, Callable[[BinaryIO], IO[bytes]]] = {
    "gzip": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
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
    name = outcome.filename
    source = outcome.blob
    kind = kind_of(source.path)
    if kind in COMPRESSED:
        outcome.decompressed = decompress(store, source, kind, max_bytes=max_bytes, name=name)
        source = outcome.decompressed
        kind = kind_of(source.path)
    if kind in ARCHIVES:
        outcome.archive = extract(
            store, source, kind, max_bytes=max_bytes, max_files=max_files, name=name
        )


def decompress(store: Store, blob: Blob, kind: str, *, max_bytes: int, name: str) -> Blob:
    """Decompress the gzip, bzip2 or xz `blob` into a blob of its own, refusing past `max_bytes`."""
    with open(blob.path, "rb") as raw, store.staged() as staged:
        with malformed(name, what="compressed file"):
            stream = _OPENERS[kind](raw)
        with stream:
            while True:
                with malformed(name, what="compressed file"):
                    data = stream.read(READ_SIZE)
                if not data:
                    break
                if staged.size + len(data) > max_bytes:
                    raise refuse(
                        name,
                        f"expands to more than BUCKETDAV_EXTRACT_MAX_BYTES ({max_bytes} bytes)",
                        what="compressed file",
                    )
                staged.write(data)
        return store.commit(staged)


def extract(
    store: Store, blob: Blob, kind: str, *, max_bytes: int, max_files: int, name: str
) -> Tree:
    """The tree of the tar or zip `blob`: an existing one, or one built now and renamed in."""
    from bucketdav.uploads import Tree

    final = store.tree_path(blob.digest)
    if final.is_dir():
        return Tree(blob.digest, final, count_files(final), created=False)
    members: Callable[[Path, str], Iterator[Member]] = tar_members if kind == "tar" else zip_members
    with store.staging_dir() as root:
        builder = TreeBuilder(store, root, max_bytes=max_bytes, max_files=max_files, final=final)
        builder.build(members(blob.path, name))
        created = publish(root, final)
    if not created:
        log.info(
            "archive %s=%s was extracted meanwhile; using that tree", store.algorithm, blob.digest
        )
        return Tree(blob.digest, final, count_files(final), created=False)
    return Tree(blob.digest, final, builder.files, created=True)


def publish(root: Path, final: Path) -> bool:
    """Rename the finished tree into place; False when the same tree got there first."""
    with disk_full_as_store_full():
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(root, final)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            raise
        for directory in (final.parent, final.parent.parent, final.parent.parent.parent):
            fsync_dir(directory)
    return True


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
