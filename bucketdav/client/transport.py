"""HTTP for `bucketdav push`, on the standard library: one kept-alive connection, streamed bodies.

http.client gives what the client needs: a body sent from an iterator (with Content-Length or
chunked), a timeout on every socket operation, and TLS verified against the system's
certificates (SSL_CERT_FILE honoured). What it leaves to the caller is done here: the proxy
from the environment (http_proxy, https_proxy, no_proxy) and an answer the server gives before
the whole body is sent (a refusal such as 413), which is read instead of being lost to a
broken pipe.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import selectors
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

# Answers are small JSON documents; anything longer is cut off, never held whole.
MAX_REPLY = 16 << 20


class ConnectionLost(Exception):
    """The connection could not be made, or broke before a whole answer came.

    `retry` is false when trying again cannot help (a certificate that is not trusted).
    """

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class Reply:
    """A server's complete answer."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def message(self) -> str:
        """What the server said went wrong: its JSON `error`, else the status line."""
        data = self.json()
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return f"{data['error']} ({self.status})"
        return f"{self.status} {self.reason}".strip()


class Server:
    """A bucketdav server at a base URL (`http[s]://host[:port][/prefix]`)."""

    def __init__(
        self, url: str, *, timeout: float, environ: Mapping[str, str] | None = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = quote(parts.path.rstrip("/"), safe="/%:@!$&'()*+,;=")
        self.timeout = timeout
        self.proxy = _proxy_for(parts.scheme, parts.netloc, environ)
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Iterable[tuple[str, str | bytes]] = (),
        body: Iterable[bytes] | None = None,
        length: int | None = None,
        sent: Callable[[int], None] = lambda n: None,
    ) -> Reply:
        """Send one request and read the whole answer; the body is sent chunked without `length`.

        Raises ConnectionLost when no complete answer came; an error of the body's source passes
        through as it is, and the connection is dropped so the server discards what it got.
        """
        conn = self._connection()
        try:
            self._send_head(conn, method, path, headers, body, length)
            early = None
            if body is not None:
                early = self._send_body(conn, body, chunked=length is None, sent=sent)
            reply = self._read(conn, method, early)
            if early is not None:
                # Part of the body is unsent: the connection cannot carry another request.
                self.close()
            return reply
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            retry = not isinstance(exc, ssl.SSLCertVerificationError)
            raise ConnectionLost(_describe(exc), retry=retry) from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Drop the connection; the next request makes a new one."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is not None:
            sock = self.conn.sock
            if sock is None or not _closed_while_idle(sock, self.timeout):
                return self.conn
            # Take a new connection rather than fail the request on one the server closed
            # (its idle timeout) since the last answer.
            self.close()
        _scheme, host, port, auth = self.proxy or (self.scheme, self.host, self.port, None)
        if self.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        if self.proxy and self.scheme == "https":
            # An https server is reached through a CONNECT tunnel; TLS is end to end.
            headers = {"Proxy-Authorization": auth} if auth else None
            conn.set_tunnel(self.host, self.port, headers=headers)
        self.conn = conn
        return conn

    def _send_head(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str | bytes]],
        body: Iterable[bytes] | None,
        length: int | None,
    ) -> None:
        target = self.prefix + path
        if self.proxy and self.scheme == "http":
            # A plain-http proxy takes the absolute URL; http.client names its Host from it.
            target = f"http://{_netloc(self.host, self.port)}{target}"
        conn.putrequest(method, target, skip_accept_encoding=True)
        if self.proxy and self.scheme == "http" and self.proxy[3]:
            conn.putheader("Proxy-Authorization", self.proxy[3])
        for name, value in headers:
            conn.putheader(name, value)
        if body is None:
            if method in ("PUT", "POST"):
                conn.putheader("Content-Length", "0")
        elif length is None:
            conn.putheader("Transfer-Encoding", "chunked")
        else:
            conn.putheader("Content-Length", str(length))
        conn.endheaders()

    def _send_body(
        self,
        conn: http.client.HTTPConnection,
        body: Iterable[bytes],
        *,
        chunked: bool,
        sent: Callable[[int], None],
    ) -> bytes | None:
        """Send the body; None when all of it went, else the first bytes of the server's answer
        given before it took the whole body (b"" when it hung up or they are still to be read).
        """
        sock = conn.sock
        assert sock is not None
        with selectors.DefaultSelector() as watch:
            watch.register(sock, selectors.EVENT_READ)
            for chunk in body:
                if not chunk:
                    continue
                if watch.select(0):
                    # The server answered (or hung up) before taking the whole body: that
                    # answer is the outcome, read before a broken pipe could lose it.
                    early = _waiting(sock, self.timeout)
                    if early is not None:
                        return early
                try:
                    conn.send(b"%X\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                except OSError:
                    # A server that refuses and hangs up may still have said why: read it.
                    return b""
                sent(len(chunk))
            if chunked:
                conn.send(b"0\r\n\r\n")
        return None

    def _read(self, conn: http.client.HTTPConnection, method: str, early: bytes | None) -> Reply:
        if early:
            assert conn.sock is not None
            # http.client reads an answer through the socket's makefile(): give it one that
            # starts with the bytes already taken.
            replay: Any = _Replay(early, conn.sock)
            response = http.client.HTTPResponse(replay, method=method)
            response.begin()
        else:
            response = conn.getresponse()
        body = response.read(MAX_REPLY)
        reply = Reply(
            status=response.status,
            reason=response.reason,
            headers={name.lower(): value for name, value in response.getheaders()},
            body=body,
        )
        if response.will_close or not response.isclosed():
            self.close()
        return reply


class _Replay:
    """A socket whose first bytes were already taken: http.client reads them, then the rest."""

    def __init__(self, first: bytes, sock: socket.socket) -> None:
        self.first = first
        self.sock = sock

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_Prefixed(self.first, self.sock))


