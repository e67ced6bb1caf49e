"""Benchmark: extract a source-like tgz through the live server, next to `tar xzf` of the same file.

Generates a tree of 10,000 files (~50 MB, text that compresses like source code),
packs it with `tar czf`, then times, in the same run and on the same disk:
  - `tar xzf` of the archive into an empty directory (the baseline);
  - PUT /upload/src.tgz to a fresh `bucketdav serve` (store, decompress, hash, link, rename).
Prints the times (best of --rounds) and the ratios to `tar xzf` and to `tar xzf` followed by
`sync`, tar with the durability bucketdav gives before it answers; the targets are against the
latter: <= 2.5x for a new store, where each blob also needs its own blob/ab/cd directory (on
ext4 that costs more than writing the file), <= 2.0x for a store in use, where those exist.
Then, on the store in use, the same tree as `.tgz`, `.tar.xz` and `.zip` in turn (new content
each round), each next to the `.tgz`: the target for the zip is <= 1.2x the tgz.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bucketdav import launch

# Targets against `tar xzf + sync`: a new store makes a blob/ab/cd folder for most files.
NEW_STORE_TARGET = 2.5
IN_USE_TARGET = 2.0
ZIP_TARGET = 1.2
FORMATS = ("tgz", "tar.xz", "zip")
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


def time_tar(archive: Path, work: Path) -> tuple[float, float]:
    """Seconds for `tar xzf` of `archive` into a new directory, and for that plus `sync`.

    bucketdav answers only once the tree is on disk; the second figure is what the same
    durability costs tar, shown beside the target's baseline.
    """
    dest = Path(tempfile.mkdtemp(dir=work, prefix="tar-"))
    started = time.perf_counter()
    subprocess.run(["tar", "xzf", str(archive), "-C", str(dest)], check=True)
    extracted = time.perf_counter()
    os.sync()
    return extracted - started, time.perf_counter() - started


class Server:
    """One `bucketdav serve` process over the store at `store`."""

    def __init__(self, store: Path, log_path: Path) -> None:
        env = launch.environ_with(
            ARCHIVE_DIR=str(store), MAX_CONTENT_LENGTH="1gb", BUCKETDAV_MIN_FREE="0"
        )
        self.proc, self.port = launch.start(env, log_path)

    def put(self, data: bytes, files: int, name: str = "src.tgz") -> float:
        """Seconds for PUT /upload/<name>, checked to have made the whole tree."""
        started = time.perf_counter()
        answer = upload(self.port, name, data)
        elapsed = time.perf_counter() - started
        if answer.get("files") != files or not answer["path"]["archive"]:
            raise SystemExit(f"unexpected answer: {answer}")
        return elapsed

    def stop(self) -> None:
        """SIGTERM, then wait for the process to finish."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            print("warning: the server did not stop within 60 s of SIGTERM", file=sys.stderr)


def make_fanout(store: Path) -> None:
    """Create every blob/ab/cd directory, as a store that has been in use for a while has."""
    digits = "0123456789abcdef"
    for a in digits:
        for b in digits:
            for c in digits:
                for d in digits:
                    (store / "blob" / f"{a}{b}" / f"{c}{d}").mkdir(parents=True, exist_ok=True)


def pack(tree: Path, archive: Path, marker: str, kind: str = "tgz") -> bytes:
    """Mark every file of `tree` with `marker` (all new content), then pack it as `kind`."""
    for path in tree.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            path.write_bytes(f"{marker}\n".encode() + data.split(b"\n", 1)[-1])
    if kind == "zip":
        # zip -r at its default level, as people make them.
        subprocess.run(["zip", "-qr", str(archive.resolve()), "."], cwd=tree, check=True)
    else:
        flag = {"tgz": "z", "tar.xz": "J"}[kind]
        # xz on both cores only makes the archive sooner (in blocks, which any reader takes).
        env = {**os.environ, "XZ_OPT": "-T2"}
        command = ["tar", f"c{flag}f", str(archive), "-C", str(tree), "."]
        subprocess.run(command, check=True, env=env)
    return archive.read_bytes()


