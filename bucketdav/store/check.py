"""The store checker: walks a store, reports what breaks the layout's invariants, repairs safely.

Safe to run while the server serves: explode/ and replica/ are walked before blob/ (a file
there was linked from a blob that existed first, so its inode is found), replica folders are
read under the same folder lock the server takes to claim names and swap `latest`, and
entries of every node's staging/<node>/ count as leftovers only once nothing in them changed
for an hour.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import random
import stat
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from bucketdav.settings import Settings
from bucketdav.store.blobs import PUBLIC_TREES, Store
from bucketdav.store.entries import Series
from bucketdav.store.files import newest_mtime, remove_tree, same_bytes
from bucketdav.store.findings import (
    SAMPLE_SIZE,
    STAGING_GRACE,
    Report,
    blob_name_problem,
    digest_name_problem,
    inside,
    is_lower_hex,
    latest_series,
    mode_problem,
    newest_replica,
    pick_sample,
    repaired_mode,
    staging_is_leftover,
)
from bucketdav.store.sources import check_sources

log = logging.getLogger(__name__)

_HASH_BLOCK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_LATEST = ".latest-"

# -- walking -----------------------------------------------------------------------------


class Checker:
    """One pass over one store; `run()` returns the Report."""

    def __init__(
        self,
        store: Store,
        *,
        full: bool = False,
        repair: bool = False,
        sample: int = SAMPLE_SIZE,
        grace: float = STAGING_GRACE,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.root = str(store.root)
        self.full = full
        self.repair = repair
        self.sample = sample
        self.grace = grace
        self.rng = rng or random.Random()  # noqa: S311 - picking a sample, not a secret
        self.digest_len = 2 * store.digest_size
        self.report = Report(store.root, store.algorithm, full)
        # Files of explode/ and replica/: inode -> one path, checked against blob/ at the end.
        self.linked: dict[tuple[int, int], str] = {}
        self.blob_inodes: set[tuple[int, int]] = set()
        # A blob and its links share one mode: check (and repair) it once.
        self.modes_seen: set[tuple[int, int]] = set()

    def run(self) -> Report:
        """Walk staging/, replica/, explode/, then blob/, and settle the files seen."""
        self._check_mode(self.root, os.lstat(self.root), content=False)
        for name in ("staging", *PUBLIC_TREES):
            path = os.path.join(self.root, name)
            try:
                self._check_mode(path, os.lstat(path), content=False)
            except FileNotFoundError:
                self.report.notes.append(f"{name}/ does not exist yet")
        self._walk_staging()
        self._walk_replicas(os.path.join(self.root, "replica"))
        self._walk_trees()
        blobs = self._walk_blobs()
        self._hash_blobs(blobs)
        self._settle_linked()
        check_sources(self.store, self.report, full=self.full, repair=self.repair)
        return self.report

    def rel(self, path: str) -> str:
        """`path` relative to the store, for the report."""
        return os.path.relpath(path, self.root)

    # -- staging --

    def _walk_staging(self) -> None:
        """Each node's entries in staging/<node>/ (and any left directly in staging/)."""
        staging = os.path.join(self.root, "staging")
        now = time.time()
        fresh = 0
        for top in _scandir(staging):
            entries = [top]
            if top.is_dir(follow_symlinks=False):
                self.report.scanned["staging folders of nodes"] += 1
                entries = _scandir(top.path)
            for entry in entries:
                self.report.scanned["staging entries"] += 1
                newest = newest_mtime(entry.path)
                if newest is None:
                    continue  # an upload finished and removed it meanwhile
                if not staging_is_leftover(newest, now, self.grace):
                    fresh += 1
                    continue
                self.report.problem(
                    "leftover",
                    self.rel(entry.path),
                    f"unchanged in staging/ for over {self.grace:g}s",
                )
                if self.repair:
                    _remove(entry.path)
                    self.report.fixed("leftover", f"removed {self.rel(entry.path)}")
        if fresh:
            self.report.notes.append(
                f"{fresh} entries in staging/ changed within {self.grace:g}s: "
                "uploads in flight (or a crash the next start-up clears); left alone"
            )

    # -- replica/ --

    def _walk_replicas(self, top: str) -> None:
        pending = [top]
        while pending:
            pending.extend(self._replica_folder(pending.pop()))

    def _replica_folder(self, folder: str) -> list[str]:
        """Check one replica folder; returns its subfolders."""
        try:
            fd = os.open(folder, _DIR_FLAGS)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                self.report.problem("misplaced", self.rel(folder), f"cannot open: {exc.strerror}")
            return []
        subfolders = []
        try:
            # The server claims names and swaps `latest` under this lock: what we read is whole.
            with _flock(fd, fcntl.LOCK_SH):
                entries = {e.name: e.stat(follow_symlinks=False) for e in os.scandir(fd)}
                links = {n: os.readlink(n, dir_fd=fd) for n, st in entries.items() if _is_link(st)}
            names = sorted(entries)
            for name in names:
                path, st = os.path.join(folder, name), entries[name]
                if stat.S_ISDIR(st.st_mode):
                    self._check_mode(path, st, content=False)
                    subfolders.append(path)
                elif stat.S_ISREG(st.st_mode):
                    self._file(path, st)
                elif _is_link(st):
                    self._replica_link(fd, folder, name, links[name], names)
                else:
                    self.report.problem("misplaced", self.rel(path), "not a file, folder or link")
        finally:
            os.close(fd)
        self.report.scanned["replica folders"] += 1
        return subfolders

    def _replica_link(self, fd: int, folder: str, name: str, target: str, names: list[str]) -> None:
        path = os.path.join(folder, name)
        self.report.scanned["links"] += 1
        if name.startswith(_TEMP_LATEST):
            self.report.problem("leftover", self.rel(path), "a temporary latest link")
            if self.repair and self._locked_unlink(fd, name, target):
                self.report.fixed("leftover", f"removed {self.rel(path)}")
            return
        series = latest_series(name, target, names) if "/" not in target else None
        newest = newest_replica(series, names) if series is not None else None
        if series is not None and newest != target:
            if target in names:
                # An update killed between claiming a name and moving `latest` leaves it on the
                # previous replica: whole and readable, and the next upload moves it on.
                self.report.scanned["latest links behind the newest"] += 1
                if self.repair and self._repoint_latest(fd, name, series):
                    self.report.actions.append(f"moved {self.rel(path)} to {newest}")
            else:
                self.report.problem(
                    "latest", self.rel(path), f"points at missing {target}, the newest is {newest}"
                )
                if self.repair and self._repoint_latest(fd, name, series):
                    self.report.fixed("latest", f"re-pointed {self.rel(path)}")
            return
        problem = self._link_problem(path, public=True)
        if problem:
            self.report.problem("symlink", self.rel(path), f"-> {target}: {problem}")
            # A link holds no data; one that dangles or leaves can only mislead.
            if self.repair and self._locked_unlink(fd, name, target):
                self.report.fixed("symlink", f"removed link {self.rel(path)}")

    def _link_problem(self, path: str, *, public: bool, tree: str = "") -> str | None:
        real = os.path.realpath(path)
        if public and not any(inside(os.path.join(self.root, t), real) for t in PUBLIC_TREES):
            return "leads outside the public trees"
        if tree and not inside(tree, real):
            return "leads outside its archive's tree"
        if not os.path.exists(real):
            return "dangles"
        return None

    def _locked_unlink(self, fd: int, name: str, target: str) -> bool:
        with _flock(fd, fcntl.LOCK_EX):
            try:
                if os.readlink(name, dir_fd=fd) != target:
                    return False
                os.unlink(name, dir_fd=fd)
            except OSError:
                return False
        return True

    def _repoint_latest(self, fd: int, name: str, series: Series) -> bool:
        with _flock(fd, fcntl.LOCK_EX):
            newest = newest_replica(series, os.listdir(fd))
            if newest is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
                return True
            # Made in this node's staging/ so that a crash leaves nothing behind that its
            # start-up does not clear.
            self.store.staging.mkdir(exist_ok=True)
            temp = os.path.join(self.store.staging, f"check-latest-{uuid.uuid4().hex}")
            os.symlink(newest, temp)
            os.replace(temp, name, dst_dir_fd=fd)
            os.fsync(fd)
        return True

    # -- explode/ --

    def _walk_trees(self) -> None:
        top = os.path.join(self.root, "explode")
        for first in _scandir(top):
            if not self._fanout_dir(first):
                continue
            for second in _scandir(first.path):
                if not self._fanout_dir(second):
                    continue
                for tree in _scandir(second.path):
                    parts = (first.name, second.name, tree.name)
                    problem = digest_name_problem(parts, self.digest_len)
                    if problem is None and not tree.is_dir(follow_symlinks=False):
                        problem = "not a folder"
                    if problem:
                        self.report.problem("misplaced", self.rel(tree.path), problem)
                        continue
                    self.report.scanned["trees"] += 1
                    self._walk_tree(tree.path, os.path.realpath(tree.path))

    def _fanout_dir(self, entry: os.DirEntry[str]) -> bool:
        if (
            entry.is_dir(follow_symlinks=False)
            and len(entry.name) == 2
            and is_lower_hex(entry.name)
        ):
            self._check_mode(entry.path, entry.stat(follow_symlinks=False), content=False)
            return True
        self.report.problem("misplaced", self.rel(entry.path), "not a fan-out folder")
        return False

    def _walk_tree(self, top: str, tree: str) -> None:
        # A stack, not recursion: an archive may be thousands of folders deep.
        pending = [top]
        self._check_mode(top, os.lstat(top), content=False)
        while pending:
            for entry in _scandir(pending.pop()):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    self._check_mode(entry.path, st, content=False)
                    pending.append(entry.path)
                elif stat.S_ISREG(st.st_mode):
                    self._file(entry.path, st)
                elif _is_link(st):
                    self._tree_link(entry.path, tree)
                else:
                    self.report.problem(
                        "misplaced", self.rel(entry.path), "not a file, folder or link"
                    )

    def _tree_link(self, path: str, tree: str) -> None:
        self.report.scanned["links"] += 1
        problem = self._link_problem(path, public=False, tree=tree)
        if problem == "dangles":
            # The archive held a link to a member it did not have; that is its content.
            self.report.scanned["dangling archive links (kept)"] += 1
        elif problem:
            self.report.problem("symlink", self.rel(path), problem)
            if self.repair:
                os.unlink(path)
                self.report.fixed("symlink", f"removed {self.rel(path)}")

    # -- files of explode/ and replica/ --

    def _file(self, path: str, st: os.stat_result) -> None:
        self.report.scanned["linked files"] += 1
        self._check_mode(path, st, content=True)
        self.linked.setdefault((st.st_dev, st.st_ino), path)

    def _settle_linked(self) -> None:
        """Files not sharing a blob's inode are copies (EMLINK) or strays; hash to tell."""
        copies = [p for key, p in self.linked.items() if key not in self.blob_inodes]
        self.report.scanned["copies"] = len(copies)
        chosen = set(copies) if self.full else pick_sample(copies, self.sample, self.rng)
        for path in copies:
            if path not in chosen:
                continue
            try:
                digest = _hash_file(path, self.store.algorithm)
            except OSError as exc:
                self.report.problem("unlinked", self.rel(path), f"cannot read: {exc.strerror}")
                continue
            blob = self.store.blob_path(digest)
            if not blob.is_file():
                self.report.problem(
                    "unlinked", self.rel(path), f"no blob holds its content {digest}"
                )
            elif not self.store.trusts_digest and not same_bytes(Path(path), blob):
                self.report.problem("unlinked", self.rel(path), f"differs from blob {digest}")
        if len(chosen) < len(copies):
            self.report.notes.append(
                f"{len(copies) - len(chosen)} copies not hashed (use --full to hash all)"
            )

    # -- blob/ --

    def _walk_blobs(self) -> list[str]:
        found = []
        top = os.path.join(self.root, "blob")
        pending: list[tuple[str, tuple[str, ...]]] = [(top, ())]
        while pending:
            folder, parts = pending.pop()
            for entry in _scandir(folder):
                st = entry.stat(follow_symlinks=False)
                here = (*parts, entry.name)
                if stat.S_ISDIR(st.st_mode) and len(here) < 3:
                    if len(entry.name) != 2 or not is_lower_hex(entry.name):
                        self.report.problem(
                            "misplaced", self.rel(entry.path), "not a fan-out folder"
                        )
                    self._check_mode(entry.path, st, content=False)
                    pending.append((entry.path, here))
                    continue
                problem = None if stat.S_ISREG(st.st_mode) else "not a regular file"
                problem = problem or blob_name_problem(here, self.digest_len)
                if problem:
                    self.report.problem("misplaced", self.rel(entry.path), problem)
                    continue
                self.report.scanned["blobs"] += 1
                self._check_mode(entry.path, st, content=True)
                self.blob_inodes.add((st.st_dev, st.st_ino))
                found.append(entry.path)
        return found

    def _hash_blobs(self, blobs: list[str]) -> None:
        chosen = blobs if self.full else sorted(pick_sample(blobs, self.sample, self.rng))
        for path in chosen:
            try:
                digest = _hash_file(path, self.store.algorithm)
            except OSError as exc:
                self.report.problem("corrupt", self.rel(path), f"cannot read: {exc.strerror}")
                continue
            self.report.scanned["blobs hashed"] += 1
            if digest != os.path.basename(path):
                self.report.problem("corrupt", self.rel(path), f"holds content {digest}")

    # -- modes --

    def _check_mode(self, path: str, st: os.stat_result, *, content: bool) -> None:
        if content:
            if (st.st_dev, st.st_ino) in self.modes_seen:
                return
            self.modes_seen.add((st.st_dev, st.st_ino))
        problem = mode_problem(st.st_mode, content=content)
        if not problem:
            return
        self.report.problem("mode", self.rel(path), problem)
        if self.repair:
            new = repaired_mode(st.st_mode, content=content)
            os.chmod(path, new, follow_symlinks=False)
            self.report.fixed("mode", f"chmod {new:04o} {self.rel(path)}")


