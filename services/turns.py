"""Turns on their way to MongoDB: a turn the gateway has seen is never dropped while its process lives.

Every turn is written through the process's TurnQueue. A caller first takes a slot — before it checks anything in
MongoDB, so the slot's time is earlier than any flush cut-off it could race — then submits the turn into it. One
worker writes queued turns in batches; while MongoDB is away it retries with backoff (and every flush waits, see
services/lifecycle.py). Each turn carries its own id, so a batch retried after a lost acknowledgement stores it once.

The queue is bounded (TURN_QUEUE_MAX slots, taken or queued). At the bound nothing is dropped: `take_slot()` (a
REST call) raises ServiceUnavailable, so the task or report is refused with 503 before any upstream call, and
`wait_for_slot()` (a socket relay) waits for room, so the relay stops reading its upstream until MongoDB catches up.
A turn whose write MongoDB refuses for good (not an outage) is logged with its session and dropped: retrying could
never store it. What is still queued when a graceful stop's timeout runs out is logged as lost.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol

from bson import ObjectId

from domain.errors import RETRY_AFTER, ServiceUnavailable
from domain.records import Turn

log = logging.getLogger("gateway.turns")

BATCH = 100
RETRY_INITIAL, RETRY_MAX = 0.05, 2.0


class TurnStorage(Protocol):
    """Where turns go (models/turns.py)."""

    def insert(self, documents: list[dict[str, Any]]) -> Awaitable[dict[Any, str]]: ...


class Slot:
    """Room for one turn, taken at `since`. Use as a context manager: leaving it unsubmitted gives the room back."""

    def __init__(self, queue: TurnQueue, since: float) -> None:
        self.queue = queue
        self.since = since
        self.stored: asyncio.Future[bool] | None = None  # once submitted: resolved when the turn is in MongoDB

    def submit(self, session_id: str, turn: Turn) -> asyncio.Future[bool]:
        """Queue the turn for writing; returns a Future resolved once it is stored."""
        self.stored = asyncio.get_running_loop().create_future()
        self.queue._enqueue(self, session_id, turn)
        return self.stored

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.stored is None:
            self.queue._release(self)


class TurnQueue:
    def __init__(self, storage: TurnStorage, capacity: int, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.capacity = capacity
        self.clock = clock
        # Taken and not yet stored (or given back), in the order they were taken: the first is the oldest.
        self._slots: dict[Slot, None] = {}
        self._queue: list[tuple[Slot, dict[str, Any]]] = []  # (slot, document) in submission order
        self._room = asyncio.Event()
        self._room.set()
        self._worker: asyncio.Future[None] | None = None
        self._full_logged = False

    def __len__(self) -> int:
        return len(self._slots)

    # --- taking room ----------------------------------------------------------------------------------------------

    def take_slot(self) -> Slot:
        """A slot now, or ServiceUnavailable (503) when the queue is full."""
        if len(self._slots) >= self.capacity:
            self._note_full()
            raise ServiceUnavailable("too many turns waiting for the session database", retry_after=RETRY_AFTER)
        return self._new_slot()

    async def wait_for_slot(self) -> Slot:
        """A slot, waiting for room when the queue is full."""
        while len(self._slots) >= self.capacity:
            self._note_full()
            self._room.clear()
            await self._room.wait()
        return self._new_slot()

    def put_nowait(self, session_id: str, turn: Turn) -> bool:
        """Queue one turn if there is room now; False when the queue is full."""
        if len(self._slots) >= self.capacity:
            self._note_full()
            return False
        self._new_slot().submit(session_id, turn)
        return True

    async def put(self, session_id: str, turn: Turn) -> asyncio.Future[bool]:
        """Queue one turn (waiting for room); returns the Future of its storage."""
        return (await self.wait_for_slot()).submit(session_id, turn)

    def _new_slot(self) -> Slot:
        slot = Slot(self, self.clock())
        self._slots[slot] = None
        return slot

    def _note_full(self) -> None:
        if not self._full_logged:
            self._full_logged = True
            log.warning("turn queue full (%d turns waiting for MongoDB): refusing tasks and reports, pausing relays",
                        self.capacity)

    def _release(self, slot: Slot) -> None:
        self._slots.pop(slot, None)
        if len(self._slots) < self.capacity:
            self._room.set()
            if self._full_logged and not self._slots:
                self._full_logged = False
                log.info("turn queue drained")

    # --- what flushes wait for ------------------------------------------------------------------------------------

    def pending_since(self) -> float | None:
        """When the oldest turn this process still holds was seen (its slot taken); None when it holds none. The
        first slot still held, so O(1): every flush waiting for its turns asks this every 10 ms, and a scan of the
        slots made 500 flushes at once take a quarter of the process's time."""
        for slot in self._slots:
            return slot.since
        return None

    async def settled(self, cutoff: float, timeout: float) -> bool:
        """Wait until every slot taken at or before `cutoff` is stored or given back; False if that took longer
        than `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (since := self.pending_since()) is not None and since <= cutoff:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # --- writing --------------------------------------------------------------------------------------------------

    def _enqueue(self, slot: Slot, session_id: str, turn: Turn) -> None:
        self._queue.append((slot, {"_id": ObjectId(), "session_id": session_id, **turn}))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        delay = RETRY_INITIAL
        while self._queue:
            batch = self._queue[:BATCH]
            try:
                refused = await self.storage.insert([document for _, document in batch])
            except ServiceUnavailable:
                log.warning("MongoDB unavailable: %d turns queued, retrying in %.2fs", len(self._queue), delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX)
                continue
            except Exception:
                log.exception("storing %d turns failed; retrying", len(batch))
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX)
                continue
            delay = RETRY_INITIAL
            del self._queue[:len(batch)]
            for slot, document in batch:
                if document["_id"] in refused:
                    log.error("MongoDB refused a turn of session %s for good: %s", document["session_id"],
                              refused[document["_id"]])
                if slot.stored is not None and not slot.stored.done():
                    slot.stored.set_result(document["_id"] not in refused)
                self._release(slot)

    async def close(self, timeout: float) -> None:
        """Give queued turns up to `timeout` seconds to reach MongoDB; log what could not."""
        if self._worker is not None and not self._worker.done():
            done, _ = await asyncio.wait([self._worker], timeout=timeout)
            if not done:
                self._worker.cancel()
        if self._queue:
            sessions = sorted({document["session_id"] for _, document in self._queue})
            log.error("stopping with %d turns not stored (sessions %s)", len(self._queue), ", ".join(sessions))
