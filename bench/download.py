"""Folder downloads (`?download=zip|tar`) next to `zip -r -0` and `tar c` of the same tree.

Usage: python bench/download.py [--files 10000] [--megabytes 500] [--repeat 3] [--dir /tmp]
                                [--content random|text]

It builds one tree of `--files` files (100 to a folder) holding `--megabytes` in all, inside
the store of a real `bucketdav serve`, and reads it once so every run finds it in the page
cache. Then, `--repeat` times in turn: `tar cf - tree | cat` and `zip -qr0 - tree` to
/dev/null (the baselines; tar's output goes through cat because GNU tar skips reading the
files when it writes to /dev/null itself), and curl downloading the tree as tar, as zip with
BUCKETDAV_DOWNLOAD_DEFLATE=never (stored, like `zip -0`) and as zip with the default `auto`.
It prints medians in MB/s of tree content, each download's ratio to its baseline (targets:
at least 0.5), the median time to the first byte, and each server's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bucketdav import launch

MIB = 1024 * 1024
PER_FOLDER = 100
# Text of many short lines: compresses about 4:1, like logs and test reports.
LINE = b"2026-01-01T00:00:00Z INFO request served in %d ms from worker %d\n"


def build_tree(top: Path, *, files: int, total: int, content: str) -> None:
    """`files` files of equal size in folders of PER_FOLDER, `total` bytes in all."""
    size = total // files
    for index in range(files):
        folder = top / f"part{index // PER_FOLDER:04d}"
        if index % PER_FOLDER == 0:
            folder.mkdir(parents=True)
        if content == "random":
            data = os.urandom(size)
        else:
            text = b"".join(LINE % (index + n, n % 64) for n in range(size // len(LINE) + 1))
            data = text[:size]
        (folder / f"file{index:06d}.dat").write_bytes(data)


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_shell(command: str, cwd: Path) -> float:
    """Seconds for a shell pipeline."""
    started = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, check=True, timeout=900)
    return time.perf_counter() - started


def download(url: str) -> tuple[float, float, int]:
    """Seconds for curl to fetch `url` to /dev/null, seconds to its first byte, and bytes."""
    started = time.perf_counter()
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "-w",
            "%{time_starttransfer} %{size_download}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    elapsed = time.perf_counter() - started
    first, size = out.stdout.split()
    return elapsed, float(first), int(size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--megabytes", type=int, default=500, help="tree content in MiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--content", choices=("random", "text"), default="random")
    args = parser.parse_args()
    for tool in ("curl", "zip", "tar"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    total = args.megabytes * MIB
    work = Path(tempfile.mkdtemp(prefix="bucketdav-bench-download-", dir=args.dir))
    servers: list[subprocess.Popen[bytes]] = []
    try:
        root = work / "store"
        ports = {}
        for deflate in ("never", "auto"):
            env = launch.environ_with(
                ARCHIVE_DIR=str(root), BUCKETDAV_MIN_FREE="0", BUCKETDAV_DOWNLOAD_DEFLATE=deflate
            )
            proc, port = launch.start(env, work / f"server-{deflate}.log")
            servers.append(proc)
            ports[deflate] = (proc, port)
        parent = root / "explode" / "be" / "nc" / ("bench" * 6 + "00")
        top = parent / "tree"
        print(f"building {args.files} files, {args.megabytes} MiB of {args.content} content ...")
        build_tree(top, files=args.files, total=total, content=args.content)
        run_shell("tar cf - tree | cat > /dev/null", parent)
        path = "/" + str(top.relative_to(root)) + "/"
        base = {deflate: f"http://127.0.0.1:{port}{path}" for deflate, (_, port) in ports.items()}
        runs: dict[str, Callable[[], tuple[float, float, int]]] = {
            "tar c | cat": lambda: (run_shell("tar cf - tree | cat > /dev/null", parent), 0, 0),
            "zip -r -0": lambda: (run_shell("zip -qr0 - tree > /dev/null", parent), 0, 0),
            "GET ?download=tar": lambda: download(base["never"] + "?download=tar"),
            "GET ?download=zip (stored)": lambda: download(base["never"] + "?download=zip"),
            "GET ?download=zip (auto)": lambda: download(base["auto"] + "?download=zip"),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        firsts: dict[str, list[float]] = {name: [] for name in runs}
        sizes: dict[str, int] = {}
        for _ in range(args.repeat):
            for name, run in runs.items():
                seconds, first, size = run()
                times[name].append(seconds)
                firsts[name].append(first)
                sizes[name] = size
        medians = {name: statistics.median(values) for name, values in times.items()}
        baseline = {
            "GET ?download=tar": "tar c | cat",
            "GET ?download=zip (stored)": "zip -r -0",
            "GET ?download=zip (auto)": "zip -r -0",
        }
        print(f"\n{args.files} files, {args.megabytes} MiB, median of {args.repeat}:")
        print(f"{'':28} {'seconds':>8} {'MB/s':>8} {'ratio':>6} {'1st byte':>9} {'archive':>10}")
        for name, seconds in medians.items():
            rate = total / seconds / 1e6
            ratio = f"{medians[baseline[name]] / seconds:6.2f}" if name in baseline else f"{'':6}"
            first = f"{statistics.median(firsts[name]) * 1000:7.0f}ms" if name in baseline else ""
            size = f"{sizes[name] / MIB:8.0f}MiB" if sizes[name] else ""
            print(f"{name:28} {seconds:8.2f} {rate:8.0f} {ratio} {first:>9} {size:>10}")
        for deflate, (proc, _) in ports.items():
            print(f"peak RSS of the server (deflate {deflate}): {peak_rss_mib(proc.pid):.0f} MiB")
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
