"""The README's commands are true: the serve line works in a fresh venv, CI runs the test line."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def readme_commands() -> list[str]:
    """The commands of the README's first section, one per sh block."""
    section = README.split("## Run it, test it", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_readme_names_the_serve_and_test_commands():
    serve, test = readme_commands()
    assert "bucketdav serve" in serve
    assert test == "scripts/test"


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    test = readme_commands()[1]
    assert re.search(rf"^{re.escape(test)}\b", ci, re.M)


def test_readme_documents_every_setting():
    from bucketdav.settings import SETTINGS

    for setting in SETTINGS:
        assert f"`{setting.name}`" in README


@pytest.mark.slow
def test_readme_serve_command_works_in_a_fresh_venv(tmp_path):
    serve = readme_commands()[0]
    checkout = tmp_path / "checkout"
    shutil.copytree(
        REPO,
        checkout,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"
        ),
    )
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKETDAV_", "ARCHIVE_"))}
    env.pop("VIRTUAL_ENV", None)
    env.update(ARCHIVE_DIR=str(tmp_path / "store"), BUCKETDAV_PORT="0", BUCKETDAV_MIN_FREE="0")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", serve],
            cwd=checkout,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        port = None
        while time.monotonic() < deadline and port is None and proc.poll() is None:
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", log.read_text())
            port = found and int(found.group(1))
            time.sleep(0.2)
        assert port, log.read_text()[-3000:]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/upload/readme.txt", data=b"from the README", method="PUT"
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as resp:
            assert resp.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    assert "stopped" in log.read_text()
