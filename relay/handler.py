"""The HeyGen streaming-chat WebSocket relay: browser <-> gateway <-> HeyGen, frames unchanged and in order.

The browser presents our session token; HeyGen gets its own. Everything that can fail happens before the browser's
handshake is answered 101, so a failure is a plain JSON error with the CORS headers, never a 101 followed by a close:
the handler authenticates the caller and checks it owns the session (4xx), records the socket on its session against
this process's lease (services/leases.py; 503 + Retry-After while MongoDB is away), then connects the upstream leg —
HeyGen's socket, or for a session HeyGen's contract serves on LiveAvatar the event socket of the process holding its
room (services/rooms.py) — answering 502 when the upstream refuses it (its status named) or cannot be reached, 504
when it does not answer in time, 503 + Retry-After while a bridged session's room changes hands. Only then the 101.
What the upstream sends between its handshake and the pairing is not lost: nothing reads its leg until a pump takes it
over (tests/gateway/test_websocket_relay.py sends a message right behind the upstream's 101, through both pumps). The
socket's close is recorded — retried until MongoDB takes it — when it ends, or when its handshake is answered with an
error after it was recorded (services/lifecycle.py).

Once both legs are open a pump moves the frames: the fast one (relay/pump.py, bytes chunk by chunk on the sockets
taken from tornado) or the plain one (relay/plain.py, message by message on tornado's public API), as RELAY_PUMP
says — plain also when this tornado lacks what the fast one needs (clients/tornado_compat.py). Either opens HeyGen's
text frames (transcript events) and the client's binary protobuf TextFrames (the SDK's default speak()), whose turns
are queued for MongoDB (relay/transcript.py) before what carried them is forwarded; audio passes unread. A leg stops
reading while the other's write buffer is full, or while the turn queue is full (backpressure).
"""
from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import HTTPTimeoutError
from tornado.websocket import WebSocketClientConnection, WebSocketHandler

