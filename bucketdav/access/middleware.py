"""The WSGI middleware in front of the API and WebDAV: who is asking, and may they?

It reads the credentials, answers 401, 403 and 429 itself (in the API's JSON error shape),
and hands everything else on with the identity in the environ: its name under
`bucketdav.identity` for the logs, the Identity under `bucketdav.access` for listings and
for the upload handler's replica check.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bucketdav.access.credentials import Verifier
from bucketdav.access.decide import ACCESS_KEY, IDENTITY_KEY, Decision, decide
from bucketdav.access.lockout import Lockout
from bucketdav.access.rules import ANONYMOUS, AccessFileError, parse_rules
from bucketdav.api import CHALLENGE, LOG_REASON, error_json
from bucketdav.public_url import Network, is_trusted
from bucketdav.settings import SettingError, Settings

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# How often, at most, the access file is looked at for a change.
CHECK_SECONDS = 1.0
# Password hashes computed at once; more wait, so guesses cannot take every core.
HASHES_AT_ONCE = 2
_STATUS = {401: "401 Unauthorized", 403: "403 Forbidden", 429: "429 Too Many Requests"}


class AccessFile:
    """The rules of the access file, read again when it changes.

    A new version that cannot be used is logged once, and the rules before it stay.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self.hashing = threading.BoundedSemaphore(HASHES_AT_ONCE)
        self._reloading = threading.Lock()
        stamp = self._stamp()
        if stamp is None:
            raise SettingError("BUCKETDAV_ACCESS_FILE", str(path), "cannot read it")
        self.verifier = self._load()
        self._seen: tuple[int, int, int] | None = stamp
        self._next = clock() + CHECK_SECONDS

    def current(self) -> Verifier:
        """The verifier of the rules in force, after a look at the file once in a while."""
        now = self.clock()
        if now >= self._next and self._reloading.acquire(blocking=False):
            try:
                self._next = now + CHECK_SECONDS
                self._reload()
            finally:
                self._reloading.release()
        return self.verifier

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> Verifier:
        try:
            text = self.path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise SettingError("BUCKETDAV_ACCESS_FILE", str(self.path), str(reason)) from None
        try:
            rules = parse_rules(text)
        except AccessFileError as exc:
            raise SettingError("BUCKETDAV_ACCESS_FILE", str(self.path), str(exc)) from None
        return Verifier(rules, hashing=self.hashing)

    def _reload(self) -> None:
        stamp = self._stamp()
        if stamp == self._seen:
            return
        self._seen = stamp
        if stamp is None:
            log.error("the access file %s is gone; the rules before stay", self.path)
            return
        try:
            verifier = self._load()
        except SettingError as exc:
            log.error("the access file changed but cannot be used; the rules before stay: %s", exc)
            return
        self.verifier = verifier
        log.info(
            "access file %s read again: %d users, %d tokens",
            self.path,
            len(verifier.rules.users),
            len(verifier.rules.tokens),
        )


def client_address(environ: dict[str, Any], proxies: tuple[Network, ...]) -> str:
    """The address a failure counts against: the peer, or the client a trusted proxy names."""
    peer = str(environ.get("REMOTE_ADDR") or "-")
    forwarded = environ.get("HTTP_X_FORWARDED_FOR")
    if forwarded and is_trusted(peer, proxies):
        # The last entry is the one the proxy itself added.
        return str(forwarded).rsplit(",", 1)[-1].strip() or peer
    return peer


class Guard:
    """Authenticates each request, applies the one decision, and hands on what is allowed."""

    def __init__(
        self, app: WsgiApp, source: AccessFile, lockout: Lockout, *, proxies: tuple[Network, ...]
    ) -> None:
        self.app = app
        self.source = source
        self.lockout = lockout
        self.proxies = proxies

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = _decoded(environ.get("PATH_INFO") or "/")
        if path.lstrip("/").split("/", 1)[0] == "healthz":
            environ[IDENTITY_KEY] = ANONYMOUS
            return self.app(environ, start_response)
        verifier = self.source.current()
        header = environ.get("HTTP_AUTHORIZATION")
        if header is None:
            identity = verifier.rules.anonymous
            if _asks_to_sign_in(environ.get("QUERY_STRING", "")):
                # A browser shows what anyone may see without asking; this link makes it ask.
                return _refuse(
                    environ,
                    start_response,
                    401,
                    "sign in with a name and password (or any name and a token)",
                    reason="sign-in asked",
                )
        else:
            address = client_address(environ, self.proxies)
            left = self.lockout.locked(address)
            if left:
                environ[IDENTITY_KEY] = ANONYMOUS
                return _refuse(
                    environ,
                    start_response,
                    429,
                    f"too many failed sign-ins from {address}; try again in {int(left) + 1} s",
                    reason="locked out",
                    extra=[("Retry-After", str(int(left) + 1))],
                )
            checked = verifier.check(header)
            if checked.identity is None:
                environ[IDENTITY_KEY] = ANONYMOUS
                if checked.failure and self.lockout.failed(address):
                    log.warning(
                        "%s: %d failed sign-ins within %d s; its requests with credentials "
                        "get 429 for %d s",
                        address,
                        self.lockout.limit,
                        self.lockout.window,
                        self.lockout.window,
                    )
                return _refuse(
                    environ,
                    start_response,
                    401,
                    f"{checked.problem}: sign in with HTTP Basic (a user and its password, or "
                    "any name and a token) or Authorization: Bearer TOKEN",
                    reason=checked.problem,
                )
            identity = checked.identity
        environ[IDENTITY_KEY] = identity.name
        environ[ACCESS_KEY] = identity
        method = environ.get("REQUEST_METHOD", "GET")
        decision = decide(identity, method, path)
        if decision is Decision.ALLOW or decision is Decision.LIST:
            return self.app(environ, start_response)
        if decision is Decision.UNAUTHORIZED:
            return _refuse(
                environ,
                start_response,
                401,
                f"{method} {_shown(path)} needs credentials: HTTP Basic or a Bearer token",
                reason="credentials needed",
            )
        return _refuse(
            environ,
            start_response,
            403,
            f"{identity.name} may not {method} {_shown(path)}",
            reason=f"{identity.name} may not",
        )


def _refuse(
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    code: int,
    message: str,
    *,
    reason: str,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    environ[LOG_REASON] = reason
    body = error_json(code, message).encode("utf-8")
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        *(extra or []),
    ]
    if code == 401:
        headers.append(("WWW-Authenticate", CHALLENGE))
    start_response(_STATUS[code], headers)
    return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def _asks_to_sign_in(query: str) -> bool:
    """True when the query has a `sign-in` parameter (a listing's Sign in link)."""
    return "sign-in" in query and any(
        part.partition("=")[0] == "sign-in" for part in query.split("&")
    )


def _decoded(raw: str) -> str:
    """PATH_INFO (latin-1 of the raw bytes) as the UTF-8 text it carries, as WebDAV reads it."""
    if raw.isascii():
        return raw
    # Bytes that are not UTF-8 become surrogates, which no prefix holds: they only refuse.
    return raw.encode("latin-1", "replace").decode("utf-8", "surrogateescape")


def _shown(path: str) -> str:
    return path if len(path) <= 200 else path[:200] + "…"


def guard_app(app: WsgiApp, settings: Settings) -> WsgiApp:
    """`app` behind access control as BUCKETDAV_ACCESS_FILE says (raises SettingError)."""
    assert settings.access_file is not None
    lockout = Lockout(settings.login_failures, settings.login_lockout)
    return Guard(app, AccessFile(settings.access_file), lockout, proxies=settings.trusted_proxies)
