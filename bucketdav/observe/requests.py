"""Per-request metrics: noted by request threads without a lock, folded into totals when read.

Every answered request is one append to a deque (atomic in CPython); whoever scrapes, or the
request that finds the queue full, folds the queue into plain totals under a lock. Metric
objects with a lock per value, taken by 64 threads on every request, cost several times more.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import threading
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

# From a small GET (a millisecond) to a large upload or a folder download (minutes).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# Answered requests waiting to be counted, at most: folding them takes a few milliseconds.
FOLD_AT = 2048
# Methods shown by name; any other (a client may send anything) is `other`.
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PROPFIND", "PROPPATCH", "MKCOL"}
    | {"COPY", "MOVE", "LOCK", "UNLOCK", "PATCH"}
)
UPLOAD_METHODS = frozenset({"PUT", "POST"})


class RequestCounts:
    """Requests by method, route kind and status; durations and body bytes by route kind."""

    def __init__(self, *, on_refused_upload: Callable[[], None]) -> None:
        self.on_refused_upload = on_refused_upload
        self.answered: collections.deque[tuple[str, str, str, float, int, int]] = (
            collections.deque()
        )
        self.folding = threading.Lock()
        # Requests begun and ended, counted without a lock (next() is atomic); each scrape
        # takes one number from both, so their difference stays the requests in flight.
        self.begun = itertools.count()
        self.ended = itertools.count()
        self.requests: dict[tuple[str, str, str], int] = {}
        # Per route: requests per bucket (not cumulative; the last is +Inf) and their sum.
        self.durations: dict[str, list[int]] = {}
        self.seconds: dict[str, float] = {}
        self.received: dict[str, int] = {}
        self.sent: dict[str, int] = {}

    def begin(self) -> None:
        """Note a request's arrival."""
        next(self.begun)

    def end(
        self, method: str, route: str, status: str, seconds: float, received: int, sent: int
    ) -> None:
        """Note an answered request (its answer closed)."""
        self.answered.append((method, route, status, seconds, received, sent))
        # Only once noted: a scrape that sees no other request in flight counts them all.
        next(self.ended)
        # One request thread folds a full queue; the others go on (it is being emptied),
        # unless it keeps growing while being folded: then they wait for it, which bounds it.
        waiting = len(self.answered)
        if waiting >= FOLD_AT and self.folding.acquire(blocking=waiting >= FOLD_AT * 3 // 2):
            try:
                self._fold()
            finally:
                self.folding.release()

    def fold(self) -> None:
        """Count what is noted (refused uploads go to their counter now)."""
        with self.folding:
            self._fold()

    def _fold(self) -> None:
        answered = self.answered
        for _ in range(len(answered)):
            method, route, status, seconds, received, sent = answered.popleft()
            if method not in METHODS:
                method = "other"
            if not (len(status) == 3 and status.isdigit()):
                status = "-"
            key = (method, route, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            buckets = self.durations.get(route)
            if buckets is None:
                buckets = self.durations[route] = [0] * (len(BUCKETS) + 1)
                self.seconds[route] = 0.0
                self.received[route] = self.sent[route] = 0
            # A request of exactly a bound's seconds belongs to that bound's bucket (le).
            buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
            self.seconds[route] += seconds
            self.received[route] += received
            self.sent[route] += sent
            if route == "upload" and status[:1] in ("4", "5") and method in UPLOAD_METHODS:
                self.on_refused_upload()

    def collect(self) -> Iterator[Metric]:
        """Fold what is noted and yield the totals as metric families."""
        in_flight = next(self.begun) - next(self.ended)
        with self.folding:
            self._fold()
            requests = CounterMetricFamily(
                "bucketdav_http_requests",
                "HTTP requests answered, by method, route kind and status code.",
                labels=["method", "route", "status"],
            )
            for key, count in self.requests.items():
                requests.add_metric(list(key), count)
            durations = HistogramMetricFamily(
                "bucketdav_http_request_duration_seconds",
                "Time from a request's arrival to the end of its answer, by route kind.",
                labels=["route"],
            )
            received = CounterMetricFamily(
                "bucketdav_http_received_bytes",
                "Request body bytes read, by route kind.",
                labels=["route"],
            )
            sent = CounterMetricFamily(
                "bucketdav_http_sent_bytes",
                "Response body bytes sent, by route kind.",
                labels=["route"],
            )
            for route, counts in self.durations.items():
                cumulative = list(itertools.accumulate(counts))
                bounds = [*(f"{bound:g}" for bound in BUCKETS), "+Inf"]
                durations.add_metric(
                    [route], list(zip(bounds, cumulative, strict=True)), self.seconds[route]
                )
                received.add_metric([route], self.received[route])
                sent.add_metric([route], self.sent[route])
        yield requests
        yield durations
        yield received
        yield sent
        yield GaugeMetricFamily(
            "bucketdav_http_requests_in_flight",
            "Requests being answered now (their answer not yet fully sent).",
            value=max(0, in_flight),
        )
