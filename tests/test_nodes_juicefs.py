"""Two nodes on one JuiceFS volume: every cross-request guarantee holds through the store alone.

One module-wide JuiceFS volume (Redis metadata, local object storage) is mounted twice, as two
machines would, and `bucketdav serve` runs on each mount with its own BUCKETDAV_NODE over the
same ARCHIVE_DIR. Everything is stopped by PID and unmounted at the end, also after a failure.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import juicefs
import pytest
from conftest import IN_CI, LiveServer
from helpers import md5, tar_gz
from test_collect_race import content, missing_parts

from bucketdav import launch
from bucketdav.store.entries import Series

pytestmark = pytest.mark.slow

TOPIC_HEADER = "Topic"
# The collection race across nodes: bounded in rounds, collector runs and time.
RACE_ROUNDS = 30
RACE_RUNS = 40
RACE_BUDGET = 8.0


@dataclass
class Cluster:
    """Two servers, node-a and node-b, over one ARCHIVE_DIR on a JuiceFS volume."""

    a: LiveServer
    b: LiveServer
    volume: juicefs.Volume

    @property
    def nodes(self) -> tuple[LiveServer, LiveServer]:
        return self.a, self.b


def node_server(volume: juicefs.Volume, index: int, name: str, work: Path) -> LiveServer:
    """A server for node `name` on mount `index` of the volume (not started)."""
    env = launch.environ_with(
        ARCHIVE_DIR=str(volume.mounts[index] / "store"),
        BUCKETDAV_NODE=name,
        BUCKETDAV_MIN_FREE="0",
        MAX_CONTENT_LENGTH="64mb",
        REPLICATE_0="nodes/${Topic}",
    )
    return LiveServer(root=volume.mounts[index] / "store", log_path=work / f"{name}.log", env=env)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """node-a and node-b on their own mounts of one volume; all torn down by PID at the end."""
    missing = juicefs.missing_tools()
    if missing:
        message = f"{', '.join(missing)} missing (.ci/run installs them)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    work = tmp_path_factory.mktemp("juicefs")
    with juicefs.volume(work / "volume", nodes=2) as volume:
        a = node_server(volume, 0, "node-a", work)
        b = node_server(volume, 1, "node-b", work)
        try:
            a.start(timeout=60)
            b.start(timeout=60)
            yield Cluster(a, b, volume)
        finally:
            for server in (a, b):
                server.stop(signal.SIGKILL)


def upload(server: LiveServer, name: str, data: bytes, topic: str | None = None) -> dict:
    """PUT `data`; asserts 200 and returns the JSON answer."""
    response = server.upload(name, data, {TOPIC_HEADER: topic} if topic else None)
    assert response.status == 200, (response.status, response.body[:300])
    return response.json()


def replica_names(cluster: Cluster, topic: str) -> list[str]:
    """The names in replica/nodes/<topic>/ as node-b's mount shows them."""
    return sorted(os.listdir(cluster.b.root / "replica" / "nodes" / topic))


def start_partial_upload(
    server: LiveServer, name: str, data: bytes, sent: int
) -> http.client.HTTPConnection:
    """A PUT of `data` with only its first `sent` bytes sent so far."""
    conn = server.connection(timeout=60)
    conn.putrequest("PUT", f"/upload/{name}")
    conn.putheader("Content-Length", str(len(data)))
    conn.endheaders()
    conn.send(data[:sent])
    return conn


def finish_upload(conn: http.client.HTTPConnection, data: bytes, sent: int) -> dict:
    """Send the rest of a partial upload; asserts 200 and returns the JSON answer."""
    conn.send(data[sent:])
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 200, (response.status, body[:300])
    return json.loads(body)


def staged_upload(server: LiveServer, node: str, *, timeout: float = 30) -> Path:
    """Wait until `node`'s staging folder holds an upload with bytes in it; return it."""
    folder = server.root / "staging" / node
    deadline = time.monotonic() + timeout
    while True:
        for entry in os.scandir(folder):
            if entry.name.startswith("up-") and entry.stat().st_size > 0:
                return Path(entry.path)
        assert time.monotonic() < deadline, f"no upload being received in staging/{node}/"
        time.sleep(0.02)


