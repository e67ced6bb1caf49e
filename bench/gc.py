"""Retention and collection: a full pass next to `find`, and uploads while the server collects.

Usage: python bench/gc.py [--blobs 100000] [--replicas 20000] [--trees 200] [--uploads 1000]
                          [--dir /tmp]

Builds a store of `--blobs` blobs, `--replicas` replica entries and `--trees` trees on disk
(written directly in the store's layout: the upload path is bench/upload.py's business).
Half the blobs are linked from replicas and trees, the other half from nothing; half the
trees have a replica. Then, in the same run:

- `find ARCHIVE_DIR -printf '%n %T@\\n' > /dev/null`, the baseline (best of three);
- `bucketdav gc --dry-run` with BUCKETDAV_GC_UNREFERENCED_DAYS=0 (the full pass: walk and
  plan), as a command and inside the process (best of three);
- `bucketdav gc`, which removes the unreferenced half;
- `--uploads` small uploads (2 clients) to a real server over a second such store before
  its first collection, then uploads all the while that collection runs (walk and
  removals, up to five minutes); p50 and p99 of each.

Targets: the pass at most 2x find; upload p99 during collection at most 1.5x without.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bucketdav import launch
from bucketdav.settings import load_settings
from bucketdav.store.blobs import Store
from bucketdav.store.collect import Collector

STAMP = "20260101.1200"
# Seconds from the server's start-up to its first collection: time for the quiet uploads.
INTERVAL = 45
# The most seconds of uploads while the server collects.
BUSY_SECONDS = 300


def digest_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324 - the store's default checksum


def blob_path(root: Path, digest: str) -> Path:
    return root / "blob" / digest[:2] / digest[2:4] / digest


def write_blob(root: Path, data: bytes) -> Path:
    """A blob as the store keeps it (0444 at blob/ab/cd/<md5>), not flushed: a bench store."""
    path = blob_path(root, digest_of(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o444)
    return path


def build_store(root: Path, *, blobs: int, replicas: int, trees: int) -> dict[str, int]:
    """Lay out the store described in the module's docstring; returns what it holds."""
    for part in ("blob", "explode", "replica", "decompressed", "staging"):
        (root / part).mkdir(parents=True, exist_ok=True)
    tree_entries = trees // 2
    file_entries = max(0, replicas - tree_entries)
    linked = blobs // 2 - trees  # the archive blob of each tree counts among the blobs
    per_tree = max(1, (linked - file_entries) // max(1, trees))
    made = 0
    # Replica entries: hard links of distinct blobs, 100 to a folder.
    for index in range(file_entries):
        blob = write_blob(root, f"replicated {index}\n".encode())
        folder = root / "replica" / "bench" / f"p{index // 100}"
        folder.mkdir(parents=True, exist_ok=True)
        os.link(blob, folder / f"f.{STAMP}.{index % 100}.bin")
        made += 1
    # Trees: each the tree of an archive blob, its files hard links of distinct blobs.
    for index in range(trees):
        archive = write_blob(root, f"archive {index}\n".encode())
        made += 1
        tree = root / "explode" / archive.name[:2] / archive.name[2:4] / archive.name
        for member in range(per_tree):
            blob = write_blob(root, f"tree {index} member {member}\n".encode())
            made += 1
            path = tree / f"d{member // 50}" / f"m{member}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(blob, path)
        if index < tree_entries:
            folder = root / "replica" / "bench" / "trees"
            folder.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(tree, folder), folder / f"t.{STAMP}.{index}")
    # The unreferenced half.
    index = 0
    while made < blobs:
        write_blob(root, f"unreferenced {index}\n".encode())
        made += 1
        index += 1
    return {"blobs": made, "replicas": file_entries + tree_entries, "trees": trees}


def best_of(runs: int, action) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def run_find(root: Path) -> None:
    with open(os.devnull, "wb") as sink:
        subprocess.run(["find", str(root), "-printf", "%n %T@\\n"], stdout=sink, check=True)


def gc_command(root: Path, *args: str) -> tuple[float, str]:
    env = launch.environ_with(ARCHIVE_DIR=str(root), BUCKETDAV_GC_UNREFERENCED_DAYS="0")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bucketdav", "gc", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - started, done.stdout.splitlines()[-1]


def in_process_pass(root: Path) -> float:
    settings = load_settings(
        environ={"ARCHIVE_DIR": str(root), "BUCKETDAV_GC_UNREFERENCED_DAYS": "0"}
    )
    store = Store(root, "md5", node=settings.node)
    return Collector(store, settings).run(dry_run=True).seconds


