"""Prometheus metrics of one server: one registry per app, counted where things happen."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bucketdav.observe.requests import UPLOAD_METHODS, RequestCounts
from bucketdav.observe.totals import StoreCount

if TYPE_CHECKING:
    from bucketdav.settings import Settings
    from bucketdav.store.blobs import Store
    from bucketdav.store.collect import Report
    from bucketdav.uploads.outcome import Outcome

CONTENT_TYPE = CONTENT_TYPE_LATEST
# First path segments the API answers, each its own route kind; the rest is WebDAV's.
API_ROUTES = frozenset({"upload", "checksum", "config", "healthz", "metrics", "static", "connect"})
DAV_ROUTES = {
    "GET": "dav_get",
    "HEAD": "dav_head",
    "PROPFIND": "dav_propfind",
    "OPTIONS": "dav_options",
}
# What retention and collection remove: replica entries, trees, blobs.
GC_KINDS = ("replicas", "trees", "blobs")
EXTRACTION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def route_kind(method: str, path: str, query: str) -> str:
    """The route label of a request: an API root (`upload`, …) or a WebDAV kind (`dav_get`, …).

    Never the path itself: the label takes a few fixed values whatever clients send.
    """
    first = path[1:].partition("/")[0] if path.startswith("/") else path.partition("/")[0]
    if first in API_ROUTES:
        return "upload_page" if first == "upload" and method not in UPLOAD_METHODS else first
    if method == "GET" and "download=" in query:
        return "dav_download"
    return DAV_ROUTES.get(method, "dav_other")


class Metrics:
    """Every metric of one server, in a registry of its own (tests build as many as they like).

    Request threads call request(); the upload pipeline calls archive() and processed();
    the retention runner calls collected(). Store totals come from a background count and
    free space from one statvfs, both read when scraped.
    """

    def __init__(self, store: Store, *, node: str | None = None) -> None:
        # `_created` series would double the series count for a start time nobody graphs; the
        # library's switch is process-wide, and no registry in bucketdav wants them.
        disable_created_metrics()
        self.store = store
        self.registry = CollectorRegistry()
        self.totals = StoreCount(store)
        self.server: Any = None
        reg = self.registry
        self.uploads = Counter(
            "bucketdav_uploads",
            "Uploads (and deploys by checksum) by outcome: new content, deduplicated, refused.",
            ["outcome"],
            registry=reg,
        )
        self.saved = Counter(
            "bucketdav_dedup_saved_bytes",
            "Bytes of uploaded content the store already had, so kept no second time.",
            registry=reg,
        )
        self.archives = Counter(
            "bucketdav_archives",
            "Archives and compressed files unpacked into a new tree or blob, or refused.",
            ["outcome"],
            registry=reg,
        )
        self.extraction = Histogram(
            "bucketdav_archive_extraction_seconds",
            "Time to unpack an archive or compressed file, extracted or refused.",
            buckets=EXTRACTION_BUCKETS,
            registry=reg,
        )
        self.replicas = Counter(
            "bucketdav_replicas_made", "Replica entries made by uploads.", registry=reg
        )
        self.gc_runs = Counter(
            "bucketdav_gc_runs",
            "Retention and collection runs, by outcome (success, failure).",
            ["outcome"],
            registry=reg,
        )
        self.gc_removed = Counter(
            "bucketdav_gc_removed",
            "Items retention and collection removed, by kind.",
            ["kind"],
            registry=reg,
        )
        self.gc_freed = Counter(
            "bucketdav_gc_freed_bytes", "Bytes retention and collection freed.", registry=reg
        )
        # (seconds the last run took, when the last successful one ended): shown once known.
        self.gc_last: float | None = None
        self.gc_success: float | None = None
        if node:
            info = Gauge("bucketdav_node_info", "This server's node name.", ["node"], registry=reg)
            info.labels(node).set(1)
        for outcome in ("new", "deduplicated", "refused"):
            self.uploads.labels(outcome)
        for outcome in ("extracted", "refused"):
            self.archives.labels(outcome)
        for outcome in ("success", "failure"):
            self.gc_runs.labels(outcome)
        for kind in GC_KINDS:
            self.gc_removed.labels(kind)
        self.answers = RequestCounts(on_refused_upload=self.uploads.labels("refused").inc)
        reg.register(_Live(self))
        ProcessCollector(registry=reg)

    def watch(self, server: Any) -> None:
        """Report the worker threads and queue of this Cheroot server."""
        self.server = server

    def start(self) -> None:
        """Start counting the store in the background (the server calls it once serving)."""
        self.totals.start()

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format."""
        # First, so that the uploads refused since the last scrape are in this one.
        self.answers.fold()
        return generate_latest(self.registry)

    # -- counting --------------------------------------------------------------------------

    def begin(self) -> None:
        """Note a request's arrival (request threads; no lock)."""
        self.answers.begin()

    def request(
        self,
        method: str,
        route: str,
        status: str,
        seconds: float,
        *,
        received: int,
        sent: int,
    ) -> None:
        """Note an answered request (request threads; no lock): counted when scraped."""
        self.answers.end(method, route, status, seconds, received, sent)

    def archive(self, seconds: float, *, refused: bool) -> None:
        """Count an archive or compressed file unpacked (new content) or refused."""
        self.archives.labels("refused" if refused else "extracted").inc()
        self.extraction.observe(seconds)

    def processed(self, outcome: Outcome) -> None:
        """Count an upload that succeeded: new or deduplicated, and the replicas it made."""
        if outcome.blob.created:
            self.uploads.labels("new").inc()
        else:
            self.uploads.labels("deduplicated").inc()
            self.saved.inc(outcome.blob.size)
        if outcome.replicas:
            self.replicas.inc(len(outcome.replicas))

    def collected(self, report: Report) -> None:
        """Record one retention and collection run (the periodic runner's callback)."""
        success = bool(report.success)
        self.gc_runs.labels("success" if success else "failure").inc()
        for kind, count in zip(GC_KINDS, (report.entries, report.trees, report.blobs), strict=True):
            if count:
                self.gc_removed.labels(kind).inc(count)
        if report.bytes_freed:
            self.gc_freed.inc(report.bytes_freed)
        self.gc_last = float(report.seconds)
        if success:
            self.gc_success = time.time()