class _Prefixed(io.RawIOBase):
    def __init__(self, first: bytes, sock: socket.socket) -> None:
        self.first = memoryview(first)
        self.sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.first:
            count = min(len(buffer), len(self.first))
            buffer[:count] = self.first[:count]
            self.first = self.first[count:]
            return count
        return self.sock.recv_into(buffer)


def _waiting(sock: socket.socket, timeout: float) -> bytes | None:
    """What a readable socket holds without waiting: None when it holds no bytes after all.

    TLS 1.3 session tickets make a socket readable with nothing for the application, so a
    readable socket alone is not an answer; b"" is a hang-up.
    """
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return None
    finally:
        sock.settimeout(timeout)


def _proxy_for(
    scheme: str, netloc: str, environ: Mapping[str, str] | None
) -> tuple[str, str, int, str | None] | None:
    """The proxy (scheme, host, port, Proxy-Authorization) the environment names, if any."""
    proxies = getproxies_environment() if environ is None else _proxies_in(environ)
    url = proxies.get(scheme)
    if not url or proxy_bypass_environment(netloc, proxies):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname or "", parts.port or default, auth


def _proxies_in(environ: Mapping[str, str]) -> dict[str, str]:
    """Proxy settings from `environ` as urllib reads them (lower-case names win)."""
    found = {}
    for name, value in environ.items():
        if value and name.lower().endswith("_proxy"):
            key = name.lower()[: -len("_proxy")]
            if name.islower() or key not in found:
                found[key] = value
    return found


def _closed_while_idle(sock: socket.socket, timeout: float) -> bool:
    """Whether a kept-alive connection holds a hang-up (or anything else) nobody asked for."""
    try:
        return _readable(sock) and _waiting(sock, timeout) is not None
    except OSError:
        return True


def _readable(sock: socket.socket) -> bool:
    with selectors.DefaultSelector() as watch:
        watch.register(sock, selectors.EVENT_READ)
        return bool(watch.select(0))


def _netloc(host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}"


def _describe(exc: BaseException) -> str:
    """A short reason for a failed exchange."""
    if isinstance(exc, TimeoutError):
        return "no answer within the timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without an answer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def upload_path(name: str) -> str:
    """The path of `PUT /upload/<name>` for a file name (any characters, percent-encoded)."""
    return "/upload/" + quote(name, safe="", errors="surrogateescape")
