"""The server's own retention and collection: a thread that runs one every interval.

It gives requests their turn: after each slice of work (a few milliseconds: some entries of
its walk, or a few removals) it rests three times as long, so it takes at most a quarter of
the interpreter lock, and of the disk's journal that uploads' flushes wait on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bucketdav.settings import Settings
from bucketdav.store.blobs import Store
from bucketdav.store.collect import Collector, Stopped
from bucketdav.store.gcreport import Report

log = logging.getLogger(__name__)

# Work about this long before giving requests their turn; rest this many times as long
# (and at most REST seconds at a time).
SLICE = 0.002
RATIO = 3
REST = 0.05


class Periodic:
    """Runs Collector(...).run() every `settings.gc_interval`, the first one interval in."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        on_report: Callable[[Report], None] | None = None,
        interval: float | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.on_report = on_report
        self.interval = interval if interval is not None else settings.gc_interval.seconds
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="collection", daemon=True)
        self.busy_since = time.monotonic()

    def start(self) -> Periodic:
        """Start the thread (a run comes one interval later)."""
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask a run in progress to stop between batches, and wait for the thread."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def run_once(self) -> Report:
        """One run now, in this thread, yielding as the periodic runs do."""
        self.busy_since = time.monotonic()
        report = Collector(self.store, self.settings, pause=self.pause).run()
        _log(report)
        if self.on_report is not None:
            try:
                self.on_report(report)
            except Exception:
                log.exception("the collection report callback failed")
        return report

    def pause(self) -> None:
        """Between two steps: rest once a slice of work is done; stop if asked to."""
        worked = time.monotonic() - self.busy_since
        if worked >= SLICE:
            if self.stopping.wait(min(worked * RATIO, REST)):
                raise Stopped
            self.busy_since = time.monotonic()
        elif self.stopping.is_set():
            raise Stopped

    def _loop(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.run_once()
            except Exception:
                # The next interval tries again; the server goes on either way.
                log.exception("collection failed")


def _log(report: Report) -> None:
    if report.success:
        log.info("collection: %s", report.summary())
    else:
        log.warning("collection: %s (%s)", report.error, report.summary())


def start_periodic(
    store: Store, settings: Settings, *, on_report: Callable[[Report], None] | None = None
) -> Periodic | None:
    """The server's periodic retention and collection, started when any rule is set."""
    if not settings.collects:
        return None
    log.info(
        "retention and collection every %s (first run in %s)",
        settings.gc_interval,
        settings.gc_interval,
    )
    return Periodic(store, settings, on_report=on_report).start()