def measure(label: str, rounds: int, tar_run, bucket_run, *, target: float) -> float:
    """Best of `rounds` for both, alternating which goes first; prints and returns the ratio
    to `tar xzf + sync`, the baseline with the same durability, against `target`."""
    tar_times, bucket_times = [], []
    for index in range(rounds):
        if index % 2:
            bucket_times.append(bucket_run(index))
            tar_times.append(tar_run(index))
        else:
            tar_times.append(tar_run(index))
            bucket_times.append(bucket_run(index))
    tar_best = min(plain for plain, _synced in tar_times)
    synced_best = min(synced for _plain, synced in tar_times)
    bucket_best = min(bucket_times)
    ratio = bucket_best / synced_best
    verdict = "meets" if ratio <= target else "misses"
    print(
        f"{label}: tar xzf {tar_best:.3f} s, tar xzf + sync {synced_best:.3f} s, "
        f"bucketdav PUT .tgz {bucket_best:.3f} s (best of {rounds}); "
        f"{bucket_best / tar_best:.2f}x tar xzf, {ratio:.2f}x tar xzf + sync "
        f"(target <= {target}x: {verdict})"
    )
    return ratio


def measure_formats(
    rounds: int, server: Server, blobs: dict[str, list[bytes]], files: int
) -> dict[str, float]:
    """Best of `rounds` PUTs of each format to `server`, rotating which goes first."""
    times: dict[str, list[float]] = {kind: [] for kind in FORMATS}
    for index in range(rounds):
        order = FORMATS[index % len(FORMATS) :] + FORMATS[: index % len(FORMATS)]
        for kind in order:
            times[kind].append(server.put(blobs[kind][index], files, f"src.{kind}"))
    best = {kind: min(values) for kind, values in times.items()}
    tgz = best["tgz"]
    for kind in FORMATS:
        note = ""
        if kind == "zip":
            verdict = "meets" if best[kind] / tgz <= ZIP_TARGET else "misses"
            note = f" (target <= {ZIP_TARGET}x: {verdict})"
        print(
            f"store in use, .{kind}: bucketdav PUT {best[kind]:.3f} s (best of {rounds}); "
            f"{best[kind] / tgz:.2f}x the .tgz{note}"
        )
    return best


def main() -> None:
    """Run the benchmark and print the times and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="work directory (default: a new one in /tmp)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-archive-", dir=args.dir))
    servers: list[Server] = []
    try:
        tree = work / "tree"
        size = make_tree(tree, files=args.files, total=args.megabytes << 20)
        archives = [work / f"src{i}.tgz" for i in range(args.rounds)]
        blobs = [pack(tree, archive, f"round {i}") for i, archive in enumerate(archives)]
        print(
            f"tree: {args.files} files, {size / 1e6:.1f} MB; src.tgz: {len(blobs[0]) / 1e6:.1f} MB"
        )
        # Nothing is deleted until the end and the order alternates: on ext4 the cost of
        # creating inodes depends on how many were deleted just before.
        os.sync()

        def tar_run(index: int) -> tuple[float, float]:
            return time_tar(archives[index], work)

        def fresh_run(index: int) -> float:
            server = Server(Path(tempfile.mkdtemp(dir=work, prefix="store-")), work / "fresh.log")
            servers.append(server)
            try:
                return server.put(blobs[index], args.files)
            finally:
                server.stop()

        measure("new store", args.rounds, tar_run, fresh_run, target=NEW_STORE_TARGET)
        # A store in use already has its blob/ab/cd directories; a new one makes one per file.
        warm = work / "warm"
        make_fanout(warm)
        os.sync()
        server = Server(warm, work / "warm.log")
        servers.append(server)
        measure(
            "store in use",
            args.rounds,
            tar_run,
            lambda index: server.put(blobs[index], args.files),
            target=IN_USE_TARGET,
        )
        packed = {
            kind: [
                pack(tree, work / f"fmt{i}.{kind}", f"{kind} round {i}", kind)
                for i in range(args.rounds)
            ]
            for kind in FORMATS
        }
        os.sync()
        measure_formats(args.rounds, server, packed, args.files)
    finally:
        for server in servers:
            if server.proc.poll() is None:
                server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
