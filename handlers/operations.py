"""The operators' routes — liveness, readiness, metrics — and the API's own description (`/openapi.json`).

- `GET /healthz` (liveness): 200 while the process answers. It does not ask MongoDB: a MongoDB outage is no reason
  to restart the gateway — a restart would lose the turns it holds for MongoDB (services/turns.py).
- `GET /readyz` (readiness): 200 when this process can serve, else 503 with the reason, the first of:
  `shutting_down` (a graceful stop is under way); `lease_lost` (its lease not renewed within LEASE_TTL);
  `turn_queue_full` (TURN_QUEUE_MAX turns wait for MongoDB); `mongodb_unavailable`, when the last ping of the store's
  probe failed or none succeeded within PROBE_STALE (2 s), or the lease heartbeat has not succeeded for
  3 x LEASE_HEARTBEAT + 1 s (MongoDB is not answering this process's own calls: they hang, or queue behind calls
  that do), or the store's call queue refuses new calls (models/store.py Store.run: calls have waited longer than
  its wait bound for a worker, or as many as its count bound wait; they would be refused "busy").
  It reads only state the process keeps: nothing it does waits on MongoDB or on the store's executor, so it answers
  at once whatever MongoDB does. The probe (models/store.py, Probe) pings MongoDB every PROBE_INTERVAL (0.5 s) from a
  thread and a one-connection client of its own, each ping bounded by PROBE_TIMEOUT (0.3 s): MongoDB refusing or
  hanging is seen within about 0.8 s, and its return as soon as a ping and the next heartbeat succeed.
- `GET /metrics`: this process's metrics (observability/metrics.py), Prometheus text format, or OpenMetrics when the
  scraper asks for it (Accept).
The first three are served at the root of PORT, or only on ADMIN_ADDRESS's listener when that is set.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client.exposition import choose_encoder

from domain.errors import RETRY_AFTER, ServiceUnavailable
from handlers.base import BaseHandler
from handlers.contracts import Contract, Route
from handlers.openapi import FRAMING, answer, error, operation, statuses

if TYPE_CHECKING:
    from handlers.app import Gateway


class NotReady(ServiceUnavailable):
    """503 from /readyz: the error envelope plus `status` and a machine-readable `reason`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"not ready: {message}", retry_after=RETRY_AFTER,
                         details={"status": "unavailable", "reason": reason})
        self.reason = reason


# The lease heartbeat counts as late, and MongoDB as not answering this process, after this many heartbeats (plus
# HEARTBEAT_SLACK seconds) without a renewal.
LATE_HEARTBEATS = 3
HEARTBEAT_SLACK = 1.0


def not_ready(gateway: Gateway) -> NotReady | None:
    """Why `gateway` cannot serve now, or None when it can: from state the process keeps, without any I/O."""
    if gateway.stopped:
        return NotReady("shutting_down", "the process is shutting down")
    leases = gateway.leases
    if not leases.holds():
        return NotReady("lease_lost", "this process's lease is not held (MongoDB was away longer than LEASE_TTL)")
    if len(gateway.turns) >= gateway.turns.capacity:
        return NotReady("turn_queue_full", "the turn queue is full (MongoDB is not taking turns fast enough)")
    store = gateway.store
    problem = store.probe.problem() if store.probe is not None else None
    if problem is not None:
        return NotReady("mongodb_unavailable", f"MongoDB: {problem}")
    since = leases.since_renewed()
    if since > LATE_HEARTBEATS * leases.heartbeat + HEARTBEAT_SLACK:
        return NotReady("mongodb_unavailable", f"MongoDB: no answer to this process's lease heartbeat for "
                                               f"{since:.1f} s")
    if store.busy:
        why = (f"its calls wait longer than {store.max_wait:g} s for a worker" if store.stalled
               else "its call queue is full")
        return NotReady("mongodb_unavailable", f"MongoDB: session database busy ({why})")
    return None


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.send_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    def get(self) -> None:
        problem = not_ready(self.gateway)
        if problem is not None:
            raise problem
        self.send_json({"status": "ready"})


class MetricsHandler(BaseHandler):
    async def get(self) -> None:
        metrics = self.gateway.metrics
        await metrics.refresh()  # live sessions: from MongoDB at most every LIVE_SESSIONS_TTL seconds
        encoder, content_type = choose_encoder(self.request.headers.get("Accept", ""))
        self.set_header("Content-Type", content_type)
        self.finish(encoder(metrics.registry))


class OpenAPIHandler(BaseHandler):
    def get(self) -> None:
        self.finish(self.gateway.openapi_document())


TAGS = ("Operations",)
ROOT_ONLY_NOTE = " Root only; only on ADMIN_ADDRESS when that is set (then 404 here)."


def openapi() -> dict[str, Any]:
    return {"get": operation(
        "openapi", "This document", "The gateway's contract (OpenAPI 3.1), under either prefix.",
        {"200": answer("the OpenAPI document", {"type": "object"}), **statuses("400", "413", body_400=FRAMING)},
        security=[], tags=TAGS)}


def healthz() -> dict[str, Any]:
    return {"get": operation(
        "healthz", "Liveness", "200 while the process answers (MongoDB is not asked)." + ROOT_ONLY_NOTE,
        {"200": answer("alive", "Health"), **statuses("400", "413", body_400=FRAMING)}, security=[], tags=TAGS)}


def readyz() -> dict[str, Any]:
    return {"get": operation(
        "readyz", "Readiness", "200 when this process can serve, else 503 with the reason." + ROOT_ONLY_NOTE,
        {"200": answer("ready", "Ready"), **statuses("400", "413", body_400=FRAMING),
         "503": error("not ready: shutting down, lease lost, turn queue full, or MongoDB not answering lately (its "
                      "last ping failed, the lease heartbeat is late, or its call queue is full)",
                      "NotReadyError", retry_after=True)},
        security=[], tags=TAGS)}


def metrics() -> dict[str, Any]:
    return {"get": operation(
        "metrics", "Prometheus metrics", "This process's metrics in Prometheus text format, or OpenMetrics when the "
                                         "scraper's Accept asks for it." + ROOT_ONLY_NOTE,
        {"200": {**answer("the metrics"),
                 "content": {"text/plain": {"schema": {"type": "string"}},
                             "application/openmetrics-text": {"schema": {"type": "string"}}}},
         **statuses("400", "413", body_400=FRAMING)},
        security=[], tags=TAGS)}


CONTRACT = Contract("operations", (
    Route(r"/openapi\.json", OpenAPIHandler, "/openapi.json", openapi),  # under both prefixes
    Route(r"/healthz", HealthHandler, "/healthz", healthz, prefixed=False, admin=True),
    Route(r"/readyz", ReadyHandler, "/readyz", readyz, prefixed=False, admin=True),
    Route(r"/metrics", MetricsHandler, "/metrics", metrics, prefixed=False, admin=True),
), tag={"name": "Operations", "description": "Liveness, readiness, metrics, this document."})
