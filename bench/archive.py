"""Benchmark: extract a source-like tgz through the live server, next to `tar xzf` of the same file.

Generates a tree of 10,000 files (~50 MB, text that compresses like source code),
packs it with `tar czf`, then times, in the same run and on the same disk:
  - `tar xzf` of the archive into an empty directory (the baseline);
  - PUT /upload/src.tgz to a fresh `bucketdav serve` (store, decompress, hash, link, rename).
Prints both times (best of --rounds) and the ratio; the target is <= 2.5.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 2.5
LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)/")
_VOCABULARY = (
    "def return self import from class if else elif for while in not and or None True False "
    "int str bytes list dict set tuple len range print raise try except finally with as yield "
    "lambda async await static const void char unsigned struct typedef include define ifdef "
    "endif buffer offset length count index value result error status config path name size "
    "data node next prev head tail key hash table entry alloc free read write open close "
)
WORDS = tuple(_VOCABULARY.split())
EXTENSIONS = (".py", ".c", ".h", ".js", ".md", ".txt", ".json", ".go", ".rs", ".java")


def source_line(rng: random.Random) -> str:
    """One line that looks like code: indentation, a few words, punctuation, a number."""
    indent = "    " * rng.randrange(4)
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(2, 10)))
    return f"{indent}{words}({rng.randrange(1000)});\n"


def make_tree(root: Path, *, files: int, total: int, seed: int = 7) -> int:
    """Write `files` files of about `total` bytes in all below `root`; returns bytes written."""
    rng = random.Random(seed)
    dirs = [Path("src")]
    for index in range(files // 20):
        parent = rng.choice(dirs)
        if len(parent.parts) < 6:
            dirs.append(parent / f"pkg{index}")
    written = 0
    for index in range(files):
        # Mostly small files and a few large ones, as in a source tree.
        big = index % 100 == 0
        target = rng.randrange(100_000, 300_000) if big else int(rng.lognormvariate(7.6, 1.0))
        left = max(0, total - written)
        target = min(target, left) if index == files - 1 else target
        lines = []
        size = 0
        while size < target:
            line = source_line(rng)
            lines.append(line)
            size += len(line)
        path = root / rng.choice(dirs) / f"file{index}{rng.choice(EXTENSIONS)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(lines).encode()
        path.write_bytes(data)
        written += len(data)
    return written


def start_server(store: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start `bucketdav serve` on 127.0.0.1 and a free port; returns the process and port."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BUCKETDAV_", "ARCHIVE_", "REPLICATE_", "CHECKSUM_TYPE"))
    }
    env.update(
        ARCHIVE_DIR=str(store),
        MAX_CONTENT_LENGTH="1gb",
        BUCKETDAV_MIN_FREE="0",
        PYTHONUNBUFFERED="1",
    )
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bucketdav", "serve", "--host", "127.0.0.1", "--port", "0"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = LISTENING.search(log_path.read_text("utf-8", "replace"))
        if match:
            return proc, int(match.group(2))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"bucketdav did not start:\n{log_path.read_text('utf-8', 'replace')}")


def upload(port: int, name: str, data: bytes) -> dict:
    """PUT `data` as /upload/<name> and return the JSON answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("PUT", f"/upload/{name}", body=data)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise SystemExit(f"upload failed: {resp.status} {body[:500]!r}")
    return json.loads(body)


def time_tar(archive: Path, work: Path) -> float:
    """Seconds for `tar xzf` of `archive` into a new directory."""
    dest = Path(tempfile.mkdtemp(dir=work, prefix="tar-"))
    started = time.perf_counter()
    subprocess.run(["tar", "xzf", str(archive), "-C", str(dest)], check=True)
    return time.perf_counter() - started


def time_bucketdav(data: bytes, work: Path, files: int) -> float:
    """Seconds for PUT /upload/src.tgz to a fresh server, checked to have made the whole tree."""
    store = Path(tempfile.mkdtemp(dir=work, prefix="store-"))
    proc, port = start_server(store, work / "server.log")
    try:
        started = time.perf_counter()
        answer = upload(port, "src.tgz", data)
        elapsed = time.perf_counter() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print("warning: the server did not stop within 60 s of SIGTERM", file=sys.stderr)
    if answer.get("files") != files or not answer["path"]["archive"]:
        raise SystemExit(f"unexpected answer: {answer}")
    return elapsed


def main() -> None:
    """Run the benchmark and print the times and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="work directory (default: a new one in /tmp)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-archive-", dir=args.dir))
    try:
        tree = work / "tree"
        size = make_tree(tree, files=args.files, total=args.megabytes << 20)
        archive = work / "src.tgz"
        subprocess.run(["tar", "czf", str(archive), "-C", str(tree), "."], check=True)
        data = archive.read_bytes()
        print(f"tree: {args.files} files, {size / 1e6:.1f} MB; src.tgz: {len(data) / 1e6:.1f} MB")
        tar_times, bucket_times = [], []
        # Nothing is deleted until the end and the order alternates: on ext4 the cost of
        # creating inodes depends on how many were deleted just before.
        os.sync()
        for index in range(args.rounds):
            if index % 2:
                bucket_times.append(time_bucketdav(data, work, args.files))
                tar_times.append(time_tar(archive, work))
            else:
                tar_times.append(time_tar(archive, work))
                bucket_times.append(time_bucketdav(data, work, args.files))
        tar_best, bucket_best = min(tar_times), min(bucket_times)
        ratio = bucket_best / tar_best
        print(f"tar xzf:               {tar_best:.3f} s (best of {args.rounds})")
        print(f"bucketdav PUT .tgz:    {bucket_best:.3f} s (best of {args.rounds})")
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        print(f"ratio: {ratio:.2f}x (target <= {TARGET_RATIO}x: {verdict})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
