"""Replicas: an upload filed again under the names its request headers chose (REPLICATE_0..9).

A template such as `user/${Username}/${Topic}` becomes the folder `replica/user/bob/demo/`.
In it a file upload `results.xml` becomes `results.<YYYYmmdd.HHMM>.<n>.xml`, a hard link of
its blob; an archive `results.tgz` becomes `results.<stamp>.<n>`, a relative symlink to its
tree under `explode/`. `<n>` is claimed with a create-exclusive link, so concurrent uploads
never share a name. `results.latest.xml` (`results.latest` for trees) is a relative symlink to
the newest one, swapped in with a rename so that readers never find it missing or dangling.

A compressed file that is not an archive (`data.json.gz`) is replicated as uploaded, under
its own name; its decompressed blob is only in the response. Folders are walked without
following symlinks, and every claim and `latest` swap in one folder happens under an
exclusive lock on that folder, so `latest` follows the order in which names were claimed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from bucketdav.errors import StoreFull
from bucketdav.store.blobs import Store
from bucketdav.store.entries import Series, stamp_of
from bucketdav.store.files import FULL_ERRNOS
from bucketdav.uploads.naming import ARCHIVE_SUFFIXES, split_suffix
from bucketdav.uploads.outcome import Outcome
from bucketdav.uploads.templates import Template, TemplateSkipped, render_template

log = logging.getLogger(__name__)

# A tree's replica is named without these: `results.tar.gz` and `results.gz` give `results`.
TREE_SUFFIXES = frozenset(ARCHIVE_SUFFIXES) | {".gz", ".bz2", ".xz"}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ReplicaRefused(Exception):
    """This replica cannot be made; the message says why (the upload itself stands)."""


def series_for(filename: str, *, tree: bool) -> Series:
    """The series of an upload named `filename`: trees lose their archive suffix entirely."""
    stem, ext = split_suffix(filename)
    if tree:
        return Series(stem if ext.lower() in TREE_SUFFIXES else filename, "")
    return Series(stem, ext)


def replicate(
    store: Store,
    templates: Sequence[Template],
    headers: Mapping[str, str],
    outcome: Outcome,
    *,
    now: Callable[[], datetime] | None = None,
) -> None:
    """Make the replicas of `outcome` that `templates` ask for; fill `replicas` and `skipped`.

    `headers` are keyed by lower-case name. A template with a missing header, or a header
    value that cannot be a name, is skipped with a message; only a full disk raises. This
    is the upload's last step: what it held from collection is let go at the end.
    """
    with outcome.holds:
        _replicate(store, templates, headers, outcome, now=now)


def _replicate(
    store: Store,
    templates: Sequence[Template],
    headers: Mapping[str, str],
    outcome: Outcome,
    *,
    now: Callable[[], datetime] | None,
) -> None:
    if not templates:
        return
    clock = now or _utcnow
    tree = outcome.archive is not None
    series = series_for(outcome.filename, tree=tree)
    for template in templates:
        label = f"{template.variable} {template.text}"
        try:
            segments = render_template(template, headers)
            made, note = make_replica(
                store, segments, target=outcome.final, tree=tree, series=series, clock=clock
            )
        except (TemplateSkipped, ReplicaRefused) as exc:
            outcome.skipped.append(f"{label}: {exc}")
            log.info("replica skipped: %s: %s", label, exc)
            continue
        outcome.replicas.append(made)
        if tree:
            # A collection whose walk of replica/ passed this folder before the link was
            # made must see the tree as used since (store/collect.py).
            outcome.holds.touch(outcome.final)
        if note:
            outcome.skipped.append(f"{label}: {note}")


def make_replica(
    store: Store,
    segments: Sequence[str],
    *,
    target: Path,
    tree: bool,
    series: Series,
    clock: Callable[[], datetime],
) -> tuple[Path, str | None]:
    """Claim the next name of `series` in `replica/<segments>/` for `target`, update latest.

    Returns the replica made and a note when `latest` had to be left alone. The time is read
    under the folder's lock, so names are claimed, and `latest` moves, in time order.
    """
    folder = replica_folder(store, segments)
    if tree and not _below(store.trees, target):
        raise ReplicaRefused(f"{store.relative(target)} is not a tree under explode/")
    shown = store.relative(folder)
    try:
        with _open_folder(store.replicas, segments) as fd, _locked(fd):
            stamp = stamp_of(clock())
            name = _claim(store, fd, folder, target=target, tree=tree, series=series, stamp=stamp)
            note = _point_latest(fd, series, name, staging=store.staging)
            os.fsync(fd)
    except (OSError, StoreFull) as exc:
        if isinstance(exc, StoreFull) or exc.errno in FULL_ERRNOS:
            raise StoreFull(
                f"the store's disk is full: the replica in {shown}/ could not be made "
                "(the content itself is stored); retry once space is freed"
            ) from exc
        log.warning("replica in %s/ failed: %s", shown, exc)
        raise ReplicaRefused(f"{shown}/ cannot hold a replica: {exc.strerror or exc}") from None
    return folder / name, note


def replica_folder(store: Store, segments: Sequence[str]) -> Path:
    """`replica/<segments>`, after checking each is one segment and the whole stays inside."""
    for segment in segments:
        if (
            not segment
            or segment in (".", "..")
            or segment.startswith(".")
            or any(c in segment for c in "/\\\0")
        ):
            raise ReplicaRefused(f"{segment!r} is not a single safe name")
    folder = store.replicas.joinpath(*segments)
    if not segments or not _below(os.path.realpath(store.replicas), os.path.realpath(folder)):
        raise ReplicaRefused(f"{'/'.join(segments)} does not stay inside replica/")
    return folder


def _below(base: str | Path, path: str | Path) -> bool:
    """True when `path` is strictly inside `base`, comparing normalised paths."""
    return os.path.normpath(path).startswith(os.path.normpath(base) + os.sep)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@contextlib.contextmanager
def _open_folder(replicas: Path, segments: Sequence[str]) -> Iterator[int]:
    """An fd of `replica/<segments>`, made as needed; never follows a symlink on the way."""
    fd = os.open(replicas, _DIR_FLAGS)
    try:
        for segment in segments:
            with contextlib.suppress(FileExistsError):
                os.mkdir(segment, 0o755, dir_fd=fd)
            # Flushed also when found: the upload that made it may not have flushed it yet,
            # and this answer relies on it as much as that one.
            os.fsync(fd)
            try:
                child = os.open(segment, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                # ELOOP: a symlink (a tree replica) holds this name; ENOTDIR: a file does.
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ReplicaRefused(f"{segment} is a replica, not a folder") from None
                raise
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    """Hold an exclusive lock on the folder: claims and latest swaps in it take turns."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _claim(
    store: Store, fd: int, folder: Path, *, target: Path, tree: bool, series: Series, stamp: str
) -> str:
    """Create the first free `series` name for `stamp`, exclusively; return the name."""
    index = _next_index(fd, series, stamp)
    link_to = os.path.relpath(target, folder) if tree else None
    while True:
        name = series.stamped(stamp, index)
        try:
            if link_to is not None:
                os.symlink(link_to, name, dir_fd=fd)
            else:
                store.place(target, folder / name)
            return name
        except FileExistsError:
            index += 1


def _next_index(fd: int, series: Series, stamp: str) -> int:
    """Where to start looking: one past what latest points at in this minute, else 0."""
    try:
        current = series.parse(os.readlink(series.latest, dir_fd=fd))
    except OSError:
        return 0
    return current[1] + 1 if current and current[0] == stamp else 0


def _point_latest(fd: int, series: Series, name: str, *, staging: Path) -> str | None:
    """Point `series.latest` at `name` with one rename; a note when the name is not ours.

    The new link is made in staging/ and renamed over the old one, so a crash between the
    two steps leaves nothing in the replica folder (staging/ is emptied at start-up).
    """
    try:
        current: str | None = os.readlink(series.latest, dir_fd=fd)
    except FileNotFoundError:
        current = None
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return f"{series.latest} is not a latest link; left alone"
    if current is not None and series.parse(current) is None:
        return f"{series.latest} points elsewhere ({current}); left alone"
    temp = staging / f"latest-{uuid.uuid4().hex}"
    os.symlink(name, temp)
    try:
        os.replace(temp, series.latest, dst_dir_fd=fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return None
