"""The progress line of `bucketdav push` on a terminal: bytes so far, share of the total, rate."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

# Redrawn at most this often: a terminal is slow, and a faster line cannot be read anyway.
INTERVAL = 0.2


class Progress:
    """One line redrawn in place while bytes go by; writes nothing when `enabled` is false."""

    def __init__(
        self,
        stream: TextIO,
        label: str,
        total: int | None,
        *,
        enabled: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.label = label
        self.total = total
        self.enabled = enabled
        self.clock = clock
        self.started = clock()
        self.shown = self.started - INTERVAL
        self.done = 0

    def add(self, count: int) -> None:
        """Count `count` more bytes; redraw when the last drawing is old enough."""
        self.done += count
        if self.enabled and self.clock() - self.shown >= INTERVAL:
            self.draw()

    def draw(self) -> None:
        """Write the line as it is now."""
        now = self.clock()
        self.shown = now
        self.stream.write(
            "\r\x1b[K" + progress_line(self.label, self.done, self.total, now - self.started)
        )
        self.stream.flush()

    def close(self) -> None:
        """Take the line away, leaving the terminal as it was for what is printed next."""
        if self.enabled and self.shown != self.started - INTERVAL:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def progress_line(label: str, done: int, total: int | None, elapsed: float) -> str:
    """`label  12.0 MiB / 1.0 GiB  1%  410.2 MiB/s`; without a total, bytes and rate only."""
    rate = human_size(done / elapsed) + "/s" if elapsed > 0 else "-"
    if total:
        return f"{label}  {human_size(done)} / {human_size(total)}  {100 * done // total}%  {rate}"
    return f"{label}  {human_size(done)}  {rate}"


def human_size(count: float) -> str:
    """A byte count for people: `512 B`, `12.3 KiB`, `1.0 GiB`."""
    if count < 1024:
        return f"{count:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        count /= 1024
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}"
    raise AssertionError("unreachable")
