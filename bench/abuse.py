"""Hostile requests against a live server: what each costs next to a normal upload and PROPFIND.

Usage: python bench/abuse.py [--quick] [--only NAME,NAME] [--dir /tmp] [--timeout 60]

Every request of issue 18 is sent, one row after the other, to a real `bucketdav serve` on
127.0.0.1 (BUCKETDAV_THREADS=8, BUCKETDAV_TIMEOUT=5 so trickling clients end). Each row gets a
fresh server over the same store, warmed by a few small requests, so no row inherits another's
memory. For each row it prints the status(es) answered, wall seconds, the server's peak RSS
increase (VmRSS sampled every 20 ms, minus VmRSS before), the RSS still held 0.5 s after, its
CPU seconds (utime + stime), the slowest /healthz polled every 100 ms meanwhile, and each
figure's ratio to the larger of the two normal rows. A row misses the target when its peak RSS
grows by more than 64 MiB, /healthz takes over 1 s, it answers 5xx, or the server still holds
the request at the bench's bound ("held") or the client's timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import io
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import bucketdav
from bucketdav import launch

MIB = 1 << 20
TARGET_RSS_MIB = 64
TARGET_HEALTHZ_S = 1.0
THREADS = 8
TIMEOUT = 5
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sizes:
    """How big each hostile input is; --quick shrinks the ones that cost the bench time."""

    zip_entries: int = 4_000_000
    chunk_mb: int = 256
    links: int = 2_000
    link_depth: int = 2_000
    props: int = 7_900
    folder_files: int = 2_000
    deploy_mb: int = 50
    heads: int = 4_000
    slashes: int = 60_000
    listing_trees: int = 200
    listing_files: int = 10_000


QUICK = Sizes(
    zip_entries=1_000_000, chunk_mb=64, links=500, heads=1_000, deploy_mb=10, listing_files=2_000
)


# --- the server process, seen from /proc -------------------------------------------------


def rss_mib(pid: int) -> float:
    """The process's resident set size now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process (all its threads) has used so far."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class RssSampler(threading.Thread):
    """Samples VmRSS every 20 ms (VmHWM cannot be reset between rows) and keeps the largest."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_mib(pid)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
            except OSError:
                return

    def stop(self) -> float:
        """Stop sampling; returns the peak seen."""
        self.done.set()
        self.join(5)
        return self.peak


class HealthPoller(threading.Thread):
    """GET /healthz every 100 ms on a new connection; keeps the slowest answer's time."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.slowest = 0.0
        self.failed = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            started = time.monotonic()
            try:
                status, _ = request(self.port, "GET", "/healthz", timeout=120)
                self.failed += status != "200"
            except (OSError, http.client.HTTPException):
                self.failed += 1
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.done.wait(0.1)

    def stop(self) -> float:
        """Stop after the request in flight (its time counts too); returns the slowest."""
        self.done.set()
        self.join(150)
        return self.slowest


# --- clients ---------------------------------------------------------------------------------


def request(
    port: int,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 60,
) -> tuple[str, int]:
    """One request on its own connection; the status and how many body bytes came back.

    The whole exchange, body included, must end within `timeout` (TimeoutError otherwise).
    """
    deadline = time.monotonic() + timeout
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        received = 0
        while chunk := resp.read(MIB):
            received += len(chunk)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method} {path[:40]} took over {timeout} s")
        return str(resp.status), received
    finally:
        conn.close()


def outcome(call: Callable[[], str]) -> str:
    """What a client call ended with: its status, or how the connection failed."""
    try:
        return call()
    except TimeoutError:
        return "timeout"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except (http.client.RemoteDisconnected, http.client.IncompleteRead):
        return "closed"
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__


def at_once(calls: list[Callable[[], str]]) -> list[str]:
    """Run the calls in parallel threads; their outcomes in order."""
    results = [""] * len(calls)

    def run(index: int) -> None:
        results[index] = outcome(calls[index])

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def summary(statuses: Iterable[str]) -> str:
    """`207x4`, or the outcomes in order when they differ."""
    items = list(statuses)
    if len(set(items)) == 1:
        return items[0] if len(items) == 1 else f"{items[0]}x{len(items)}"
    return ",".join(items)


