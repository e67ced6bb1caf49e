"""What several benchmarks need: a free port, a blob written in place, wrk scripts, a server
stopped."""

from __future__ import annotations

import hashlib
import socket
import subprocess
from pathlib import Path

PROPFIND_BODY = (
    '<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop>'
    "<D:resourcetype/><D:getcontentlength/><D:getlastmodified/><D:getetag/>"
    "</D:prop></D:propfind>"
)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def put_blob(root: Path, data: bytes) -> Path:
    """Write `data` as a blob the way the store lays it out (no fsync: this is a bench)."""
    digest = hashlib.md5(data).hexdigest()  # noqa: S324 - the store's default CHECKSUM_TYPE
    path = root / "blob" / digest[:2] / digest[2:4] / digest
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o444)
    return path


def stop_process(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 15 s; nothing when it has ended already."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(15)


def wrk_scripts(work: Path) -> tuple[Path, Path]:
    """wrk's Lua scripts for a GET and for a PROPFIND Depth 1 of PROPFIND_BODY, in `work`."""
    get_lua = work / "get.lua"
    get_lua.write_text('wrk.method = "GET"\n')
    propfind_lua = work / "propfind.lua"
    propfind_lua.write_text(
        'wrk.method = "PROPFIND"\nwrk.headers["Depth"] = "1"\n'
        'wrk.headers["Content-Type"] = "application/xml"\n'
        f"wrk.body = [[{PROPFIND_BODY}]]\n"
    )
    return get_lua, propfind_lua
