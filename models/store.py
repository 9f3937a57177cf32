"""The MongoDB connection and the bounded executor every MongoDB call runs in (never on the IOLoop), and the probe
that tells /readyz whether MongoDB answers lately without waiting for anything (Probe)."""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import mongoengine
from mongoengine import Document
from pymongo import AsyncMongoClient, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, NotPrimaryError, PyMongoError, WriteConcernError
from pymongo.uri_parser import parse_uri
from tornado.ioloop import IOLoop

from domain.errors import RETRY_AFTER, ServiceUnavailable
from models.documents import AvatarSession, GatewayToken, ProcessLease, SessionClaims, TurnReport
from observability import metrics

log = logging.getLogger("gateway.store")

DEFAULT_DATABASE = "ilianaai_avatar"
# How durable an acknowledged write is (DB_WRITE_CONCERN): both survive a crash of the database once acknowledged.
WRITE_CONCERNS: dict[str, dict[str, Any]] = {"journaled": {"w": 1, "journal": True},
                                              "majority": {"w": "majority", "journal": True}}
# Calls waiting for a worker beyond workers x this are refused at once (503) rather than queued without bound.
QUEUED_CALLS_PER_WORKER = 32
# Failures that mean "the database is not there right now": the call may be retried as it is.
UNAVAILABLE = (ConnectionFailure, NotPrimaryError, WriteConcernError)
DOCUMENTS = (AvatarSession, GatewayToken, TurnReport, ProcessLease, SessionClaims)
_users: dict[str, Any] = {"count": 0, "uri": None}  # gateways sharing this process's connection (tests run several)

T = TypeVar("T")
P = ParamSpec("P")

# The probe (Probe): a ping every PROBE_INTERVAL seconds, each bounded by PROBE_TIMEOUT (server selection, connect,
# the answer); its verdict is stale, and MongoDB counts as not answering, PROBE_STALE seconds after its last success.
PROBE_INTERVAL = 0.5
PROBE_TIMEOUT = 0.3
PROBE_STALE = 2.0


class Probe:
    """Whether MongoDB answered lately, for /readyz: a thread of its own pings MongoDB every PROBE_INTERVAL through a
    client of its own (one connection, every wait bounded by PROBE_TIMEOUT), and keeps the outcome. Reading it
    (`problem()`) is a look at two numbers: no I/O, no executor, no lock to wait on — so a readiness probe answers at
    once whatever MongoDB does, even while the store's executor is saturated by calls hanging on it. Its own client
    and connection are what keep its ping from queueing behind those calls (for a thread, or for a pooled
    connection)."""

    def __init__(self, uri: str, interval: float = PROBE_INTERVAL, timeout: float = PROBE_TIMEOUT,
                 stale: float = PROBE_STALE, clock: Callable[[], float] = time.monotonic) -> None:
        self.uri = uri
        self.interval = interval
        self.timeout_ms = int(timeout * 1000)
        self.stale = stale
        self.clock = clock
        self.answered_at: float | None = None  # the last ping answered (self.clock)
        self.failed_at: float | None = None  # the last ping that failed
        self.error = ""  # why it failed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: MongoClient[Any] | None = None

    def answered(self) -> None:
        """MongoDB answered just now (a ping, or the calls that started the process)."""
        self.answered_at = self.clock()

    def problem(self) -> str | None:
        """Why MongoDB does not count as answering now, or None when it does: the last ping failed, or none has
        succeeded within PROBE_STALE seconds (say, the probe could not run)."""
        now = self.clock()
        if self.answered_at is None or now - self.answered_at >= self.stale:
            return f"no answer to a ping for {self.stale:g} s"
        if self.failed_at is not None and self.failed_at > self.answered_at:
            return f"the last ping failed ({self.error})"
        return None

    def start(self) -> None:
        self._client = MongoClient(self.uri, maxPoolSize=1, serverSelectionTimeoutMS=self.timeout_ms,
                                   connectTimeoutMS=self.timeout_ms, socketTimeoutMS=self.timeout_ms,
                                   appname="ilianaai-avatar-probe")
        self._thread = threading.Thread(target=self._run, name="mongo-probe", daemon=True)
        self._thread.start()

    def ping(self) -> None:
        """One ping (on the probe's thread), its outcome kept."""
        assert self._client is not None
        try:
            self._client.admin.command("ping")
        except PyMongoError as exc:
            if self.failed_at is None or (self.answered_at or 0) > self.failed_at:
                log.warning("MongoDB did not answer the readiness ping: %s", type(exc).__name__)
            self.error = type(exc).__name__
            self.failed_at = self.clock()
        else:
            if self.failed_at is not None and (self.answered_at or 0) < self.failed_at:
                log.info("MongoDB answers the readiness ping again")
            self.answered()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self.clock()
            self.ping()
            self._stop.wait(max(0.0, self.interval - (self.clock() - started)))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=4 * self.timeout_ms / 1000)  # a ping is bounded by about twice the timeout
        if self._client is not None:
            self._client.close()


