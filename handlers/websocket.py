"""The HeyGen streaming-chat WebSocket relay: browser <-> gateway <-> HeyGen, frames unchanged and in order.

The browser presents our session token; HeyGen gets its own. Text frames from HeyGen are read on the way through
for transcript events, and the client's binary protobuf TextFrames (the SDK's default speak()) for the user's words;
their turns are queued for MongoDB (models.turns). Audio frames pass unread. Each leg awaits the other's write,
so a slow reader slows its writer (backpressure) instead of growing a buffer.

Each open socket is recorded on its session against this process's lease (models.leases) before HeyGen is
reached, and its close is recorded — retried until MongoDB takes it — when it ends.

Relayed frames and bytes are counted with plain integer additions on the gateway's RelayCounts (models.metrics),
read at scrape time: a few tens of nanoseconds per frame.
"""
import base64
import json
import logging
import uuid

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClosedError, WebSocketHandler, websocket_connect

from clients.pipecat import text_of
from handlers.base import GatewayHandlerMixin, authenticate, origin_allowed, owned_session
from models.errors import BadRequest, Forbidden, GatewayError, NotFound, ServiceUnavailable
from models.transcript import ChunkJoiner, new_turn

log = logging.getLogger("gateway.websocket")

# Codes that must never be sent on the wire (RFC 6455 §7.4.1) and what a relay sends instead.
_NOT_ON_WIRE = {None: 1000, 1005: 1000, 1006: 1011, 1015: 1011}


def relay_close_code(code):
    """The close code to pass on for one the other leg reported."""
    if code in _NOT_ON_WIRE:
        return _NOT_ON_WIRE[code]
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return 1011


def _reason(text):
    return (text or "")[:120]


def handshake_error(request):
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
        error = GatewayError("unsupported Sec-WebSocket-Version: use 13", status=426)
        error.headers = {"Sec-WebSocket-Version": "13"}
        return error
    try:
        key_ok = len(base64.b64decode(headers.get("Sec-WebSocket-Key", ""), validate=True)) == 16
    except ValueError:  # binascii.Error included
        key_ok = False
    return None if key_ok else BadRequest("missing or invalid Sec-WebSocket-Key")