def bucketdav_command(cluster: Cluster, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`bucketdav ARGS` from the shell with node-a's store settings (plus `env`)."""
    settings = {k: v for k, v in cluster.a.env.items() if not k.startswith("REPLICATE_")}
    return subprocess.run(
        [sys.executable, "-m", "bucketdav", *args],
        env={**settings, **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@dataclass
class Race:
    """What the cross-node collection race saw, to check once it is over."""

    problems: list[str] = field(default_factory=list)
    acked: list[dict] = field(default_factory=list)
    # When each successful collector run was launched (time.time()), in order.
    runs: list[float] = field(default_factory=list)
    collected: int = 0
    rounds: int = 0
    gone_deploys: int = 0
    racing_404s: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bad(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def put(self, server: LiveServer, name: str, data: bytes, headers: dict) -> int:
        """PUT and note anything but 200 (and 404 for a deploy); keep replicas to check."""
        response = server.upload(name, data, headers)
        deploy = "X-Checksum-Deploy" in headers
        if response.status == 404 and deploy:
            return 404
        if response.status != 200:
            self.bad(f"{name} {headers}: {response.status} {response.body[:200]!r}")
            return response.status
        answer = response.json()
        if TOPIC_HEADER in headers:
            if answer["skipped"] or not answer["path"]["replicas"]:
                self.bad(f"{name} {headers}: replica not made: {answer['skipped']}")
            else:
                with self.lock:
                    self.acked.append(answer)
        return 200


def orphan(index: int) -> tuple[str, bytes]:
    """Content uploaded once without a replica and never again: the collector takes it."""
    if index % 2:
        return f"o{index}.tgz", tar_gz({"o/a.txt": f"orphan {index}\n".encode(), "b": b"same"})
    return f"o{index}.bin", f"orphan content {index}\n".encode() * 50


# -- tests -----------------------------------------------------------------------------------


def test_nodes_name_themselves_in_healthz_and_config(cluster):
    assert cluster.a.request("GET", "/healthz").json()["node"] == "node-a"
    assert cluster.b.request("GET", "/healthz").json()["node"] == "node-b"
    assert cluster.b.request("GET", "/config").json()["BUCKETDAV_NODE"] == "node-b"
    staging = sorted(os.listdir(cluster.a.root / "staging"))
    assert staging == ["node-a", "node-b"]


def test_nodes_same_content_at_both_at_once_is_one_blob(cluster):
    rng = random.Random(16)
    barrier = threading.Barrier(2, timeout=30)

    def send(server: LiveServer, data: bytes) -> dict:
        barrier.wait()
        return upload(server, "same.bin", data)

    with ThreadPoolExecutor(2) as pool:
        for _ in range(20):
            data = rng.randbytes(256 * 1024)
            answers = list(pool.map(send, cluster.nodes, (data, data)))
            digest = md5(data)
            assert {a["checksum"]["blob"] for a in answers} == {digest}
            assert {a["path"]["blob"] for a in answers} == {
                f"blob/{digest[:2]}/{digest[2:4]}/{digest}"
            }
            assert sorted(a["created"] for a in answers) == [False, True]
            blob = cluster.a.root / answers[0]["path"]["blob"]
            assert blob.stat().st_nlink == 1 and md5(blob.read_bytes()) == digest
            for server in cluster.nodes:
                assert server.request("GET", "/" + answers[0]["path"]["blob"]).body == data


def test_nodes_replica_indexes_are_distinct_across_nodes(cluster):
    rng = random.Random(50)
    contents = [rng.randbytes(4096) for _ in range(50)]

    def send(index: int) -> dict:
        return upload(cluster.nodes[index % 2], "r.txt", contents[index], topic="indexes")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(50)))

    replicas = [answer["path"]["replicas"][0] for answer in answers]
    assert len(set(replicas)) == 50
    names = replica_names(cluster, "indexes")
    stamped = [n for n in names if n != "r.latest.txt"]
    assert sorted(Path(r).name for r in replicas) == sorted(stamped)
    assert len(stamped) == 50
    for answer, data in zip(answers, contents, strict=True):
        path = "/" + answer["path"]["replicas"][0]
        assert cluster.a.request("GET", path).body == data
        assert cluster.b.request("GET", path).body == data
    series = Series("r", ".txt")
    newest = max(stamped, key=series.parse)
    latest = cluster.a.root / "replica" / "nodes" / "indexes" / "r.latest.txt"
    assert os.readlink(latest) == newest


def test_nodes_reader_on_b_never_misses_or_lags_latest_of_a(cluster):
    path = "/replica/nodes/polled/v.latest.txt"
    on_disk = cluster.b.root / "replica" / "nodes" / "polled" / "v.latest.txt"
    upload(cluster.a, "v.txt", b"version 0", topic="polled")
    acked = [0]
    done = threading.Event()
    bad: list[str] = []
    reads = [0, 0]

    def version(body: bytes) -> int:
        return int(body.removeprefix(b"version "))

    def poll() -> None:
        deadline = time.monotonic() + 120
        while not done.is_set() and time.monotonic() < deadline:
            floor = acked[0]
            response = cluster.b.request("GET", path)
            reads[0] += 1
            if response.status != 200:
                bad.append(f"HTTP {response.status} after version {floor}")
            elif version(response.body) < floor:
                bad.append(f"HTTP {response.body!r} after version {floor} was acknowledged")
            floor = acked[0]
            try:
                seen = version(on_disk.read_bytes())
            except OSError as exc:
                bad.append(f"disk {exc} after version {floor}")
            else:
                reads[1] += 1
                if seen < floor:
                    bad.append(f"disk version {seen} after version {floor} was acknowledged")

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for number in range(1, 31):
            upload(cluster.a, "v.txt", b"version %d" % number, topic="polled")
            acked[0] = number
    finally:
        done.set()
        reader.join(150)
    assert bad == []
    assert reads[0] >= 30 and reads[1] >= 30
    assert cluster.b.request("GET", path).body == b"version 30"


def test_nodes_kill_of_one_mid_upload_leaves_the_other_and_its_uploads_alone(cluster):
    rng = random.Random(9)
    first, second, third = (rng.randbytes(4 << 20) for _ in range(3))
    sent = 1 << 20

    # node-a dies with an upload half received.
    dying = start_partial_upload(cluster.a, "dies.bin", first, sent)
    leftover = staged_upload(cluster.a, "node-a")
    cluster.a.stop(signal.SIGKILL)
    dying.close()
    assert upload(cluster.b, "meanwhile.txt", b"node-b serves on")["created"] is True
    assert cluster.b.request("GET", "/healthz").status == 200

    # node-a restarts while node-b receives an upload: only node-a's leftover goes.
    receiving = start_partial_upload(cluster.b, "slow-b.bin", second, sent)
    in_flight_b = staged_upload(cluster.b, "node-b")
    cluster.a.start(timeout=60)
    assert not leftover.exists()
    assert os.listdir(cluster.a.root / "staging" / "node-a") == []
    assert in_flight_b.exists()
    assert finish_upload(receiving, second, sent)["checksum"]["blob"] == md5(second)

    # node-b restarts while node-a receives an upload: node-a's upload is kept and completes.
    receiving = start_partial_upload(cluster.a, "slow-a.bin", third, sent)
    in_flight_a = staged_upload(cluster.a, "node-a")
    cluster.b.stop(signal.SIGTERM)
    cluster.b.start(timeout=60)
    assert in_flight_a.exists()
    assert finish_upload(receiving, third, sent)["checksum"]["blob"] == md5(third)
    for data in (second, third):
        digest = md5(data)
        assert cluster.b.request("GET", f"/blob/{digest[:2]}/{digest[2:4]}/{digest}").body == data
    assert md5(first) not in {p.name for p in (cluster.a.root / "blob").rglob("*")}


def test_nodes_collection_on_a_races_uploads_and_deploys_on_b(cluster):
    # node-a's collector (`bucketdav gc`, everything unreferenced goes at once) runs over and
    # over while node-b receives, each round: new content without a replica (the collector's
    # to take), the same content with a replica and deployed by checksum at once, and a
    # deploy of content a finished run has certainly taken (launched after it was acked).
    race = Race()
    stop = threading.Event()
    orphans: list[tuple[float, str, bytes]] = []
    deadline = time.monotonic() + RACE_BUDGET

    def collect() -> None:
        for _ in range(RACE_RUNS):
            if stop.is_set() or time.monotonic() > deadline + 5:
                return
            launched = time.time()
            done = bucketdav_command(cluster, "gc", "--json", BUCKETDAV_GC_UNREFERENCED_DAYS="0")
            report = json.loads(done.stdout) if done.returncode == 0 else {}
            if not report.get("success"):
                race.bad(f"gc exited {done.returncode}: {done.stdout[-300:]}{done.stderr[-300:]}")
                continue
            with race.lock:
                race.runs.append(launched)
                race.collected += report["blobs"] + report["trees"]

    def deploy_gone(name: str, data: bytes, index: int) -> None:
        headers = {"X-Checksum-Deploy": "true", "X-Checksum": md5(data), "Topic": f"g{index}"}
        status = race.put(cluster.b, name, b"", headers)
        if status != 404:
            race.bad(f"deploy of collected {name}: {status}, not 404")
        race.gone_deploys += 1

    def deploy_racing(name: str, data: bytes, index: int) -> None:
        headers = {"X-Checksum-Deploy": "true", "X-Checksum": md5(data), "Topic": f"d{index}"}
        if race.put(cluster.b, name, b"", headers) == 404:
            race.racing_404s += 1

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        for index in range(RACE_ROUNDS):
            if time.monotonic() > deadline:
                break
            name, data = content(index)
            race.put(cluster.b, name, data, {})
            gone_name, gone_data = orphan(index)
            race.put(cluster.b, gone_name, gone_data, {})
            orphans.append((time.time(), gone_name, gone_data))
            racers = [
                threading.Thread(
                    target=race.put, args=(cluster.b, name, data, {"Topic": f"r{index}"})
                ),
                threading.Thread(target=deploy_racing, args=(name, data, index)),
            ]
            # The oldest orphan acked before a finished run was launched: surely taken.
            last_run = race.runs[-1] if race.runs else 0.0
            if orphans and orphans[0][0] < last_run:
                _acked, taken_name, taken_data = orphans.pop(0)
                racers.append(
                    threading.Thread(target=deploy_gone, args=(taken_name, taken_data, index))
                )
            for racer in racers:
                racer.start()
            for racer in racers:
                racer.join(60)
            race.rounds += 1
    finally:
        stop.set()
        collector.join(120)
    print(
        f"{race.rounds} rounds, {len(race.runs)} collector runs, {race.collected} collected, "
        f"{len(race.acked)} acknowledged, {race.gone_deploys} deploys of collected content, "
        f"{race.racing_404s} racing deploys got 404"
    )
    assert race.problems == []
    assert race.rounds >= 10 and len(race.runs) >= 3
    assert race.collected >= 5 and race.gone_deploys >= 3
    assert len(race.acked) >= race.rounds
    missing = {a["path"]["replicas"][0]: missing_parts(cluster.b.root, a) for a in race.acked}
    assert {k: v for k, v in missing.items() if v} == {}
    for answer in race.acked:
        blob = cluster.a.request("GET", "/" + answer["path"]["blob"])
        assert blob.status == 200 and md5(blob.body) == answer["checksum"]["blob"]
    done = bucketdav_command(cluster, "check", "--full")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "clean" in done.stdout.lower()


def test_nodes_store_checks_clean_at_the_end(cluster):
    done = bucketdav_command(cluster, "check", "--full")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "clean" in done.stdout.lower()
