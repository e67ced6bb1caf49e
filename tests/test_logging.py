"""The log handler: lines are written in batches from a thread of their own, none lost."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from bucketdav.cli import BatchingHandler


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

    def make(interval: float, *, blocked: bool = False) -> tuple[SlowStream, logging.Logger]:
        stream = SlowStream()
        if not blocked:
            stream.release.set()
        handler = BatchingHandler(stream, interval=interval)
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
