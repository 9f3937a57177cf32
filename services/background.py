"""The gateway's background work: the tasks its services spawn and their periodic jobs, stopped together."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from tornado.ioloop import PeriodicCallback

log = logging.getLogger("gateway.background")


CANCEL_WAIT = 2.0  # seconds a graceful stop waits for cancelled tasks to clean up


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._periodic: list[PeriodicCallback] = []
        self._closed = False

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
        """Run `coroutine` in the background; None once closing (what is left is found in MongoDB by the next sweep,
        here or in another process)."""
        if self._closed:
            coroutine.close()
            return None
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %r", task.exception())

    def every(self, seconds: float, job: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Spawn `job()` every `seconds` (started by start())."""
        self._periodic.append(PeriodicCallback(lambda: self.spawn(job()), seconds * 1000))

    def start(self) -> None:
        for periodic in self._periodic:
            periodic.start()

    def stop_periodic(self) -> None:
        for periodic in self._periodic:
            periodic.stop()

    async def close(self, timeout: float | None = None) -> None:
        """Stop the periodic jobs, give the tasks under way up to `timeout` seconds, then cancel what is left."""
        self.stop_periodic()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        self._closed = True
        left = list(self._tasks)
        for task in left:
            task.cancel()
        if left:  # their clean-up runs now, not after the loop is gone
            await asyncio.wait(left, timeout=CANCEL_WAIT)

