"""Benchmark bucketdav's WebDAV side against stock WsgiDAV, nginx (dav-ext) and copyparty.

Four workloads on one store, servers alternating round by round, medians and ratios:
PROPFIND Depth 1 of 10,000 files (one client), PROPFIND Depth 1 of 100 files (16
connections, wrk), GET of a 1 GiB file (curl), GET of a 4 KiB file (16 connections, wrk).

    python bench/dav.py [--rounds 3] [--seconds 3] [--keep DIR] [--only "GET 1 GiB"]

With --metrics, bucketdav runs twice instead, with metrics on and with BUCKETDAV_METRICS=off,
over the two hot paths (GET 4 KiB, PROPFIND 100 files): the ratio is what metrics cost.

With --access, bucketdav runs twice instead, open and with an access file, every request of
the second sending HTTP Basic as a mounted drive does, over all four workloads: the ratio is
what access control costs (verified credentials are remembered, so no hash per request).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import PROPFIND_BODY, free_port, put_blob, stop_process, wrk_scripts

STOCK_WSGIDAV = """
import sys
from cheroot import wsgi
from wsgidav.fs_dav_provider import FilesystemProvider
from wsgidav.wsgidav_app import WsgiDAVApp
root, port = sys.argv[1], int(sys.argv[2])
app = WsgiDAVApp({
    "provider_mapping": {"/": FilesystemProvider(root, readonly=True)},
    "simple_dc": {"user_mapping": {"*": True}},
    "fs_dav_provider": {"follow_symlinks": True},
    "logging": {"enable": False}, "verbose": 0,
})
server = wsgi.Server(("127.0.0.1", port), app, numthreads=64)
print("ready", flush=True)
server.start()
"""
NGINX_CONF = """
load_module /usr/lib/nginx/modules/ngx_http_dav_ext_module.so;
worker_processes auto;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    include /etc/nginx/mime.types;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ dav_ext_methods PROPFIND OPTIONS; }}
    }}
}}
"""
COPYPARTY = Path("/tmp/copyparty-venv/bin/copyparty")


@dataclass
class Layout:
    """Paths (URL paths) of what each workload requests."""

    many: str
    hundred: str
    big: str
    small: str


@dataclass
class Server:
    """One server under test."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Request headers every request to this server sends (credentials, with --access).
    headers: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# A person's credentials, as a mounted drive sends them with every request.
BENCH_CREDENTIALS = base64.b64encode(b"bench:bench password").decode()


def access_file(work: Path) -> Path:
    """An access file in which only the user `bench` may read, with a realistic bcrypt cost."""
    import bcrypt

    path = work / "access.toml"
    hashed = bcrypt.hashpw(b"bench password", bcrypt.gensalt(12)).decode()
    path.write_text(f'[users.bench]\npassword = "{hashed}"\nread = ["/"]\n')
    return path


def build_store(root: Path) -> Layout:
    """A store with a 10,000-file folder, a 100-file folder, a 1 GiB file and a 4 KiB file."""
    for tree in ("staging", "blob", "explode", "replica"):
        (root / tree).mkdir(parents=True, exist_ok=True)
    tree = root / "explode" / "be" / "nc" / ("benc" * 8)
    many, hundred = tree / "many", tree / "hundred"
    for folder, count in ((many, 10_000), (hundred, 100)):
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            target = folder / f"file-{i:05d}.txt"
            if not target.exists():
                os.link(put_blob(root, f"{folder.name} {i}\n".encode() * 8), target)
    big = tree / "big.bin"
    if not big.exists():
        hasher = hashlib.md5()  # noqa: S324 - the store's default CHECKSUM_TYPE
        tmp = root / "staging" / "big"
        with open(tmp, "wb") as out:
            block = os.urandom(1 << 20)
            for i in range(1024):
                chunk = block[i:] + block[:i]
                hasher.update(chunk)
                out.write(chunk)
        digest = hasher.hexdigest()
        blob = root / "blob" / digest[:2] / digest[2:4] / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, blob)
        os.link(blob, big)
    small = tree / "small.bin"
    if not small.exists():
        os.link(put_blob(root, os.urandom(4096)), small)
    rel = "/" + tree.relative_to(root).as_posix()
    return Layout(f"{rel}/many/", f"{rel}/hundred/", f"{rel}/big.bin", f"{rel}/small.bin")


