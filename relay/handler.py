"""The HeyGen streaming-chat WebSocket relay: browser <-> gateway <-> HeyGen, frames unchanged and in order.

The browser presents our session token; HeyGen gets its own. Before the upgrade the handler authenticates the caller
and checks it owns the session (a plain JSON 4xx otherwise). Once upgraded, the socket is recorded on its session
against this process's lease (services/leases.py) before HeyGen is reached, and its close is recorded — retried until
MongoDB takes it — when it ends (services/lifecycle.py).

Once both legs are open a pump moves the frames: the fast one (relay/pump.py, bytes chunk by chunk on the sockets
taken from tornado) or the plain one (relay/plain.py, message by message on tornado's public API), as RELAY_PUMP
says — plain also when this tornado lacks what the fast one needs (clients/tornado_compat.py). Either opens HeyGen's
text frames (transcript events) and the client's binary protobuf TextFrames (the SDK's default speak()), whose turns
are queued for MongoDB (relay/transcript.py) before what carried them is forwarded; audio passes unread. A leg stops
reading while the other's write buffer is full, or while the turn queue is full (backpressure).
"""
from __future__ import annotations

import base64
import logging
import uuid
from typing import TYPE_CHECKING, Any, cast

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClientConnection, WebSocketHandler

from domain.errors import BadRequest, Forbidden, GatewayError, NotFound, ServiceUnavailable, UnsupportedWebSocketVersion
from domain.names import ContractName
from domain.records import SessionFacts
from handlers.base import GatewayHandlerMixin, origin_allowed
from relay import plain, pump
from relay.transcript import SocketTranscript, never, wanted_from_client, wanted_from_upstream

if TYPE_CHECKING:
    from handlers.app import Gateway

log = logging.getLogger("gateway.websocket")

# Codes that must never be sent on the wire (RFC 6455 §7.4.1) and what a relay sends instead.
_NOT_ON_WIRE = {None: 1000, 1005: 1000, 1006: 1011, 1015: 1011}


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
    gateway: Gateway

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.session: SessionFacts | None = None
        self.upstream: WebSocketClientConnection | None = None
        self.transcript: SocketTranscript | None = None
        self.socket_id: str | None = None  # set once the socket is recorded on the session
        self.process_id: str | None = None  # the lease it is recorded under
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
        """Authenticate and authorize before the upgrade, so a bad caller gets a plain JSON 4xx."""
        if (error := handshake_error(self.request)) is not None:
            raise error
        origin = self.request.headers.get("Origin")
        if origin and not self.check_origin(origin):
            raise Forbidden("origin not allowed")
        session_id = self.get_query_argument("session_id", "")
        token = self.get_query_argument("session_token", "")
        if not session_id or not token:
            raise BadRequest("session_id and session_token are required")
        self.log_session_id = session_id
        app = self.gateway
        customer = await app.customers.authenticate(None, token, contract=ContractName.HEYGEN)
        session = await app.sessions.owned(session_id, customer, ContractName.HEYGEN, touch=False)
        if session.status == "ended":
            raise NotFound("session not found")
        self.session = app.sessions.remember(session)  # its facts: the document is not kept per socket
        # A bridged session's events are the room agent's translation: their words are recorded where it hears them.
        self.transcript = SocketTranscript(session_id, app.turns, app.sessions.clock,
                                           hears_upstream=not self.session.bridged)
        await super().get(*args, **kwargs)

    def get_websocket_protocol(self) -> Any:
        return pump.server_protocol(self) if self.fast else super().get_websocket_protocol()

    async def open(self, *args: Any, **kwargs: Any) -> None:
        app, session = self.gateway, self.session
        assert session is not None and self.transcript is not None
        socket_id, process_id = uuid.uuid4().hex, app.leases.process_id
        try:
            await app.sessions.socket_opened(session.session_id, socket_id, process_id)
        except ServiceUnavailable:
            return self.close(1013, "session database unavailable; try again later")
        self.socket_id = socket_id
        app.relays.add(self)
        self.counts.sockets += 1
        if self.ws_connection is None:  # the client left while we were recording it
            return self.on_close()
        self.process_id = process_id
        if process_id != app.leases.process_id:  # recorded under a lease lost meanwhile
            return self.close(1001, "reconnect: gateway lease renewed")
        settings = app.settings
        if session.bridged:  # HeyGen's events come from the gateway's room agent, wherever it is
            try:
                address = await app.rooms.socket_address(session)
            except GatewayError as exc:  # the room could not be joined; MongoDB away
                log.warning("no room events for the socket of %s: %s", session.session_id, exc.message)
                return self.close(1011, _reason(exc.message))
            if address is None:
                return self.close(1013, "the session's room is being handed over; try again")
            url, headers = app.rooms.socket_url(address, session.session_id)
        else:
            query = [(k, v.decode()) for k, values in self.request.query_arguments.items() for v in values]
            url, headers = app.heygen.websocket_url(session.session_id, session.upstream_token, query), {}
        request = HTTPRequest(url, headers=headers, connect_timeout=settings.upstream_connect_timeout,
                              request_timeout=settings.upstream_request_timeout)
        ping, size = settings.ws_ping_interval or None, settings.ws_max_message_size
        try:
            if self.fast:
                self.upstream = await pump.pump_connect(request, self.upstream_closed, ping, ping, size)
            else:
                self.upstream = await plain.connect(request, ping, ping, size)
        except HTTPClientError as exc:
            log.warning("HeyGen refused the socket of %s: %s", session.session_id, exc.code)
            return self.close(1011, _reason(f"upstream refused the connection ({exc.code})"))
        except Exception as exc:  # refused, unreachable, timed out
            log.warning("HeyGen socket of %s failed: %s", session.session_id, type(exc).__name__)
            return self.close(1011, "upstream connection failed")
        if self.ws_connection is None:  # the client left while we were connecting
            self.upstream.close(1000)
            return
        if not self.fast:
            plain.relay_upstream(self, self.upstream, self.transcript, self.counts.upstream)
            return
        try:
            await pump.pair(cast(pump.PumpProtocol, self.ws_connection),
                            cast(pump.PumpProtocol, self.upstream.protocol),
                            inspect_client=wanted_from_client,
                            inspect_upstream=never if session.bridged else wanted_from_upstream,
                            on_client_messages=self.transcript.from_client,
                            on_upstream_messages=self.transcript.from_upstream,
                            client_tally=self.counts.client, upstream_tally=self.counts.upstream)
        except StreamClosedError:  # either side left just now: closing the other ends both
            self.upstream.close(1000)
            self.close(1011, "upstream connection failed")
            return
        self.request.server_connection = None  # the HTTP connection the handshake came on (and its IOStream)

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
