"""Every metric the gateway exports at `GET /metrics` (Prometheus text format), defined here and nowhere else.

Two kinds, by where their values live:

- **Events** (counters and histograms: sessions ended, hand-off attempts, upstream calls, reaper actions, MongoDB
  errors, rate-limit and quota refusals) are process-wide objects created once, when this module is imported; the
  code where the event happens increments them (`SESSIONS_ENDED.labels(provider=..., reason=...).inc()`). Being
  created once per process, any number of gateways built in one process (tests do) share them without a
  "duplicated timeseries" error; in production one process holds one gateway, so they are that gateway's.
- **State** (live sessions, turn-queue depth, relayed frames and bytes, open sockets) is read from one gateway at
  scrape time by its `GatewayMetrics` collector, given what it reads when the gateway is built (handlers/app.py).

Each Gateway has a CollectorRegistry of its own (`GatewayMetrics.registry`) holding the shared event metrics and
its own collector, so two gateways in one process each export their own state.

Live sessions are counted in MongoDB, by one aggregate over the `(status, last_activity_at)` index, at most once
per `LIVE_SESSIONS_TTL` seconds whatever the number of scrapers (concurrent scrapes share one query; a scrape waits
for it at most `LIVE_SESSIONS_WAIT` seconds and is otherwise answered without that gauge). The count is the whole
deployment's — every process reports the same number — so aggregate it across instances with max(), not sum().

Relayed frames are counted on the relay's hot path with plain integer additions on a `RelayCounts` (a
prometheus_client counter increment takes a lock and costs ~10x more); the collector reads them at scrape time.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from domain.errors import ServiceUnavailable
from domain.names import END_REASONS, LIVE_STATUSES, PROVIDERS

log = logging.getLogger("gateway.metrics")

PREFIX = "ilianaai_avatar_"

# The upstreams, as their `upstream` label spells them (lower case). RATE_LIMITED uses the same values.
UPSTREAMS = ("heygen", "liveavatar", "petya")
HANDOFF_OUTCOMES = ("delivered", "retry", "rejected", "deferred")
REAPER_KINDS = ("lease_expired", "sockets_released", "rooms_taken_over", "socket_closed", "idle", "max_age")

LIVE_SESSIONS_TTL = 5.0  # seconds a MongoDB count of the live sessions is reused
LIVE_SESSIONS_WAIT = 1.0  # seconds a scrape waits for a fresh count before it answers without one

# --- events: process-wide -----------------------------------------------------------------------------------------

disable_created_metrics()  # no `_created` series beside every counter and histogram: they double the output

SESSIONS_ENDED = Counter(
    PREFIX + "sessions_ended", "Sessions ended, by provider and reason (stopped: by the client; socket_closed, idle, "
    "max_age: by the reaper). Counted by the process that won the end's claim, once per session.",
    ["provider", "reason"], registry=None)

HANDOFFS = Counter(
    PREFIX + "handoff_attempts", "Transcript hand-off attempts to Petya, by outcome: delivered, retry (Petya down or "
    "5xx/429: tried again later), rejected (4xx: kept with its error), deferred (waiting for turns still on their "
    "way to MongoDB; not counted as an attempt on the session).", ["outcome"], registry=None)

HANDOFF_ATTEMPTS = Histogram(
    PREFIX + "handoff_attempts_per_session", "Attempts a hand-off took, observed once per session when it ends "
    "delivered or rejected.", ["outcome"], buckets=(1, 2, 3, 5, 8, 13, 21, 50), registry=None)

UPSTREAM_LATENCY = Histogram(
    PREFIX + "upstream_request_duration_seconds", "Upstream HTTP calls (HeyGen, LiveAvatar, Petya): duration by "
    "upstream, call (method and path, ids replaced by :id) and status class (2xx, 3xx, 4xx, 5xx; error: no HTTP "
    "answer: refused, unreachable, timed out).", ["upstream", "call", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=None)

SESSION_SECONDS = Counter(
    PREFIX + "session_seconds", "Seconds of sessions served, by provider, from the provider's start to the end, "
    "counted when a session ends (by the process that ended it): what the providers bill by.", ["provider"],
    registry=None)

REAPER_ACTIONS = Counter(
    PREFIX + "reaper_actions", "What the periodic sweep did, by kind: lease_expired (a dead process's lease "
    "removed), sockets_released (sessions whose sockets that process held now count as closed), rooms_taken_over "
    "(rooms that process held, joined by this one), socket_closed, idle, max_age (sessions ended by this sweep for "
    "that reason).", ["kind"], registry=None)

MONGODB_ERRORS = Counter(
    PREFIX + "mongodb_errors", "MongoDB calls answered 503 because the database was not there or saturated, by kind: "
    "the pymongo error's class (ServerSelectionTimeoutError, AutoReconnect, NotPrimaryError, WriteConcernError, ...) "
    "or busy (refused by the store's call queue: waited too long for a worker, or too many waiting).", ["kind"],
    registry=None)

RATE_LIMITED = Counter(
    PREFIX + "rate_limited", "Calls refused (429) or held back by our rate limiter in front of an upstream, or "
    "refused by the upstream's own rate limit, by upstream.", ["upstream"], registry=None)

QUOTA_REFUSED = Counter(
    PREFIX + "quota_refused", "New sessions refused because the customer's concurrent-session quota was taken "
    "(429 concurrency_limit_exceeded).", registry=None)

GC_PAUSES = Histogram(
    PREFIX + "gc_pause_seconds", "Pauses of Python's cyclic garbage collector, by generation: the event loop stands "
    "still meanwhile (a full collection walks every tracked object: its pause grows with the open sockets).",
    ["generation"], buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=None)

LOOP_LAG = Histogram(
    PREFIX + "event_loop_lag_seconds", "How much later than asked the event loop woke a task that sleeps 0.1 s "
    "(observability/stalls.py): the time any callback waits for the loop.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=None)
LOOP_STALLS = Histogram(
    PREFIX + "event_loop_stalls_seconds", "Stalls of the event loop over 1 s (no callback ran), by length; the stack "
    "of each is logged.", buckets=(1.0, 2.0, 5.0, 10.0, 30.0), registry=None)

EVENT_METRICS = (SESSIONS_ENDED, SESSION_SECONDS,
                 HANDOFFS, HANDOFF_ATTEMPTS, UPSTREAM_LATENCY, REAPER_ACTIONS, MONGODB_ERRORS,
                 RATE_LIMITED, QUOTA_REFUSED, GC_PAUSES, LOOP_LAG, LOOP_STALLS)

# Label values known in advance start at 0, so a rate() over them works from the first scrape.
for _provider in PROVIDERS:
    for _reason in END_REASONS:
        SESSIONS_ENDED.labels(provider=_provider, reason=_reason)
    SESSION_SECONDS.labels(provider=_provider)
for _outcome in HANDOFF_OUTCOMES:
    HANDOFFS.labels(outcome=_outcome)
for _kind in REAPER_KINDS:
    REAPER_ACTIONS.labels(kind=_kind)
for _upstream in UPSTREAMS:
    RATE_LIMITED.labels(upstream=_upstream)
MONGODB_ERRORS.labels(kind="busy")
for _generation in ("0", "1", "2"):
    GC_PAUSES.labels(generation=_generation)


# --- the garbage collector's pauses -------------------------------------------------------------------------------

GC_PAUSE_WARNING = 0.5  # seconds: a collection pausing the process longer than this is logged


class GcPauseTimer:
    """Times every collection of Python's cyclic garbage collector into GC_PAUSES (a `gc.callbacks` hook: a
    perf_counter() read at its start and stop) and logs a warning for one over GC_PAUSE_WARNING."""

    def __init__(self) -> None:
        self.started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        paused = time.perf_counter() - self.started
        GC_PAUSES.labels(generation=str(info.get("generation"))).observe(paused)
        if paused > GC_PAUSE_WARNING:
            log.warning("garbage collection of generation %s paused the process for %.2f s (%d objects collected)",
                        info.get("generation"), paused, info.get("collected", 0))


def time_gc_pauses() -> None:
    """Install the GcPauseTimer, once per process."""
    import gc
    if not any(isinstance(callback, GcPauseTimer) for callback in gc.callbacks):
        gc.callbacks.append(GcPauseTimer())


# --- upstream calls -----------------------------------------------------------------------------------------------

# A path segment kept as it is: words (letters, `.`, `_`, `-`) and API versions. Anything else — with a digit, an
# escape, or long — is an id.
_WORD = re.compile(r"[A-Za-z][A-Za-z_.\-]{0,39}|v\d{1,2}")
# Distinct `call` values one upstream may have (the HeyGen routes forward any `streaming.<name>` a client sends);
# later ones are counted under "other".
MAX_CALLS_PER_UPSTREAM = 40
_calls: dict[str, set[str]] = {}  # upstream -> set of call labels seen


def call_label(upstream: str, method: str, path: str) -> str:
    """`METHOD /path` with ids replaced by `:id`, bounded to MAX_CALLS_PER_UPSTREAM values per upstream."""
    segments = path.split("?", 1)[0].split("/")
    label = method + " " + "/".join(s if not s or _WORD.fullmatch(s) else ":id" for s in segments)
    seen = _calls.setdefault(upstream, set())
    if label not in seen:
        if len(seen) >= MAX_CALLS_PER_UPSTREAM:
            return "other"
        seen.add(label)
    return label


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "error"


# (upstream, call, status class) -> its histogram child: labels() costs microseconds per call
_latency_children: dict[tuple[str, str, str], Any] = {}


def observe_upstream(upstream_name: str, call: str, status: int | None, seconds: float) -> None:
    """One upstream call: `status` is the HTTP status, or None when no answer came. (Label values are bounded:
    upstreams x MAX_CALLS_PER_UPSTREAM calls x 6 status classes, so the memo is too.)"""
    key = (upstream_name, call, "error" if status is None else status_class(status))
    child = _latency_children.get(key)
    if child is None:
        child = _latency_children[key] = UPSTREAM_LATENCY.labels(upstream=upstream_name.lower(), call=key[1],
                                                                 status=key[2])
    child.observe(seconds)


# --- state: per gateway -------------------------------------------------------------------------------------------

class Tally:
    """Data frames and payload bytes relayed in one direction: plain ints, added to per frame, read at scrape time."""
    __slots__ = ("bytes", "frames")

    def __init__(self) -> None:
        self.frames = self.bytes = 0


class RelayCounts:
    """What one gateway's sockets relayed, by direction, and how many are open."""
    __slots__ = ("client", "sockets", "upstream")

    def __init__(self) -> None:
        self.client = Tally()  # browser -> HeyGen
        self.upstream = Tally()  # HeyGen -> browser
        self.sockets = 0  # relays open now


