"""When `bucketdav push` tries again: a lost connection or a 503, a bounded number of times."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bucketdav.client.transport import ConnectionLost, Reply

# 503 is how bucketdav says "too many uploads at once" (with Retry-After), and what a proxy in
# front says while the server restarts.
RETRY_STATUS = 503


@dataclass(frozen=True)
class RetryPolicy:
    """At most `tries` attempts; waits double from 1 s, or follow Retry-After, up to `max_wait`."""

    tries: int = 5
    max_wait: float = 30.0

    def wait(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1, 2, …)."""
        wanted = retry_after if retry_after is not None else 2.0 ** (attempt - 1)
        return max(0.0, min(self.max_wait, wanted))


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After in seconds (sent as seconds or as an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def with_retries(
    attempt: Callable[[], Reply],
    *,
    policy: RetryPolicy,
    say: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> Reply:
    """The first answer that is not a 503, trying `attempt` again after a wait as the policy says.

    After the last try, a 503 is returned as the answer and a lost connection is raised.
    """
    for number in range(1, policy.tries + 1):
        try:
            reply = attempt()
        except ConnectionLost as exc:
            if number == policy.tries or not exc.retry:
                raise
            why, retry_after = str(exc), None
        else:
            if reply.status != RETRY_STATUS or number == policy.tries:
                return reply
            why, retry_after = (
                reply.message(),
                retry_after_seconds(reply.headers.get("retry-after")),
            )
        delay = policy.wait(number, retry_after)
        say(f"{why}; try {number + 1} of {policy.tries} in {delay:g} s")
        sleep(delay)
    raise AssertionError("unreachable: the last try returns or raises")
