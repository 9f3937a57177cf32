"""The `gateway_processes` collection: one lease per live gateway process (services/leases.py says what they mean)."""
from __future__ import annotations

import os
import socket
from typing import Any

from models.documents import ProcessLease
from models.store import Repository, blocking, essential, when


class LeaseRepository(Repository):
    document = ProcessLease

    @essential
    def renew(self, process_id: str, now: float, ttl: float, pending_since: float | None) -> bool:
        """Renew the lease while it is live: False when it was lost (expired, or deleted by another process's sweep)
        or never taken. The heartbeat only moves forward: a renewal that waited long for a worker (MongoDB away)
        and runs after a later one leaves the later time."""
        live = {"$gte": ["$heartbeat_at", now - ttl]}
        self.collection.update_one({"process_id": process_id}, [{"$set": when(live, {
            "heartbeat_at": {"$max": ["$heartbeat_at", now]}, "pending_since": pending_since})}])
        found = self.collection.find_one({"process_id": process_id}, {"heartbeat_at": 1})
        return found is not None and found["heartbeat_at"] >= now

    @essential
    def take(self, process_id: str, now: float, pending_since: float | None, address: str | None = None) -> None:
        self.collection.update_one(
            {"process_id": process_id},
            {"$set": {"heartbeat_at": now, "pending_since": pending_since, "address": address},
             "$setOnInsert": {"host": socket.gethostname(), "pid": os.getpid(), "started_at": now}}, upsert=True)

    @blocking
    def expired(self, own_id: str, before: float, limit: int = 100) -> list[tuple[str, float]]:
        """(process_id, last heartbeat) of other processes whose last heartbeat is before `before`."""
        found = self.collection.find({"heartbeat_at": {"$lt": before}}, {"process_id": 1, "heartbeat_at": 1}).limit(
            limit + 1)
        return [(lease["process_id"], lease["heartbeat_at"]) for lease in found if lease["process_id"] != own_id]

    @blocking
    def others_alive(self, own_id: str, since: float) -> list[dict[str, Any]]:
        """The leases of the other processes that beat since `since`: dicts with heartbeat_at and pending_since."""
        return [lease for lease in self.collection.find(
            {"heartbeat_at": {"$gte": since}}, {"_id": 0, "process_id": 1, "heartbeat_at": 1, "pending_since": 1})
            if lease["process_id"] != own_id]

    @blocking
    def address(self, process_id: str, since: float) -> str | None:
        """The internal URL of a process whose lease is live (beat since `since`); None otherwise."""
        found = self.collection.find_one({"process_id": process_id}, {"_id": 0, "address": 1, "heartbeat_at": 1})
        return found.get("address") if found and found.get("heartbeat_at", 0) >= since else None

    @blocking
    def remove(self, process_id: str, heartbeat_at: float) -> None:
        """Delete an expired lease, unless its process came back and renewed it meanwhile."""
        self.collection.delete_one({"process_id": process_id, "heartbeat_at": heartbeat_at})

    @blocking
    def release(self, process_id: str) -> None:
        self.collection.delete_one({"process_id": process_id})