def raw_connect(port: int, head: bytes) -> socket.socket:
    """A raw connection that has sent `head` (request line, headers, maybe a body start)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(head)
    return sock


def read_status(sock: socket.socket, deadline: float) -> str:
    """The status code of the answer on `sock`, or how the connection ended without one."""
    data = b""
    while b"\r\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "timeout"
        if not chunk:
            return "closed" if not data else data.split(b" ", 2)[1].decode(errors="replace")
        data += chunk
    return data.split(b" ", 2)[1].decode(errors="replace")


def trickle(port: int, head: bytes, *, every: float, bound: float) -> str:
    """Send `head`, then one byte every `every` s until the server answers or `bound` s pass.

    The status and when it came; "held" when the server still waits for the body at the bound.
    """
    started = time.monotonic()
    status = "held"
    with raw_connect(port, head) as sock:
        while time.monotonic() - started < bound:
            readable, _, _ = select.select([sock], [], [], every)
            if readable:
                status = read_status(sock, time.monotonic() + 10)
                break
            try:
                sock.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                status = read_status(sock, time.monotonic() + 10)
                break
    return f"{status}@{time.monotonic() - started:.0f}s"


# --- the store's content the rows need -------------------------------------------------------


def tgz(members: Iterable[tuple[str, bytes]], *, level: int = 6) -> bytes:
    """A gzipped tar of regular files, in memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=level) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_gz_declaring(entries: int) -> bytes:
    """A gzipped zip whose (zip64) central directory really holds `entries` empty-named entries.

    Every entry points at the one local header; the directory is 46 bytes an entry, so 4,000,000
    entries are 184 MB that gzip to about 0.5 MB.
    """
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, 0, 0, 0, 0, 0)
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0x21, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    )
    cd_size = entries * len(central)
    z64_offset = len(local) + cd_size
    tail = (
        struct.pack(
            "<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, entries, entries, cd_size, len(local)
        )
        + struct.pack("<IIQI", 0x07064B50, 0, z64_offset, 1)
        + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    )
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [gz.compress(local)]
    block = central * 4_000
    for _ in range(entries // 4_000):
        out.append(gz.compress(block))
    out.append(gz.compress(central * (entries % 4_000)))
    out += [gz.compress(tail), gz.flush()]
    return b"".join(out)


def symlinks_tgz(count: int, depth: int) -> bytes:
    """`count` symlinks, each to a `depth`-segment path `x/x/…/x` inside the tree."""
    buf = io.BytesIO()
    target = "/".join(["x"] * depth)
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for index in range(count):
            info = tarfile.TarInfo(f"l{index:05d}")
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def propfind_naming(count: int) -> bytes:
    """A PROPFIND body naming `count` DAV: properties nobody has, 8 bytes each (`<D:abc/>`)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    names = (letters[i // 676 % 26] + letters[i // 26 % 26] + letters[i % 26] for i in range(count))
    props = "".join(f"<D:{name}/>" for name in names)
    return (
        f'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop>{props}</D:prop></D:propfind>'
    ).encode()


@dataclass
class Fixtures:
    """Paths on the server of the content the rows work on."""

    blob: str = ""
    folder: str = ""
    deploy_sum: str = ""
    listing: str = ""


def upload(port: int, name: str, data: bytes, headers: dict[str, str] | None = None) -> dict:
    """PUT /upload/<name>; the JSON answer, or SystemExit when it is not 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("PUT", f"/upload/{name}", body=data, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise SystemExit(f"setup upload of {name} failed: {resp.status} {body[:300]!r}")
    return json.loads(body)


def set_up(store: Path, log: Path, sizes: Sizes, needs: set[str]) -> Fixtures:
    """Upload, through a generous server, the blob, folders and archive the chosen rows use."""
    env = launch.environ_with(
        ARCHIVE_DIR=str(store),
        MAX_CONTENT_LENGTH="1gb",
        BUCKETDAV_MIN_FREE="0",
        REPLICATE_0="bench/${Topic}",
    )
    proc, port = launch.start(env, log)
    fixtures = Fixtures()
    try:
        if "blob" in needs:
            fixtures.blob = "/" + upload(port, "blob.bin", os.urandom(64 << 10))["path"]["blob"]
        if "folder" in needs:
            files = [
                (f"f{i:05d}.txt", f"folder file {i}\n".encode()) for i in range(sizes.folder_files)
            ]
            fixtures.folder = "/" + upload(port, "folder.tgz", tgz(files))["path"]["archive"] + "/"
        if "deploy" in needs:
            parts = max(1, sizes.deploy_mb // 5)
            files = [
                (f"part{i}.bin", os.urandom(sizes.deploy_mb * MIB // parts)) for i in range(parts)
            ]
            data = tgz(files, level=1)
            fixtures.deploy_sum = hashlib.md5(data).hexdigest()  # noqa: S324 - CHECKSUM_TYPE
            upload(port, "deploy.tgz", data)
        if "listing" in needs:
            files = [
                (f"f{i:06d}.txt", f"listed file {i}\n".encode()) for i in range(sizes.listing_files)
            ]
            answer = upload(port, "tree.tgz", tgz(files), {"Topic": "listing"})
            first = store / next(p for p in answer["path"]["replicas"] if ".latest" not in p)
            # One upload makes one replica; the others are the same symlink under more names,
            # which is what repeated deploys of the archive leave.
            for index in range(2, sizes.listing_trees):
                (first.parent / f"tree.copy.{index}").symlink_to(os.readlink(first))
            fixtures.listing = "/" + str(first.parent.relative_to(store)) + "/"
    finally:
        proc.terminate()
        proc.wait(60)
    return fixtures


# --- the rows --------------------------------------------------------------------------------


@dataclass
class Bench:
    """What a row's attack needs: the server's port, the content, the sizes and bounds."""

    port: int
    fixtures: Fixtures
    sizes: Sizes
    timeout: float

    def call(self, method: str, path: str, **kwargs: object) -> str:
        """One request's outcome."""
        return outcome(lambda: request(self.port, method, path, timeout=self.timeout, **kwargs)[0])


def normal_upload(b: Bench) -> str:
    return b.call("PUT", "/upload/normal.bin", body=os.urandom(8 * MIB))


def normal_propfind(b: Bench) -> str:
    return b.call("PROPFIND", b.fixtures.folder, headers={"Depth": "1"})


def zip_entries(b: Bench) -> str:
    return b.call("PUT", "/upload/entries.zip.gz", body=zip_gz_declaring(b.sizes.zip_entries))


def huge_chunk(b: Bench) -> str:
    """One chunk declaring chunk_mb MiB, sent as fast as the server takes it."""
    size = b.sizes.chunk_mb * MIB
    head = (
        b"PUT /upload/chunk.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    deadline = time.monotonic() + b.timeout
    with raw_connect(b.port, head + b"%x\r\n" % size) as sock:
        sock.setblocking(False)
        block = memoryview(bytes(MIB))
        sent = 0
        while sent < size:
            if time.monotonic() > deadline:
                return "timeout"
            readable, writable, _ = select.select([sock], [sock], [], 1)
            if readable:
                break
            if writable:
                try:
                    sent += sock.send(block[: min(MIB, size - sent)])
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
        else:
            with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                sock.sendall(b"\r\n0\r\n\r\n")
        sock.setblocking(True)
        return f"{read_status(sock, deadline)} after {sent // MIB} MiB"


def trickled_uploads(b: Bench) -> str:
    """Two uploads sending a byte a second inside a 1 MiB chunk; a normal upload meanwhile."""
    head = (
        b"PUT /upload/trickle.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n100000\r\n"
    )
    # The probe waits up to BUCKETDAV_TIMEOUT for a slot, so it must give up before the bound
    # to show slots still held; the slow-body rule should have freed them by then.
    bound = TIMEOUT * 4
    probe_at = TIMEOUT * 2 + 1

    def late_upload() -> str:
        time.sleep(probe_at)
        return b.call("PUT", "/upload/probe.bin", body=os.urandom(4096))

    slow = [lambda: trickle(b.port, head, every=1, bound=bound) for _ in range(2)]
    results = at_once([*slow, late_upload])
    return f"{summary(results[:2])}; upload at {probe_at}s: {results[2]}"


def deep_symlinks(b: Bench) -> str:
    data = symlinks_tgz(b.sizes.links, b.sizes.link_depth)
    return b.call("PUT", "/upload/links.tgz", body=data)


def named_props(b: Bench, *, parallel: int) -> str:
    """PROPFIND Depth 1 of the folder naming many unknown properties, `parallel` at once."""
    body = propfind_naming(b.sizes.props)
    headers = {"Depth": "1", "Content-Type": "application/xml"}

    def one() -> str:
        status, received = request(
            b.port, "PROPFIND", b.fixtures.folder, headers=headers, body=body, timeout=b.timeout
        )
        return f"{status} ({received / 1e6:.0f} MB)"

    return summary(at_once([one] * parallel))


def slow_propfinds(b: Bench) -> str:
    """Four PROPFINDs declaring 1,000 bytes and sending one a second."""
    head = (
        f"PROPFIND {b.fixtures.folder} HTTP/1.1\r\nHost: 127.0.0.1\r\nDepth: 1\r\n"
        "Content-Type: application/xml\r\nContent-Length: 1000\r\n\r\n"
    ).encode()
    return summary(at_once([lambda: trickle(b.port, head, every=1, bound=TIMEOUT * 3)] * 4))


def deploys(b: Bench) -> str:
    """Four deploys by checksum of the known .tgz at once (BUCKETDAV_MAX_UPLOADS=1)."""
    headers = {
        "X-Checksum-Deploy": "true",
        "X-Checksum": b.fixtures.deploy_sum,
        "Content-Length": "0",
    }

    def one() -> str:
        return request(
            b.port, "PUT", "/upload/deploy.tgz", headers=headers, body=b"", timeout=b.timeout
        )[0]

    return summary(sorted(at_once([one] * 4)))


def bad_range(b: Bench) -> str:
    """GET of a blob with `Range: bytes=²-5`, the ² sent as the raw byte 0xB2."""
    head = (
        f"GET {b.fixtures.blob} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
        + b"Range: bytes=\xb2-5\r\n\r\n"
    )
    with raw_connect(b.port, head) as sock:
        return read_status(sock, time.monotonic() + b.timeout)


def slashed_heads(b: Bench) -> str:
    """HEADs of one blob on one connection, each path padded with ~60 KB of distinct slashes."""
    _, kind, ab, cd, digest = b.fixtures.blob.split("/")
    width = b.sizes.slashes
    counts: dict[str, int] = {}
    deadline = time.monotonic() + b.timeout
    conn = http.client.HTTPConnection("127.0.0.1", b.port, timeout=b.timeout)
    try:
        for index in range(b.sizes.heads):
            if time.monotonic() > deadline:
                counts["timeout"] = 1
                break
            path = f"/{kind}/{ab}/{'/' * (width - index)}{cd}/{'/' * (index + 1)}{digest}"
            status = outcome(lambda p=path: _head(conn, p))
            counts[status] = counts.get(status, 0) + 1
    finally:
        conn.close()
    return ",".join(f"{status}x{count}" for status, count in counts.items())


def _head(conn: http.client.HTTPConnection, path: str) -> str:
    conn.request("HEAD", path)
    resp = conn.getresponse()
    resp.read()
    return str(resp.status)


def listing(b: Bench) -> str:
    status, received = request(
        b.port, "GET", b.fixtures.listing, headers={"Accept": "text/html"}, timeout=b.timeout
    )
    return f"{status} ({received / 1e3:.0f} kB)"


@dataclass(frozen=True)
class Row:
    """One request (or a few at once) to measure, with what it needs and the server it gets."""

    name: str
    title: str
    attack: Callable[[Bench], str]
    needs: frozenset[str] = frozenset()
    settings: dict[str, str] = field(default_factory=dict)
    normal: bool = False


def rows(sizes: Sizes) -> list[Row]:
    """Every row, normal ones first so the others' ratios can be shown as they finish."""
    folder = frozenset({"folder"})
    return [
        Row("upload", "normal: PUT 8 MiB", normal_upload, normal=True),
        Row(
            "propfind",
            f"normal: PROPFIND d1, {sizes.folder_files} files",
            normal_propfind,
            folder,
            normal=True,
        ),
        Row("zip", f"2: .zip.gz of {sizes.zip_entries:,} entries", zip_entries),
        Row("chunk", f"3a: chunk of {sizes.chunk_mb} MiB", huge_chunk),
        Row(
            "trickle",
            "3b: 2 uploads, 1 B/s in a chunk, 2 slots",
            trickled_uploads,
            settings={"BUCKETDAV_MAX_UPLOADS": "2"},
        ),
        Row("symlinks", f"4: {sizes.links} links x {sizes.link_depth} deep", deep_symlinks),
        Row(
            "props",
            f"5: PROPFIND {sizes.props} props",
            lambda b: named_props(b, parallel=1),
            folder,
        ),
        Row("props4", "5: the same, 4 at once", lambda b: named_props(b, parallel=4), folder),
        Row("slowdav", "6: 4 PROPFINDs, 1 B/s", slow_propfinds, folder),
        Row(
            "deploy",
            f"7: 4 deploys of {sizes.deploy_mb} MB .tgz, 1 slot",
            deploys,
            frozenset({"deploy"}),
            {"BUCKETDAV_MAX_UPLOADS": "1"},
        ),
        Row("range", "8: Range bytes=\\xb2-5", bad_range, frozenset({"blob"})),
        Row(
            "slashes",
            f"9: {sizes.heads} HEADs, {sizes.slashes // 1000} KB of /",
            slashed_heads,
            frozenset({"blob"}),
        ),
        Row(
            "listing",
            f"listing: {sizes.listing_trees} trees x {sizes.listing_files}",
            listing,
            frozenset({"listing"}),
        ),
    ]


# --- measuring -------------------------------------------------------------------------------


@dataclass
class Result:
    """What one row cost the server."""

    status: str
    wall: float
    peak: float
    kept: float
    cpu: float
    healthz: float
    died: bool


def warm_up(port: int, fixtures: Fixtures) -> None:
    """First requests import and build what every later one uses; none of that is the row's."""
    request(port, "GET", "/healthz")
    request(port, "GET", "/config")
    request(port, "PROPFIND", "/", headers={"Depth": "0"})
    request(port, "GET", "/", headers={"Accept": "text/html"})
    request(port, "PUT", "/upload/warm.txt", body=b"warm\n")
    if fixtures.blob:
        request(port, "HEAD", fixtures.blob)


def measure(
    row: Row, store: Path, log: Path, fixtures: Fixtures, args: argparse.Namespace
) -> Result:
    """Start a server for the row, run its attack and read what it cost."""
    env = launch.environ_with(
        ARCHIVE_DIR=str(store),
        BUCKETDAV_THREADS=str(THREADS),
        BUCKETDAV_TIMEOUT=str(TIMEOUT),
        BUCKETDAV_MIN_FREE="0",
        MAX_CONTENT_LENGTH="32mb",
        **row.settings,
    )
    with open(log, "a") as handle:
        handle.write(f"\n=== {row.name}\n")
    proc, port = launch.start(env, log)
    try:
        warm_up(port, fixtures)
        time.sleep(0.5)
        pid = proc.pid
        rss_before, cpu_before = rss_mib(pid), cpu_seconds(pid)
        sampler, poller = RssSampler(pid), HealthPoller(port)
        sampler.start()
        poller.start()
        bench = Bench(port, fixtures, args.sizes, args.timeout)
        started = time.monotonic()
        try:
            status = row.attack(bench)
        except Exception as exc:  # a row reports what went wrong; the others still run
            status = f"error {type(exc).__name__}: {exc}"[:60]
        wall = time.monotonic() - started
        healthz = poller.stop()
        peak = sampler.stop()
        died = proc.poll() is not None
        cpu = float("nan") if died else cpu_seconds(pid) - cpu_before
        time.sleep(0.5)
        kept = float("nan") if died else rss_mib(pid) - rss_before
        return Result(status, wall, peak - rss_before, kept, cpu, healthz, died)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def misses(result: Result) -> list[str]:
    """Why the row misses the target, if it does."""
    why = []
    if result.died:
        why.append("died")
    if result.peak > TARGET_RSS_MIB:
        why.append("RSS")
    if result.healthz > TARGET_HEALTHZ_S:
        why.append("healthz")
    if "held" in result.status or "timeout" in result.status:
        why.append("held")
    if "500" in result.status:
        why.append("500")
    return why


HEADER = (
    f"{'row':<40} {'status':<34} {'wall s':>7} {'+peak Mi':>8} {'kept Mi':>7} {'CPU s':>6} "
    f"{'healthz s':>9} {'xRSS':>6} {'xCPU':>6}  misses"
)


def line(title: str, result: Result, base_rss: float | None, base_cpu: float | None) -> str:
    """One table row."""
    x_rss = f"{result.peak / base_rss:6.1f}" if base_rss else f"{'-':>6}"
    x_cpu = f"{result.cpu / base_cpu:6.1f}" if base_cpu else f"{'-':>6}"
    return (
        f"{title:<40} {result.status:<34} {result.wall:7.2f} {result.peak:8.1f} {result.kept:7.1f} "
        f"{result.cpu:6.2f} {result.healthz:9.3f} {x_rss} {x_cpu}  {' '.join(misses(result))}"
    )


def main() -> None:
    """Set up the store, run each chosen row against its own server, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated row names (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, for a quick look")
    parser.add_argument("--dir", help="where the store goes (default: a new one in /tmp)")
    parser.add_argument("--timeout", type=float, default=60, help="client-side bound per request")
    parser.add_argument("--keep", action="store_true", help="keep the store and the server log")
    parser.add_argument("--deploy-mb", type=int, help="size of the .tgz deployed by checksum")
    parser.add_argument("--listing-trees", type=int, help="tree replicas in the listed folder")
    parser.add_argument("--listing-files", type=int, help="files in the replicated archive")
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    overrides = {
        name: getattr(args, name)
        for name in ("deploy_mb", "listing_trees", "listing_files")
        if getattr(args, name) is not None
    }
    args.sizes = sizes = Sizes(**{**sizes.__dict__, **overrides})
    chosen = rows(sizes)
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {row.name for row in chosen}
        if unknown:
            parser.error(f"unknown rows {sorted(unknown)}; known: {[r.name for r in chosen]}")
        chosen = [row for row in chosen if row.name in names]
    needs = set().union(*(row.needs for row in chosen)) | {"blob"}
    print(f"bucketdav from {Path(bucketdav.__file__).parent}, Python {sys.version.split()[0]}")
    print(
        f"server: BUCKETDAV_THREADS={THREADS} BUCKETDAV_TIMEOUT={TIMEOUT} MAX_CONTENT_LENGTH=32mb, "
        f"a fresh one per row; client timeout {args.timeout:.0f} s; sizes: {sizes}"
    )
    work = Path(tempfile.mkdtemp(prefix="bench-abuse-", dir=args.dir))
    store, log = work / "store", work / "server.log"
    try:
        started = time.monotonic()
        fixtures = set_up(store, log, sizes, needs)
        print(f"set-up {time.monotonic() - started:.1f} s; store {store}, server log {log}")
        print(HEADER, flush=True)
        base_rss = base_cpu = None
        for row in chosen:
            result = measure(row, store, log, fixtures, args)
            if row.normal:
                # A floor keeps a near-zero baseline from turning noise into huge ratios.
                base_rss = max(base_rss or 0, result.peak, 1.0)
                base_cpu = max(base_cpu or 0, result.cpu, 0.01)
            print(line(row.title, result, base_rss, base_cpu), flush=True)
        print(
            f"targets: +peak RSS <= {TARGET_RSS_MIB} MiB, /healthz <= {TARGET_HEALTHZ_S:.0f} s, "
            "no 500, nothing held to the bound; xRSS/xCPU are ratios to the larger normal row "
            f"(floors 1 MiB, 0.01 s); total {time.monotonic() - started:.0f} s"
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
