"""Lock-out: an address with too many failed sign-ins gets 429 for a while."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

# Addresses remembered at most; past it, those whose failures are all old are forgotten.
MAX_ADDRESSES = 10_000


class Lockout:
    """Counts failures per address; `limit` within `window` seconds locks it for `window`."""

    def __init__(
        self, limit: int = 10, window: float = 600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: dict[str, collections.deque[float]] = {}
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def locked(self, address: str) -> float:
        """Seconds until `address` may sign in again; 0 when it may now."""
        until = self._until.get(address)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left > 0:
            return left
        with self._lock:
            if self._until.get(address) == until:
                del self._until[address]
        return 0.0

    def failed(self, address: str) -> bool:
        """Count a failure of `address`; True when it is the one that locks it out."""
        now = self.clock()
        with self._lock:
            times = self._failures.get(address)
            if times is None:
                if len(self._failures) >= MAX_ADDRESSES:
                    self._forget(now)
                times = self._failures[address] = collections.deque(maxlen=self.limit)
            times.append(now)
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) < self.limit:
                return False
            del self._failures[address]
            if len(self._until) >= MAX_ADDRESSES:
                self._until = {a: u for a, u in self._until.items() if u > now}
            self._until[address] = now + self.window
            return True

    def _forget(self, now: float) -> None:
        """Drop addresses whose failures are all outside the window (all, if none are)."""
        old = [a for a, times in self._failures.items() if times[-1] <= now - self.window]
        for address in old:
            del self._failures[address]
        if len(self._failures) >= MAX_ADDRESSES:
            self._failures.clear()