class QueueDepth(Protocol):
    """What the collector reads of a turn queue (services/turns.py)."""
    capacity: int

    def __len__(self) -> int: ...


LiveSessions = dict[tuple[str, str], int]  # (provider, status) -> sessions


class GatewayMetrics(Collector):
    """One gateway's registry: the shared event metrics, plus this collector of the gateway's state. `count_live`
    counts the live sessions in MongoDB (models/sessions.py); `turns` is the gateway's turn queue."""

    def __init__(self, count_live: Callable[[], Awaitable[LiveSessions]], turns: QueueDepth,
                 clock: Callable[[], float] = time.monotonic, room_agents: Callable[[], int] = lambda: 0) -> None:
        self.count_live = count_live
        self.turns = turns
        self.room_agents = room_agents  # how many rooms this process's agents are in
        self.clock = clock
        self.relay = RelayCounts()
        self.live_sessions: LiveSessions | None = None  # as last counted; None when the last count failed
        self._counted_at: float | None = None
        self._counting: asyncio.Future[None] | None = None  # the count under way
        self.registry = CollectorRegistry()
        for metric in EVENT_METRICS:
            self.registry.register(metric)
        self.registry.register(self)

    async def refresh(self) -> None:
        """Count the live sessions in MongoDB unless counted within LIVE_SESSIONS_TTL; wait for the count at most
        LIVE_SESSIONS_WAIT seconds (it goes on, and a later scrape gets it)."""
        if self._counting is None:
            if self._counted_at is not None and self.clock() - self._counted_at < LIVE_SESSIONS_TTL:
                return
            self._counting = asyncio.ensure_future(self._count())
        try:
            await asyncio.wait_for(asyncio.shield(self._counting), LIVE_SESSIONS_WAIT)
        except TimeoutError:
            pass

    async def _count(self) -> None:
        try:
            self.live_sessions = await self.count_live()
        except ServiceUnavailable:
            self.live_sessions = None  # absent from the scrape rather than stale
        except Exception:
            log.exception("counting the live sessions failed")
            self.live_sessions = None
        finally:
            self._counted_at = self.clock()  # a failure is reused as long: scrapes never hammer MongoDB
            self._counting = None

    def collect(self) -> Iterator[Metric]:
        if self.live_sessions is not None:
            live = GaugeMetricFamily(
                PREFIX + "live_sessions", "Sessions not ended, by provider and status (created, started), counted in "
                f"MongoDB at most every {LIVE_SESSIONS_TTL:g}s: the whole deployment's, the same in every process.",
                labels=["provider", "status"])
            for provider in PROVIDERS:
                for status in LIVE_STATUSES:
                    live.add_metric([provider, status], self.live_sessions.get((provider, status), 0))
            yield live
        turns = self.turns
        yield GaugeMetricFamily(PREFIX + "turn_queue_depth", "Turns this process holds that are not yet in MongoDB "
                                "(taken slots of the turn queue).", value=len(turns))
        yield GaugeMetricFamily(PREFIX + "turn_queue_capacity", "TURN_QUEUE_MAX: at this depth tasks and reports are "
                                "refused and socket relays pause.", value=turns.capacity)
        relay = self.relay
        frames = CounterMetricFamily(PREFIX + "relayed_frames", "WebSocket data frames (control frames not "
                                     "counted) relayed by this process, by "
                                     "direction (client_to_upstream: browser to HeyGen; upstream_to_client).",
                                     labels=["direction"])
        frames.add_metric(["client_to_upstream"], relay.client.frames)
        frames.add_metric(["upstream_to_client"], relay.upstream.frames)
        yield frames
        sent = CounterMetricFamily(PREFIX + "relayed_bytes", "Payload bytes of the WebSocket frames relayed by this "
                                   "process (text frames as UTF-8), by direction.", labels=["direction"])
        sent.add_metric(["client_to_upstream"], relay.client.bytes)
        sent.add_metric(["upstream_to_client"], relay.upstream.bytes)
        yield sent
        yield GaugeMetricFamily(PREFIX + "relayed_sockets", "WebSocket relays this process holds open.",
                                value=relay.sockets)
        yield GaugeMetricFamily(PREFIX + "room_agents", "LiveKit rooms this process's room agents are in (the "
                                "rooms it holds: services/rooms.py).", value=self.room_agents())

    def describe(self) -> Iterator[Metric]:
        return iter(())  # state metrics vary (live_sessions may be absent): not described up front
