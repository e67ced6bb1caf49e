"""Metrics: /metrics in Prometheus format, exact counts, bounded labels, cheap scrapes."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import webtest
from prometheus_client.parser import text_string_to_metric_families

from bucketdav.observe.metrics import Metrics, route_kind
from bucketdav.observe.requests import FOLD_AT
from bucketdav.observe.totals import count_store
from bucketdav.server import make_app
from bucketdav.store.blobs import Store
from tests.conftest import make_settings
from tests.helpers import md5, tar_gz

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition by (name, labels), parsed by prometheus_client itself."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples) -> dict[tuple[str, frozenset], float]:
    """The samples of bucketdav's own counters and histograms that changed, and by how much."""
    return {
        key: after[key] - before.get(key, 0.0)
        for key in after
        if key[0].startswith("bucketdav_")
        and key[0].endswith(("_total", "_bucket", "_count", "_sum"))
        and after[key] != before.get(key, 0.0)
    }


def scrape(server: Any) -> tuple[Samples, list[int]]:
    """A live server's metrics once no other request is in flight, and the sizes of the scrapes.

    A request is counted when its answer is closed, just after the client has it all; the
    scrape is repeated (a bounded number of times) until it is the only request in flight.
    """
    sizes = []
    deadline = time.monotonic() + 10
    while True:
        response = server.request("GET", "/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        sizes.append(len(response.body))
        found = samples(response.body.decode())
        if value(found, "bucketdav_http_requests_in_flight") == 1:
            return found, sizes
        assert time.monotonic() < deadline, "requests stayed in flight"


PROPFIND = (
    b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop>'
    b"<D:getcontentlength/></D:prop></D:propfind>"
)


def test_metrics_known_requests_move_each_counter_by_exactly_the_expected_amount(
    live_server_factory,
):
    server = live_server_factory(MAX_CONTENT_LENGTH="1kb")
    data = f"content {uuid.uuid4()}\n".encode() * 10
    evil = tar_gz({"../outside/evil": b"x"})
    before, sizes = scrape(server)
    scrapes = sizes[-1:]  # each scrape is counted after it answers: in the next one

    first = server.upload("a.txt", data)
    again = server.upload("b.txt", data)
    refused_archive = server.upload("evil.tgz", evil)
    too_large = server.upload("big.bin", b"x" * 2048)
    listing = server.request("PROPFIND", "/blob/", body=PROPFIND, headers={"Depth": "1"})
    path = server.path_of(first.json()["url"]["blob"])
    got = server.request("GET", path)
    missing = server.request("GET", "/blob/00/00/nothing")

    after, more = scrape(server)
    scrapes += more[:-1]
    assert [first.status, again.status, refused_archive.status, too_large.status] == [
        200,
        200,
        422,
        413,
    ]
    assert [listing.status, got.status, missing.status] == [207, 200, 404]
    assert got.body == data

    def requests(method: str, route: str, status: str) -> tuple[str, frozenset]:
        return (
            "bucketdav_http_requests_total",
            frozenset({"method": method, "route": route, "status": status}.items()),
        )

    def count(name: str, **labels: str) -> tuple[str, frozenset]:
        return (name, frozenset(labels.items()))

    uploaded = len(data) * 2 + len(evil)
    dav_sent = len(got.body) + len(missing.body)
    answered = sum(len(r.body) for r in (first, again, refused_archive, too_large))
    expected = {
        requests("PUT", "upload", "200"): 2,
        requests("PUT", "upload", "422"): 1,
        requests("PUT", "upload", "413"): 1,
        requests("PROPFIND", "dav_propfind", "207"): 1,
        requests("GET", "dav_get", "200"): 1,
        requests("GET", "dav_get", "404"): 1,
        requests("GET", "metrics", "200"): len(scrapes),
        count("bucketdav_uploads_total", outcome="new"): 1,
        count("bucketdav_uploads_total", outcome="deduplicated"): 1,
        count("bucketdav_uploads_total", outcome="refused"): 2,
        count("bucketdav_dedup_saved_bytes_total"): len(data),
        count("bucketdav_archives_total", outcome="refused"): 1,
        count("bucketdav_archive_extraction_seconds_count"): 1,
        count("bucketdav_http_received_bytes_total", route="upload"): uploaded,
        count("bucketdav_http_sent_bytes_total", route="upload"): answered,
        count("bucketdav_http_sent_bytes_total", route="dav_get"): dav_sent,
        count("bucketdav_http_sent_bytes_total", route="dav_propfind"): len(listing.body),
        count("bucketdav_http_received_bytes_total", route="dav_propfind"): len(PROPFIND),
        count("bucketdav_http_sent_bytes_total", route="metrics"): sum(scrapes),
        count("bucketdav_http_request_duration_seconds_count", route="upload"): 4,
        count("bucketdav_http_request_duration_seconds_count", route="dav_get"): 2,
        count("bucketdav_http_request_duration_seconds_count", route="dav_propfind"): 1,
        count("bucketdav_http_request_duration_seconds_count", route="metrics"): len(scrapes),
    }
    changed = moved(before, after)
    # Buckets and sums move by amounts that depend on timing; they are checked below.
    exact = {
        key: delta for key, delta in changed.items() if not key[0].endswith(("_bucket", "_sum"))
    }
    assert exact == expected
    assert_histograms_sound(after)
    # Cheroot's workers, read when scraped: the scrape itself holds one of them.
    assert value(after, "bucketdav_workers") == 64
    assert 0 <= value(after, "bucketdav_workers_idle") <= 63
    assert value(after, "bucketdav_connections_queued") == 0
    assert value(after, "bucketdav_http_requests_in_flight") == 1


def assert_histograms_sound(found: Samples) -> None:
    """Each histogram's buckets are cumulative and its +Inf bucket equals its count."""
    series: dict[tuple[str, frozenset], list[tuple[float, float]]] = {}
    for (name, labels), number in found.items():
        if name.endswith("_bucket"):
            le = dict(labels)["le"]
            rest = frozenset((k, v) for k, v in labels if k != "le")
            series.setdefault((name[: -len("_bucket")], rest), []).append((float(le), number))
    assert series
    for (base, labels), buckets in series.items():
        counts = [number for _le, number in sorted(buckets)]
        assert counts == sorted(counts), (base, labels)
        assert sorted(buckets)[-1][0] == float("inf")
        assert counts[-1] == found[(f"{base}_count", labels)], (base, labels)


def test_metrics_archive_extracted_and_replicas_made_are_counted(make_client):
    client = make_client(REPLICATE_0="team/${Team}")
    before = samples(client.get("/metrics").text)
    archive = tar_gz({"a.txt": b"a\n", "sub/b.txt": b"b\n"})
    client.put("/upload/results.tgz", archive, headers={"Team": "core"})
    after = samples(client.get("/metrics").text)
    assert (
        value(after, "bucketdav_archives_total", outcome="extracted")
        - value(before, "bucketdav_archives_total", outcome="extracted")
        == 1
    )
    assert value(after, "bucketdav_archive_extraction_seconds_count") == 1
    assert value(after, "bucketdav_replicas_made_total") == 1
    assert value(after, "bucketdav_uploads_total", outcome="new") == 1


def series_names(client: webtest.TestApp) -> set[tuple[str, frozenset]]:
    return set(samples(client.get("/metrics").text))


def test_metrics_distinct_paths_and_names_add_no_series(make_client):
    client = make_client()
    for step in (0, 1):
        # The first pass makes each kind of request once; the second adds 1,000 more.
        count = 1 if step == 0 else 250
        before = series_names(client)
        for index in range(count):
            name = f"{uuid.uuid4().hex}-{index}"
            client.put(f"/upload/{name}.txt", name.encode())
            client.get(f"/blob/{name}/{name}.bin", status=404)
            client.request(
                f"/explode/{name}/", method="PROPFIND", headers={"Depth": "1"}, status=404
            )
            client.request(f"/{name}", method=f"X{index}", status="*")
        after = series_names(client)
    assert after == before


@dataclass
class Opened:
    """Paths under one folder that this thread opened or listed while `watching` is on."""

    root: str
    thread: int = 0
    watching: bool = False
    paths: list[str] = field(default_factory=list)


_WATCHERS: list[Opened] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event not in ("open", "os.scandir", "os.listdir") or not _WATCHERS:
        return
    path = args[0] if args else None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        return
    here = threading.get_ident()
    for watch in _WATCHERS:
        inside = os.path.abspath(path).startswith(watch.root)
        if watch.watching and here == watch.thread and inside:
            watch.paths.append(path)


@pytest.fixture
def opened(store_root: Path):
    """Records what the test's thread opens or lists under the store (an audit hook)."""
    if not getattr(sys, "_bucketdav_audit", False):
        sys.addaudithook(_audit)
        sys._bucketdav_audit = True  # an audit hook cannot be removed: add it once
    watch = Opened(root=str(store_root), thread=threading.get_ident())
    _WATCHERS.append(watch)
    yield watch
    _WATCHERS.remove(watch)


def fill_store(store: Store, *, blobs: int, links_per_blob: int) -> None:
    """`blobs` blobs, each with `links_per_blob` hard links in trees of 1,000 files."""
    tree = store.tree_path("ab" * store.digest_size)
    made = 0
    folder = tree
    for index in range(blobs):
        data = f"blob {index}\n".encode()
        path = store.blob_path(md5(data))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        for _ in range(links_per_blob):
            if made % 1000 == 0:
                folder = tree / f"d{made // 1000}"
                folder.mkdir(parents=True)
            os.link(path, folder / f"f{made}")
            made += 1


@pytest.mark.slow
def test_metrics_scrape_of_a_200k_file_store_is_fast_and_opens_nothing_in_it(store_root, opened):
    settings = make_settings(store_root)
    store = Store(settings.archive_dir, settings.checksum_type, min_free=settings.min_free)
    store.open()
    fill_store(store, blobs=2_000, links_per_blob=99)  # 2,000 blobs + 198,000 tree files
    metrics = Metrics(store)
    client = webtest.TestApp(make_app(settings, store, metrics=metrics), lint=False)
    assert "bucketdav_store_blobs" not in client.get("/metrics").text  # not counted yet
    totals = metrics.totals.run_once()
    assert (totals.blobs, totals.trees) == (2_000, 1)
    client.get("/metrics")  # the first scrape of the counted totals
    opened.watching = True
    started = time.monotonic()
    text = client.get("/metrics").text
    elapsed = time.monotonic() - started
    opened.watching = False
    print(f"scrape of a 200,000-file store: {elapsed * 1000:.1f} ms")
    assert elapsed < 0.1
    assert opened.paths == []
    found = samples(text)
    assert value(found, "bucketdav_store_blobs") == 2_000
    assert value(found, "bucketdav_store_linked_bytes") == 99 * totals.blob_bytes
    assert value(found, "bucketdav_store_free_bytes") > 0
    # The hook does see what the app opens under the store: a GET of a blob is noticed.
    opened.watching = True
    client.get("/" + store.relative(store.blob_path(md5(b"blob 7\n"))))
    opened.watching = False
    assert opened.paths


def plain_tar(members: dict[str, bytes]) -> bytes:
    """An uncompressed ustar archive of regular files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_metrics_store_count_sees_blobs_trees_and_replicas(make_client, store_root):
    client = make_client(REPLICATE_0="team/${Team}")
    archive = plain_tar({"x.txt": b"x\n"})
    client.put("/upload/a.txt", b"a\n", headers={"Team": "core"})
    client.put("/upload/a.txt", b"a\n", headers={"Team": "core"})
    client.put("/upload/t.tar", archive, headers={"Team": "core"})
    totals = count_store(Store(store_root, "md5"))
    # Blobs: a.txt, the tar and its member; replicas: a.txt twice and the tree once.
    assert (totals.blobs, totals.trees, totals.replicas) == (3, 1, 3)
    assert totals.blob_bytes == 2 + len(archive) + 2
    # a.txt has two more names (its replicas), x.txt one (in the tree), the tar none.
    assert totals.linked_bytes == 2 * 2 + 2
    assert totals.at <= time.time() and totals.seconds >= 0


@pytest.mark.parametrize(
    ("method", "path", "query", "kind"),
    [
        ("PUT", "/upload/a/b.txt", "", "upload"),
        ("POST", "/upload", "", "upload"),
        ("GET", "/upload", "", "upload_page"),
        ("HEAD", "/checksum/abc", "", "checksum"),
        ("GET", "/metrics", "", "metrics"),
        ("GET", "/static/upload.js", "", "static"),
        ("GET", "/blob/ab/cd/abcd", "", "dav_get"),
        ("GET", "/explode/ab/", "download=zip", "dav_download"),
        ("HEAD", "/", "", "dav_head"),
        ("PROPFIND", "/replica/x/", "", "dav_propfind"),
        ("OPTIONS", "/", "", "dav_options"),
        ("DELETE", "/blob/x", "", "dav_other"),
        ("GET", "/uploads/x", "", "dav_get"),
        ("GET", "", "", "dav_get"),
    ],
)
def test_metrics_route_kind_is_one_of_a_few_names(method, path, query, kind):
    assert route_kind(method, path, query) == kind


def test_metrics_off_removes_the_route_and_counts_nothing(make_client):
    client = make_client(BUCKETDAV_METRICS="off")
    client.put("/upload/a.txt", b"a")
    response = client.get("/metrics", status=404)
    assert response.json["code"] == 404


@dataclass
class Report:
    """What a retention and collection run reports (store/collect.py)."""

    success: bool
    seconds: float
    entries: int
    trees: int
    blobs: int
    bytes_freed: int


def test_metrics_collection_runs_are_recorded(store_root):
    metrics = Metrics(Store(store_root, "md5"))
    assert "bucketdav_gc_last_success_timestamp_seconds" not in metrics.exposition().decode()
    metrics.collected(Report(True, 1.5, entries=3, trees=1, blobs=0, bytes_freed=4096))
    metrics.collected(Report(False, 0.5, entries=1, trees=0, blobs=0, bytes_freed=10))
    found = samples(metrics.exposition().decode())
    assert value(found, "bucketdav_gc_runs_total", outcome="success") == 1
    assert value(found, "bucketdav_gc_runs_total", outcome="failure") == 1
    assert value(found, "bucketdav_gc_removed_total", kind="replicas") == 4
    assert value(found, "bucketdav_gc_removed_total", kind="trees") == 1
    assert value(found, "bucketdav_gc_removed_total", kind="blobs") == 0
    assert value(found, "bucketdav_gc_freed_bytes_total") == 4106
    assert value(found, "bucketdav_gc_last_duration_seconds") == 0.5
    assert time.time() - value(found, "bucketdav_gc_last_success_timestamp_seconds") < 60


def test_metrics_each_app_has_its_own_registry(store_root):
    store = Store(store_root, "md5")
    one, two = Metrics(store), Metrics(store)
    one.uploads.labels("new").inc()
    assert value(samples(one.exposition().decode()), "bucketdav_uploads_total", outcome="new") == 1
    assert value(samples(two.exposition().decode()), "bucketdav_uploads_total", outcome="new") == 0


def test_metrics_grafana_dashboard_uses_only_metrics_that_exist(store_root):
    store = Store(store_root, "md5")
    store.open()
    metrics = Metrics(store)
    metrics.totals.run_once()
    metrics.collected(Report(True, 1.0, entries=1, trees=0, blobs=1, bytes_freed=10))
    pool = SimpleNamespace(_threads=[object()], min=1, idle=1, qsize=0)
    metrics.watch(SimpleNamespace(requests=pool))
    metrics.request("GET", "dav_get", "200", 0.01, received=0, sent=1)
    exposed = set(samples(metrics.exposition().decode()).keys())
    names = {name for name, _labels in exposed}
    dashboard = (Path(__file__).parent.parent / "docs" / "grafana-dashboard.json").read_text()
    panels = json.loads(dashboard)["panels"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"bucketdav_[a-z_]+", expr)}
    assert len(used) > 20
    assert used - names == set()


def test_metrics_requests_from_many_threads_are_all_counted_and_the_queue_stays_bounded(
    store_root,
):
    metrics = Metrics(Store(store_root, "md5"))
    longest = []

    def answer() -> None:
        for _ in range(2_000):
            metrics.begin()
            metrics.request("GET", "dav_get", "200", 0.001, received=0, sent=10)
        longest.append(len(metrics.answers.answered))

    threads = [threading.Thread(target=answer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert max(longest) < 2 * FOLD_AT  # not 16,000: full queues are folded
    found = samples(metrics.exposition().decode())
    labels = {"method": "GET", "route": "dav_get", "status": "200"}
    assert value(found, "bucketdav_http_requests_total", **labels) == 16_000
    assert value(found, "bucketdav_http_sent_bytes_total", route="dav_get") == 160_000
    assert value(found, "bucketdav_http_request_duration_seconds_count", route="dav_get") == 16_000
    assert value(found, "bucketdav_http_requests_in_flight") == 0


def test_metrics_the_server_s_collection_runs_are_counted(live_server_factory):
    server = live_server_factory(
        REPLICATE_0="team/${Team}", BUCKETDAV_KEEP_LAST="1", BUCKETDAV_GC_INTERVAL="1"
    )
    for index in range(3):
        response = server.upload("a.txt", f"version {index}\n".encode(), headers={"Team": "x"})
        assert response.status == 200
    removed = ("bucketdav_gc_removed_total", frozenset({("kind", "replicas")}))
    deadline = time.monotonic() + 20
    while (found := scrape(server)[0]).get(removed, 0) < 2:
        assert time.monotonic() < deadline, "no collection removed the two older replicas"
        time.sleep(0.2)
    assert found[removed] == 2
    assert value(found, "bucketdav_gc_runs_total", outcome="success") >= 1
    assert value(found, "bucketdav_gc_runs_total", outcome="failure") == 0
    assert value(found, "bucketdav_gc_freed_bytes_total") == 0  # replicas are hard links
    assert time.time() - value(found, "bucketdav_gc_last_success_timestamp_seconds") < 30
