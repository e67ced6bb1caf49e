"""Logging: batches written from a thread of their own, and one access line per request."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
import webtest

from bucketdav.cli import BatchingHandler
from bucketdav.server import WsgiApp, with_headers_and_log


class SlowStream(io.StringIO):
    """A stream whose writes block until released, as stderr into a full pipe does."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        self.release.wait(10)
        return super().write(text)


@pytest.fixture
def logged() -> Iterator[Callable[..., tuple[SlowStream, logging.Logger]]]:
    """`logged(interval, blocked=False)`: a stream, and a logger writing to it in batches."""
    made: list[tuple[SlowStream, BatchingHandler]] = []

    def make(
        interval: float, *, blocked: bool = False, **options: int
    ) -> tuple[SlowStream, logging.Logger]:
        stream = SlowStream()
        if not blocked:
            stream.release.set()
        handler = BatchingHandler(stream, interval=interval, **options)
        logger = logging.getLogger(f"test.batching.{len(made)}.{id(handler)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        made.append((stream, handler))
        return stream, logger

    yield make
    for stream, handler in made:
        stream.release.set()
        handler.close()


def wait_for(condition, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_logging_lines_come_out_in_order_and_in_few_writes(logged):
    stream, logger = logged(0.2)
    for index in range(500):
        logger.info("line %d", index)
    assert wait_for(lambda: "line 499" in stream.getvalue())
    lines = stream.getvalue().splitlines()
    assert lines == [f"line {index}" for index in range(500)]
    assert stream.writes < 10  # one write per batch, not per line


def test_logging_request_threads_do_not_wait_on_a_blocked_stream(logged):
    stream, logger = logged(0.01, blocked=True)
    logger.info("first")
    assert wait_for(lambda: stream.writes == 1)  # the writer is now stuck in write()
    started = time.monotonic()
    for index in range(1000):
        logger.info("queued %d", index)
    assert time.monotonic() - started < 2
    stream.release.set()
    assert wait_for(lambda: "queued 999" in stream.getvalue())


def test_logging_errors_are_written_without_waiting_for_the_interval(logged):
    stream, logger = logged(30)
    logger.info("before")
    logger.error("it broke")
    assert wait_for(lambda: "it broke" in stream.getvalue(), timeout=3)
    assert stream.getvalue().splitlines() == ["before", "it broke"]


def test_logging_queue_is_bounded_and_the_lines_dropped_are_counted(logged):
    stream, logger = logged(0.01, blocked=True)
    (handler,) = logger.handlers
    logger.info("first")
    assert wait_for(lambda: stream.writes == 1)  # the writer is now stuck in write()
    for index in range(25_000):
        logger.info("queued %d", index)
    assert len(handler.pending) == 10_000
    stream.release.set()
    assert wait_for(lambda: "dropped" in stream.getvalue())
    lines = stream.getvalue().splitlines()
    assert lines == [
        "first",
        *(f"queued {index}" for index in range(10_000)),
        "15000 log lines dropped: the log output did not keep up",
    ]
    logger.info("after")
    assert wait_for(lambda: stream.getvalue().endswith("up\nafter\n"))


class HeldDoor:
    """A lock that keeps the log writer thread waiting at it until `open` is set."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.writer_waiting = threading.Event()
        self.open = threading.Event()

    def __enter__(self) -> None:
        if threading.current_thread().name == "log-writer":
            self.writer_waiting.set()
            self.open.wait(10)
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_logging_close_racing_the_writer_keeps_batches_in_order(logged):
    stream, logger = logged(30)
    (handler,) = logger.handlers
    handler.output = door = HeldDoor()
    logger.warning("first")  # wakes the writer, which stops at the door
    assert door.writer_waiting.wait(5)
    logger.info("second")
    handler.close()
    door.open.set()
    assert wait_for(lambda: "first" in stream.getvalue())
    assert stream.getvalue().splitlines() == ["first", "second"]


def test_logging_flush_by_a_holder_of_the_handler_lock_cannot_deadlock():
    stream = SlowStream()
    stream.release.set()
    # Not the fixture: were this to deadlock, closing the handler afterwards would hang too.
    handler = BatchingHandler(stream, interval=30)
    logger = logging.getLogger(f"test.batching.deadlock.{id(handler)}")
    logger.propagate = False
    logger.addHandler(handler)
    handler.output = door = HeldDoor()
    logger.warning("first")
    assert door.writer_waiting.wait(5)
    holding, flushed = threading.Event(), threading.Event()

    def shutdown() -> None:
        # What logging.shutdown() does at exit: flush with the handler's lock held.
        with handler.lock:
            holding.set()
            wait_for(lambda: door.lock.locked() or stream.getvalue())  # the writer is in flush()
            handler.flush()
        flushed.set()

    threading.Thread(target=shutdown, daemon=True).start()
    assert holding.wait(5)
    door.open.set()
    assert flushed.wait(5)
    assert stream.getvalue() == "first\n"
    handler.close()


def test_logging_close_writes_what_is_left():
    stream = SlowStream()
    stream.release.set()
    handler = BatchingHandler(stream, interval=30)
    logger = logging.getLogger("test.batching.close")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.info("last words")
    handler.close()
    assert stream.getvalue() == "last words\n"


# -- the access log -----------------------------------------------------------------------


def lines_with(text: str, marker: str) -> list[str]:
    return [line for line in text.splitlines() if marker in line]


def test_access_log_refusal_reason_is_on_the_request_s_own_line(live_server):
    marker = uuid.uuid4().hex
    response = live_server.request(
        "PUT", f"/upload/{marker}.txt", body=b"x", headers={"X-Checksum": "nothex"}
    )
    assert response.status == 400
    reason = json.loads(response.body)["error"]
    (line,) = lines_with(live_server.settled_log(), marker)
    assert f'"PUT /upload/{marker}.txt HTTP/1.1" 400 ' in line
    assert line.endswith(f' reason="{reason}"')


def test_access_log_shows_utf8_paths_as_text(live_server):
    marker = uuid.uuid4().hex
    path = f"/blob/{marker}/my report é ….txt"
    assert live_server.request("GET", quote(path)).status == 404
    (line,) = lines_with(live_server.settled_log(), marker)
    assert f'"GET {path} HTTP/1.1" 404 ' in line


def test_access_log_escapes_what_could_forge_a_line(live_server):
    marker = uuid.uuid4().hex
    forged = f'\n1.2.3.4 "GET /{marker}/forged HTTP/1.1" 200 - 0.001s'
    path = f"/blob/{marker}/a{forged}\u2028\x1b[31m\\"
    assert live_server.request("GET", quote(path)).status == 404
    lines = lines_with(live_server.settled_log(), marker)
    assert len(lines) == 1
    assert (
        f'"GET /blob/{marker}/a\\n1.2.3.4 \\"GET /{marker}/forged HTTP/1.1\\" 200 - 0.001s'
        f'\\u2028\\x1b[31m\\\\ HTTP/1.1" 404 ' in lines[0]
    )


def test_access_log_cuts_a_long_path_to_a_bounded_line(live_server):
    marker = uuid.uuid4().hex
    path = f"/blob/{marker}/" + "x" * 60_000
    assert live_server.request("GET", path).status == 404
    (line,) = lines_with(live_server.settled_log(), marker)
    assert len(line) < 2_300
    assert f'...({len(path) - 2048} more) HTTP/1.1" 404 ' in line


def test_access_log_invalid_utf8_path_is_logged_with_replacement_characters(live_server):
    marker = uuid.uuid4().hex
    assert live_server.request("GET", f"/blob/{marker}/%FF%C3").status == 404
    (line,) = lines_with(live_server.settled_log(), marker)
    assert f'"GET /blob/{marker}/\ufffd\ufffd HTTP/1.1" 404 ' in line


def raising_app(where: str) -> WsgiApp:
    """A WSGI app that fails before start_response, while iterating, or after starting."""

    def app(environ, start_response):
        if where == "call":
            raise RuntimeError("broken before answering")

        def body():
            if where == "started":
                start_response("200 OK", [("Content-Type", "text/plain")])
            raise RuntimeError("broken while answering")
            yield b"never"

        return body()

    return app


@pytest.mark.parametrize("where", ["call", "iteration", "started"])
def test_access_log_app_failure_answers_500_json_and_logs_one_line(where, caplog):
    client = webtest.TestApp(with_headers_and_log(raising_app(where)), lint=False)
    with caplog.at_level(logging.INFO):
        response = client.get(f"/broken/{where}", status=500)
    assert response.json == {
        "code": 500,
        "status": "Internal Server Error",
        "error": "internal error; the server log has the details",
    }
    assert b"Traceback" not in response.body and b"broken" not in response.body
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    access = [r.getMessage() for r in caplog.records if r.name == "bucketdav.access"]
    assert len(access) == 1
    assert f'"GET /broken/{where} HTTP/1.0" 500 ' in access[0]
    assert access[0].endswith(' reason="internal error: RuntimeError"')
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
