"""Shared fixtures: the WSGI app over a temporary store, and the real server on a free port."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import webtest

from bucketdav import launch
from bucketdav.server import make_app
from bucketdav.settings import Settings, load_settings
from bucketdav.store.blobs import Store

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """The path of a command-line client; in CI a missing one fails the test, elsewhere skips it."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (.ci/run installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium (the Debian package, driven by Playwright) for a test module."""
    path = require_tool("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def make_settings(root: Path, **env: str) -> Settings:
    """Settings for a store at `root`, with extra variables as the environment would give them."""
    return load_settings(environ={"ARCHIVE_DIR": str(root), "BUCKETDAV_MIN_FREE": "0", **env})


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    """An ARCHIVE_DIR inside the test's temporary directory, with a sibling to detect escapes."""
    (tmp_path / "outside").mkdir()
    return tmp_path / "store"


@pytest.fixture
def make_client(store_root: Path) -> Callable[..., webtest.TestApp]:
    """Build a WebTest client of the whole server app; keyword arguments are settings."""

    def build(**env: str) -> webtest.TestApp:
        settings = make_settings(store_root, **env)
        store = Store(
            settings.archive_dir,
            settings.checksum_type,
            min_free=settings.min_free,
            node=settings.node,
        )
        store.open()
        return webtest.TestApp(make_app(settings, store), lint=False)

    return build


@pytest.fixture
def client(make_client: Callable[..., webtest.TestApp]) -> webtest.TestApp:
    """A WebTest client over a fresh store with default settings."""
    return make_client()


@dataclass
class LiveServer:
    """A real `bucketdav serve` process on 127.0.0.1 and a free port."""

    root: Path
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    port: int = 0
    extra_args: list[str] = field(default_factory=list)
    # The certificate to trust when the server speaks HTTPS (BUCKETDAV_TLS_CERT).
    tls_ca: Path | None = None

    @property
    def url(self) -> str:
        """The base URL, with a trailing slash."""
        return f"{'https' if self.tls_ca else 'http'}://{self.host}:{self.port}/"

    def start(self, *, timeout: float = 20) -> LiveServer:
        """Start the process and wait until /healthz answers."""
        self.proc, self.port = launch.start(
            self.env, self.log_path, args=self.extra_args, timeout=timeout
        )
        deadline = time.monotonic() + timeout
        while self.request("GET", "/healthz").status not in (200, 503):
            if time.monotonic() > deadline:
                raise RuntimeError(f"/healthz did not answer within {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 30) -> int:
        """Stop the process with `sig` and return its exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)

    def log(self) -> str:
        """Everything the server has logged so far."""
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    def settled_log(self, *, timeout: float = 15) -> str:
        """The log once every line of the requests answered so far is written.

        Log lines are written in batches; a marked request is logged after all earlier ones,
        so once its line is there, so are theirs.
        """
        marker = f"settle={uuid.uuid4().hex}"
        self.request("GET", f"/healthz?{marker}")
        deadline = time.monotonic() + timeout
        while marker not in (text := self.log()):
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not log {marker} within {timeout}s")
            time.sleep(0.02)
        return text

    def connection(self, timeout: float = 30) -> http.client.HTTPConnection:
        """A new HTTP connection to the server (HTTPS, trusting its certificate, with TLS)."""
        if self.tls_ca is not None:
            context = ssl.create_default_context(cafile=str(self.tls_ca))
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(
        self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> Response:
        """One request on a fresh connection; returns status, headers and the whole body."""
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            return Response(resp.status, dict(resp.getheaders()), resp.read())
        finally:
            conn.close()

    def upload(self, name: str, data: bytes, headers: Mapping[str, str] | None = None) -> Response:
        """PUT `data` as /upload/<name>."""
        return self.request("PUT", "/upload/" + quote(name), body=data, headers=headers)

    def path_of(self, url: str) -> str:
        """The path part of an absolute URL the server gave out."""
        return urlsplit(url).path


@dataclass
class Response:
    """A complete HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


@pytest.fixture
def live_server_factory(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start real servers: `factory(ENV_NAME=value, ...)`; all are stopped at the end."""
    servers: list[LiveServer] = []

    def start(*, root: Path | None = None, args: list[str] | None = None, **env: str) -> LiveServer:
        index = len(servers)
        root = root or tmp_path / f"store{index}"
        defaults = {"ARCHIVE_DIR": str(root), "BUCKETDAV_MIN_FREE": "0"}
        full_env = launch.environ_with(**{**defaults, **env})
        server = LiveServer(
            root=root,
            log_path=tmp_path / f"server{index}.log",
            env=full_env,
            extra_args=list(args or []),
            tls_ca=Path(env["BUCKETDAV_TLS_CERT"]) if env.get("BUCKETDAV_TLS_CERT") else None,
        )
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop(signal.SIGKILL)


@pytest.fixture
def live_server(live_server_factory: Callable[..., LiveServer]) -> LiveServer:
    """One real server over a fresh store with default settings."""
    return live_server_factory()
