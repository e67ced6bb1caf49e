"""Upload throughput and server memory: PUT and multipart POST next to hashlib over the same file.

Usage: python bench/upload.py [--sizes 100,1024] [--repeat 3] [--dir /tmp] [--access]

For each size it writes a random file, then alternates, `--repeat` times: hashlib's
CHECKSUM_TYPE over the file (the baseline), `curl -T` (PUT) and `curl -F` (multipart POST)
through a real `bucketdav serve` on 127.0.0.1. It prints medians in MB/s, the ratio of each
upload to the hash baseline, and the server's peak RSS (VmHWM) for that size.

With --access a second server runs beside the first, with an access file, and its uploads
send HTTP Basic (rows "... +Basic"): the same uploads with access control on, in one run.
"""

from __future__ import annotations

import argparse
import base64
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


def start_server(
    root: Path, log: Path, access: Path | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """A real bucketdav on a free port with no upload limit that matters here."""
    extra = {"BUCKETDAV_ACCESS_FILE": str(access)} if access else {}
    env = launch.environ_with(
        ARCHIVE_DIR=str(root), MAX_CONTENT_LENGTH="64gb", BUCKETDAV_MIN_FREE="0", **extra
    )
    return launch.start(env, log)


BASIC = ["-H", "Authorization: Basic " + base64.b64encode(b"bench:bench password").decode()]


def access_file(folder: Path) -> Path:
    """An access file in which the user `bench` may upload, with a realistic bcrypt cost."""
    import bcrypt

    path = folder / "access.toml"
    hashed = bcrypt.hashpw(b"bench password", bcrypt.gensalt(12)).decode()
    path.write_text(f'[users.bench]\npassword = "{hashed}"\nread = ["/"]\nupload = true\n')
    return path


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
    parser.add_argument(
        "--access", action="store_true", help="also upload with Basic to a server with access on"
    )
    args = parser.parse_args()
    algorithm = "md5"
    print(f"{'size':>8} {'what':<22} {'MB/s':>8} {'x hash':>7} {'peak RSS':>9}")
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
            guarded = None
            if args.access:
                guarded = start_server(work / "store2", work / "server2.log", access_file(work))
                url2 = f"http://127.0.0.1:{guarded[1]}/upload"
            try:
                runs: dict[str, list[float]] = {"hashlib md5": [], "PUT": [], "POST multipart": []}
                if guarded:
                    runs.update({"PUT +Basic": [], "POST multipart +Basic": []})
                for _ in range(args.repeat):
                    runs["hashlib md5"].append(time_hash(data, algorithm))
                    runs["PUT"].append(time_curl(["-T", str(data), url + "/payload.bin"], root))
                    if guarded:
                        runs["PUT +Basic"].append(
                            time_curl(
                                [*BASIC, "-T", str(data), url2 + "/payload.bin"], work / "store2"
                            )
                        )
                    runs["POST multipart"].append(time_curl(["-F", f"file=@{data}", url], root))
                    if guarded:
                        runs["POST multipart +Basic"].append(
                            time_curl([*BASIC, "-F", f"file=@{data}", url2], work / "store2")
                        )
                rss = peak_rss_mib(proc.pid)
                rss_basic = peak_rss_mib(guarded[0].pid) if guarded else float("nan")
            finally:
                proc.terminate()
                proc.wait(30)
                if guarded:
                    guarded[0].terminate()
                    guarded[0].wait(30)
            size = size_mib * MIB
            base = size / statistics.median(runs["hashlib md5"]) / 1e6
            for what, times in runs.items():
                rate = size / statistics.median(times) / 1e6
                peak = rss_basic if what.endswith("+Basic") else rss
                shown = f"{peak:7.1f}Mi" if what != "hashlib md5" else ""
                print(f"{size_mib:>6}Mi {what:<22} {rate:8.0f} {rate / base:7.2f} {shown:>9}")
    print(
        f"(medians of {args.repeat}; store and file under {args.dir or tempfile.gettempdir()}; "
        "every upload is new content, flushed to disk before the answer)"
    )


if __name__ == "__main__":
    main()
