"""Liveness and readiness, for supervisors, load balancers and orchestrators.

- `GET /healthz` (liveness): 200 while the process answers. It does not ask MongoDB: a MongoDB outage is no reason
  to restart the gateway — a restart would lose the turns it holds for MongoDB (models.turns).
- `GET /readyz` (readiness): 200 when this process can serve — not shutting down, its lease held, its turn queue
  not full, and MongoDB answering a ping (within DB_TIMEOUT) — else 503 with the reason.
"""
from mongoengine.connection import get_db

from handlers.base import BaseHandler
from models.errors import ServiceUnavailable
from models.store import RETRY_AFTER


class NotReady(ServiceUnavailable):
    """503 from /readyz: the error envelope plus `status` and a machine-readable `reason`."""

    def __init__(self, reason, message):
        super().__init__(f"not ready: {message}", retry_after=RETRY_AFTER)
        self.reason = reason

    def body(self):
        return {**super().body(), "status": "unavailable", "reason": self.reason}


def _ping():
    return get_db().command("ping")


async def not_ready(gateway):
    """Why `gateway` cannot serve now (a NotReady), or None when it can."""
    if gateway.stopped:
        return NotReady("shutting_down", "the process is shutting down")
    if not gateway.leases.holds():
        return NotReady("lease_lost", "this process's lease is not held (MongoDB was away longer than LEASE_TTL)")
    if len(gateway.turns) >= gateway.turns.capacity:
        return NotReady("turn_queue_full", "the turn queue is full (MongoDB is not taking turns fast enough)")
    try:
        await gateway.store.run(_ping)
    except ServiceUnavailable as exc:
        return NotReady("mongodb_unavailable", f"MongoDB: {exc.message}")
    return None


class HealthHandler(BaseHandler):
    def get(self):
        self.send_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    async def get(self):
        problem = await not_ready(self.gateway)
        if problem is not None:
            raise problem
        self.send_json({"status": "ready"})