def metrics_for(settings: Settings, store: Store) -> Metrics | None:
    """The metrics of a server with these settings; None when BUCKETDAV_METRICS is off."""
    if not settings.metrics:
        return None
    return Metrics(store, node=settings.node)


class _Live(Collector):
    """What is read when scraped: free space (one statvfs), the workers, the store totals."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        # Nothing to check against the other collectors' names when registering.
        return []

    def collect(self) -> Iterator[Metric]:
        store = self.metrics.store
        try:
            stat = os.statvfs(store.root)
        except OSError:
            stat = None
        if stat is not None:
            size = stat.f_blocks * stat.f_frsize
            yield _gauge(
                "store_free_bytes", "Free bytes on the store's disk.", stat.f_bavail * stat.f_frsize
            )
            yield _gauge("store_size_bytes", "Size of the store's file system in bytes.", size)
            yield _gauge(
                "store_min_free_bytes",
                "BUCKETDAV_MIN_FREE in bytes: uploads that would go below it are refused.",
                store.min_free.bytes_for(size),
            )
            if stat.f_files:
                yield _gauge(
                    "store_free_inodes", "Free inodes on the store's file system.", stat.f_favail
                )
                yield _gauge("store_inodes", "Inodes of the store's file system.", stat.f_files)
        yield from self.metrics.answers.collect()
        yield from self.metrics.totals.collect()
        if self.metrics.gc_last is not None:
            yield _gauge(
                "gc_last_duration_seconds",
                "How long the last retention and collection run took.",
                self.metrics.gc_last,
            )
        if self.metrics.gc_success is not None:
            yield _gauge(
                "gc_last_success_timestamp_seconds",
                "When the last successful retention and collection run ended (Unix time).",
                self.metrics.gc_success,
            )
        server = self.metrics.server
        pool = getattr(server, "requests", None)
        if pool is not None:
            threads = getattr(pool, "_threads", None)
            yield _gauge(
                "workers",
                "Worker threads (BUCKETDAV_THREADS).",
                len(threads) if threads else pool.min,
            )
            yield _gauge("workers_idle", "Worker threads waiting for a connection.", pool.idle)
            yield _gauge(
                "connections_queued",
                "Connections with a request waiting for a free worker thread.",
                pool.qsize,
            )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"bucketdav_{name}", doc, value=value)