from clients.tornado_compat import HANDLER_KEYS, release_response, share_keys
from domain.errors import (
    RETRY_AFTER,
    BadRequest,
    Conflict,
    Forbidden,
    GatewayError,
    NotFound,
    ServiceUnavailable,
    UnsupportedWebSocketVersion,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from domain.names import ContractName
from domain.records import SessionFacts
from handlers.base import GatewayHandlerMixin, origin_allowed
from relay import plain, pump
from relay.transcript import SocketTranscript, never, wanted_from_client, wanted_from_upstream
from services.rooms import handing_over

if TYPE_CHECKING:
    from handlers.app import Gateway

log = logging.getLogger("gateway.websocket")

# Codes that must never be sent on the wire (RFC 6455 §7.4.1) and what a relay sends instead.
_NOT_ON_WIRE = {None: 1000, 1005: 1000, 1006: 1011, 1015: 1011}


# What a relayed socket's request keeps of its headers and arguments once a pump holds it (they are never read again).
_NO_HEADERS = HTTPHeaders()
_NOTHING: Mapping[str, Any] = MappingProxyType({})


def relay_close_code(code: int | None) -> int:
    """The close code to pass on for one the other leg reported."""
    if code in _NOT_ON_WIRE:
        return _NOT_ON_WIRE[code]
    assert code is not None
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return 1011


def _reason(text: str | None) -> str:
    return (text or "")[:120]


def handshake_error(request: Any) -> GatewayError | None:
    """What is wrong with a WebSocket handshake (RFC 6455 §4.2.1), as the JSON error to answer, or None. Tornado
    would answer these in plain text; 426 names the version we speak, as the RFC asks."""
    headers = request.headers
    if headers.get("Upgrade", "").lower() != "websocket":
        return BadRequest('a WebSocket handshake needs "Upgrade: websocket"')
    if "upgrade" not in [token.strip().lower() for token in headers.get("Connection", "").split(",")]:
        return BadRequest('a WebSocket handshake needs "Connection: Upgrade"')
    if request.version != "HTTP/1.1" or not headers.get("Host"):
        return BadRequest("a WebSocket handshake needs HTTP/1.1 with a Host header")
    if headers.get("Sec-WebSocket-Version") != "13":
        return UnsupportedWebSocketVersion()
    try:
        key_ok = len(base64.b64decode(headers.get("Sec-WebSocket-Key", ""), validate=True)) == 16
    except ValueError:  # binascii.Error included
        key_ok = False
    return None if key_ok else BadRequest("missing or invalid Sec-WebSocket-Key")


class StreamingChatRelay(GatewayHandlerMixin, WebSocketHandler):
    """One browser's socket and its upstream leg. (Its own attributes in slots, tornado's in the class's shared key
    table: one per relayed socket, thousands of them.)"""
    __slots__ = ("counts", "gateway", "left", "log_session_id", "plain_task", "process_id", "refusal", "session",
                 "socket_id", "transcript", "upgraded", "upstream")
    gateway: Gateway

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.log_session_id: str | None = None  # the session the request is about, for the access line
        self.plain_task: asyncio.Task[None] | None = None  # the plain pump's upstream reader, while it runs
        self.session: SessionFacts | None = None
        self.upstream: WebSocketClientConnection | None = None
        self.transcript: SocketTranscript | None = None
        self.socket_id: str | None = None  # set once the socket is recorded on the session
        self.process_id: str | None = None  # the lease it is recorded under
        self.upgraded = False  # the 101 is out (open() has run)
        self.left = False  # the client's connection has closed, or the socket was forgotten (on_close has run)
        self.refusal: GatewayError | None = None  # close() before the upgrade: answered instead of the 101
        self.counts = gateway.metrics.relay  # observability.metrics.RelayCounts

    @property
    def fast(self) -> bool:
        """Which pump moves this socket's frames: the fast one, or the plain one."""
        return self.gateway.fast_relay

    def check_origin(self, origin: str) -> bool:
        return origin_allowed(self.gateway.settings.cors_origins, origin)

    def options(self, *args: Any, **kwargs: Any) -> None:
        """A preflight answered like the REST routes' (browsers send none before a WebSocket; tools may)."""
        self.set_cors_headers()
        self.set_status(204)
        self.finish()

    def get_compression_options(self) -> None:
        return None  # frames are relayed as they come; audio does not compress

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Authenticate and authorize, record the socket and connect its upstream leg, all before the upgrade: a bad
        caller gets a plain JSON 4xx, an upstream that refuses or is away a JSON 502/503/504, never a 101 and a
        close."""
        if (error := handshake_error(self.request)) is not None:
            raise error
        origin = self.request.headers.get("Origin")
        if origin and not self.check_origin(origin):
            raise Forbidden("origin not allowed")
        session_id = self.get_query_argument("session_id", "")
        token = self.get_query_argument("session_token", "")
        if not session_id or not token:
            raise BadRequest("session_id and session_token are required")
        if len(self.gateway.relays) >= self.gateway.settings.max_sockets:  # MAX_SOCKETS: the bound, stated
            raise ServiceUnavailable("this gateway process holds all the sockets it may (MAX_SOCKETS): try again",
                                     retry_after=RETRY_AFTER)
        self.log_session_id = session_id
        app = self.gateway
        customer = await app.customers.authenticate(None, token, contract=ContractName.HEYGEN)
        session = await app.sessions.owned(session_id, customer, ContractName.HEYGEN, touch=False)
        if session.status == "ended":
            raise NotFound("session not found")
        self.session = app.sessions.remember(session)  # its facts: the document is not kept per socket
        if not self.session.bridged and self.session.upstream_token is None:
            # Opened with the API key alone: HeyGen serves a session's socket only with the session token its
            # create_token minted (it refuses it, 401), so the browser is told what to do instead, before any call.
            raise Conflict("this session was opened without a session token: HeyGen serves its socket only to a "
                           "session opened with a token from streaming.create_token")
        self.log_session_id = self.session.session_id  # the same string, not a copy of it per socket
        # A bridged session's events are the room agent's translation: their words are recorded where it hears them.
        self.transcript = SocketTranscript(self.session.session_id, app.turns, app.sessions.clock,
                                           hears_upstream=not self.session.bridged)
        if self.left or not await self.record_open():
            return  # the client left meanwhile (its close recorded, once its open was)
        try:
            self.upstream = await self.connect_upstream()
        except GatewayError:
            self.on_close()  # its close recorded: the client may retry within the grace period
            raise
        if self.left:  # the client left while the upstream leg was being connected (on_close has run)
            self.upstream.close(1000)
            return
        if self.refusal is not None:  # closed by the gateway meanwhile: shutting down, or its lease lost
            self.on_close()
            raise self.refusal
        await super().get(*args, **kwargs)  # the 101, then open()

    async def record_open(self) -> bool:
        """Record the socket on its session against this process's lease (services/leases.py), before its upstream is
        reached: from now on the reaper counts it open (a grace period running out, or the idle timeout, does not
        end the session while its upstream leg is being connected), and a MongoDB away is a 503 the client reads.
        False when the client left meanwhile (its close is recorded); ServiceUnavailable to answer."""
        app, session = self.gateway, self.session
        assert session is not None
        # 64 random bits: unique among a session's sockets, and 16 bytes less in each record than a UUID's hex
        socket_id, process_id = secrets.token_hex(8), app.leases.process_id
        await app.sessions.socket_opened(session.session_id, socket_id, process_id)
        self.socket_id, self.process_id = socket_id, process_id
        app.relays.add(self)
        self.counts.sockets += 1
        if self.left:  # the client left while we were recording it
            self.on_close()
            return False
        if process_id != app.leases.process_id:  # recorded under a lease lost meanwhile: the client comes again
            self.on_close()
            raise ServiceUnavailable("reconnect: gateway lease renewed", retry_after=RETRY_AFTER)
        return True

    async def connect_upstream(self) -> WebSocketClientConnection:
        """The upstream leg, connected: HeyGen's socket, or for a bridged session the event socket of the process
        holding its room. Until a pump takes it over nothing reads it (the fast pump's leg waits for its pairing; the
        plain pump's tornado queues a message and stops reading), so what it sends before the browser's side is open
        waits there. A GatewayError to answer the browser's handshake with when it cannot be connected."""
        app, session = self.gateway, self.session
        assert session is not None
        settings = app.settings
        if session.bridged:  # HeyGen's events come from the gateway's room agent, wherever it is
            try:
                address = await app.rooms.socket_address(session)  # the agent joins here when nobody holds the room
            except GatewayError as exc:  # the room could not be joined (502); MongoDB away (503)
                log.warning("no room events for the socket of %s: %s", session.session_id, exc.message)
                raise
            if address is None:  # its holder is not live: a hand-over is under way
                raise handing_over()
            url, headers = app.rooms.socket_url(address, session.session_id)
            upstream = "the gateway process holding the session's room"
        else:
            query = [(k, v.decode()) for k, values in self.request.query_arguments.items() for v in values]
            url, headers = app.heygen.websocket_url(session.session_id, session.upstream_token, query), {}
            upstream = "HeyGen"
        request = HTTPRequest(url, headers=headers, connect_timeout=settings.upstream_connect_timeout,
                              request_timeout=settings.upstream_request_timeout)
        ping, size = settings.ws_ping_interval or None, settings.ws_max_message_size
        try:
            if self.fast:
                return cast(WebSocketClientConnection,
                            await pump.pump_connect(request, self.upstream_closed, ping, ping, size))
            return await plain.connect(request, ping, ping, size)
        except HTTPTimeoutError:  # no TCP connection within the connect timeout, or no answer within the request's
            log.warning("%s's socket of %s timed out", upstream, session.session_id)
            raise UpstreamTimeout(f"{upstream} did not answer the socket's handshake in time") from None
        except HTTPClientError as exc:  # it answered, not 101 (599: it closed the connection without an answer)
            log.warning("%s refused the socket of %s: %s", upstream, session.session_id, exc.code)
            if session.bridged and exc.code in (503, 599):  # the holder lost the room, or is going away
                raise handing_over() from None
            if exc.code == 599:
                raise UpstreamUnavailable(f"{upstream} closed the connection without answering the socket's "
                                          "handshake") from None
            raise UpstreamUnavailable(f"{upstream} refused the socket (HTTP {exc.code})",
                                      details={"upstreamStatus": exc.code}) from None
        except Exception as exc:  # refused, unreachable, an answer that is no WebSocket's
            log.warning("%s's socket of %s failed: %s", upstream, session.session_id, type(exc).__name__)
            if session.bridged:  # its holder is going away: commands are answered the same (services/rooms.py)
                raise handing_over() from None
            raise UpstreamUnavailable(f"{upstream} unreachable for the socket") from None

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close the browser's socket; before the upgrade (the gateway shutting down, its lease lost), the handshake
        is answered 503 + Retry-After instead of the 101."""
        if not self.upgraded:
            if self.refusal is None:
                self.refusal = ServiceUnavailable(reason or "the gateway is closing the socket",
                                                  retry_after=RETRY_AFTER)
            return
        super().close(code, reason)

    def get_websocket_protocol(self) -> Any:
        return pump.server_protocol(self) if self.fast else super().get_websocket_protocol()

    async def open(self, *args: Any, **kwargs: Any) -> None:
        """The 101 is out and both legs are open: a pump takes them over, what the upstream sent meanwhile first."""
        self.upgraded = True
        upstream, session, transcript = self.upstream, self.session, self.transcript
        assert upstream is not None and session is not None and transcript is not None
        if not self.fast:
            self.plain_task = plain.relay_upstream(self, upstream, transcript, self.counts.upstream)
            self.forget_handshake()
            return
        try:
            await pump.pair(cast(pump.PumpProtocol, self.ws_connection),
                            cast(pump.PumpProtocol, upstream.protocol),
                            inspect_client=wanted_from_client,
                            inspect_upstream=never if session.bridged else wanted_from_upstream,
                            on_client_messages=transcript.from_client,
                            on_upstream_messages=transcript.from_upstream,
                            client_tally=self.counts.client, upstream_tally=self.counts.upstream)
        except StreamClosedError:  # either side left just now: closing the other ends both
            upstream.close(1000)
            self.close(1011, "upstream connection failed")
            return
        self.forget_handshake()

    def forget_handshake(self) -> None:
        """Once a pump holds both legs, drop what only the handshake needed: kilobytes per socket otherwise kept as
        long as it is open. The request's headers, parsed query and the HTTP connection it came on (and its
        IOStream); its method, uri, path and times stay, for log lines. The 101's headers and buffers, the handler's
        arguments, and tornado's template namespace (dropped at the close otherwise: RequestHandler._break_cycles).
        The arguments left are read-only (a write would fail loudly); the headers left, one empty set for all sockets
        (nothing writes a request's headers)."""
        request = self.request
        request.server_connection = request.connection = None
        request.headers = _NO_HEADERS
        request.query = ""
        request.arguments = request.query_arguments = request.body_arguments = _NOTHING
        request.files = _NOTHING
        self.path_args, self.path_kwargs, self.open_kwargs = (), _NOTHING, _NOTHING  # type: ignore[assignment]
        release_response(self)
        self.ui = None  # type: ignore[assignment]

    def on_message(self, message: str | bytes) -> Any:
        """The plain pump's client messages (a fast-pumped leg that never got paired gets here too: nothing to do)."""
        if not self.fast and self.upstream is not None and self.transcript is not None:
            return plain.client_message(message, self.upstream, self.transcript, self.counts.client)
        return None

    def upstream_closed(self) -> None:
        """HeyGen's leg has closed: close the browser's with HeyGen's code."""
        upstream = self.upstream
        if self.ws_connection is not None and upstream is not None:
            self.close(relay_close_code(upstream.close_code), _reason(upstream.close_reason))

    def on_close(self) -> None:
        """The browser's socket has closed, or (tornado calls this too) its connection before the upgrade: the upstream
        leg is closed and the socket's close recorded. Called once more by get() itself when it answers an error."""
        self.left = True
        app = self.gateway
        if not app.relays.discard(self):
            return  # never recorded, or already closed
        self.counts.sockets -= 1
        if self.upstream is not None:
            self.upstream.close(relay_close_code(self.close_code), _reason(self.close_reason))
        assert self.session is not None and self.transcript is not None and self.socket_id is not None
        session_id, closed_at = self.session.session_id, app.sessions.clock()
        for turn in self.transcript.drain():  # utterances cut off mid-way are kept
            app.background.spawn(app.turns.put(session_id, turn))
        # The sweep ends the session if no socket reopens within the grace period.
        app.lifecycle.socket_closed(session_id, self.socket_id, closed_at)


share_keys(StreamingChatRelay, HANDLER_KEYS)
