"""One Cheroot process: the API for its paths, WebDAV for everything else."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import FrameType
from typing import Any

from cheroot import server as cheroot_server
from cheroot import wsgi

from bucketdav.access.middleware import guard_app
from bucketdav.access.tls import exposure_warnings, handshake, tls_adapter
from bucketdav.api import INTERNAL_ERROR, LOG_REASON, Api, error_json, is_api_path
from bucketdav.dav.app import make_dav_app
from bucketdav.observe.logs import (
    IDENTITY,
    REQUEST_ID,
    UPLOAD,
    redact_query,
    request_id,
    upload_text,
)
from bucketdav.observe.metrics import Metrics, metrics_for, route_kind
from bucketdav.settings import Settings
from bucketdav.store.blobs import Store
from bucketdav.store.periodic import start_periodic
from bucketdav.uploads.receive import ChunkedBody, body_left_unread, left_unread, stop_reading

log = logging.getLogger(__name__)
access_log = logging.getLogger("bucketdav.access")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
MAX_HEADER_BYTES = 64 * 1024
# How long a worker waits for the next request on its connection before handing it back.
KEEP_WARM_MS = 2
# After an answer given before the body was read, the client may still be sending it: read
# and drop up to this much, for up to this long, so that closing does not reset the
# connection and take the answer with it (RFC 9112 9.6).
LINGER_BYTES = 4 << 20
LINGER_SECONDS = 1.0
# A field line is a token, a colon and a value without CR, LF or NUL (RFC 9112 5): a space
# before the colon or a folded line is read one way by a proxy and another by a server,
# which is how request smuggling starts.
FIELD_LINE = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n\0]*\r\n"
REQUEST_FIELDS = re.compile(rb"(?:" + FIELD_LINE + rb")*\r\n")
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)
# Anything that does not set its own policy (downloads, JSON) may not run on this origin.
DEFAULT_CSP = (
    "sandbox; default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'"
)


def make_app(settings: Settings, store: Store, *, metrics: Metrics | None = None) -> WsgiApp:
    """The whole server as one WSGI app: API paths to Bottle, the rest to WebDAV.

    Without `metrics`, the app counts into metrics of its own unless BUCKETDAV_METRICS=off.
    """
    metrics = metrics or metrics_for(settings, store)
    api = Api(settings, store, metrics=metrics).app()
    dav = make_dav_app(settings, store)

    def dispatch(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        target = api if is_api_path(environ.get("PATH_INFO", "")) else dav
        return target(environ, start_response)

    app = dispatch if settings.access_file is None else guard_app(dispatch, settings)
    return with_headers_and_log(app, metrics=metrics, json_log=settings.log_format == "json")


def with_headers_and_log(
    app: WsgiApp, *, metrics: Metrics | None = None, json_log: bool = False
) -> WsgiApp:
    """Add the security headers and X-Request-Id to every response; one log line per request.

    An exception below answers 500 with the API's JSON error while nothing is sent yet, and
    the request still gets its one access-log line. With `metrics`, each request is counted
    when its answer ends; with `json_log`, the line carries its fields for the JSON format.
    """

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.monotonic()
        query = environ.get("QUERY_STRING")
        seen: dict[str, Any] = {
            "status": "-",
            "target": environ.get("PATH_INFO", "") + (f"?{redact_query(query)}" if query else ""),
        }
        environ[REQUEST_ID] = rid = request_id(environ)
        if metrics is not None:
            metrics.begin()

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen["status"] = status.split(" ", 1)[0]
            if body_left_unread(environ):
                # An answer given before the body was read (a refusal): do not drain it.
                stop_reading(environ)
            names = {name.lower() for name, _ in headers}
            seen["length"] = next(
                (value for name, value in headers if name.lower() == "content-length"), "-"
            )
            headers.extend(h for h in SECURITY_HEADERS if h[0].lower() not in names)
            if "content-security-policy" not in names:
                headers.append(("Content-Security-Policy", DEFAULT_CSP))
            if "x-request-id" not in names:
                headers.append(("X-Request-Id", rid))
            return start_response(status, headers, exc_info)

        def fail() -> list[bytes]:
            """The 500 answer to the exception being handled; re-raises it once headers are out."""
            error = sys.exc_info()[1]
            environ.setdefault(LOG_REASON, f"internal error: {type(error).__name__}")
            body = error_json(500, INTERNAL_ERROR).encode()
            headers = [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
            ]
            # With the headers sent this raises the error again, and Cheroot drops the connection.
            start("500 Internal Server Error", headers, sys.exc_info())
            log.exception(
                "unexpected error in %s %s",
                loggable(environ.get("REQUEST_METHOD", "")),
                request_text(seen["target"]),
            )
            return [body]

        try:
            body = app(environ, start)
        except Exception:
            body = fail()
        return _Logged(body, environ, seen, started, fail, metrics=metrics, json_log=json_log)

    return wrapped


def loggable(text: str) -> str:
    """`text` with whatever could end, forge or garble a log line escaped: controls, quotes."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(
        _ESCAPES.get(char) or (char if char.isprintable() else _escape(char)) for char in text
    )