def servers(root: Path, work: Path, *, metrics: bool = False, access: bool = False) -> list[Server]:
    """Every server that can run here, each on its own port (bucketdav twice with `metrics`
    or `access`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKETDAV_", "ARCHIVE_"))}
    ours = [sys.executable, "-m", "bucketdav", "serve", "--port", "{port}"]
    store = {"ARCHIVE_DIR": str(root), "BUCKETDAV_MIN_FREE": "0"}
    if access:
        return [
            Server("bucketdav", ours, {**env, **store}),
            Server(
                "basic",
                ours,
                {**env, **store, "BUCKETDAV_ACCESS_FILE": str(access_file(work))},
                headers=[f"Authorization: Basic {BENCH_CREDENTIALS}"],
            ),
        ]
    if metrics:
        return [
            Server("bucketdav", ours, {**env, **store, "BUCKETDAV_METRICS": "on"}),
            Server("metrics-off", ours, {**env, **store, "BUCKETDAV_METRICS": "off"}),
        ]
    found = [
        Server("bucketdav", ours, {**env, **store}),
        Server("wsgidav", [sys.executable, "-c", STOCK_WSGIDAV, str(root), "{port}"], env),
    ]
    if shutil.which("nginx") and Path("/usr/lib/nginx/modules/ngx_http_dav_ext_module.so").exists():
        found.append(Server("nginx", ["nginx", "-p", str(work), "-c", str(work / "nginx.conf")]))
    if COPYPARTY.exists():
        found.append(
            Server(
                "copyparty",
                [
                    str(COPYPARTY),
                    "-q",
                    "-i",
                    "127.0.0.1",
                    "-p",
                    "{port}",
                    "--no-thumb",
                    "-v",
                    f"{root}::r",
                ],
                env,
            )
        )
    return found


def start(server: Server, root: Path, work: Path) -> None:
    server.port = free_port()
    if server.name == "nginx":
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (work / sub).mkdir(exist_ok=True)
        (work / "nginx.conf").write_text(
            NGINX_CONF.format(prefix=work, port=server.port, root=root)
        )
    argv = [a.replace("{port}", str(server.port)) for a in server.argv]
    log = open(work / f"{server.name}.log", "wb")  # noqa: SIM115 - the child keeps it
    server.proc = subprocess.Popen(
        argv, env=server.env or None, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited: {(work / f'{server.name}.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not start")


def cpu_seconds(server: Server) -> float:
    """User and system CPU time the server's process has used (its own process only)."""
    if server.proc is None:
        return 0.0
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(server: Server) -> None:
    stop_process(server.proc)


def curl(args: list[str]) -> tuple[float, float, int]:
    """(seconds, bytes per second, status) of one curl transfer."""
    done = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{time_total} %{speed_download} %{http_code}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    seconds, speed, status = done.stdout.split()
    return float(seconds), float(speed), int(status)


