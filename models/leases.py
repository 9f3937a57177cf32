"""Process leases: which gateway processes are alive, so that the sockets a dead one held count as closed.

Each process inserts a lease at start and renews it every LEASE_HEARTBEAT seconds. Every open socket is recorded on
its session against the lease of the process holding it (models.sessions). A lease not renewed for LEASE_TTL
seconds has expired: the next sweep of any process releases its sockets as closed at its last heartbeat, then
deletes it (models.lifecycle). A process that finds its own lease lost — MongoDB was away for longer than LEASE_TTL,
or the host slept — takes a new lease under a new id and records its open sockets again under it, out of reach of
whichever sweep releases the old one (a socket it cannot move is closed with 1001, and its client reconnects).

The heartbeat also publishes `pending_since`, the time the process saw the oldest turn it still holds in memory
(models.turns), so a flush in another process can wait for that turn to be stored.

Times are compared across hosts: their clocks are assumed to agree to well within LEASE_TTL (NTP).
"""
import logging
import os
import secrets
import socket
import time

from models.documents import ProcessLease
from models.store import blocking, essential

log = logging.getLogger("gateway.leases")


def new_process_id():
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Leases:
    def __init__(self, store, heartbeat, ttl, clock=time.time):
        self.store = store
        self.heartbeat = heartbeat
        self.ttl = ttl
        self.clock = clock
        self.process_id = new_process_id()
        self.held = False  # whether this process has held its lease yet
        self.renewed_at = None  # when this process's lease was last taken or renewed (this process's clock)
        self.live_processes = 1  # gateway processes with a live lease, this one included (as of the last heartbeat)

    @property
    def collection(self):
        return ProcessLease._get_collection()

    @essential
    def renew(self, pending_since=None):
        """Heartbeat: False when this process's lease was lost (expired, or deleted by another process's sweep) or
        never taken; then take() a new one."""
        now = self.clock()
        renewed = bool(self.collection.update_one(
            {"process_id": self.process_id, "heartbeat_at": {"$gte": now - self.ttl}},
            {"$set": {"heartbeat_at": now, "pending_since": pending_since}}).matched_count)
        if renewed:
            self.renewed_at = now
        return renewed

    @essential
    def take(self, process_id, pending_since=None):
        """Hold a lease under `process_id` (this process's own, or the new id it moves to once it lost one)."""
        now = self.clock()
        self.collection.update_one(
            {"process_id": process_id},
            {"$set": {"heartbeat_at": now, "pending_since": pending_since},
             "$setOnInsert": {"host": socket.gethostname(), "pid": os.getpid(), "started_at": now}}, upsert=True)
        self.held = True
        self.renewed_at = now

    def holds(self):
        """Whether this process's lease is live: taken or renewed within LEASE_TTL (else other processes may count
        its sockets as closed, and it takes a new lease at its next heartbeat)."""
        return self.renewed_at is not None and self.clock() - self.renewed_at < self.ttl

    @blocking
    def expired(self, limit=100):
        """(process_id, last heartbeat) of other processes whose lease has expired."""
        found = self.collection.find(
            {"heartbeat_at": {"$lt": self.clock() - self.ttl}, "process_id": {"$ne": self.process_id}},
            {"process_id": 1, "heartbeat_at": 1}).limit(limit)
        return [(lease["process_id"], lease["heartbeat_at"]) for lease in found]

    @blocking
    def others_alive(self):
        """The leases of the other live processes: dicts with heartbeat_at and pending_since."""
        return list(self.collection.find(
            {"heartbeat_at": {"$gte": self.clock() - self.ttl}, "process_id": {"$ne": self.process_id}},
            {"_id": 0, "process_id": 1, "heartbeat_at": 1, "pending_since": 1}))

    @blocking
    def remove(self, process_id, heartbeat_at):
        """Delete an expired lease, unless its process came back and renewed it meanwhile."""
        self.collection.delete_one({"process_id": process_id, "heartbeat_at": heartbeat_at})

    @blocking
    def release(self):
        """This process stops cleanly: its lease goes (its sockets were closed and recorded first)."""
        self.collection.delete_one({"process_id": self.process_id})