def request_text(text: str) -> str:
    """A path or query for the log: WSGI's latin-1 string read as the UTF-8 it carries."""
    return loggable(utf8_text(text))


def utf8_text(text: str) -> str:
    """WSGI's latin-1 string as the UTF-8 text it carries (bad bytes replaced), cut to
    LOGGED_TEXT characters: a client chooses its length, and every line is kept a while."""
    cut = len(text) - LOGGED_TEXT
    if cut > 0:
        text = text[:LOGGED_TEXT]
    if not text.isascii():
        with contextlib.suppress(UnicodeEncodeError):
            text = text.encode("latin-1").decode("utf-8", "replace")
    return f"{text}...({cut} more)" if cut > 0 else text


# Characters of a path or query written to the log at most.
LOGGED_TEXT = 2048
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class _Logged:
    """Hands the response body on; when it is closed, counts the request and logs its line.

    The text line's size is the response's Content-Length ("-" when it has none). Bytes sent
    (metrics, JSON lines) are the Content-Length too, and chunks are counted only when there
    is none: counting them all would slow every small response and miss bytes sent with
    sendfile.
    """

    def __init__(
        self,
        body: Iterable[bytes],
        environ: dict[str, Any],
        seen: dict[str, Any],
        started: float,
        fail: Callable[[], list[bytes]],
        *,
        metrics: Metrics | None,
        json_log: bool,
    ) -> None:
        self.body = body
        self.environ = environ
        self.seen = seen
        self.started = started
        self.fail = fail
        self.metrics = metrics
        self.json_log = json_log
        self.counting = metrics is not None or json_log
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        try:
            if self.counting and self.seen.get("length", "-") == "-":
                for chunk in self.body:
                    self.sent += len(chunk)
                    yield chunk
            else:
                yield from self.body
        except Exception:
            yield from self.fail()

    def close(self) -> None:
        env = self.environ
        try:
            close = getattr(self.body, "close", None)
            if close:
                close()
        except Exception:
            env.setdefault(LOG_REASON, "internal error while closing the response")
            log.exception("unexpected error closing the response to %s", env.get("PATH_INFO"))
        seconds = time.monotonic() - self.started
        method = env.get("REQUEST_METHOD", "")
        length = self.seen.get("length", "-")
        received = sent = 0
        if self.counting:
            received = bytes_in(env)
            sent = 0 if method == "HEAD" else int(length) if length.isdigit() else self.sent
        if self.metrics is not None:
            try:
                route = route_kind(method, env.get("PATH_INFO", ""), env.get("QUERY_STRING", ""))
                self.metrics.request(
                    method, route, self.seen["status"], seconds, received=received, sent=sent
                )
            except Exception:
                log.exception("counting the request failed")
        if self.json_log:
            self._log_json(method, seconds, received, sent)
            return
        reason = env.get(LOG_REASON)
        identity = env.get(IDENTITY)
        upload = env.get(UPLOAD)
        access_log.info(
            '%s "%s %s %s" %s %s %.3fs id=%s%s%s%s',
            env.get("REMOTE_ADDR", "-"),
            loggable(method),
            request_text(self.seen["target"]),
            env.get("SERVER_PROTOCOL"),
            self.seen["status"],
            length,
            seconds,
            env.get(REQUEST_ID, "-"),
            f" identity={loggable(str(identity))}" if identity else "",
            f" {upload_text(upload)}" if upload else "",
            f' reason="{loggable(str(reason))}"' if reason else "",
        )

    def _log_json(self, method: str, seconds: float, received: int, sent: int) -> None:
        env = self.environ
        query = env.get("QUERY_STRING")
        status = self.seen["status"]
        fields: dict[str, Any] = {
            "request_id": env.get(REQUEST_ID),
            "remote": env.get("REMOTE_ADDR"),
            "identity": env.get(IDENTITY),
            "method": method,
            "path": utf8_text(env.get("PATH_INFO", "")),
            "query": utf8_text(redact_query(query)) if query else None,
            "protocol": env.get("SERVER_PROTOCOL"),
            "status": int(status) if status.isdigit() else None,
            "bytes_in": received,
            "bytes_out": sent,
            "seconds": round(seconds, 6),
        }
        reason = env.get(LOG_REASON)
        if reason:
            fields["reason"] = str(reason)
        upload = env.get(UPLOAD)
        if upload:
            fields.update(upload)
        access_log.info("%s %s", method, fields["path"], extra={"access": fields})


