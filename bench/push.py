"""`bucketdav push` next to curl: a big file (`curl -T`), a many-file folder (`tar c | curl -T -`).

Usage: python bench/push.py [--file-mib 1024] [--files 10000] [--tree-mib 100] [--repeat 3]

One real `bucketdav serve` on 127.0.0.1; every command sends the same bytes to it, alternating,
`--repeat` times, and the store's blob/ and explode/ are emptied after each so every upload is
new content (the files stay in the page cache: what is compared is the sending, not the disk).
Rows: `curl -T` and `bucketdav push` of the file (push hashes the file first to ask the server
whether it has it, then sends it; `--always-send` skips that question), the push of the same
file once the server has it (deployed by checksum), and `tar c | curl -T -` and `bucketdav push`
of the folder. Prints medians, each push's ratio to its curl command (target: at most 1.1), and
how the time splits between the server's PUT and the rest (start-up, hashing, earlier requests).
The defaults are the full sizes; with --repeat 3 a run takes about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bucketdav import launch

MIB = 1024 * 1024
PUSH = [sys.executable, "-m", "bucketdav", "push"]
PUT_LINE = re.compile(r'"PUT /upload/\S* HTTP/1\.1" \d+ \S+ ([\d.]+)s')


@dataclass(frozen=True)
class Run:
    """One command: its wall time, and the time the server spent on its PUT request."""

    wall: float
    server: float


def make_file(path: Path, mib: int) -> None:
    """A file of random bytes."""
    with open(path, "wb") as handle:
        for _ in range(mib):
            handle.write(os.urandom(MIB))


def make_tree(root: Path, files: int, total_mib: int) -> None:
    """`files` random files of varied sizes adding up to about `total_mib`, 100 to a folder."""
    rng = random.Random(15)
    mean = total_mib * MIB // files
    for index in range(files):
        folder = root / f"d{index // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{index:05d}.dat").write_bytes(rng.randbytes(rng.randint(0, 2 * mean)))


def clear(root: Path) -> None:
    """Forget every blob and tree, so the next upload of the same bytes is new content."""
    for name in ("blob", "explode"):
        shutil.rmtree(root / name, ignore_errors=True)
        (root / name).mkdir()
    # The removal's disk writes land now, not in the middle of the next command's time.
    os.sync()


def timed(command: str | list[str], root: Path, log: Path, *, keep: bool = False) -> Run:
    """One command's time and the server's own time for its PUT (from the access log).

    The command must succeed. The store is cleared after it unless `keep`.
    """
    offset = log.stat().st_size
    started = time.perf_counter()
    done = subprocess.run(
        command, shell=isinstance(command, str), capture_output=True, timeout=1800, check=False
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or b"error" in done.stdout:
        raise SystemExit(f"{command} failed: {done.stdout[-300:]!r} {done.stderr[-300:]!r}")
    # Access-log lines are written in batches: wait (a bounded while) for the PUT's line.
    deadline = time.monotonic() + 10
    while not (puts := PUT_LINE.findall(log.read_bytes()[offset:].decode("utf-8", "replace"))):
        if time.monotonic() > deadline:
            raise SystemExit(f"{command}: no PUT in the server's log")
        time.sleep(0.05)
    if not keep:
        clear(root)
    return Run(elapsed, sum(float(seconds) for seconds in puts))


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file-mib", type=int, default=1024, help="size of the file")
    parser.add_argument("--files", type=int, default=10_000, help="files in the folder")
    parser.add_argument("--tree-mib", type=int, default=100, help="total size of the folder")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the data and the store go")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        data, tree, root = work / "payload.bin", work / "tree", work / "store"
        make_file(data, args.file_mib)
        make_tree(tree, args.files, args.tree_mib)
        env = launch.environ_with(
            ARCHIVE_DIR=str(root), MAX_CONTENT_LENGTH="64gb", BUCKETDAV_MIN_FREE="0"
        )
        log = work / "server.log"
        proc, port = launch.start(env, log)
        url = f"http://127.0.0.1:{port}"
        rows = {
            "file: curl -T": f"curl -sS --fail-with-body -T {data} {url}/upload/",
            "file: bucketdav push": [*PUSH, str(data), "--to", url],
            "file: push --always-send": [*PUSH, "--always-send", str(data), "--to", url],
            "file: push, already stored": [*PUSH, str(data), "--to", url],
            "folder: tar c | curl -T -": (
                f"tar c -C {tree} . | curl -sS --fail-with-body -T - {url}/upload/tree.tar"
            ),
            "folder: bucketdav push": [*PUSH, str(tree), "--to", url],
        }
        runs: dict[str, list[Run]] = {row: [] for row in rows}
        try:
            for _ in range(args.repeat):
                for row, command in rows.items():
                    if row.endswith("already stored"):
                        timed(rows["file: curl -T"], root, log, keep=True)
                    runs[row].append(timed(command, root, log))
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"{args.file_mib} MiB file; {args.files} files, about {args.tree_mib} MiB, in the folder")
    print(f"{'what':<28} {'wall s':>7} {'x curl':>7} {'server s':>9} {'rest s':>7}")
    for row, values in runs.items():
        kind = "file: curl -T" if row.startswith("file") else "folder: tar c | curl -T -"
        wall = statistics.median(run.wall for run in values)
        base = statistics.median(run.wall for run in runs[kind])
        server = statistics.median(run.server for run in values)
        rest = statistics.median(run.wall - run.server for run in values)
        print(f"{row:<28} {wall:7.2f} {wall / base:7.2f} {server:9.2f} {rest:7.2f}")
    print(
        f"(medians of {args.repeat}; `server s` is the server's time for the PUT, `rest s` the "
        "rest of the wall time: start-up, hashing, the requests before the PUT; each push is a "
        f"new `python -m bucketdav`; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs at the end)"
    )


if __name__ == "__main__":
    main()
