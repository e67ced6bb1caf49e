"""Memory under a mixed load: bucketdav's RSS round after round, next to copyparty's.

Each round: wrk GET of a 4 KiB file (16 connections), wrk PROPFIND Depth 1 of a 2,000-file
folder (16 connections), then three 100 MB PUTs one after the other. The servers take turns
within every round (the order alternates), so other load on the machine falls on both. The
resident set size (VmRSS of the process and its children) is sampled every 0.2 s; each phase
prints its peak and its end, and the summary the soak's targets: bucketdav's peak over the
whole soak at most 64 MiB, and the last round's peak within 10% of the second round's.

    python bench/soak.py [--rounds 6] [--seconds 10] [--put-mib 100] [--keep DIR]

copyparty is looked for in /tmp/copyparty-venv (python -m venv /tmp/copyparty-venv &&
/tmp/copyparty-venv/bin/pip install copyparty), or given with --copyparty; without it only
bucketdav runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import free_port, put_blob, stop_process, wrk_scripts

from bucketdav import launch

MIB = 1 << 20
SAMPLE_SECONDS = 0.2
PEAK_TARGET_MIB = 64.0
GROWTH_TARGET = 1.10
PHASES = ("GET 4 KiB", "PROPFIND 2,000", "PUT 3x")


@dataclass
class Server:
    """One server under test, its URL paths, and the RSS samples of each (round, phase)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    folder: str
    small: str
    upload: str
    samples: dict[tuple[int, str], list[int]] = field(default_factory=dict)
    rates: dict[tuple[int, str], str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` and its descendants, in KiB (0 once it is gone)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match.group(1)) if match else 0
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                pending.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return total


class Sampler:
    """Samples a server's RSS every SAMPLE_SECONDS into the list it is pointed at."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.target: list[int] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(SAMPLE_SECONDS):
            self.target.append(rss_kib(self.pid))

    def phase(self, samples: list[int]) -> None:
        """From now on, samples go to `samples` (which starts with one taken now)."""
        samples.append(rss_kib(self.pid))
        self.target = samples

    def end(self) -> None:
        """One last sample for the current phase, its end."""
        self.target.append(rss_kib(self.pid))


def build(base: Path, files: int, put_mib: int) -> tuple[Path, Path, list[Path], str]:
    """bucketdav's store, copyparty's folder (the same files, linked), the files to PUT, and
    the tree's URL path in the store."""
    store, shared = base / "store", base / "copyparty"
    for tree in ("staging", "blob", "explode", "replica"):
        (store / tree).mkdir(parents=True, exist_ok=True)
    tree = store / "explode" / "so" / "ak" / ("soak" * 8)
    many = tree / "many"
    many.mkdir(parents=True, exist_ok=True)
    (shared / "many").mkdir(parents=True, exist_ok=True)
    (shared / "up").mkdir(exist_ok=True)
    for i in range(files):
        name = f"file-{i:05d}.txt"
        if not (many / name).exists():
            os.link(put_blob(store, f"soak {i}\n".encode() * 8), many / name)
        if not (shared / "many" / name).exists():
            os.link(many / name, shared / "many" / name)
    if not (tree / "small.bin").exists():
        os.link(put_blob(store, os.urandom(4096)), tree / "small.bin")
    if not (shared / "small.bin").exists():
        os.link(tree / "small.bin", shared / "small.bin")
    payloads = []
    for n in range(3):
        path = base / f"put-{n}.bin"
        if not path.exists() or path.stat().st_size != put_mib * MIB:
            with open(path, "wb") as out:
                for _ in range(put_mib):
                    out.write(os.urandom(MIB))
        payloads.append(path)
    return store, shared, payloads, "/" + tree.relative_to(store).as_posix()


def start_bucketdav(store: Path, tree: str, work: Path) -> Server:
    env = launch.environ_with(
        ARCHIVE_DIR=str(store), MAX_CONTENT_LENGTH="64gb", BUCKETDAV_MIN_FREE="0"
    )
    proc, port = launch.start(env, work / "bucketdav.log")
    return Server("bucketdav", proc, port, f"{tree}/many/", f"{tree}/small.bin", "/upload/")


def start_copyparty(binary: Path, shared: Path, work: Path) -> Server:
    port = free_port()
    argv = [str(binary), "-q", "-i", "127.0.0.1", "-p", str(port), "--no-thumb"]
    with open(work / "copyparty.log", "wb") as log:
        proc = subprocess.Popen(
            [*argv, "-v", f"{shared}::rw"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"copyparty exited: {(work / 'copyparty.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return Server("copyparty", proc, port, "/many/", "/small.bin", "/up/")
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("copyparty did not start")


def stop(server: Server) -> None:
    stop_process(server.proc)


def wrk(url: str, script: Path, seconds: int) -> str:
    """Requests per second over 16 connections, with a note when wrk saw errors."""
    done = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    match = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    rate = f"{float(match.group(1)):.0f}/s" if match else "?"
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    if errors or "Socket errors" in done.stdout:
        rate += f" ({errors.group(1) if errors else 'socket'} errors)"
    return rate


def put(server: Server, payload: Path, store: Path, shared: Path) -> float:
    """Seconds for one PUT; what it stored is removed, so the next one is a new upload too."""
    started = time.perf_counter()
    done = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-T", str(payload), server.url + server.upload],
        capture_output=True,
        check=True,
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    if server.name == "bucketdav":
        answer = json.loads(done.stdout)
        (store / answer["path"]["blob"]).unlink()
    else:
        for stored in (shared / "up").iterdir():
            stored.unlink()
    return elapsed


def mib(kib: int) -> float:
    return kib / 1024


def run_phase(
    server: Server,
    sampler: Sampler,
    key: tuple[int, str],
    action: Callable[[], str],
) -> None:
    samples: list[int] = []
    server.samples[key] = samples
    sampler.phase(samples)
    server.rates[key] = action()
    sampler.end()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    parser.add_argument("--put-mib", type=int, default=100, help="size of each PUT")
    parser.add_argument("--files", type=int, default=2000, help="files in the PROPFIND folder")
    parser.add_argument("--keep", type=Path, help="build (or reuse) everything in this folder")
    parser.add_argument("--copyparty", type=Path, default=Path("/tmp/copyparty-venv/bin/copyparty"))
    parser.add_argument("--only", choices=("bucketdav", "copyparty"), help="one server only")
    args = parser.parse_args()
    for tool in ("curl", "wrk"):
        if not shutil.which(tool):
            print(f"{tool} is needed (apt-get install {tool})", file=sys.stderr)
            return 2
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    work = base / "work"
    work.mkdir(exist_ok=True)
    print(f"building in {base} ...", flush=True)
    store, shared, payloads, tree = build(base, args.files, args.put_mib)
    get_lua, propfind_lua = wrk_scripts(work)

    servers: list[Server] = []
    samplers: dict[str, Sampler] = {}
    started: dict[str, int] = {}
    try:
        if args.only != "copyparty":
            servers.append(start_bucketdav(store, tree, work))
        if args.only != "bucketdav":
            if args.copyparty.exists():
                servers.append(start_copyparty(args.copyparty, shared, work))
            else:
                print(f"no copyparty at {args.copyparty}: bucketdav alone", flush=True)
        time.sleep(1)  # both settle after start-up before the first sample counts
        for server in servers:
            started[server.name] = rss_kib(server.proc.pid)
            samplers[server.name] = Sampler(server.proc.pid)
        print(
            "fresh: " + ", ".join(f"{s.name} {mib(started[s.name]):.1f} MiB" for s in servers),
            flush=True,
        )
        for round_no in range(1, args.rounds + 1):
            order = servers if round_no % 2 else servers[::-1]
            for server in order:
                sampler = samplers[server.name]
                run_phase(
                    server,
                    sampler,
                    (round_no, PHASES[0]),
                    lambda s=server: wrk(s.url + s.small, get_lua, args.seconds),
                )
                run_phase(
                    server,
                    sampler,
                    (round_no, PHASES[1]),
                    lambda s=server: wrk(s.url + s.folder, propfind_lua, args.seconds),
                )
                run_phase(
                    server,
                    sampler,
                    (round_no, PHASES[2]),
                    lambda s=server: (
                        " ".join(f"{args.put_mib / put(s, p, store, shared):.0f}" for p in payloads)
                        + " MiB/s"
                    ),
                )
            report_round(servers, round_no)
    finally:
        for sampler in samplers.values():
            sampler.done.set()
        for server in servers:
            stop(server)
    summary(servers, started, args.rounds)
    return 0


def report_round(servers: list[Server], round_no: int) -> None:
    for phase in PHASES:
        cells = []
        for server in servers:
            samples = server.samples[(round_no, phase)]
            rate = server.rates[(round_no, phase)]
            cells.append(
                f"{server.name} peak {mib(max(samples)):5.1f} end {mib(samples[-1]):5.1f} MiB"
                f" ({rate})"
            )
        print(f"round {round_no} {phase:<15} " + " | ".join(cells), flush=True)


def round_peak(server: Server, round_no: int) -> float:
    return mib(max(max(server.samples[(round_no, phase)]) for phase in PHASES))


def summary(servers: list[Server], started: dict[str, int], rounds: int) -> None:
    print()
    peaks: dict[str, float] = {}
    for server in servers:
        if not server.samples:
            continue
        per_round = [round_peak(server, r) for r in range(1, rounds + 1)]
        peaks[server.name] = max(per_round)
        print(
            f"{server.name:<10} fresh {mib(started[server.name]):.1f} MiB, peak per round "
            + " ".join(f"{p:.1f}" for p in per_round)
            + f", peak {peaks[server.name]:.1f} MiB"
        )
    ours = next((s for s in servers if s.name == "bucketdav" and s.samples), None)
    if ours is None:
        return
    peak = peaks["bucketdav"]
    print(
        f"target: bucketdav peak {peak:.1f} MiB <= {PEAK_TARGET_MIB:.0f} MiB: "
        + ("met" if peak <= PEAK_TARGET_MIB else "MISSED")
    )
    if rounds >= 2:
        growth = round_peak(ours, rounds) / round_peak(ours, 2)
        print(
            f"target: last round's peak / second round's {growth:.3f} <= {GROWTH_TARGET}: "
            + ("met" if growth <= GROWTH_TARGET else "MISSED")
        )
    if "copyparty" in peaks:
        print(f"ratio: bucketdav peak / copyparty peak = {peak / peaks['copyparty']:.2f}")
        for phase in PHASES:
            ours_peak = max(max(ours.samples[(r, phase)]) for r in range(1, rounds + 1))
            theirs = next(s for s in servers if s.name == "copyparty")
            their_peak = max(max(theirs.samples[(r, phase)]) for r in range(1, rounds + 1))
            print(
                f"  {phase:<15} peak {mib(ours_peak):.1f} / {mib(their_peak):.1f} MiB"
                f" = {ours_peak / their_peak:.2f}"
            )


if __name__ == "__main__":
    sys.exit(main())