def collecting(root: Path) -> bool:
    """True while a collection holds the store's lock (gc/lock)."""
    try:
        fd = os.open(root / "gc" / "lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def upload_latencies(port: int, count: int, tag: str, *, until=None) -> list[float]:
    """`count` small uploads from two clients (or fewer once `until()` says stop); seconds each."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for index in range(number, count, 2):
            if until is not None and until():
                break
            body = f"{tag} upload {index}\n".encode() * 16
            started = time.perf_counter()
            conn.request("PUT", f"/upload/small-{index}.txt", body=body)
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                raise SystemExit(f"upload failed: {response.status}")
            with lock:
                latencies.append(elapsed)
        conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else float("nan")


def latency_phase(
    root: Path, log: Path, uploads: int
) -> tuple[list[float], list[float], float, bool]:
    """`uploads` uploads before the server's first collection, then more until it ends.

    One server: its first run comes one interval (INTERVAL) after start-up, after the quiet
    uploads. Returns both sets of latencies, how long the second took, and whether the
    collection was still running when they were done (it stops with the server).
    """
    env = launch.environ_with(
        ARCHIVE_DIR=str(root),
        BUCKETDAV_MIN_FREE="0",
        BUCKETDAV_GC_UNREFERENCED_DAYS="0",
        BUCKETDAV_GC_INTERVAL=f"{INTERVAL}s",
        # Its count of the store's totals would walk the store during the quiet uploads.
        BUCKETDAV_METRICS="off",
    )
    proc, port = launch.start(env, log)
    try:
        started = time.monotonic()
        upload_latencies(port, 40, "warm-up")
        quiet = upload_latencies(port, uploads, "quiet")
        if collecting(root) or time.monotonic() - started > INTERVAL:
            raise SystemExit("the quiet uploads took past the first collection; use fewer")
        deadline = time.monotonic() + 2 * INTERVAL
        while not collecting(root):
            if time.monotonic() > deadline:
                raise SystemExit("the server's collection did not start")
            time.sleep(0.01)
        begun = time.perf_counter()
        # Until the collection ends (walk, then removals), or BUSY_SECONDS at the most.
        busy = upload_latencies(
            port,
            10**9,
            "busy",
            until=lambda: not collecting(root) or time.perf_counter() - begun > BUSY_SECONDS,
        )
        span = time.perf_counter() - begun
        still = collecting(root)
    finally:
        proc.terminate()
        proc.wait(60)
    return quiet, busy, span, still


def main() -> None:
    """Build the stores, run each measurement, print the figures and the targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=100_000)
    parser.add_argument("--replicas", type=int, default=20_000)
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--uploads", type=int, default=1000)
    parser.add_argument("--dir", default=None, help="where the stores go")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        root = work / "store"
        started = time.perf_counter()
        sizes = build_store(root, blobs=args.blobs, replicas=args.replicas, trees=args.trees)
        # A second store of the same shape for the server's run (cp -a keeps hard links).
        subprocess.run(["cp", "-a", str(root), str(work / "spare")], check=True)
        print(f"store: {sizes} built in {time.perf_counter() - started:.1f} s")
        run_find(root)  # warm the caches for everyone alike
        # Taken in turns, best of three each: the machine's other load hits both alike.
        finds, passes = [], []
        for _ in range(3):
            finds.append(best_of(1, lambda: run_find(root)))
            passes.append(in_process_pass(root))
        found, inside = min(finds), min(passes)
        dry, dry_line = min(gc_command(root, "--dry-run") for _ in range(3))
        real, real_line = gc_command(root)
        print(f"find -printf '%n %T@':      {found:7.2f} s")
        print(
            f"gc pass (in the process):   {inside:7.2f} s  {inside / found:5.2f}x find (target 2x)"
        )
        print(f"gc --dry-run (command):     {dry:7.2f} s  {dry / found:5.2f}x find   {dry_line}")
        print(f"gc (command):               {real:7.2f} s  {real / found:5.2f}x find   {real_line}")
        quiet, busy, span, still = latency_phase(work / "spare", work / "server.log", args.uploads)
        print(
            f"uploads, no collection:     p50 {statistics.median(quiet) * 1000:6.1f} ms  "
            f"p99 {p99(quiet) * 1000:6.1f} ms  ({len(quiet)})"
        )
        print(
            f"uploads, while collecting:  p50 {statistics.median(busy) * 1000:6.1f} ms  "
            f"p99 {p99(busy) * 1000:6.1f} ms  ({len(busy)} in {span:.1f} s; it ran on after: "
            f"{still})"
        )
        print(f"p99 ratio: {p99(busy) / p99(quiet):.2f}x (target 1.5x)")


if __name__ == "__main__":
    main()
