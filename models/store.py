"""The MongoDB connection and the bounded executor every MongoEngine call runs in (never on the IOLoop)."""
import functools
from concurrent.futures import ThreadPoolExecutor

import mongoengine
from pymongo.errors import ConnectionFailure
from pymongo.uri_parser import parse_uri
from tornado.ioloop import IOLoop

from models.documents import AvatarSession, GatewayToken, TurnReport
from models.errors import ServiceUnavailable

DEFAULT_DATABASE = "ilianaai_avatar"
_users = {"count": 0, "uri": None}  # gateways sharing this process's mongoengine connection (tests run several)


class Store:
    def __init__(self, uri, workers, server_selection_timeout_ms=5000):
        self.uri = uri
        self.workers = workers
        self.server_selection_timeout_ms = server_selection_timeout_ms
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mongo")
        self.closed = False

    def connect(self):
        if _users["count"] and _users["uri"] != self.uri:
            raise RuntimeError("one process serves one MongoDB URI")
        if not _users["count"]:
            mongoengine.connect(
                db=parse_uri(self.uri)["database"] or DEFAULT_DATABASE, host=self.uri,
                maxPoolSize=self.workers, serverSelectionTimeoutMS=self.server_selection_timeout_ms,
                connectTimeoutMS=self.server_selection_timeout_ms, uuidRepresentation="standard")
            _users["uri"] = self.uri
        _users["count"] += 1

    async def ensure_indexes(self):
        await self.run(AvatarSession.ensure_indexes)
        await self.run(GatewayToken.ensure_indexes)
        await self.run(TurnReport.ensure_indexes)

    async def run(self, fn, *args, **kwargs):
        """Run a blocking MongoDB call on the executor; an unreachable database is a 503, never a 500."""
        if self.closed:
            raise ServiceUnavailable("shutting down")
        try:
            return await IOLoop.current().run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))
        except ConnectionFailure as exc:  # also server selection timeouts and lost connections
            raise ServiceUnavailable("session database unavailable") from exc

    def close(self):
        self.closed = True
        self.executor.shutdown(wait=True)
        _users["count"] -= 1
        if not _users["count"]:
            mongoengine.disconnect()
            _users["uri"] = None


def blocking(method):
    """Expose a method that calls MongoDB as a coroutine run on the store's executor (`self.store`)."""
    @functools.wraps(method)
    async def run_in_executor(self, *args, **kwargs):
        return await self.store.run(method, self, *args, **kwargs)
    return run_in_executor
