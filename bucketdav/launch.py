"""Run `bucketdav serve` as a child process on 127.0.0.1 and a free port.

For the benchmarks, the screenshot script and the live tests. The port is read from the
server's own "listening on" line (server.serve), so nothing races for a free port.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

LISTENING = re.compile(r"listening on https?://([\d.]+):(\d+)/")
# Settings a caller's environment may hold that would change the server under test.
_SETTING_PREFIXES = ("BUCKETDAV_", "ARCHIVE_", "REPLICATE_", "CHECKSUM_TYPE", "MAX_CONTENT_LENGTH")


def environ_with(**settings: str) -> dict[str, str]:
    """This process's environment without any bucketdav setting, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    return {**env, "PYTHONUNBUFFERED": "1", **settings}


def start(
    env: dict[str, str], log_path: Path, *, args: Sequence[str] = (), timeout: float = 30
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the server, appending its output to `log_path`; returns the process and port.

    Raises RuntimeError, with what it logged, when it exits or does not listen in time.
    """
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bucketdav",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                *args,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + timeout
    while True:
        text = log_path.read_bytes()[offset:].decode("utf-8", "replace")
        match = LISTENING.search(text)
        if match:
            return proc, int(match.group(2))
        if proc.poll() is not None:
            raise RuntimeError(f"bucketdav exited with {proc.returncode}:\n{text}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"bucketdav did not start within {timeout}s:\n{text}")
        time.sleep(0.05)