def check_store(
    root: Path,
    algorithm: str,
    *,
    full: bool = False,
    repair: bool = False,
    sample: int = SAMPLE_SIZE,
    grace: float = STAGING_GRACE,
    node: str | None = None,
) -> Report:
    """Check the store at `root` (never creating or clearing anything unless `repair`)."""
    store = Store(root, algorithm, node=node)
    if not store.root.is_dir():
        raise FileNotFoundError(f"ARCHIVE_DIR={store.root} is not a directory")
    return Checker(store, full=full, repair=repair, sample=sample, grace=grace).run()


# -- helpers -----------------------------------------------------------------------------


def _scandir(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return sorted(entries, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_link(st: os.stat_result) -> bool:
    return stat.S_ISLNK(st.st_mode)


@contextlib.contextmanager
def _flock(fd: int, how: int) -> Iterator[None]:
    fcntl.flock(fd, how)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        remove_tree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _hash_file(path: str, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


def run_check(settings: Settings, *, full: bool, repair: bool, out: TextIO | None = None) -> int:
    """The `bucketdav check` command: print the report; 0 when clean, 1 when not, 2 on error."""
    out = out or sys.stdout
    try:
        report = check_store(
            settings.archive_dir,
            settings.checksum_type,
            full=full,
            repair=repair,
            node=settings.node,
        )
    except OSError as exc:
        print(f"bucketdav: {exc}", file=sys.stderr)
        return 2
    report.write(out)
    return 0 if report.clean else 1