def bytes_in(environ: dict[str, Any]) -> int:
    """How many request body bytes were read (a refusal may leave some unread)."""
    stream = environ.get("wsgi.input")
    if isinstance(stream, ChunkedBody):
        return stream.received
    text = environ.get("CONTENT_LENGTH") or ""
    if not text.isdigit():
        return 0
    return max(0, int(text) - getattr(stream, "remaining", 0))


class HeadWatch:
    """Closes connections whose request head has not fully arrived within `limit` seconds.

    Cheroot's timeout counts silence between packets, so a client that sends its headers a
    byte a second would hold a worker thread for as long as it likes (slowloris).
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.pending: dict[int, tuple[float, socket.socket]] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self._run, name="head-watch", daemon=True).start()

    @contextlib.contextmanager
    def watching(self, sock: socket.socket) -> Iterator[None]:
        """Track `sock` while its request head is being read."""
        with self.lock:
            self.pending[id(sock)] = (time.monotonic() + self.limit, sock)
        try:
            yield
        finally:
            with self.lock:
                self.pending.pop(id(sock), None)

    def _run(self) -> None:
        while True:
            time.sleep(min(1.0, self.limit / 4))
            now = time.monotonic()
            with self.lock:
                for deadline, sock in list(self.pending.values()):
                    if deadline < now:
                        # The blocked read returns at once; Cheroot then drops the connection.
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)


def head_problem(lines: list[bytes], *, framed: bool, http11: bool) -> str | None:
    """Why the field lines of a request head (its end included) cannot be trusted, or None.

    `framed` says whether the head has Content-Length or Transfer-Encoding at all; Cheroot
    keeps only the last Content-Length, so every one of them is looked at here.
    """
    if not REQUEST_FIELDS.fullmatch(b"".join(lines)):
        bad = next((line for line in lines if not re.fullmatch(FIELD_LINE, line)), b"")
        return f"malformed header line {bad[:40]!r}"
    if not framed:
        return None
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for line in lines[:-1]:
        name, _, value = line.partition(b":")
        key = name.lower()
        if key == b"content-length":
            lengths.append(value.strip(b" \t\r\n"))
        elif key == b"transfer-encoding":
            codings.append(value.strip(b" \t\r\n"))
    return framing_problem(lengths, codings, http11=http11)


def framing_problem(lengths: list[bytes], codings: list[bytes], *, http11: bool) -> str | None:
    """Why Content-Length and Transfer-Encoding values cannot frame a request, or None."""
    if codings:
        if not http11:
            return "Transfer-Encoding needs HTTP/1.1"
        if lengths:
            return "send Content-Length or Transfer-Encoding, not both"
        names = [name.strip(b" \t").lower() for value in codings for name in value.split(b",")]
        if names[-1] != b"chunked" or names.count(b"chunked") > 1 or b"" in names:
            return "Transfer-Encoding must end with chunked, applied once"
        return None
    if not all(value.isdigit() for value in lengths):
        return "Content-Length must be a decimal number of bytes"
    if len(set(lengths)) > 1:
        return "Content-Length values differ"
    return None


class _HeadLines:
    """Hands Cheroot's header reader the lines of a request head, keeping them for a check."""

    __slots__ = ("lines", "rfile")

    def __init__(self, rfile: Any) -> None:
        self.rfile = rfile
        self.lines: list[bytes] = []

    def readline(self) -> bytes:
        line = self.rfile.readline()
        self.lines.append(line)
        return line


