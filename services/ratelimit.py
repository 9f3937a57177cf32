"""A rate limiter in front of the calls made with one upstream key (LiveAvatar's:
docs/upstream.md#liveavatar-rate-limits).

LiveAvatar counts the calls made with one credential per endpoint in fixed 1-second windows, across all our customers,
and answers 429 with Retry-After over the limit. This limiter keeps a sliding 1-second log per endpoint, so that no
1-second interval — whichever way LiveAvatar's windows fall — holds more than this process's share of the limit.
The limit is divided among the gateway processes explicitly: each takes `limit // live processes` (at least 1), the
number of live processes being read from their leases (services/leases.py) at every heartbeat.

A call over its share waits for room for up to `max_wait` seconds (the browser's calls briefly, background calls —
the reaper's stops, the hand-off's transcript reads — longer), and is then refused with TooManyRequests (429 with
Retry-After). At most `limit` callers wait per endpoint; more are refused at once. An upstream 429 blocks its endpoint
for its Retry-After, so the gateway never retries into it.
"""
from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from domain.errors import TooManyRequests

WINDOW = 1.0


class RateLimiter:
    def __init__(self, limit: int, processes: Callable[[], int] = lambda: 1,
                 clock: Callable[[], float] = time.monotonic,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.limit = limit  # calls per endpoint per second for all processes; 0 disables
        self.processes = processes
        self.clock = clock
        self.on_refused = on_refused  # f(endpoint): counts refusals (metrics)
        # endpoint -> times of its recent calls
        self._calls: collections.defaultdict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._waiting: collections.Counter[str] = collections.Counter()
        self._blocked_until: dict[str, float] = {}  # endpoint -> clock time an upstream 429 told us to wait until

    def share(self) -> int:
        return max(1, self.limit // max(1, self.processes()))

    async def acquire(self, endpoint: str, max_wait: float) -> None:
        """Room for one call to `endpoint` now, or after waiting up to `max_wait` seconds; else TooManyRequests."""
        if not self.limit:
            return
        deadline = self.clock() + max_wait
        waiting = False
        try:
            while True:
                delay = self._delay(endpoint)
                if delay <= 0:
                    self._calls[endpoint].append(self.clock())
                    return
                if self.clock() + delay > deadline or (not waiting and self._waiting[endpoint] >= self.limit):
                    if self.on_refused:
                        self.on_refused(endpoint)
                    raise TooManyRequests(retry_after=max(1, round(delay + 0.49)))
                if not waiting:
                    waiting = True
                    self._waiting[endpoint] += 1
                await asyncio.sleep(delay)
        finally:
            if waiting:
                self._waiting[endpoint] -= 1

    def _delay(self, endpoint: str) -> float:
        """Seconds until a call to `endpoint` fits (0: now)."""
        now = self.clock()
        blocked = self._blocked_until.get(endpoint, 0) - now
        if blocked > 0:
            return blocked
        calls = self._calls[endpoint]
        while calls and calls[0] <= now - WINDOW:
            calls.popleft()
        if len(calls) < self.share():
            return 0
        return calls[0] + WINDOW - now + 0.001

    def upstream_refused(self, endpoint: str, retry_after: float) -> None:
        """The upstream answered 429: nothing more to `endpoint` until its Retry-After has passed."""
        self._blocked_until[endpoint] = max(self._blocked_until.get(endpoint, 0), self.clock() + retry_after)
