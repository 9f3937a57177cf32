"""The MongoDB connection and the bounded executor every MongoDB call runs in (never on the IOLoop), the queue in
front of it and its admission rule (Store.run), and the probe that tells /readyz whether MongoDB answers lately
without waiting for anything (Probe)."""
from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import mongoengine
from mongoengine import Document
from pymongo import AsyncMongoClient, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, NotPrimaryError, PyMongoError, WriteConcernError
from pymongo.uri_parser import parse_uri

from domain.errors import RETRY_AFTER, ServiceUnavailable
from models.documents import AvatarSession, GatewayToken, ProcessLease, SessionClaims, TurnReport
from observability import metrics

log = logging.getLogger("gateway.store")

DEFAULT_DATABASE = "ilianaai_avatar"
# How durable an acknowledged write is (DB_WRITE_CONCERN): both survive a crash of the database once acknowledged.
WRITE_CONCERNS: dict[str, dict[str, Any]] = {"journaled": {"w": 1, "journal": True},
                                              "majority": {"w": "majority", "journal": True}}
# The store's call queue (Store.run states the rule). The count bound: at most workers x this calls wait for a worker;
# beyond, calls are refused at once. 2048 with DB_WORKERS 8: a request waits on one call at a time, so 500 sessions
# started at once queue about 500, plus their sockets' background writes. It bounds memory (a waiting call holds a
# future and a timer, besides the request that made it); the wait bound is what refuses when MongoDB cannot keep up.
QUEUED_CALLS_PER_WORKER = 256
# The wait bound: a call waits for a worker at most DB_TIMEOUT x this (2.5 s by default), then is refused; a call that
# reached it stalls the queue (new calls refused at once) until a call gets a worker within half of it again.
QUEUE_WAIT_SHARE = 0.5
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


class _Waiter:
    """A call waiting for a worker: its future (given a result when the call gets a worker, an exception when it is
    refused), when it began to wait (the loop's clock), and the timer of its wait bound (none for an essential call)."""
    __slots__ = ("future", "since", "timer")

    def __init__(self, future: asyncio.Future[None], since: float) -> None:
        self.future = future
        self.since = since
        self.timer: asyncio.TimerHandle | None = None