_READ_FIELDS = cheroot_server.HeaderReader()


def _linger(sock: socket.socket) -> None:
    """End our side of the connection, then read and drop what still comes, within bounds."""
    deadline = time.monotonic() + LINGER_SECONDS
    buffer = bytearray(64 << 10)
    dropped = 0
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        while dropped < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            count = sock.recv_into(buffer)
            if not count:
                return
            dropped += count


def _gateway_class(timeout: float) -> type[wsgi.Gateway_10]:
    class Gateway(wsgi.Gateway_10):
        def get_environ(self) -> dict[str, Any]:
            if self.req.chunked_read:
                self.req.rfile = ChunkedBody(self.req.conn.rfile, timeout=timeout)
            return super().get_environ()

    return Gateway


def _connection_class(watch: HeadWatch) -> type[cheroot_server.HTTPConnection]:
    class Request(cheroot_server.HTTPRequest):
        def parse_request(self) -> None:
            with watch.watching(self.conn.socket):
                super().parse_request()

        def header_reader(self, rfile: Any, fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
            head = _HeadLines(rfile)
            try:
                _READ_FIELDS(head, fields)
                problem = head_problem(
                    head.lines,
                    framed=b"Content-Length" in fields or b"Transfer-Encoding" in fields,
                    http11=self.response_protocol == "HTTP/1.1",
                )
                if problem:
                    raise ValueError(problem)
            except ValueError:
                # Cheroot answers 400 and closes; a body may be on its way.
                self.conn.linger_on_close = True
                raise
            return fields

        def send_headers(self) -> None:
            if left_unread(self.rfile):
                # Answered before the body was read: what is left of it must never be taken
                # for the next request, and draining it could take for ever.
                self.close_connection = True
                self.conn.linger_on_close = True
            elif any(
                name.lower() == b"connection" and b"close" in value.lower()
                for name, value in self.outheaders
            ):
                # Cheroot sends an application's `Connection: close` but keeps reading.
                self.close_connection = True
            super().send_headers()

        def simple_response(self, status: str, msg: str | bytes = "") -> None:
            # Cheroot's own answers (a malformed request, a timeout) all end the connection,
            # but only two of them say so: a client or a proxy must not send another request.
            self.close_connection = True
            body = msg.encode("latin-1", "replace") if isinstance(msg, str) else msg
            head = (
                f"{self.server.protocol} {status}\r\nContent-Length: {len(body)}\r\n"
                "Content-Type: text/plain\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(OSError):
                self.conn.wfile.write(head.encode("latin-1") + body)

    class Connection(cheroot_server.HTTPConnection):
        RequestHandlerClass = Request
        linger_on_close = False
        shaken = False

        def close(self) -> None:
            if self.linger_on_close:
                _linger(self.socket)
            super().close()

        def communicate(self) -> bool:
            # A client that sends its next request at once is served by the same thread:
            # handing the connection to Cheroot's selector and back to a worker costs two
            # thread switches per request, the larger part of a small GET.
            if not self.shaken:
                self.shaken = True
                if self.server.ssl_adapter is not None:
                    # TLS shakes hands here, not in the accepting thread, within the head's time.
                    with watch.watching(self.socket):
                        if not handshake(self.socket):
                            return False
            while super().communicate():
                if not (self.server.ready and _next_request_soon(self)):
                    return True
            return False

    return Connection


def _next_request_soon(conn: cheroot_server.HTTPConnection) -> bool:
    """True when the connection has a request waiting, or one arrives within KEEP_WARM_MS.

    False at once while other connections wait for a worker: they go first.
    """
    pending = getattr(conn.socket, "pending", None)
    if pending is not None and pending():
        # Decrypted TLS bytes wait in the socket object, where poll cannot see them.
        return True
    if conn.server.requests.qsize:
        return False
    if conn.rfile.has_data():
        return True
    poller = select.poll()
    poller.register(conn.socket, select.POLLIN)
    return bool(poller.poll(KEEP_WARM_MS))


def build_server(
    settings: Settings, store: Store, *, metrics: Metrics | None = None
) -> wsgi.Server:
    """A Cheroot server for this store, sized so slow clients cannot starve it."""
    server = wsgi.Server(
        (settings.host, settings.port),
        make_app(settings, store, metrics=metrics),
        numthreads=settings.threads,
        server_name="bucketdav",
        timeout=max(1, int(settings.timeout)),
        shutdown_timeout=max(1, int(settings.timeout)),
        request_queue_size=128,
    )
    server.max_request_header_size = MAX_HEADER_BYTES
    server.ConnectionClass = _connection_class(HeadWatch(settings.timeout))
    server.gateway = _gateway_class(settings.timeout)
    server.ssl_adapter = tls_adapter(settings)
    if metrics is not None:
        metrics.watch(server)
    return server


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _force_exit() -> None:
    log.error("requests still running after the shutdown timeout; exiting anyway")
    logging.shutdown()
    os._exit(1)


class ListenError(Exception):
    """The server cannot listen on its address; the message says which and why."""


def listen(server: wsgi.Server, host: str, port: int) -> None:
    """Bind and listen, or raise ListenError naming the address and the reason."""
    try:
        server.prepare()
    except OSError as exc:
        # Cheroot folds each address's error into one message and keeps no errno.
        reasons = re.findall(r"\[Errno -?\d+\] ([^)]*)\)", str(exc))
        reason = reasons[-1] if reasons else str(exc)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ListenError(f"cannot listen on {address}: {reason[:1].lower()}{reason[1:]}") from None


# glibc's mallopt parameter (malloc.h).
M_ARENA_MAX = -8
# Python code allocates under the interpreter lock, so a malloc arena per worker thread buys
# no concurrency; each one keeps its own free memory, though, and glibc makes up to eight per
# core: with 64 workers, 16 arenas on 2 cores and 64 on 8, of a few MiB each (bench/soak.py).
ARENA_MAX = 2


def limit_arenas(environ: Mapping[str, str] | None = None) -> bool:
    """Keep glibc's free memory from growing with the worker threads: at most ARENA_MAX arenas.

    Called before the workers start (glibc fixes its limit once eight arenas exist). A
    MALLOC_ARENA_MAX the operator set is left as it is. False when nothing was changed, as
    on another C library.
    """
    environ = os.environ if environ is None else environ
    if "MALLOC_ARENA_MAX" in environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, ARENA_MAX) == 1)


