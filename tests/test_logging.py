"""The log handler: lines are written in batches from a thread of their own, none lost."""

from __future__ import annotations

import io
import logging
import threading
import time

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


def make_logger(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def wait_for(condition, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_logging_lines_come_out_in_order_and_in_few_writes():
    stream = SlowStream()
    stream.release.set()
    handler = BatchingHandler(stream, interval=0.2)
    logger = make_logger(handler, "test.batching.order")
    try:
        for index in range(500):
            logger.info("line %d", index)
        assert wait_for(lambda: "line 499" in stream.getvalue())
        lines = stream.getvalue().splitlines()
        assert lines == [f"line {index}" for index in range(500)]
        assert stream.writes < 10  # one write per batch, not per line
    finally:
        handler.close()


def test_logging_request_threads_do_not_wait_on_a_blocked_stream():
    stream = SlowStream()  # blocked until released
    handler = BatchingHandler(stream, interval=0.01)
    logger = make_logger(handler, "test.batching.blocked")
    try:
        logger.info("first")
        assert wait_for(lambda: stream.writes == 1)  # the writer is now stuck in write()
        started = time.monotonic()
        for index in range(1000):
            logger.info("queued %d", index)
        assert time.monotonic() - started < 2
        stream.release.set()
        assert wait_for(lambda: "queued 999" in stream.getvalue())
    finally:
        stream.release.set()
        handler.close()


def test_logging_errors_are_written_without_waiting_for_the_interval():
    stream = SlowStream()
    stream.release.set()
    handler = BatchingHandler(stream, interval=30)
    logger = make_logger(handler, "test.batching.error")
    try:
        logger.info("before")
        logger.error("it broke")
        assert wait_for(lambda: "it broke" in stream.getvalue(), timeout=3)
        assert stream.getvalue().splitlines() == ["before", "it broke"]
    finally:
        handler.close()


def test_logging_close_writes_what_is_left():
    stream = SlowStream()
    stream.release.set()
    handler = BatchingHandler(stream, interval=30)
    logger = make_logger(handler, "test.batching.close")
    logger.info("last words")
    handler.close()
    assert stream.getvalue() == "last words\n"
