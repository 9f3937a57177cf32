"""The event loop's stalls: how late the loop runs its callbacks, and what it was doing when it stood still.

A task on the loop notes the time every TICK seconds; a daemon thread checks the note every TICK seconds. When the
loop has not ticked for STALL seconds, the thread takes the loop thread's current stack (`sys._current_frames`,
documented in the sys module) and logs it once per stall, with how long the stall lasted so far; when the loop ticks
again the stall's length goes into the `event_loop_stalls_seconds` histogram. Every tick's lateness (how much later
than asked the loop woke the task) goes into `event_loop_lag_seconds`.

A stalled loop answers nothing — not /healthz, not a relayed frame — so this is what tells a slow probe caused by a
busy process (long lag, no stall) from one caused by code holding the loop (a stall, with its stack). The stack
holds file names, function names and source lines: no request data."""
from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

from observability import metrics

log = logging.getLogger("gateway.stalls")

TICK = 0.1  # seconds between the loop's notes, and between the thread's checks
STALL = 1.0  # seconds without a note before the loop counts as stalled and its stack is logged
STACK_FRAMES = 12  # innermost frames of the loop thread's stack logged


class StallWatch:
    def __init__(self, stall: float = STALL, tick: float = TICK) -> None:
        self.stall = stall
        self.tick = tick
        self.last_tick = time.monotonic()
        self.loop_thread = threading.get_ident()
        self.reported = False  # the current stall's stack was logged
        self.stopped = threading.Event()
        self.task: asyncio.Task[None] | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """On the loop's thread, with the loop running."""
        self.loop_thread = threading.get_ident()
        self.last_tick = time.monotonic()
        self.task = asyncio.get_running_loop().create_task(self._ticks())
        self.thread = threading.Thread(target=self._watch, name="stall-watch", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.task is not None:
            self.task.cancel()

    async def _ticks(self) -> None:
        while True:
            asked = time.monotonic() + self.tick
            await asyncio.sleep(self.tick)
            now = time.monotonic()
            metrics.LOOP_LAG.observe(max(0.0, now - asked))
            stood = now - self.last_tick
            if stood > self.stall:
                metrics.LOOP_STALLS.observe(stood)
                if self.reported:
                    log.warning("the event loop ran again after standing still for %.2f s", stood)
            self.last_tick, self.reported = now, False

    def _watch(self) -> None:
        while not self.stopped.wait(self.tick):
            stood = time.monotonic() - self.last_tick
            if stood > self.stall and not self.reported:
                self.reported = True
                frame = sys._current_frames().get(self.loop_thread)
                stack = "".join(traceback.format_stack(frame, limit=STACK_FRAMES)) if frame else "(no stack)"
                log.warning("the event loop has stood still for %.2f s; it is in:\n%s", stood, stack.rstrip())
