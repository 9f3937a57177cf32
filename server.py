"""ilianaai-avatar: the avatar-session gateway. `python server.py` (or `ilianaai-avatar`) starts it."""
import argparse
import asyncio
import logging
import signal
import sys

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from clients.heygen import HeyGenClient
from clients.http import make_http_client
from clients.liveavatar import LiveAvatarClient
from clients.petya import PetyaClient
from clients.ratelimit import RateLimiter
from conf import ConfigError, load_settings
from handlers.requestlog import BatchedStreamHandler, clamp_secret_loggers, log_formatter, log_request
from handlers.routes import DEFAULT_HANDLER, admin_routes, routes
from handlers.websocket import StreamingChatRelay, move_relays
from models import metrics
from models.errors import ServiceUnavailable
from models.leases import Leases
from models.lifecycle import Lifecycle
from models.metrics import GatewayMetrics
from models.sessions import SessionStore
from models.store import Store
from models.tokens import TokenSigner
from models.turns import TurnQueue

log = logging.getLogger("gateway")


class Gateway:
    """Everything the handlers share, built once per process: settings, the one curl client, the MongoDB store,
    the upstream clients and the session lifecycle. Handlers receive it through initialize(). With ADMIN_ADDRESS
    set, /metrics, /readyz and /healthz are served by a second HTTPServer of its own there, and not on PORT."""

    def __init__(self, settings):
        clamp_secret_loggers()
        self.settings = settings
        self.http = make_http_client(settings)
        self.store = Store(settings.mongodb_uri, settings.db_workers, timeout=settings.db_timeout,
                           write_concern=settings.db_write_concern)
        self.sessions = SessionStore(self.store, token_ttl=settings.token_ttl, session_ttl=settings.session_max_age)
        self.tokens = TokenSigner(settings.gateway_secret)
        self.leases = Leases(self.store, settings.lease_heartbeat, settings.lease_ttl)
        self.turns = TurnQueue(self.sessions, settings.turn_queue_max)
        self.metrics = GatewayMetrics(self)  # this gateway's registry (models.metrics)
        self.petya = PetyaClient(self.http, settings.petya_base_url, settings.petya_auth_token,
                                 settings.petya_config_ttl)
        self.heygen = HeyGenClient(self.http, settings.heygen_base_url, settings.heygen_api_key)
        self.liveavatar = LiveAvatarClient(
            self.http, settings.liveavatar_base_url, settings.liveavatar_api_key,
            RateLimiter(settings.liveavatar_rate_limit, processes=lambda: self.leases.live_processes,
                        on_refused=lambda endpoint: metrics.RATE_LIMITED.labels(upstream="liveavatar").inc()),
            browser_wait=settings.rate_limit_wait)
        self.lifecycle = Lifecycle(self.sessions, {"heygen": self.heygen, "liveavatar": self.liveavatar},
                                   self.petya, settings, self.turns, self.leases,
                                   on_lease_lost=lambda process_id: move_relays(self, process_id))
        self.app = tornado.web.Application(
            routes(self), default_handler_class=DEFAULT_HANDLER, default_handler_args={"gateway": self},
            log_function=log_request, compress_response=False,
            websocket_ping_interval=settings.ws_ping_interval or None,
            websocket_ping_timeout=settings.ws_ping_interval or None,
            websocket_max_message_size=settings.ws_max_message_size)
        self.server = None
        self.port = None
        self.admin_server = None
        self.admin_port = None
        self.stopped = False

    async def start(self, sockets=None):
        """Connect to MongoDB, take this process's lease, resume pending flushes, and serve on `sockets` (else
        HOST:PORT)."""
        self.store.connect()
        await self.store.ensure_indexes()
        await self.leases.take(self.leases.process_id)
        self.lifecycle.start()
        # Every handler that can receive a body streams it in and enforces MAX_BODY_SIZE itself (a JSON 413 before
        # the body is read), lifting tornado's per-request cap, whose bare 400 would follow its answer; the
        # WebSocket relay, which buffers, gets no body (handlers/routes.py). The cap here is a backstop.
        # idle_connection_timeout is tornado's header timeout: waiting for, and reading, each request's headers.
        settings = self.settings
        self.server = HTTPServer(self.app, xheaders=settings.xheaders, max_body_size=settings.max_body_size,
                                 idle_connection_timeout=settings.http_idle_timeout,
                                 body_timeout=settings.http_body_timeout, max_header_size=settings.http_max_header_size)
        sockets = sockets or bind_sockets(self.settings.port, self.settings.host)
        self.server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        if settings.admin_address:
            self.start_admin(*settings.admin_address)
        return self

    def start_admin(self, host, port):
        """The operators' listener: /metrics, /readyz, /healthz (404 for anything else)."""
        app = tornado.web.Application(admin_routes(self), default_handler_class=DEFAULT_HANDLER,
                                      default_handler_args={"gateway": self}, log_function=log_request,
                                      compress_response=False)
        self.admin_server = HTTPServer(app, max_body_size=self.settings.max_body_size,
                                       idle_connection_timeout=self.settings.http_idle_timeout,
                                       body_timeout=self.settings.http_body_timeout,
                                       max_header_size=self.settings.http_max_header_size)
        sockets = bind_sockets(port, host)
        self.admin_server.add_sockets(sockets)
        self.admin_port = sockets[0].getsockname()[1]

    async def stop(self):
        """Graceful stop: no new connections, sockets closed with 1001 (going away), in-flight work drained."""
        if self.stopped:
            return
        self.stopped = True
        if self.server:
            self.server.stop()
        self.close_relays("server shutting down")
        if self.server:
            await self.server.close_all_connections()
        await self.lifecycle.close(timeout=self.settings.shutdown_timeout)
        await self.turns.close(timeout=self.settings.shutdown_timeout)
        try:
            await self.leases.release()
        except ServiceUnavailable:
            pass  # the lease expires instead, and this process's sockets count as closed then
        self.http.close()
        self.store.close()
        if self.admin_server:  # last: /readyz answered 503 (shutting down) while the rest drained
            self.admin_server.stop()
            await self.admin_server.close_all_connections()

    def close_relays(self, reason):
        """Close this gateway's sockets with 1001 (going away): their clients reconnect, here or elsewhere."""
        for relay in list(StreamingChatRelay.open_relays):
            if relay.gateway is self:
                relay.close(1001, reason)


