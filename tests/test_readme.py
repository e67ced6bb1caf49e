"""The README's commands are true: the serve line works in a fresh venv, CI runs the test line,
and every other command works as written from the repository root against a live server."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from bucketdav.pages import recipes
from tests.conftest import require_tool
from tests.test_connect_live import (
    paste,
    pasted_mount,
    rclone_mount_args,
    rclone_mount_point,
    shell_env,
    tree_bytes,
)

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
# The address the README's commands name; a test server listens on a free port instead.
ADDRESS = "127.0.0.1:8080"


def readme_commands() -> list[str]:
    """The commands of the README's first section, one per sh block."""
    section = README.split("## Run it, test it", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def readme_lines() -> list[str]:
    """Every command line of every sh block of the README, in order; comment lines left out."""
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def readme_comments(after: str) -> list[str]:
    """The comment lines of the sh blocks that contain `after`."""
    blocks = [b for b in re.findall(r"```sh\n(.*?)```", README, re.S) if after in b]
    return [line[1:].strip() for b in blocks for line in b.splitlines() if line.startswith("#")]


def davfs2_lines() -> tuple[str, ...]:
    """What the Connect page shows for davfs2 at the README's address."""
    (davfs2,) = [r for r in recipes(f"http://{ADDRESS}") if r.key == "davfs2"]
    return davfs2.commands


def how_tested(line: str) -> str:
    """Where a README command line is shown to work (`run` and `mount`: the live test below)."""
    if line.startswith("python3 -m venv") or line == "scripts/test":
        return "set-up: test_readme_serve_command_works_in_a_fresh_venv, .ci/run"
    if "bucketdav serve" in line:
        return "server: the live test starts the fixture server with this line's settings"
    if line in davfs2_lines():
        return "davfs2, as root: tests/test_connect_live.py runs the Connect page's same lines"
    if line.startswith("docker "):
        return "docker: not run, CI has no docker"
    if rclone_mount_args(line) is not None:
        return "mount"
    return "run"


def programs(line: str) -> list[str]:
    """The program each command of a shell line runs, past `VAR=value` assignments."""
    found = []
    for command in re.split(r"\|\||&&|\||;", line.split(" #", 1)[0]):
        words = [w for w in shlex.split(command) if not re.fullmatch(r"[A-Z_0-9]+=.*", w)]
        found += words[:1]
    return found


def test_readme_commands_need_no_activated_venv():
    # After the set-up line nothing is on PATH but the system's tools: bucketdav is .venv/bin's.
    for line in readme_lines():
        for program in programs(line):
            assert program not in ("bucketdav", "python", "pip", "pytest"), line


def test_readme_davfs2_lines_are_the_connect_pages():
    assert [line for line in readme_lines() if line in davfs2_lines()] == list(davfs2_lines())


def test_readme_replication_example_is_one_story():
    (serve,) = [line for line in readme_lines() if "bucketdav serve" in line and "=" in line]
    template = shlex.split(serve)[0].split("=", 1)[1]
    assert template == "user/${Username}/${Topic}"
    uploads = [line for line in readme_lines() if "-H 'Username: bob' -H 'Topic: demo'" in line]
    assert len(uploads) == 2
    (copy,) = [line for line in readme_lines() if line.startswith("rclone copy")]
    assert shlex.split(copy, comments=True)[2] == "bucket:replica/user/bob/demo/docs.latest"


@pytest.mark.client
@pytest.mark.slow
def test_readme_commands_work_as_written(live_server_factory, tmp_path):
    for tool in ("curl", "rclone", "tar", "md5sum"):
        require_tool(tool)
    (serve,) = [line for line in readme_lines() if line.startswith("REPLICATE_0=")]
    server = live_server_factory(REPLICATE_0=shlex.split(serve)[0].split("=", 1)[1])
    home = tmp_path / "home"
    home.mkdir()
    # The command text is the README's, except that 127.0.0.1:8080 becomes this server's free
    # port. The environment is a new user's: HOME is a fresh folder (rclone's saved remote and
    # `~/...` land there, not in the real home) and ARCHIVE_DIR names this server's store, the
    # one `bucketdav check` is meant to check.
    env = {**shell_env(home), "ARCHIVE_DIR": str(server.root)}
    outputs: dict[str, str] = {}
    for line in readme_lines():
        kind = how_tested(line)
        line = line.replace(ADDRESS, f"127.0.0.1:{server.port}")
        if kind == "mount":
            point = rclone_mount_point(rclone_mount_args(line) or [], home)
            with pasted_mount(line, point, cwd=tmp_path, env=env) as mounted:
                assert {"blob", "explode", "replica"} <= set(os.listdir(mounted))
        elif kind == "run":
            done = paste(line, cwd=REPO, env=env, timeout=120)
            assert done.returncode == 0, (line, done.stderr.decode())
            outputs[line] = done.stdout.decode()
    uploads = [out for line, out in outputs.items() if re.search(r"curl .*/upload\b", line)]
    assert len(uploads) == 6
    assert all(json.loads(out)["code"] == 200 for out in uploads)
    (head,) = [out for line, out in outputs.items() if "/checksum/" in line]
    assert head.startswith("HTTP/1.1 200")
    docs = {f"docs/{name}": data for name, data in tree_bytes(REPO / "docs").items()}
    assert tree_bytes(home / "demo") == docs
    (summed,) = [out for line, out in outputs.items() if line.startswith("rclone md5sum")]
    for data in docs.values():
        assert hashlib.md5(data).hexdigest() in summed  # noqa: S324 - the store's checksum
    for comment in readme_comments("bucketdav serve"):
        if comment.startswith("replica/"):
            pattern = comment.split()[0].replace("20261128.0942", "*").replace("…", "*")
            assert list(server.root.glob(pattern)), comment
    assert sum(".venv/bin/bucketdav check" in line for line in outputs) == 3


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
