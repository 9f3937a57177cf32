"""The HeyGen streaming-chat WebSocket relay: browser <-> gateway <-> HeyGen, frames unchanged and in order.

The browser presents our opaque session token; HeyGen gets its own. Text frames from HeyGen are read on the way
through for transcript events. Each leg awaits the other's write, so a slow reader slows its writer (backpressure)
instead of growing a buffer.
"""
import json
import logging

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClosedError, WebSocketHandler, websocket_connect

from handlers.base import GatewayHandlerMixin, authenticate, origin_allowed
from models.errors import BadRequest, Forbidden, NotFound
from models.transcript import ChunkJoiner

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


class StreamingChatRelay(GatewayHandlerMixin, WebSocketHandler):
    open_relays = set()  # this process's live relays, closed with 1001 on shutdown

    def initialize(self, gateway):
        self.gateway = gateway
        self.session = None
        self.upstream = None
        self.joiner = ChunkJoiner()
        self.counted = False

    def check_origin(self, origin):
        return origin_allowed(self.gateway.settings.cors_origins, origin)

    def get_compression_options(self):
        return None  # frames are relayed as they come; audio does not compress

    async def get(self, *args, **kwargs):
        """Authenticate and authorize before the upgrade, so a bad caller gets a plain JSON 4xx."""
        origin = self.request.headers.get("Origin")
        if origin and not self.check_origin(origin):
            raise Forbidden("origin not allowed")
        session_id = self.get_query_argument("session_id", "")
        token = self.get_query_argument("session_token", "")
        if not session_id or not token:
            raise BadRequest("session_id and session_token are required")
        self.log_session_id = session_id
        customer = await authenticate(self.gateway, None, token)
        self.session = await self.gateway.sessions.owned(session_id, customer.id, provider="heygen")
        if self.session.status == "ended":
            raise NotFound("session not found")
        await super().get(*args, **kwargs)

    async def open(self, *args, **kwargs):
        settings = self.gateway.settings
        query = [(k, v.decode()) for k, values in self.request.query_arguments.items() for v in values]
        url = self.gateway.heygen.websocket_url(self.session.session_id, self.session.upstream_token, query)
        try:
            self.upstream = await websocket_connect(
                HTTPRequest(url, connect_timeout=settings.upstream_connect_timeout,
                            request_timeout=settings.upstream_request_timeout),
                ping_interval=settings.ws_ping_interval or None,
                ping_timeout=settings.ws_ping_interval or None,
                max_message_size=settings.ws_max_message_size)
        except HTTPClientError as exc:
            log.warning("HeyGen refused the socket of %s: %s", self.session.session_id, exc.code)
            return self.close(1011, _reason(f"upstream refused the connection ({exc.code})"))
        except Exception as exc:  # refused, unreachable, timed out
            log.warning("HeyGen socket of %s failed: %s", self.session.session_id, type(exc).__name__)
            return self.close(1011, "upstream connection failed")
        if self.ws_connection is None:  # the client left while we were connecting
            self.upstream.close(1000)
            return
        self.counted = True
        self.open_relays.add(self)
        await self.gateway.sessions.socket_opened(self.session.session_id)
        self.gateway.lifecycle.spawn(self.relay_upstream())

    async def relay_upstream(self):
        """HeyGen -> browser, until HeyGen closes; then close the browser's socket with HeyGen's code."""
        upstream = self.upstream
        while True:
            message = await upstream.read_message()
            if message is None:
                break
            if isinstance(message, str):
                self.observe(message)
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except WebSocketClosedError:
                break
        code, reason = relay_close_code(upstream.close_code), _reason(upstream.close_reason)
        upstream.close()  # releases the connection object even when HeyGen closed first
        if self.ws_connection is not None:
            self.close(code, reason)

    async def on_message(self, message):
        """Browser -> HeyGen (text and binary protobuf frames alike)."""
        if self.upstream is None:
            return
        try:
            await self.upstream.write_message(message, binary=isinstance(message, bytes))
        except WebSocketClosedError:
            pass  # relay_upstream closes the browser's socket

    def observe(self, text):
        try:
            event = json.loads(text)
        except ValueError:
            return
        if isinstance(event, dict):
            turn = self.joiner.feed(event, self.gateway.sessions.clock())
            if turn:
                self.gateway.lifecycle.spawn(self.gateway.sessions.add_turn(self.session.session_id, turn))

    def on_close(self):
        self.open_relays.discard(self)
        if self.upstream is not None:
            self.upstream.close(relay_close_code(self.close_code), _reason(self.close_reason))
        if self.session is not None and self.counted:
            self.gateway.lifecycle.spawn(self.closed(self.joiner.drain()))

    async def closed(self, unfinished):
        session_id = self.session.session_id
        for turn in unfinished:
            await self.gateway.sessions.add_turn(session_id, turn)
        await self.gateway.sessions.socket_closed(session_id)  # the sweep ends it if no socket reopens in time