def serve(settings: Settings) -> None:
    """Listen, open the store and serve until SIGINT or SIGTERM, then finish requests in flight."""
    limit_arenas()
    store = Store(
        settings.archive_dir,
        settings.checksum_type,
        min_free=settings.min_free,
        node=settings.node,
    )
    metrics = metrics_for(settings, store)
    server = build_server(settings, store, metrics=metrics)
    listen(server, settings.host, settings.port)
    try:
        # Only once the port is ours: a second server started by mistake on the same port
        # must not empty the staging/ of the one already serving this store.
        store.open()
    except BaseException:
        server.stop()
        raise
    if metrics is not None:
        metrics.start()
    host, port = server.bind_addr[:2]
    log.info(
        "bucketdav listening on %s://%s:%d/ store %s (%s) node %s",
        "https" if server.ssl_adapter else "http",
        host,
        port,
        store.root,
        store.algorithm,
        store.node,
    )
    for warning in exposure_warnings(settings):
        log.warning("%s", warning)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    collection = start_periodic(
        store, settings, on_report=metrics.collected if metrics is not None else None
    )
    try:
        server.serve()
    except KeyboardInterrupt:
        log.info("stopping: finishing requests in flight")
    finally:
        # A request stuck somewhere other than the socket would keep Cheroot's stop waiting
        # for ever; the store is safe to leave at any point, so give up after a while.
        deadline = threading.Timer(settings.timeout + 10, _force_exit)
        deadline.daemon = True
        deadline.start()
        if collection is not None:
            # Stops between two batches: what it moved aside is finished by the next run.
            collection.stop()
        server.stop()
        deadline.cancel()
        log.info("stopped")
