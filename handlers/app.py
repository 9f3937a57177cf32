"""The composition root: `Gateway`, the application object, builds every part of one gateway process once — settings,
the one curl client, MongoDB and its repositories, the providers, the services, the relay's registry, metrics, the
route table — and serves it. Handlers reach their collaborators through it (`self.gateway`, passed by
`initialize()`). With ADMIN_ADDRESS set, /metrics, /readyz and /healthz are served by a second HTTPServer of its own
there, and not on PORT."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import tornado.web
from tornado.httpclient import AsyncHTTPClient
from tornado.netutil import bind_sockets

from clients import tornado_compat
from clients.heygen import HeyGenClient
from clients.http import make_http_client
from clients.liveavatar import LiveAvatarClient
from clients.petya import PetyaClient
from clients.provider import Provider
from conf import Settings
from domain.errors import ServiceUnavailable
from domain.names import ProviderName
from domain.tokens import TokenSigner
from handlers import admin, demo, heygen, internal, liveavatar, openapi, operations, reports
from handlers.base import NotFoundHandler
from handlers.contracts import Contract, admin_table, route_table
from handlers.linger import LingeringHTTPServer
from models.claims import ClaimRepository
from models.leases import LeaseRepository
from models.sessions import SessionRepository
from models.store import Store
from models.tokens import TokenRepository
from models.turns import TurnRepository
from observability import metrics
from observability.logs import clamp_secret_loggers, log_request
from observability.metrics import GatewayMetrics
from relay.registry import OpenRelays
from services.background import Background
from services.customers import Customers
from services.erasure import Erasure
from services.heygen_contract import HeyGenContract, HeyGenOnHeyGen
from services.heygen_on_liveavatar import HeyGenOnLiveAvatar
from services.leases import Leases
from services.lifecycle import Lifecycle
from services.liveavatar_contract import LiveAvatarContract, LiveAvatarOnLiveAvatar
from services.ratelimit import RateLimiter
from services.rooms import RoomAgents
from services.sessions import ACTIVITY_FLUSH, Sessions
from services.transcripts import Transcripts
from services.turns import TurnQueue
from services.usage import Usage

log = logging.getLogger("gateway")

# What the gateway serves, in matching order (handlers/contracts.py).
CONTRACTS: tuple[Contract, ...] = (heygen.CONTRACT, reports.CONTRACT, liveavatar.CONTRACT, operations.CONTRACT,
                                   admin.CONTRACT, internal.CONTRACT, demo.CONTRACT)


@dataclass(eq=False)
class Gateway:
    settings: Settings
    http: AsyncHTTPClient
    store: Store
    background: Background
    sessions: Sessions
    customers: Customers
    turns: TurnQueue
    leases: Leases
    petya: PetyaClient
    heygen: HeyGenClient
    liveavatar: LiveAvatarClient
    providers: dict[ProviderName, Provider]
    lifecycle: Lifecycle
    heygen_contract: HeyGenContract
    liveavatar_contract: LiveAvatarContract
    transcripts: Transcripts
    rooms: RoomAgents
    usage: Usage
    erasure: Erasure
    relays: OpenRelays
    metrics: GatewayMetrics
    fast_relay: bool  # the relay's fast pump (relay/pump.py), else the plain one (relay/plain.py)
    contracts: tuple[Contract, ...] = CONTRACTS
    app: tornado.web.Application = field(init=False)
    server: LingeringHTTPServer | None = None
    port: int | None = None
    admin_server: LingeringHTTPServer | None = None
    admin_port: int | None = None
    stopped: bool = False
    _openapi: bytes | None = None

    @classmethod
    def build(cls, settings: Settings) -> Gateway:
        clamp_secret_loggers()
        http = make_http_client(settings)
        store = Store(settings.mongodb_uri, settings.db_workers, timeout=settings.db_timeout,
                      write_concern=settings.db_write_concern)
        records = SessionRepository(store)
        signer = TokenSigner(settings.gateway_secret)
        sessions = Sessions(records, TokenRepository(store), TurnRepository(store), ClaimRepository(store), signer,
                            token_ttl=settings.token_ttl, session_ttl=settings.session_max_age,
                            max_concurrent=settings.max_concurrent_sessions,
                            claim_ttl=2 * settings.upstream_request_timeout + 5)
        turns = TurnQueue(sessions.turn_reports, settings.turn_queue_max)
        leases = Leases(LeaseRepository(store), settings.lease_heartbeat, settings.lease_ttl,
                        pending_since=turns.pending_since)
        petya = PetyaClient(http, settings.petya_base_url, settings.petya_auth_token, settings.petya_config_ttl)
        heygen_client = HeyGenClient(http, settings.heygen_base_url, settings.heygen_api_key)
        liveavatar_client = LiveAvatarClient(
            http, settings.liveavatar_base_url, settings.liveavatar_api_key,
            RateLimiter(settings.liveavatar_rate_limit, processes=lambda: leases.live_processes,
                        on_refused=lambda endpoint: metrics.RATE_LIMITED.labels(upstream="liveavatar").inc()),
            browser_wait=settings.rate_limit_wait)
        providers: dict[ProviderName, Provider] = {ProviderName.HEYGEN: heygen_client,
                                                   ProviderName.LIVEAVATAR: liveavatar_client}
        background = Background()
        rooms = RoomAgents(records, leases, turns, background, http, settings.gateway_secret,
                           join_timeout=settings.room_join_timeout, call_timeout=settings.upstream_request_timeout)
        lifecycle = Lifecycle(sessions, providers, petya, settings, turns, leases, background, rooms)
        lifecycle.erasure = erasure = Erasure(
            records, sessions.turn_reports, providers,
            lambda session_id: lifecycle.end(session_id, "erased", hand_off=False), settings.transcript_retention_days,
            second_pass=settings.lease_ttl + settings.sweep_interval, clock=sessions.clock)
        relays = OpenRelays(sessions)
        leases.followers += [relays, rooms]
        missing = tornado_compat.missing()
        if settings.relay_pump == "fast" and missing:
            log.warning("RELAY_PUMP=fast, but this tornado lacks %s: the relay uses its plain pump",
                        ", ".join(missing))
        gateway = cls(
            settings=settings, http=http, store=store, background=background, sessions=sessions,
            customers=Customers(settings.gateway_secret, signer, sessions, petya), turns=turns, leases=leases,
            petya=petya, heygen=heygen_client, liveavatar=liveavatar_client, providers=providers,
            lifecycle=lifecycle,
            heygen_contract=HeyGenContract(
                {ProviderName.HEYGEN: HeyGenOnHeyGen(heygen_client, sessions, rooms),
                 ProviderName.LIVEAVATAR: HeyGenOnLiveAvatar(liveavatar_client, sessions, rooms, lifecycle)},
                sessions, turns, lifecycle,
                default_provider=ProviderName(settings.heygen_contract_provider)),
            liveavatar_contract=LiveAvatarContract(
                {ProviderName.LIVEAVATAR: LiveAvatarOnLiveAvatar(liveavatar_client, sessions, rooms)}, sessions,
                lifecycle),
            transcripts=Transcripts(sessions, turns), rooms=rooms, usage=Usage(records, sessions.clock),
            erasure=erasure, relays=relays,
            metrics=GatewayMetrics(records.count_live, turns, room_agents=lambda: len(rooms)),
            fast_relay=settings.relay_pump == "fast" and not missing)
        gateway.app = gateway.application(route_table(gateway.contracts, gateway.deps(),
                                                      admin_apart=bool(settings.admin_address)))
        return gateway

    def deps(self) -> dict[str, Any]:
        """What every handler's initialize() is given."""
        return {"gateway": self}

    def application(self, rules: list[tuple[Any, ...]]) -> tornado.web.Application:
        settings = self.settings
        return tornado.web.Application(
            rules, default_handler_class=NotFoundHandler, default_handler_args=self.deps(),
            log_function=log_request, compress_response=False,
            websocket_ping_interval=settings.ws_ping_interval or None,
            websocket_ping_timeout=settings.ws_ping_interval or None,
            websocket_max_message_size=settings.ws_max_message_size)

    def openapi_document(self) -> bytes:
        """The OpenAPI document of what this gateway serves, serialized once (on the first request)."""
        if self._openapi is None:
            self._openapi = openapi.serialize(openapi.build(self.contracts))
        return self._openapi

    def http_server(self, app: tornado.web.Application) -> LingeringHTTPServer:
        # Every handler that can receive a body streams it in and enforces MAX_BODY_SIZE itself (a JSON 413 before
        # the body is read), lifting tornado's per-request cap, whose bare 400 would follow its answer; the
        # WebSocket relay, which buffers, gets no body (handlers/contracts.py). The cap here is a backstop.
        # A connection whose body was answered unread closes lingeringly (handlers/linger.py), so the client reads
        # the answer. idle_connection_timeout is tornado's header timeout: waiting for, and reading, each request's
        # headers.
        settings = self.settings
        return LingeringHTTPServer(app, xheaders=settings.xheaders, max_body_size=settings.max_body_size,
                          idle_connection_timeout=settings.http_idle_timeout,
                          body_timeout=settings.http_body_timeout, max_header_size=settings.http_max_header_size)

    async def start(self, sockets: list[Any] | None = None) -> Gateway:
        """Connect to MongoDB, take this process's lease, resume pending flushes, and serve on `sockets` (else
        HOST:PORT)."""
        self.store.connect()
        await self.store.ensure_indexes()
        await self.sessions.repository.backfill()  # sessions of an older version: their live-only fields
        self.store.start_probe()  # /readyz's view of MongoDB (handlers/operations.py)
        sockets = sockets or bind_sockets(self.settings.port, self.settings.host)
        self.port = sockets[0].getsockname()[1]
        self.leases.address = self.settings.internal_url or f"http://127.0.0.1:{self.port}"
        await self.leases.take()
        self.background.every(self.settings.lease_heartbeat, self.leases.beat)
        self.background.every(min(ACTIVITY_FLUSH, self.settings.session_idle_timeout / 10), self.flush_touches)
        self.lifecycle.start()
        self.background.start()
        self.server = self.http_server(self.app)
        self.server.add_sockets(sockets)
        if self.settings.admin_address:
            self.start_admin(*self.settings.admin_address)
        return self

    def start_admin(self, host: str, port: int) -> None:
        """The operators' listener: /metrics, /readyz, /healthz (404 for anything else)."""
        self.admin_server = LingeringHTTPServer(self.application(admin_table(self.contracts, self.deps())),
                                       max_body_size=self.settings.max_body_size,
                                       idle_connection_timeout=self.settings.http_idle_timeout,
                                       body_timeout=self.settings.http_body_timeout,
                                       max_header_size=self.settings.http_max_header_size)
        sockets = bind_sockets(port, host)
        self.admin_server.add_sockets(sockets)
        self.admin_port = sockets[0].getsockname()[1]

    async def flush_touches(self) -> None:
        """The hot calls' activity touches, coalesced: one bulk write (Sessions.flush_touches)."""
        try:
            await self.sessions.flush_touches()
        except ServiceUnavailable:
            pass  # kept for the next flush; the idle reaper allows minutes, not seconds

    async def stop(self) -> None:
        """Graceful stop: no new connections, sockets closed with 1001 (going away), in-flight work drained."""
        if self.stopped:
            return
        self.stopped = True
        if self.server:
            self.server.stop()
        self.relays.close_all("server shutting down")
        await self.rooms.close()  # another process takes their rooms over at once (their holder is released)
        if self.server:
            await self.server.close_all_connections()
        self.background.stop_periodic()
        await self.flush_touches()
        await self.background.close(timeout=self.settings.shutdown_timeout)
        await self.turns.close(timeout=self.settings.shutdown_timeout)
        try:
            await self.leases.release()
        except ServiceUnavailable:
            pass  # the lease expires instead, and this process's sockets count as closed then
        self.http.close()
        await self.store.close_reads()
        self.store.close()
        if self.admin_server:  # last: /readyz answered 503 (shutting down) while the rest drained
            self.admin_server.stop()
            await self.admin_server.close_all_connections()