class Store:
    """The MongoDB connection, and the executor of `workers` threads every MongoDB call runs on, behind a queue whose
    admission rule `run` states."""

    def __init__(self, uri: str, workers: int, timeout: float = 5.0, write_concern: str = "journaled") -> None:
        self.uri = uri
        self.workers = workers
        self.timeout_ms = int(timeout * 1000)
        self.write_concern = WRITE_CONCERNS[write_concern]
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mongo")
        self.max_queued = workers * QUEUED_CALLS_PER_WORKER  # the count bound
        self.max_wait = timeout * QUEUE_WAIT_SHARE  # the wait bound, seconds
        self.running = 0  # calls given a worker and not finished yet: at most `workers`
        self.stalled = False  # a call reached the wait bound, and the queue has not recovered since
        self._waiting: deque[_Waiter] = deque()  # calls waiting for a worker, oldest first (essential ones apart)
        self._essential: deque[_Waiter] = deque()  # essential calls waiting: they get the next free worker
        self.closed = False
        self.db: Database[Any] | None = None
        self.probe: Probe | None = None  # started by start_probe()
        self.database_name: str = parse_uri(uri)["database"] or DEFAULT_DATABASE
        self._reads: AsyncMongoClient[Any] | None = None  # made on first use, on the loop that uses it

    @property
    def waiting(self) -> int:
        """Calls waiting for a worker, essential ones apart (the count bound's count)."""
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        """Whether a call made now would be refused at once (503 "session database busy"): the queue is stalled, or
        at its count bound (see `run`)."""
        return self.stalled or len(self._waiting) >= self.max_queued

    def connect(self) -> None:
        if _users["count"] and _users["uri"] != self.uri:
            raise RuntimeError("one process serves one MongoDB URI")
        if not _users["count"]:
            mongoengine.connect(
                db=self.database_name, host=self.uri,
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
        """Run a blocking MongoDB call on one of the executor's `workers` threads; an unreachable or saturated
        database is a 503 (with Retry-After), never a 500.

        A call gets a worker at once when one is free and no call waits; else it waits in a queue on the IOLoop, in
        order of arrival. A call goes to the executor only once a worker is free for it (no backlog in the executor's
        own queue, where a call could not be taken back), so a call refused while waiting never reached MongoDB: a
        client may retry it as it is. The queue's bounds, for
        every call but essential ones — a refused call is answered 503 "session database busy" with Retry-After:

        - the count bound: while `max_queued` calls (workers x QUEUED_CALLS_PER_WORKER, 2048 with 8 workers) wait,
          a new call is refused at once. It bounds memory only: a burst that MongoDB serves within the wait bound fits
          under it (a request waits on one call at a time: 500 sessions started at once queue about 500), and is
          served, later.
        - the wait bound: a call waits for a worker at most `max_wait` (DB_TIMEOUT x QUEUE_WAIT_SHARE: 2.5 s by
          default); still waiting then, it is taken off the queue and refused. So every caller is answered within
          max_wait plus its own call's time on MongoDB (bounded by pymongo's timeouts, from DB_TIMEOUT), whatever
          MongoDB does, and the queue holds at most the calls made in the last max_wait.
        - the stall: a call that reached the wait bound shows that MongoDB does not keep up (it hangs, it is gone, or
          it serves fewer calls than arrive). From then on new calls are refused at once, instead of each waiting
          max_wait for its 503, until the queue recovers: a waiting call gets a worker after waiting less than half
          of max_wait, or a worker is free while no call waits. The calls already waiting keep their places (each
          still within its wait bound).

        `busy` (and so /readyz's "busy" reason) is true while new calls are refused at once: stalled, or at the count
        bound.

        An essential call (the lease heartbeat; the writes after a provider acted, which a retry could not redo) is
        never refused by these bounds: it waits without a deadline and gets the next free worker before any other
        waiting call, so a burst of other calls can neither make this process look dead to the others nor lose what a
        provider did. Their number is bounded by their callers (one heartbeat at a time, one write per request).
        A closed store refuses every call ("shutting down")."""
        if self.closed:
            raise ServiceUnavailable("shutting down", retry_after=RETRY_AFTER)
        if not essential and self.busy:
            raise self._refused()
        await self._worker(essential)
        loop = asyncio.get_running_loop()
        try:
            if self.closed:  # closed while this call waited for its turn to run
                raise ServiceUnavailable("shutting down", retry_after=RETRY_AFTER)
            work: Future[T] = self.executor.submit(functools.partial(fn, *args, **kwargs))
        except BaseException:
            self._release()
            raise
        # The worker is free again when the call ends, not when its caller stops waiting for it (cancelled).
        work.add_done_callback(lambda _: self._finished(loop))
        try:
            return await asyncio.wrap_future(work)
        except UNAVAILABLE as exc:  # also server selection timeouts and lost connections
            raise _unavailable(exc) from exc

    async def _worker(self, essential: bool) -> None:
        """Wait for a worker (see `run`): returns once the call holds one (`running` counts it)."""
        if self.running < self.workers and not self._waiting and not self._essential:
            self.running += 1
            return
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), loop.time())
        if essential:
            self._essential.append(waiter)
        else:
            self._waiting.append(waiter)
            waiter.timer = loop.call_later(self.max_wait, self._expire, waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:  # its caller went away
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                self._release()  # given a worker meanwhile: it goes to the next call
            else:
                self._forget(waiter)
            raise

    def _expire(self, waiter: _Waiter) -> None:
        """A call reached the wait bound: off the queue, refused; the queue is stalled."""
        try:
            self._waiting.remove(waiter)  # the oldest: at the queue's head
        except ValueError:
            return
        if not self.stalled:
            log.warning("MongoDB calls wait longer than %g s for a worker: new calls are refused (busy) until the "
                        "queue moves again", self.max_wait)
        self.stalled = True
        if not waiter.future.done():
            waiter.future.set_exception(self._refused())

    def _forget(self, waiter: _Waiter) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        for queue in (self._waiting, self._essential):
            try:
                queue.remove(waiter)
            except ValueError:
                pass

    def _finished(self, loop: asyncio.AbstractEventLoop) -> None:
        """A call ended on its worker thread (or was cancelled before it ran): free its worker, on the IOLoop."""
        try:
            loop.call_soon_threadsafe(self._release)
        except RuntimeError:  # the loop is closed: nothing waits any more
            pass

    def _release(self) -> None:
        """A worker is free: give it to the next waiting call, essential ones first."""
        self.running -= 1
        if self.closed:
            return
        now = asyncio.get_running_loop().time()
        while self.running < self.workers:
            if self._essential:
                waiter, essential = self._essential.popleft(), True
            elif self._waiting:
                waiter, essential = self._waiting.popleft(), False
            else:
                self._recovered()  # a worker is free and no call waits
                return
            if waiter.timer is not None:
                waiter.timer.cancel()
            if waiter.future.done():
                continue
            if not essential and now - waiter.since < self.max_wait / 2:
                self._recovered()
            self.running += 1
            waiter.future.set_result(None)

    def _recovered(self) -> None:
        if self.stalled:
            log.info("MongoDB calls get a worker again: the queue takes new calls")
        self.stalled = False

    @staticmethod
    def _refused() -> ServiceUnavailable:
        metrics.MONGODB_ERRORS.labels(kind="busy").inc()
        return ServiceUnavailable("session database busy", retry_after=RETRY_AFTER)

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
        try:
            found: dict[str, Any] | None = await self._reads[self.database_name][document.COLLECTION].find_one(query)
            return found
        except UNAVAILABLE as exc:
            raise _unavailable(exc) from exc

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
        """Refuse every call from now on, the waiting ones too ("shutting down"), and wait for the running ones."""
        self.closed = True
        for queue in (self._essential, self._waiting):
            while queue:
                waiter = queue.popleft()
                if waiter.timer is not None:
                    waiter.timer.cancel()
                if not waiter.future.done():
                    waiter.future.set_exception(ServiceUnavailable("shutting down", retry_after=RETRY_AFTER))
        if self.probe is not None:
            self.probe.close()
        self.executor.shutdown(wait=True)
        _users["count"] -= 1
        if not _users["count"]:
            mongoengine.disconnect()
            _users["uri"] = None


def when(condition: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Update-pipeline fields: each of `changes` set only while `condition` (an expression on the record) holds, else
    kept as it is. A value that is a dict is an expression on the record; any other is set as it is ($literal). How the
    repositories make a conditional write by a unique key alone: SecantusDB scans the collection for a filter with
    more than one predicate, and for any findAndModify (tests/gateway/test_query_plans.py)."""
    return {name: {"$cond": [condition, value if isinstance(value, dict) else {"$literal": value}, f"${name}"]}
            for name, value in changes.items()}


def _unavailable(error: Exception) -> ServiceUnavailable:
    """A MongoDB call failed for the database not being there: counted by its error class, answered 503."""
    metrics.MONGODB_ERRORS.labels(kind=type(error).__name__).inc()
    return ServiceUnavailable("session database unavailable", retry_after=RETRY_AFTER)


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
