"""Process leases: which gateway processes are alive, so that the sockets a dead one held count as closed.

Each process inserts a lease at start and renews it every LEASE_HEARTBEAT seconds. Every open socket is recorded on
its session against the lease of the process holding it (models/sessions.py). A lease not renewed for LEASE_TTL
seconds has expired: the next sweep of any process releases its sockets as closed at its last heartbeat, then
deletes it (services/lifecycle.py). A process that finds its own lease lost — MongoDB was away for longer than
LEASE_TTL, or the host slept — takes a new lease under a new id and tells its followers (the relay's registry of open
sockets records them again under it, out of reach of whichever sweep releases the old one; a socket it cannot move is
closed with 1001, and its client reconnects).

The heartbeat also publishes `pending_since`, the time the process saw the oldest turn it still holds in memory
(services/turns.py), so a flush in another process can wait for that turn to be stored.

Times are compared across hosts: their clocks are assumed to agree to well within LEASE_TTL (NTP).
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from domain.errors import ServiceUnavailable
from models.leases import LeaseRepository

log = logging.getLogger("gateway.leases")


def new_process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class LeaseFollower(Protocol):
    """Something recorded under this process's lease that must follow it to a new one (relay/registry.py)."""

    async def lease_moved(self, process_id: str) -> None: ...


class Leases:
    def __init__(self, repository: LeaseRepository, heartbeat: float, ttl: float,
                 pending_since: Callable[[], float | None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.repository = repository
        self.heartbeat = heartbeat
        self.ttl = ttl
        self.pending_since = pending_since  # when this process saw its oldest turn not yet stored
        self.clock = clock
        self.process_id = new_process_id()
        self.held = False  # whether this process has held its lease yet
        self.renewed_at: float | None = None  # when this process's lease was last taken or renewed (its clock)
        self.live_processes = 1  # gateway processes with a live lease, this one included (as of the last heartbeat)
        self.followers: list[LeaseFollower] = []
        self.address: str | None = None  # this process's internal URL, published with its lease
        self._beating = False

    async def take(self, process_id: str | None = None) -> None:
        """Hold a lease under `process_id` (this process's own, or the new id it moves to once it lost one)."""
        now = self.clock()
        await self.repository.take(process_id or self.process_id, now, self.pending_since(), self.address)
        self.held = True
        self.renewed_at = now

    def holds(self) -> bool:
        """Whether this process's lease is live: taken or renewed within LEASE_TTL (else other processes may count
        its sockets as closed, and it takes a new lease at its next heartbeat)."""
        return self.renewed_at is not None and self.clock() - self.renewed_at < self.ttl

    def since_renewed(self) -> float:
        """Seconds since this process's lease was last taken or renewed: since MongoDB last answered its heartbeat
        (infinite before the first)."""
        return float("inf") if self.renewed_at is None else self.clock() - self.renewed_at

    async def beat(self) -> None:
        """The heartbeat (one at a time: MongoDB may be slower than it)."""
        if self._beating:
            return
        self._beating = True
        try:
            await self._beat()
        finally:
            self._beating = False

    async def _beat(self) -> None:
        now = self.clock()
        try:
            if await self.repository.renew(self.process_id, now, self.ttl, self.pending_since()):
                self.renewed_at = now
                self.live_processes = 1 + len(await self.others_alive())
                return
            if not self.held:  # the first heartbeat, at start
                return await self.take()
            moved_to = new_process_id()
            await self.take(moved_to)
        except ServiceUnavailable:
            log.warning("lease heartbeat failed: MongoDB unavailable")
            return
        log.warning("this process's lease had expired: its sockets move to a new lease %s", moved_to)
        for follower in self.followers:
            await follower.lease_moved(moved_to)
        self.process_id = moved_to

    async def expired(self, limit: int = 100) -> list[tuple[str, float]]:
        """(process_id, last heartbeat) of other processes whose lease has expired."""
        return await self.repository.expired(self.process_id, self.clock() - self.ttl, limit)

    async def others_alive(self) -> list[dict[str, Any]]:
        """The leases of the other live processes: dicts with heartbeat_at and pending_since."""
        return await self.repository.others_alive(self.process_id, self.clock() - self.ttl)

    async def address_of(self, process_id: str) -> str | None:
        """The internal URL of a live process (None when its lease has expired)."""
        return await self.repository.address(process_id, self.clock() - self.ttl)

    async def remove(self, process_id: str, heartbeat_at: float) -> None:
        await self.repository.remove(process_id, heartbeat_at)

    async def release(self) -> None:
        """This process stops cleanly: its lease goes (its sockets were closed and recorded first)."""
        await self.repository.release(self.process_id)
