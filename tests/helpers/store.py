"""A gateway's MongoDB workers held: calls run through its store (models/store.py Store.run) that each block a worker
thread until released, as calls hanging on MongoDB hold them, so the store's queue fills behind them; and `timed`, a
store call's outcome and duration."""
import asyncio
import threading
import time

from domain.errors import ServiceUnavailable

HOLD_AT_MOST = 30.0  # seconds a held call blocks its thread if never released (a test that failed half-way)


class HeldWorkers:
    def __init__(self, store):
        self.store = store
        self.released = threading.Event()
        self.calls = []

    async def hold(self, count):
        """`count` calls, each on a worker or waiting for one until release(); beyond the queue's bounds, refused.
        Returns once each has entered the store (the state the bounds act on is settled)."""
        calls = [asyncio.ensure_future(self.store.run(self.released.wait, HOLD_AT_MOST)) for _ in range(count)]
        self.calls += calls
        await asyncio.sleep(0)  # each call's first step: given a worker, queued, or refused
        return calls

    async def release(self):
        """Let every held call end; their outcomes (True, or the 503 of a refused one)."""
        self.released.set()
        return await asyncio.gather(*self.calls, return_exceptions=True)


async def timed(coroutine):
    """(what a store call returned, or its 503; seconds it took)."""
    started = time.perf_counter()
    try:
        return await coroutine, time.perf_counter() - started
    except ServiceUnavailable as exc:
        return exc, time.perf_counter() - started
