"""The HeyGen streaming-chat WebSocket relay: browser <-> gateway <-> HeyGen, frames unchanged and in order.

The browser presents our session token; HeyGen gets its own. Once both legs are open, handlers.frame_pump moves
their bytes chunk by chunk, reading frame headers only; it opens HeyGen's text frames (transcript events) and the
client's binary protobuf TextFrames (the SDK's default speak(), see clients.pipecat), whose turns are queued for
MongoDB (models.turns) before the chunk that carried them is forwarded. Audio frames pass unread. A leg stops reading
while the other's write buffer is full, so a slow reader slows its writer (backpressure) instead of growing a
buffer; a full turn queue pauses the leg the same way.

Each open socket is recorded on its session against this process's lease (models.leases) before HeyGen is
reached, and its close is recorded — retried until MongoDB takes it — when it ends.

Relayed frames and bytes are counted by the frame scanners on the gateway's RelayCounts (models.metrics), read at
scrape time.
"""
import base64
import json
import logging
import uuid

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketHandler

from clients.pipecat import TEXT_TAG, text_of
from clients.wsframes import OP_BINARY, OP_TEXT
from handlers.base import GatewayHandlerMixin, authenticate, origin_allowed, owned_session
from handlers.frame_pump import pair, pump_connect, server_protocol
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


def _is_text(opcode, first_byte):
    return opcode == OP_TEXT


def _is_text_frame(opcode, first_byte):
    return opcode == OP_BINARY and first_byte == TEXT_TAG


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
        session = await owned_session(self.gateway, session_id, customer, provider="heygen", touch=False)
        if session.status == "ended":
            raise NotFound("session not found")
        self.session = self.gateway.sessions.remember(session)  # its facts: the document is not kept per socket
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
            self.upstream = await pump_connect(
                HTTPRequest(url, connect_timeout=settings.upstream_connect_timeout,
                            request_timeout=settings.upstream_request_timeout),
                on_close=self.upstream_closed,
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
        try:
            await pair(self.ws_connection, self.upstream.protocol,
                       inspect_client=_is_text_frame, inspect_upstream=_is_text,
                       on_client_messages=self.observe_client, on_upstream_messages=self.observe_upstream,
                       client_tally=self.counts.client, upstream_tally=self.counts.upstream)
        except StreamClosedError:  # either side left just now: closing the other ends both
            self.upstream.close(1000)
            self.close(1011, "upstream connection failed")
            return
        self.request.server_connection = None  # the HTTP connection the handshake came on (and its IOStream)

    def get_websocket_protocol(self):
        return server_protocol(self)

    def on_message(self, message):
        """Only a leg that never got paired with HeyGen's (the relay is closing it) gets here: nothing to do."""

    def upstream_closed(self):
        """HeyGen's leg has closed: close the browser's with HeyGen's code."""
        upstream = self.upstream
        if self.ws_connection is not None and upstream is not None:
            self.close(relay_close_code(upstream.close_code), _reason(upstream.close_reason))

    def observe_client(self, messages):
        """The words of the SDK's speak() (a pipecat TextFrame), queued as user turns (see queue_turns)."""
        turns = [new_turn("user", text, self.gateway.sessions.clock(), "frame")
                 for _, payload in messages if (text := text_of(payload)) and text.strip()]
        return self.queue_turns(turns) if turns else None

    def observe_upstream(self, messages):
        """The turns HeyGen's transcript events complete, queued (see queue_turns)."""
        turns = []
        for _, payload in messages:
            try:
                event = json.loads(payload)
            except ValueError:  # not JSON, or not UTF-8
                continue
            if isinstance(event, dict) and (turn := self.joiner.feed(event, self.gateway.sessions.clock())):
                turns.append(turn)
        return self.queue_turns(turns) if turns else None

    def queue_turns(self, turns):
        """Each turn into the queue: None when all went in at once; else an awaitable that queues the rest as room
        comes (the turn queue is full: the leg stops reading meanwhile, backpressure on its sender)."""
        queue, session_id = self.gateway.turns, self.session.session_id
        for i, turn in enumerate(turns):
            if not queue.put_nowait(session_id, turn):
                return self._queue_as_room_comes(turns[i:])
        return None

    async def _queue_as_room_comes(self, turns):
        for turn in turns:
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
