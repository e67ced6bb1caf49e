"""Store totals (blobs, bytes, trees, replicas) from a count in the background, never at scrape."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from bucketdav.store.blobs import Store

log = logging.getLogger(__name__)

# A count every five minutes, or less often when it takes long: it may use at most a
# twentieth of one core, however large the store.
COUNT_INTERVAL = 300.0
COUNT_SHARE = 20
# A replica entry's name: `<stem>.<YYYYmmdd.HHMM>.<n><ext>` (store/entries.py).
_ENTRY = re.compile(r"\.\d{8}\.\d{4}\.\d+")


@dataclass(frozen=True)
class Totals:
    """What one count found, when it ended and how long it took."""

    blobs: int
    blob_bytes: int
    linked_bytes: int
    trees: int
    replicas: int
    at: float
    seconds: float


def count_store(store: Store) -> Totals:
    """Count blobs (and their bytes), trees and replica entries; one lstat per blob."""
    started = time.monotonic()
    blobs = blob_bytes = linked = 0
    for entry in _leaves(str(store.blobs), depth=3):
        try:
            stat = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # collected meanwhile
        blobs += 1
        blob_bytes += stat.st_size
        # Every other name of a blob (a tree's file, a replica) would otherwise be a copy.
        linked += (stat.st_nlink - 1) * stat.st_size
    trees = sum(1 for _ in _leaves(str(store.trees), depth=3))
    replicas = 0
    pending = [str(store.replicas)]
    while pending:
        with _scan(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif _ENTRY.search(entry.name):
                    replicas += 1
    return Totals(
        blobs, blob_bytes, linked, trees, replicas, time.time(), time.monotonic() - started
    )


def _leaves(top: str, *, depth: int) -> Iterator[os.DirEntry[str]]:
    """The entries `depth` levels below `top` (blob/ab/cd/<digest>), below folders only."""
    if depth == 0:
        return
    with _scan(top) as entries:
        found = list(entries)
    for entry in found:
        if depth == 1:
            yield entry
        elif entry.is_dir(follow_symlinks=False):
            yield from _leaves(entry.path, depth=depth - 1)


@contextlib.contextmanager
def _scan(path: str) -> Iterator[Iterator[os.DirEntry[str]]]:
    """os.scandir, or nothing for a folder removed meanwhile."""
    try:
        entries = os.scandir(path)
    except OSError:
        yield iter(())
        return
    with entries:
        yield entries


class StoreCount:
    """Counts the store in a thread of its own, again and again; collect() shows the last count."""

    def __init__(self, store: Store, *, interval: float = COUNT_INTERVAL) -> None:
        self.store = store
        self.interval = interval
        self.last: Totals | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Count now and then every interval, in a daemon thread."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="store-count", daemon=True)
            self.thread.start()

    def run_once(self) -> Totals:
        """Count the store now and keep the result."""
        self.last = count_store(self.store)
        return self.last

    def _run(self) -> None:
        while True:
            try:
                totals = self.run_once()
                pause = max(self.interval, COUNT_SHARE * totals.seconds)
            except Exception:
                log.exception("counting the store failed; trying again later")
                pause = self.interval
            time.sleep(pause)

    def collect(self) -> Iterator[Metric]:
        """The last count as gauges; nothing before the first count has ended."""
        last = self.last
        if last is None:
            return
        for name, doc, value in (
            ("store_blobs", "Blobs in the store (each distinct content once).", last.blobs),
            ("store_blob_bytes", "Bytes of all blobs.", last.blob_bytes),
            (
                "store_linked_bytes",
                "Bytes hard links save: each other name of a blob would be a copy.",
                last.linked_bytes,
            ),
            ("store_trees", "Extracted archive trees.", last.trees),
            ("store_replicas", "Replica entries (not counting latest links).", last.replicas),
            ("store_count_timestamp_seconds", "When the last count of the store ended.", last.at),
            (
                "store_count_duration_seconds",
                "How long the last count of the store took.",
                last.seconds,
            ),
        ):
            yield GaugeMetricFamily(f"bucketdav_{name}", doc, value=value)