def wrk(url: str, script: Path, seconds: int, headers: list[str] | None = None) -> float:
    """Requests per second over 16 connections; refuses a run with errors."""
    sent = [arg for header in headers or [] for arg in ("-H", header)]
    done = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", "-s", str(script), *sent, url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    if "Non-2xx" in done.stdout or "Socket errors" in done.stdout:
        raise RuntimeError(f"wrk saw errors on {url}:\n{done.stdout}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    if not match:
        raise RuntimeError(done.stdout)
    return float(match.group(1))


def workloads(
    layout: Layout, work: Path, seconds: int
) -> dict[str, tuple[str, Callable[[Server], float]]]:
    body = work / "propfind.xml"
    body.write_text(PROPFIND_BODY)
    get_lua, propfind_lua = wrk_scripts(work)

    def propfind_many(server: Server) -> float:
        times = []
        for _ in range(3):
            elapsed, _speed, status = curl(
                [
                    "-X",
                    "PROPFIND",
                    "-H",
                    "Depth: 1",
                    "-H",
                    "Content-Type: application/xml",
                    "--data-binary",
                    f"@{body}",
                    *[arg for header in server.headers for arg in ("-H", header)],
                    server.url + layout.many,
                ]
            )
            if status != 207:
                raise RuntimeError(f"{server.name}: PROPFIND answered {status}")
            times.append(elapsed)
        return statistics.median(times)

    def get_big(server: Server) -> float:
        speeds = []
        for _ in range(3):
            sent = [arg for header in server.headers for arg in ("-H", header)]
            _elapsed, speed, status = curl([*sent, server.url + layout.big])
            if status != 200:
                raise RuntimeError(f"{server.name}: GET answered {status}")
            speeds.append(speed / 1e6)
        return statistics.median(speeds)

    return {
        "PROPFIND 10k files (s, lower is better)": ("low", propfind_many),
        "PROPFIND 100 files x16 (req/s)": (
            "high",
            lambda s: wrk(s.url + layout.hundred, propfind_lua, seconds, s.headers),
        ),
        "GET 1 GiB (MB/s)": ("high", get_big),
        "GET 4 KiB x16 (req/s)": (
            "high",
            lambda s: wrk(s.url + layout.small, get_lua, seconds, s.headers),
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3, help="duration of each wrk run")
    parser.add_argument("--keep", type=Path, help="build (or reuse) the store in this folder")
    parser.add_argument("--only", default="", help="run the workloads whose name holds this")
    parser.add_argument(
        "--metrics", action="store_true", help="bucketdav with metrics on against metrics off"
    )
    parser.add_argument(
        "--access",
        action="store_true",
        help="bucketdav with an access file and Basic on every request against open",
    )
    args = parser.parse_args()
    for tool in ("curl", "wrk"):
        if not shutil.which(tool):
            print(f"{tool} is needed (apt-get install {tool})", file=sys.stderr)
            return 2
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-dav-"))
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # nginx workers run as another user
    root, work = base / "store", base / "work"
    work.mkdir(exist_ok=True)
    print(f"building the store in {root} ...", flush=True)
    layout = build_store(root)
    peers = servers(root, work, metrics=args.metrics, access=args.access)
    loads = {
        name: load
        for name, load in workloads(layout, work, args.seconds).items()
        if args.only.lower() in name.lower()
        and (not args.metrics or name.startswith(("GET 4 KiB", "PROPFIND 100 ")))
    }
    results: dict[str, dict[str, list[float]]] = {name: {} for name in loads}
    # With --metrics: the server's CPU microseconds per request, which other load on the
    # machine disturbs less than the request rate does.
    cpu: dict[str, dict[str, list[float]]] = {name: {} for name in loads}
    first: dict[str, dict[str, float]] = {name: {} for name in loads}
    try:
        for server in peers:
            start(server, root, work)
        for name, (_better, run) in loads.items():
            for server in peers:
                # The first run fills caches (for bucketdav: checksums for ETags); shown apart.
                first[name][server.name] = run(server)
            for round_no in range(args.rounds):
                order = peers if round_no % 2 == 0 else peers[::-1]
                for server in order:
                    used = cpu_seconds(server)
                    rate = run(server)
                    used = cpu_seconds(server) - used
                    results[name].setdefault(server.name, []).append(rate)
                    if name.endswith("(req/s)"):
                        per_request = used / (rate * args.seconds) * 1e6
                        cpu[name].setdefault(server.name, []).append(per_request)
            print(f"  done: {name}", flush=True)
    finally:
        for server in peers:
            stop(server)
    print(f"\nmedians of {args.rounds} alternating rounds; ratio = bucketdav / peer")
    for name, (better, _run) in loads.items():
        medians = {srv: statistics.median(vals) for srv, vals in results[name].items()}
        ours = medians["bucketdav"]
        cells = []
        for srv, value in medians.items():
            ratio = "" if srv == "bucketdav" else f" (x{ours / value:.2f})"
            cells.append(
                f"{srv} {value:,.3f}{ratio}" if better == "low" else f"{srv} {value:,.0f}{ratio}"
            )
        print(f"{name}: " + ", ".join(cells))
        if args.access:
            basic = medians["basic"]
            speed = ours / basic if better == "low" else basic / ours
            print(f"    with Basic on every request: x{speed:.2f} of the open server's rate")
        if args.metrics and cpu[name]:
            used = {srv: statistics.median(vals) for srv, vals in cpu[name].items()}
            ratio = used["metrics-off"] / used["bucketdav"]
            print(
                "    server CPU per request: "
                + ", ".join(f"{srv} {value:,.0f} us" for srv, value in used.items())
                + f" (requests per CPU second x{ratio:.2f})"
            )
        print(
            "    first run: "
            + ", ".join(
                f"{srv} {value:,.3f}" if better == "low" else f"{srv} {value:,.0f}"
                for srv, value in first[name].items()
            )
        )
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