class Store:
    def __init__(self, uri: str, workers: int, timeout: float = 5.0, write_concern: str = "journaled") -> None:
        self.uri = uri
        self.workers = workers
        self.timeout_ms = int(timeout * 1000)
        self.write_concern = WRITE_CONCERNS[write_concern]
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mongo")
        self.max_queued = workers * QUEUED_CALLS_PER_WORKER
        self.in_flight = 0
        self.closed = False
        self.db: Database[Any] | None = None
        self.probe: Probe | None = None  # started by start_probe()
        self._reads: AsyncMongoClient[Any] | None = None  # made on first use, on the loop that uses it

    @property
    def busy(self) -> bool:
        """Whether calls are refused for the queue's bound now (503 "session database busy")."""
        return self.in_flight >= self.max_queued

    def connect(self) -> None:
        if _users["count"] and _users["uri"] != self.uri:
            raise RuntimeError("one process serves one MongoDB URI")
        if not _users["count"]:
            mongoengine.connect(
                db=parse_uri(self.uri)["database"] or DEFAULT_DATABASE, host=self.uri,
                maxPoolSize=self.workers, serverSelectionTimeoutMS=self.timeout_ms,
                connectTimeoutMS=self.timeout_ms, socketTimeoutMS=4 * self.timeout_ms,
                uuidRepresentation="standard", **self.write_concern)
            _users["uri"] = self.uri
        _users["count"] += 1
        self.db = mongoengine.connection.get_db()

    def collection(self, document: type[Document]) -> Collection[Any]:
        """The collection a document declares (its COLLECTION), for the repositories' queries."""
        assert self.db is not None, "Store.connect() first"
        return self.db[document.COLLECTION]

    async def ensure_indexes(self) -> None:
        for document in DOCUMENTS:
            await self.run(document.ensure_indexes)

    async def run(self, fn: Callable[..., T], *args: Any, essential: bool = False, **kwargs: Any) -> T:
        """Run a blocking MongoDB call on the executor; an unreachable or saturated database is a 503 (with
        Retry-After), never a 500. An essential call (the lease heartbeat) is never refused for the queue's bound:
        a burst of other calls must not make this process look dead to the others."""
        if self.closed:
            raise ServiceUnavailable("shutting down", retry_after=RETRY_AFTER)
        if self.busy and not essential:
            metrics.MONGODB_ERRORS.labels(kind="busy").inc()
            raise ServiceUnavailable("session database busy", retry_after=RETRY_AFTER)
        self.in_flight += 1
        try:
            return await IOLoop.current().run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))
        except UNAVAILABLE as exc:  # also server selection timeouts and lost connections
            metrics.MONGODB_ERRORS.labels(kind=type(exc).__name__).inc()
            raise ServiceUnavailable("session database unavailable", retry_after=RETRY_AFTER) from exc
        finally:
            self.in_flight -= 1

    async def find_one(self, document: type[Document], query: dict[str, Any]) -> dict[str, Any] | None:
        """A read of one record on the event loop itself, through pymongo's asyncio client: for the hottest read (a
        session by its unique key on a call the process meets first), with no hop to an executor thread and back —
        at 16 concurrent reads about a sixth less CPU, and a p50 of 1.5 ms instead of 4 (its GIL and queue, measured
        on this kind of machine). Bounded by DB_TIMEOUT like every other call; not counted in the executor's queue:
        the client's own pool (DB_WORKERS connections) queues it, within the same timeout."""
        if self.closed:
            raise ServiceUnavailable("shutting down", retry_after=RETRY_AFTER)
        if self._reads is None:
            self._reads = AsyncMongoClient(
                self.uri, maxPoolSize=self.workers, serverSelectionTimeoutMS=self.timeout_ms,
                connectTimeoutMS=self.timeout_ms, socketTimeoutMS=self.timeout_ms, waitQueueTimeoutMS=self.timeout_ms,
                uuidRepresentation="standard", appname="ilianaai-avatar-reads")
        database = self._reads[parse_uri(self.uri)["database"] or DEFAULT_DATABASE]
        try:
            found: dict[str, Any] | None = await database[document.COLLECTION].find_one(query)
            return found
        except UNAVAILABLE as exc:
            metrics.MONGODB_ERRORS.labels(kind=type(exc).__name__).inc()
            raise ServiceUnavailable("session database unavailable", retry_after=RETRY_AFTER) from exc

    async def close_reads(self) -> None:
        """Close the asyncio client (on the loop that used it)."""
        reads, self._reads = self._reads, None
        if reads is not None:
            await reads.close()

    def start_probe(self) -> Probe:
        """Start the readiness probe (Probe); MongoDB counts as having just answered (call it once it has)."""
        self.probe = Probe(self.uri)
        self.probe.answered()
        self.probe.start()
        return self.probe

    def close(self) -> None:
        self.closed = True
        if self.probe is not None:
            self.probe.close()
        self.executor.shutdown(wait=True)
        _users["count"] -= 1
        if not _users["count"]:
            mongoengine.disconnect()
            _users["uri"] = None


class Repository:
    """One collection's reads and writes; each method that calls MongoDB is `@blocking` (run on the executor)."""
    document: type[Document]

    def __init__(self, store: Store) -> None:
        self.store = store
        self._collection: Collection[Any] | None = None

    @property
    def collection(self) -> Collection[Any]:
        if self._collection is None:
            self._collection = self.store.collection(self.document)
        return self._collection


def blocking(method: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """Expose a method that calls MongoDB as a coroutine run on the store's executor (`self.store`)."""
    @functools.wraps(method)
    async def run_in_executor(self: Repository, *args: Any, **kwargs: Any) -> T:
        return await self.store.run(method, self, *args, **kwargs)
    return run_in_executor


def essential(method: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """As `blocking`, for the few calls that must not be refused when the queue is full (see Store.run)."""
    @functools.wraps(method)
    async def run_in_executor(self: Repository, *args: Any, **kwargs: Any) -> T:
        return await self.store.run(method, self, *args, essential=True, **kwargs)
    return run_in_executor
