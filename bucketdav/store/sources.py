"""`bucketdav check`: how trees remember their sources, and the collector's private folder.

A tree's name is the checksum of its archive's blob, which must be stored while the tree
is. A compressed upload is remembered by its note, decompressed/ab/cd/<sum>: a relative
link to the blob it decompresses to; both ends must be stored, and a full check
decompresses each noted blob to confirm it. Collection removes a tree before its sources,
and a note before its blob, and the checks below look twice before reporting what a
collection running meanwhile is taking apart.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from bucketdav.store.blobs import Store
from bucketdav.store.collect import CANDIDATES, GC_DIR
from bucketdav.store.findings import Report
from bucketdav.store.references import decompressed_digest, is_digest, note_target

# A full check decompresses each noted blob up to this many bytes (the largest allowed).
MAX_DECOMPRESSED = 1 << 40


def check_sources(store: Store, report: Report, *, full: bool, repair: bool) -> None:
    """Report trees without their archive's blob and notes that are wrong; mend the notes."""
    length = 2 * store.digest_size
    for digest, path in _fanned(str(store.trees), length):
        report.scanned["trees' sources"] += 1
        blob = store.blob_path(digest)
        if not blob.exists() and os.path.lexists(path):
            report.problem(
                "source", store.relative(path), f"its archive's blob {store.relative(blob)} is gone"
            )
    for digest, path in _fanned(str(store.notes), length):
        report.scanned["notes"] += 1
        problem = _note_problem(store, digest, path, full=full)
        if problem is None or not os.path.lexists(path):
            continue
        report.problem("source", store.relative(path), problem)
        if repair:
            # A note is a hint: without it an upload decompresses once more and writes it.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            report.fixed("source", f"removed note {store.relative(path)}")
    _candidates(store, report)


def _note_problem(store: Store, digest: str, path: Path, *, full: bool) -> str | None:
    target = note_target(store, str(path))
    if target is None:
        return "not a link to a blob (../../../blob/ab/cd/<sum>)"
    if not store.blob_path(digest).is_file():
        return f"its compressed blob {digest} is gone"
    if not store.blob_path(target).is_file():
        return f"its decompressed blob {target} is gone"
    if full:
        real = decompressed_digest(store.blob_path(digest), store.algorithm, MAX_DECOMPRESSED)
        if real != target:
            return f"the blob decompresses to {real or 'nothing readable'}, not {target}"
    return None


def _candidates(store: Store, report: Report) -> None:
    folder = store.root / GC_DIR / CANDIDATES
    try:
        left = len(os.listdir(folder))
    except OSError:
        return
    if left:
        report.notes.append(
            f"{left} entries in {GC_DIR}/{CANDIDATES}/: taken by a collection that was "
            "interrupted or is running; the next collection deletes them"
        )


def _fanned(top: str, length: int) -> list[tuple[str, Path]]:
    """(digest, path) of each well-named entry at top/ab/cd/<digest>."""
    found = []
    for first in _names(top):
        for second in _names(os.path.join(top, first)):
            for name in _names(os.path.join(top, first, second)):
                if is_digest(name, length) and (name[:2], name[2:4]) == (first, second):
                    found.append((name, Path(top, first, second, name)))
    return found


def _names(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []
