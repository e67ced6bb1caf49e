"""One retention and collection run: under the store's lock, in batches, safe at every step.

The run holds an exclusive flock on gc/lock (a private folder of the store, never served),
so one collector works at a time on a store, from any process or node. It first finishes
what an interrupted run left in gc/candidates/, then removes the replica entries no
retention rule keeps (store/expire.py), then walks the store once (store/references.py)
and removes what has been unreferenced long enough. Each blob or tree goes in three steps:
under an exclusive flock on it, its facts are checked again (nothing links it, nothing
used it since the cutoff, no upload holds it: store/holds.py) and it is renamed into
gc/candidates/; then, the batch done, the candidates are deleted and fan-out folders left
empty go. A kill at any point leaves either the public content whole or a candidate that
the next run deletes; `bucketdav check` finds nothing wrong with either.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from bucketdav.errors import StoreFull
from bucketdav.settings import Duration, Settings
from bucketdav.store.blobs import Blob, Store, fanned
from bucketdav.store.expire import Removed, apply_retention
from bucketdav.store.files import remove_tree
from bucketdav.store.gcreport import Report
from bucketdav.store.references import (
    SMALLEST_COMPRESSED,
    Doomed,
    Snapshot,
    decompressed_digest,
    looks_compressed,
    plan,
    scan,
)
from bucketdav.store.retention import Policy, Rules

log = logging.getLogger(__name__)

GC_DIR = "gc"
LOCK_NAME = "lock"
CANDIDATES = "candidates"
BATCH = 256
# How far the kernel's clock for change times may lag time.time() (a tick is 1 to 10 ms).
_COARSE = 0.1
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Stopped(Exception):
    """The run was asked to stop (the server is shutting down); it stops between batches."""


def policy_of(settings: Settings) -> Policy:
    """The retention Policy of the settings: global rules and each template's own."""
    own = {k.variable: _rules(k.keep_last, k.keep_days) for k in settings.replicate_keep}
    default = _rules(settings.keep_last, settings.keep_days)
    return Policy(
        default=default,
        templates=tuple(
            (tuple(None if header else text for header, text in t.segments), own.get(t.variable))
            for t in settings.replicate
        ),
    )


def _rules(keep_last: int | None, keep_days: Duration | None) -> Rules:
    return Rules(keep_last, keep_days.seconds if keep_days is not None else None)


class Collector:
    """Runs retention and collection once over one store (`run()`)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        pause: Callable[[], None] = lambda: None,
        batch: int = BATCH,
    ) -> None:
        self.store = store
        self.policy = policy_of(settings)
        self.unreferenced = settings.gc_unreferenced
        self.extract_max_bytes = settings.extract_max_bytes
        self.clock = clock
        self.pause = pause
        self.batch = batch
        self.folder = store.root / GC_DIR
        self.candidates = self.folder / CANDIDATES

    @property
    def has_rules(self) -> bool:
        """True when a run can remove anything."""
        return self.policy.active or self.unreferenced is not None

    def run(self, *, dry_run: bool = False) -> Report:
        """One run; never raises for what it finds in the store (the report says)."""
        report = Report(dry_run=dry_run, rules=self.has_rules)
        started = time.monotonic()
        try:
            if self.has_rules:
                if dry_run:
                    # Without the lock to read the file system's clock from (see _started).
                    self._work(report, now=self.clock() - _COARSE, dry_run=True)
                else:
                    with self._locked() as lock:
                        self._work(report, now=self._started(lock), dry_run=False)
        except _Busy as exc:
            report.success, report.error = False, str(exc)
        except Stopped:
            report.success, report.error = False, "stopped before the end (shutting down)"
        except OSError as exc:
            log.exception("collection failed")
            report.success, report.error = False, f"{exc.strerror or exc}: {exc.filename}"
        report.seconds = time.monotonic() - started
        return report

    # -- the run --

    def _started(self, lock: int) -> float:
        """When this run starts, on the clock of the file system's change times.

        The kernel stamps changes with a coarse clock that lags time.time() by up to a tick,
        and a shared file system may stamp them with its server's clock: content changed
        after this moment must never look older. Marking the lock file used gives that
        clock's reading (and the test clock's offset, if any, applies on top).
        """
        # Touching its times, not its mode: JuiceFS leaves the change time of a chmod to the
        # same mode alone, so every run after the first would take the first one's moment.
        os.utime(lock)
        return os.fstat(lock).st_ctime + (self.clock() - time.time())

    def _work(self, report: Report, *, now: float, dry_run: bool) -> None:
        if not dry_run:
            self._finish_candidates()
        report.removed += apply_retention(
            self.store,
            self.policy,
            now=datetime.fromtimestamp(now, UTC),
            dry_run=dry_run,
            pause=self.pause,
        )
        if self.unreferenced is None:
            return
        cutoff = now - self.unreferenced.seconds
        snapshot = scan(self.store, pause=self.pause)
        doomed = self._plan(snapshot, cutoff=cutoff, now=now, dry_run=dry_run)
        if dry_run:
            report.removed += [self._removed(d) for d in doomed]
            return
        self._collect(report, doomed, snapshot, cutoff=cutoff)
        # Left by an interrupted run (or a clean-up of uploads): gone too.
        _prune(set(snapshot.empty))

    def _plan(
        self, snapshot: Snapshot, *, cutoff: float, now: float, dry_run: bool
    ) -> list[Doomed]:
        """plan(), after learning what compressed blobs without a note decompress to.

        Uploads note it (decompressed/); a store from before that, or a note lost, would let
        a tree's compressed upload go while the tree stays. Learned once: the note is written.
        """
        doomed = plan(snapshot, cutoff=cutoff, now=now)
        # Only a tree that stays can keep a compressed blob that would go.
        kept_trees = snapshot.trees.keys() - {d.digest for d in doomed if d.kind == "tree"}
        if not kept_trees:
            return doomed
        learned = False
        blobs = str(self.store.blobs)
        for item in doomed:
            digest = item.digest
            if item.kind != "blob" or digest in snapshot.notes or item.size < SMALLEST_COMPRESSED:
                continue
            path = f"{blobs}/{fanned(digest)}"
            if not looks_compressed(path):
                continue
            target = decompressed_digest(path, self.store.algorithm, self.extract_max_bytes)
            self.pause()
            if target not in kept_trees:
                continue
            snapshot.notes[item.digest] = target
            learned = True
            if not dry_run:
                # Only a hint for next time: a full disk or a failed write costs nothing now.
                with contextlib.suppress(OSError, StoreFull):
                    self.store.staging.mkdir(parents=True, exist_ok=True)
                    decompressed = Blob(target, self.store.blob_path(target), 0)
                    self.store.remember_decompressed(item.digest, decompressed)
        return plan(snapshot, cutoff=cutoff, now=now) if learned else doomed

    def _collect(
        self, report: Report, doomed: list[Doomed], snapshot: Snapshot, *, cutoff: float
    ) -> None:
        gone: set[tuple[str, str]] = set()
        sources: dict[str, set[str]] = {}
        for source, target in snapshot.notes.items():
            sources.setdefault(target, set()).add(source)
        for start in range(0, len(doomed), self.batch):
            batch = doomed[start : start + self.batch]
            taken = []
            stopped = None
            folders = _Folders()
            try:
                for item in batch:
                    if not self._may_go(item, gone, snapshot, sources):
                        report.skipped += 1
                        continue
                    noted = item.digest in snapshot.notes
                    name = self._take(item, folders, cutoff=cutoff, noted=noted)
                    if name is None:
                        report.skipped += 1
                        continue
                    report.notes += noted
                    gone.add((item.kind, item.digest))
                    taken.append((item, name))
                    try:
                        # Cheap unless the slice of work is used up (store/periodic.py).
                        self.pause()
                    except Stopped as exc:
                        stopped = exc  # what this batch took is deleted first
                        break
                self._delete(taken, folders)
            finally:
                folders.close()
            report.removed += [self._removed(item) for item, _ in taken]
            self._prune_fanouts({(i.kind, i.digest[:2], i.digest[2:4]) for i, _ in taken})
            if stopped is not None:
                raise stopped
            self.pause()

    def _may_go(
        self,
        item: Doomed,
        gone: set[tuple[str, str]],
        snapshot: Snapshot,
        sources: dict[str, set[str]],
    ) -> bool:
        """A tree's sources go only after it, a decompressed blob only after its sources."""
        if item.kind == "tree":
            return True
        digest = item.digest
        if digest in snapshot.trees and ("tree", digest) not in gone:
            return False
        target = snapshot.notes.get(digest)
        if target is not None and target in snapshot.trees and ("tree", target) not in gone:
            return False
        return all(("blob", s) in gone for s in sources.get(digest, ()))

    def _removed(self, item: Doomed) -> Removed:
        where = fanned(item.digest)
        path = f"explode/{where}/" if item.kind == "tree" else f"blob/{where}"
        return Removed(path, item.kind, item.size, item.why)

    # -- one item --

    def _take(self, item: Doomed, folders: _Folders, *, cutoff: float, noted: bool) -> str | None:
        """Check `item` again under its exclusive lock and move it to gc/candidates/.

        A compressed blob's note goes first: a crash then leaves a blob without a note
        (a hint less), never a note without its blob.
        """
        top = self.store.trees if item.kind == "tree" else self.store.blobs
        digest = item.digest
        fan = folders.get(str(top), digest[:2], digest[2:4])
        cand = folders.get(str(self.candidates))
        if fan is None or cand is None:
            return None
        flags = _DIR_FLAGS if item.kind == "tree" else _FILE_FLAGS
        try:
            fd = os.open(digest, flags, dir_fd=fan)
        except OSError:
            return None
        archive = None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if item.kind == "tree":
                    archive = self._lock_archive(digest, folders)
            except OSError:
                # An upload holds it (EWOULDBLOCK), or the file system will not lock it for
                # us (NFS wants a file open for writing): either way it is not ours to take.
                return None
            if not self._still_unreferenced(fan, fd, item, cutoff):
                return None
            if noted:
                notes = folders.get(str(self.store.notes), digest[:2], digest[2:4])
                if notes is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(digest, dir_fd=notes)
            name = f"{item.kind}-{digest}"
            os.rename(digest, name, src_dir_fd=fan, dst_dir_fd=cand)
            return name
        finally:
            os.close(fd)
            if archive is not None:
                os.close(archive)

    def _lock_archive(self, digest: str, folders: _Folders) -> int | None:
        """An exclusive lock on the blob of the tar or zip a tree came from, if it is there.

        Every upload that relies on a tree holds that blob first (a shared lock). A lock on
        the tree's folder alone is not enough: JuiceFS does not share flock on folders
        between mounts (measured: a second mount got LOCK_EX on a folder another mount held
        shared), while it does on files.
        """
        fan = folders.get(str(self.store.blobs), digest[:2], digest[2:4])
        if fan is None:
            return None
        try:
            fd = os.open(digest, _FILE_FLAGS, dir_fd=fan)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _still_unreferenced(self, fan: int, fd: int, item: Doomed, cutoff: float) -> bool:
        held = os.fstat(fd)
        try:
            now = os.lstat(item.digest, dir_fd=fan)
        except FileNotFoundError:
            return False
        if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino) or held.st_ctime >= cutoff:
            return False
        if item.kind == "tree":
            return stat.S_ISDIR(held.st_mode)
        return stat.S_ISREG(held.st_mode) and held.st_nlink == 1

    def _delete(self, taken: list[tuple[Doomed, str]], folders: _Folders) -> None:
        cand = folders.get(str(self.candidates))
        for item, name in taken:
            if item.kind == "blob" and cand is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=cand)
            else:
                _delete_candidate(str(self.candidates / name))

    def _finish_candidates(self) -> None:
        """Delete what an interrupted run moved to gc/candidates/ (it was checked then)."""
        try:
            names = os.listdir(self.candidates)
        except FileNotFoundError:
            return
        for name in names:
            _delete_candidate(str(self.candidates / name))
        if names:
            log.info("collection: finished %d candidates of an interrupted run", len(names))

    def _prune_fanouts(self, folders: set[tuple[str, str, str]]) -> None:
        """Remove fan-out folders left empty (uploads make them again as they need)."""
        tops = {"tree": [self.store.trees], "blob": [self.store.blobs, self.store.notes]}
        _prune({(str(top), first, second) for kind, first, second in folders for top in tops[kind]})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """The store's collection lock, and gc/candidates/ ready (real folders, not links)."""
        for folder in (self.folder, self.candidates):
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o755)
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise _Busy(f"{self.store.relative(folder)} is not a folder; nothing done")
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _Busy(
                    f"another collection is running on this store ({GC_DIR}/{LOCK_NAME} is "
                    "locked); nothing done"
                ) from None
            yield fd
        finally:
            os.close(fd)


class _Folders:
    """The folders one batch works in, each opened once, never through a link."""

    def __init__(self) -> None:
        self.fds: dict[tuple[str, ...], int | None] = {}

    def get(self, top: str, *segments: str) -> int | None:
        key = (top, *segments)
        if key not in self.fds:
            self.fds[key] = _open_folder(top, segments)
        return self.fds[key]

    def close(self) -> None:
        for fd in self.fds.values():
            if fd is not None:
                os.close(fd)
        self.fds.clear()


class _Busy(Exception):
    """Another process holds the store's collection lock."""


def _prune(folders: set[tuple[str, str, str]]) -> None:
    """rmdir each top/ab/cd when empty, then top/ab when that emptied it (rmdir refuses else).

    (top, ab, "") stands for top/ab alone.
    """
    for top, first, second in sorted(folders):
        if second:
            fd = _open_folder(top, (first,))
            if fd is None:
                continue
            try:
                os.rmdir(second, dir_fd=fd)
            except OSError:
                continue  # not empty (or gone): top/ab is not empty either
            finally:
                os.close(fd)
        fd = _open_folder(top, ())
        if fd is not None:
            try:
                with contextlib.suppress(OSError):
                    os.rmdir(first, dir_fd=fd)
            finally:
                os.close(fd)


def _delete_candidate(path: str) -> None:
    """Delete one candidate: a file, or a tree of any depth (never following a link)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        remove_tree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _open_folder(top: str, segments: tuple[str, ...]) -> int | None:
    """An fd of top/<segments>, each a real folder, never a link; None when not there."""
    try:
        fd = os.open(top, _DIR_FLAGS)
    except OSError:
        return None
    for segment in segments:
        try:
            child = os.open(segment, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise
        os.close(fd)
        fd = child
    return fd