class StreamingChatRelay(GatewayHandlerMixin, WebSocketHandler):
    open_relays = set()  # this process's live relays, closed with 1001 on shutdown

    def initialize(self, gateway):
        self.gateway = gateway
        self.session = None
        self.upstream = None
        self.joiner = ChunkJoiner()
        self.socket_id = None  # set once the socket is recorded on the session
        self.process_id = None  # the lease it is recorded under
        self.counts = gateway.metrics.relay  # models.metrics.RelayCounts

    def check_origin(self, origin):
        return origin_allowed(self.gateway.settings.cors_origins, origin)

    def options(self, *args, **kwargs):
        """A preflight answered like the REST routes' (browsers send none before a WebSocket; tools may)."""
        self.set_cors_headers()
        self.set_status(204)
        self.finish()

    def get_compression_options(self):
        return None  # frames are relayed as they come; audio does not compress

    async def get(self, *args, **kwargs):
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
        customer = await authenticate(self.gateway, None, token, provider="heygen")
        self.session = await owned_session(self.gateway, session_id, customer, provider="heygen", touch=False)
        if self.session.status == "ended":
            raise NotFound("session not found")
        await super().get(*args, **kwargs)

    async def open(self, *args, **kwargs):
        settings, session_id = self.gateway.settings, self.session.session_id
        socket_id, process_id = uuid.uuid4().hex, self.gateway.leases.process_id
        try:
            await self.gateway.sessions.socket_opened(session_id, socket_id, process_id)
        except ServiceUnavailable:
            return self.close(1013, "session database unavailable; try again later")
        self.socket_id = socket_id
        self.open_relays.add(self)
        self.counts.sockets += 1
        if self.ws_connection is None:  # the client left while we were recording it
            return self.on_close()
        self.process_id = process_id
        if process_id != self.gateway.leases.process_id:  # recorded under a lease lost meanwhile
            return self.close(1001, "reconnect: gateway lease renewed")
        query = [(k, v.decode()) for k, values in self.request.query_arguments.items() for v in values]
        url = self.gateway.heygen.websocket_url(session_id, self.session.upstream_token, query)
        try:
            self.upstream = await websocket_connect(
                HTTPRequest(url, connect_timeout=settings.upstream_connect_timeout,
                            request_timeout=settings.upstream_request_timeout),
                ping_interval=settings.ws_ping_interval or None,
                ping_timeout=settings.ws_ping_interval or None,
                max_message_size=settings.ws_max_message_size)
        except HTTPClientError as exc:
            log.warning("HeyGen refused the socket of %s: %s", session_id, exc.code)
            return self.close(1011, _reason(f"upstream refused the connection ({exc.code})"))
        except Exception as exc:  # refused, unreachable, timed out
            log.warning("HeyGen socket of %s failed: %s", session_id, type(exc).__name__)
            return self.close(1011, "upstream connection failed")
        if self.ws_connection is None:  # the client left while we were connecting
            self.upstream.close(1000)
            return
        self.gateway.lifecycle.spawn(self.relay_upstream())

    async def relay_upstream(self):
        """HeyGen -> browser, until HeyGen closes; then close the browser's socket with HeyGen's code."""
        upstream, counts = self.upstream, self.counts
        while True:
            message = await upstream.read_message()
            if message is None:
                break
            counts.upstream_frames += 1
            if isinstance(message, str):
                counts.upstream_bytes += len(message) if message.isascii() else len(message.encode())
                await self.observe(message)
            else:
                counts.upstream_bytes += len(message)
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except WebSocketClosedError:
                break
        code, reason = relay_close_code(upstream.close_code), _reason(upstream.close_reason)
        upstream.close()  # releases the connection object even when HeyGen closed first
        if self.ws_connection is not None:
            self.close(code, reason)

    async def on_message(self, message):
        """Browser -> HeyGen (text and binary protobuf frames alike). The words of the SDK's speak() (a pipecat
        TextFrame, see clients.pipecat) are queued as a user turn first; audio frames are not parsed."""
        if self.upstream is None:
            return
        binary = isinstance(message, bytes)
        counts = self.counts
        counts.client_frames += 1
        counts.client_bytes += len(message) if binary or message.isascii() else len(message.encode())
        if binary and (text := text_of(message)) and text.strip():
            turn = new_turn("user", text, self.gateway.sessions.clock(), "frame")
            await self.gateway.turns.put(self.session.session_id, turn)
        try:
            await self.upstream.write_message(message, binary=binary)
        except WebSocketClosedError:
            pass  # relay_upstream closes the browser's socket

    async def observe(self, text):
        """Queue the turn a transcript event completes (waiting for room in the queue: backpressure upstream)."""
        try:
            event = json.loads(text)
        except ValueError:
            return
        if isinstance(event, dict):
            turn = self.joiner.feed(event, self.gateway.sessions.clock())
            if turn:
                await self.gateway.turns.put(self.session.session_id, turn)

    def on_close(self):
        if self not in self.open_relays:
            return  # never recorded, or already closed
        self.open_relays.discard(self)
        self.counts.sockets -= 1
        if self.upstream is not None:
            self.upstream.close(relay_close_code(self.close_code), _reason(self.close_reason))
        session_id, closed_at = self.session.session_id, self.gateway.sessions.clock()
        for turn in self.joiner.drain():  # utterances cut off mid-way are kept
            self.gateway.lifecycle.spawn(self.gateway.turns.put(session_id, turn))
        # The sweep ends the session if no socket reopens within the grace period.
        self.gateway.lifecycle.socket_closed(session_id, self.socket_id, closed_at)


async def move_relays(gateway, process_id):
    """Record this gateway's open sockets under its new lease `process_id` (models.leases); a socket that cannot be
    moved now is closed with 1001, and its client reconnects."""
    while left := [r for r in StreamingChatRelay.open_relays if r.gateway is gateway and r.process_id != process_id]:
        for relay in left:  # again until none is left: sockets may open meanwhile, under the old lease
            try:
                await gateway.sessions.socket_moved(relay.session.session_id, relay.socket_id, process_id)
                relay.process_id = process_id
            except ServiceUnavailable:
                relay.process_id = process_id  # not to be tried again: it goes
                relay.close(1001, "reconnect: gateway lease renewed")
