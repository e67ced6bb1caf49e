"""Upload throughput and server memory: PUT and multipart POST next to hashlib over the same file.

Usage: python bench/upload.py [--sizes 100,1024] [--repeat 3] [--dir /tmp]

For each size it writes a random file, then alternates, `--repeat` times: hashlib's
CHECKSUM_TYPE over the file (the baseline), `curl -T` (PUT) and `curl -F` (multipart POST)
through a real `bucketdav serve` on 127.0.0.1. It prints medians in MB/s, the ratio of each
upload to the hash baseline, and the server's peak RSS (VmHWM) for that size.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bucketdav import launch

MIB = 1024 * 1024


def start_server(root: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A real bucketdav on a free port with no upload limit that matters here."""
    env = launch.environ_with(
        ARCHIVE_DIR=str(root), MAX_CONTENT_LENGTH="64gb", BUCKETDAV_MIN_FREE="0"
    )
    return launch.start(env, log)


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def time_hash(path: Path, algorithm: str) -> float:
    """Seconds for hashlib to hash the file in 1 MiB reads."""
    started = time.perf_counter()
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
    return time.perf_counter() - started


def time_curl(args: list[str], root: Path) -> float:
    """Seconds for one curl upload; removes the stored blob afterwards so the next is new."""
    started = time.perf_counter()
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", *args], capture_output=True, check=True, timeout=600
    )
    elapsed = time.perf_counter() - started
    if b'"code": 200' not in out.stdout:
        raise SystemExit(f"upload failed: {out.stdout[:300]!r}")
    shutil.rmtree(root / "blob")
    (root / "blob").mkdir()
    return elapsed


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1024", help="file sizes in MiB, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the file and the store go")
    args = parser.parse_args()
    algorithm = "md5"
    print(f"{'size':>8} {'what':<16} {'MB/s':>8} {'x hash':>7} {'peak RSS':>9}")
    for size_mib in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            work = Path(tmp)
            data = work / "payload.bin"
            with open(data, "wb") as handle:
                for _ in range(size_mib):
                    handle.write(os.urandom(MIB))
            root = work / "store"
            proc, port = start_server(root, work / "server.log")
            url = f"http://127.0.0.1:{port}/upload"
            try:
                runs: dict[str, list[float]] = {"hashlib md5": [], "PUT": [], "POST multipart": []}
                for _ in range(args.repeat):
                    runs["hashlib md5"].append(time_hash(data, algorithm))
                    runs["PUT"].append(time_curl(["-T", str(data), url + "/payload.bin"], root))
                    runs["POST multipart"].append(time_curl(["-F", f"file=@{data}", url], root))
                rss = peak_rss_mib(proc.pid)
            finally:
                proc.terminate()
                proc.wait(30)
            size = size_mib * MIB
            base = size / statistics.median(runs["hashlib md5"]) / 1e6
            for what, times in runs.items():
                rate = size / statistics.median(times) / 1e6
                shown = f"{rss:7.1f}Mi" if what != "hashlib md5" else ""
                print(f"{size_mib:>6}Mi {what:<16} {rate:8.0f} {rate / base:7.2f} {shown:>9}")
    print(
        f"(medians of {args.repeat}; store and file under {args.dir or tempfile.gettempdir()}; "
        "every upload is new content, flushed to disk before the answer)"
    )


if __name__ == "__main__":
    main()