async def serve(settings):
    gateway = Gateway(settings)
    try:
        await gateway.start()
    except ServiceUnavailable:
        print("ilianaai-avatar: MongoDB at MONGODB_URI is unreachable", file=sys.stderr)
        await gateway.stop()
        return 1
    log.info("ilianaai-avatar listening on http://%s:%s", settings.host, gateway.port)
    if gateway.admin_port:
        log.info("metrics and health on http://%s:%s (/metrics, /readyz, /healthz)", settings.admin_address[0],
                 gateway.admin_port)
    log.info("settings: %s", settings.public())
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("stopping")
    await gateway.stop()
    return 0


def configure_logging(level="INFO", log_format="text"):
    """Every logger to stdout, as text lines or JSON objects (LOG_FORMAT), secrets scrubbed either way."""
    # No format uses the thread, process or multiprocessing names: not looked up for every record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = BatchedStreamHandler(sys.stdout)
    handler.setFormatter(log_formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ilianaai-avatar", description=__doc__)
    parser.add_argument("--env-file", default=".env", help="dotenv file to read settings from (default: .env)")
    parser.add_argument("--sandbox", action="store_true",
                        help="run everything on loopback: emulated HeyGen, LiveAvatar and Petya, a local MongoDB, "
                             "and the demo console (no accounts needed)")
    args = parser.parse_args(argv)
    if args.sandbox:
        return run_in_sandbox()
    try:
        settings = load_settings(dotenv_path=args.env_file)
    except ConfigError as exc:
        print(f"ilianaai-avatar: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.event_loop == "uvloop":
        import uvloop
        return uvloop.run(serve(settings))
    return asyncio.run(serve(settings))


def run_in_sandbox():
    import os

    from sandbox.run import run_sandbox
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"), os.environ.get("LOG_FORMAT", "text").strip().lower())
    try:
        port = int(os.environ.get("PORT", "8000"))
    except ValueError:
        print("ilianaai-avatar: PORT must be a number", file=sys.stderr)
        return 2
    asyncio.run(run_sandbox(host=os.environ.get("HOST", "127.0.0.1"), port=port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
