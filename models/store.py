"""The MongoDB connection and the bounded executor every MongoDB call runs in (never on the IOLoop)."""
from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import mongoengine
from mongoengine import Document
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, NotPrimaryError, WriteConcernError
from pymongo.uri_parser import parse_uri
from tornado.ioloop import IOLoop

from domain.errors import RETRY_AFTER, ServiceUnavailable
from models.documents import AvatarSession, GatewayToken, ProcessLease, SessionClaims, TurnReport
from observability import metrics

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
        if self.in_flight >= self.max_queued and not essential:
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

    def ping(self) -> Any:
        assert self.db is not None
        return self.db.command("ping")

    def close(self) -> None:
        self.closed = True
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
