"""The relay's two legs: tornado WebSocket protocols for the handshakes, then bytes moved between two sockets.

Tornado's `WebSocketProtocol13` reads a message as three or four awaited IOStream reads, unmasks it, calls a handler,
and a relay then re-frames, masks and writes it: per frame, tens of microseconds of Python in each direction. Once
the browser's leg (`WebSocketHandler`) and HeyGen's (`websocket_connect`) are both open, `pair()` moves each leg's
socket from its IOStream to an asyncio transport (`Leg`), whose `data_received` gets whatever the socket had: one
call per read, not per frame, with no futures or task switches. `clients.wsframes.FrameScanner` reads the chunk's
frame headers and hands over the payloads the transcript needs; the chunk is written, unchanged, to the other leg's
transport. Backpressure: when a transport's write buffer passes its high-water mark (asyncio's default, 64 KiB),
the leg feeding it stops reading until it drains; while a turn waits for room in the turn queue, its leg stops
reading too, and the chunk that carried it is forwarded only once the turn is queued.

Each leg keeps its tornado protocol object, which now writes through `TransportStream`: close frames are answered as
tornado answers them, keep-alive pings go out every `ping_interval` and a missing pong closes the leg,
`close()` still works, and `on_ws_connection_close` is called once when the socket is gone. The gateway's own frames
(close, pings) go in only at a frame boundary of what the other leg forwards, held until one comes. Each leg's pings
carry `wsframes.PING_MARK`, so their pongs are told from the far end's, which pass through like any other ping or
pong.

A leg that is never paired (the relay failed before both were open) stays plain tornado.
"""
import asyncio

from tornado.concurrent import Future
from tornado.httpclient import HTTPRequest, _RequestProxy
from tornado.httputil import HTTPHeaders
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClientConnection, WebSocketProtocol13, _WebSocketParams

from clients.wsframes import PING_MARK, FrameScanner, ProtocolError


def _done_future():
    future = Future()
    future.set_result(None)
    return future


class TransportStream:
    """What WebSocketProtocol13 uses of its IOStream, over the asyncio transport its leg moved to. Writes made before
    the transport exists (while it is being set up) are kept and written first."""
    __slots__ = ("transport", "io_loop", "error", "_early")

    def __init__(self):
        self.transport = None
        self.io_loop = IOLoop.current()
        self.error = None
        self._early = []

    def attach(self, transport):
        self.transport = transport
        early, self._early = self._early, None
        for data in early:
            transport.write(data)

    def write(self, data):
        if self.transport is None:
            if self._early is None:
                raise StreamClosedError()
            self._early.append(data)
        elif self.transport.is_closing():
            raise StreamClosedError()
        else:
            self.transport.write(data)
        return _done_future()

    def closed(self):
        return self.transport is not None and self.transport.is_closing()

    def close(self, exc_info=False):
        if self.transport is not None:
            self.transport.close()  # asyncio writes what is buffered first
        else:
            self._early = None

    def set_nodelay(self, value):
        pass  # asyncio sets TCP_NODELAY on every TCP transport


class Leg(asyncio.Protocol):
    """One leg's socket on an asyncio transport: its bytes in, through its scanner, out to the other leg."""

    def __init__(self, ws, scanner, on_messages, buffered):
        self.ws = ws  # the leg's PumpProtocol
        self.scanner = scanner
        self.on_messages = on_messages  # inspected messages -> None, or an awaitable while turns wait for room
        self.buffered = buffered  # bytes the IOStream had read but not delivered: they come first
        self.other = None  # the other Leg
        self.transport = None
        self.pauses = 0  # reasons not to read now: the other leg's buffer is full; a turn waits for room
        self.ended = False  # a close frame came: nothing after it is read

    def connection_made(self, transport):
        self.transport = transport
        self.ws.stream.attach(transport)
        self.pause()  # until start(): both legs' transports must exist before bytes flow

    def start(self):
        buffered, self.buffered = self.buffered, None
        if buffered:
            self.data_received(buffered)
        self.resume()

    def data_received(self, data):
        if self.ended:
            return
        try:
            forward, messages, event = self.scanner.feed(data)
        except ProtocolError as error:
            self.ended = True
            self.ws.close(error.code, error.reason)
            self.ws._abort()
            return
        if messages:
            waiting = self.on_messages(messages)
            if waiting is not None:  # the turn queue is full: this leg waits with it, its chunk unforwarded
                self.pause()
                asyncio.ensure_future(self._forward_when_queued(waiting, forward, event))
                return
        self.forward(forward, event)

    async def _forward_when_queued(self, waiting, forward, event):
        try:
            await waiting
        finally:
            self.forward(forward, event)
            self.resume()

    def forward(self, data, event):
        other = self.other
        out = other.transport
        held = other.ws.held
        if data and not out.is_closing():
            boundary = self.scanner.boundary
            if held and boundary is not None:
                if boundary:
                    out.write(data[:boundary])
                other.ws.flush_held()
                data = data[boundary:]
            if data:
                out.write(data)
        elif held and self.scanner.boundary is not None:
            other.ws.flush_held()
        if event is not None:
            ws = self.ws
            if event[0] == "pong":
                ws._received_pong = True
            else:  # a close frame: answered as tornado answers it
                self.ended = True
                _, ws.close_code, ws.close_reason = event
                ws.client_terminated = True
                ws.close(ws.close_code)

    def pause(self):
        self.pauses += 1
        if self.pauses == 1 and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self):
        self.pauses -= 1
        if self.pauses == 0 and not self.transport.is_closing():
            self.transport.resume_reading()

    def pause_writing(self):  # this leg's write buffer is full: the leg feeding it waits
        self.other.pause()

    def resume_writing(self):
        self.other.resume()

    def eof_received(self):
        return False  # a half-closed WebSocket is a closed one

    def connection_lost(self, exc):
        ws = self.ws
        ws._abort()
        other = self.other.ws
        other.feeder = None
        other.flush_held()
        ws.handler.on_ws_connection_close(ws.close_code, ws.close_reason)


class Pinger:
    """Keep-alive pings for every leg of one IOLoop with the same interval, from one periodic callback (tornado
    runs a task per leg, about a kilobyte each, for thousands of mostly idle sockets). Each tick pings every leg;
    a leg whose last ping got no pong by the next tick is closed ("ping timed out"): the timeout is the interval."""
    _running = {}  # (io_loop, interval) -> Pinger

    def __init__(self, io_loop, interval):
        self.key = (io_loop, interval)
        self.legs = set()
        self.callback = PeriodicCallback(self.tick, interval * 1000)

    @classmethod
    def add(cls, leg, interval):
        key = (IOLoop.current(), interval)
        pinger = cls._running.get(key)
        if pinger is None:
            pinger = cls._running[key] = cls(*key)
            pinger.callback.start()
        pinger.legs.add(leg)
        leg._ping_coroutine = pinger  # where tornado keeps a leg's ping task: close() "cancels" it

    def discard(self, leg):
        self.legs.discard(leg)
        if not self.legs:
            self.callback.stop()
            self._running.pop(self.key, None)

    def tick(self):
        for leg in list(self.legs):
            if leg._ping_sent and not leg._received_pong:
                leg.close(reason="ping timed out")
                continue
            leg._ping_sent = True
            leg._received_pong = False
            try:
                leg.write_ping(b"")
            except StreamClosedError:
                self.discard(leg)


class PumpProtocol(WebSocketProtocol13):
    """One leg. `paired` resolves to the other leg once both are on transports, or to None: plain tornado."""

    def __init__(self, handler, mask_outgoing, params, waits_for_pairing):
        super().__init__(handler, mask_outgoing, params)
        self.paired = Future()
        self.waits_for_pairing = waits_for_pairing  # the client leg's loop starts before pairing; the server's after
        self.feeder = None  # the other leg's scanner, while it forwards into this leg
        self.held = []  # this leg's own frames waiting for a frame boundary in what the feeder forwards
        self._ping_sent = False

    def start_pinging(self):
        if self.ping_interval > 0 and self._ping_coroutine is None:
            Pinger.add(self, self.ping_interval)

    async def _receive_frame_loop(self):
        if not self.waits_for_pairing and not self.paired.done():
            self.paired.set_result(None)
        if await self.paired is None:
            await super()._receive_frame_loop()
        # else the leg's Leg reads it

    def _write_frame(self, fin, opcode, data, flags=0):
        feeder = self.feeder
        if feeder is None or feeder.at_boundary:
            return super()._write_frame(fin, opcode, data, flags)
        future = Future()
        self.held.append((fin, opcode, data, flags, future))
        return future

    def flush_held(self):
        """Write the frames held for a boundary (dropped if the leg has closed meanwhile)."""
        held, self.held = self.held, []
        for fin, opcode, data, flags, future in held:
            try:
                if not self.stream.closed():
                    super()._write_frame(fin, opcode, data, flags)
            except StreamClosedError:
                pass
            future.set_result(None)

    def write_ping(self, data):
        super().write_ping(data or PING_MARK)

    def close(self, code=None, reason=None):
        if not self.paired.done():
            self.paired.set_result(None)  # a leg closed before pairing reads its close answer as plain tornado
        pinger = self._ping_coroutine
        self._ping_coroutine = None
        super().close(code, reason)
        if pinger is not None:
            pinger.discard(self)


class PumpClientConnection(WebSocketClientConnection):
    def get_websocket_protocol(self):
        return PumpProtocol(self, mask_outgoing=True, params=self.params, waits_for_pairing=True)


def server_protocol(handler):
    """The browser's leg for `WebSocketHandler.get_websocket_protocol` (permessage-deflate never negotiated)."""
    params = _WebSocketParams(ping_interval=handler.ping_interval, ping_timeout=handler.ping_timeout,
                              max_message_size=handler.max_message_size, compression_options=None)
    return PumpProtocol(handler, False, params, waits_for_pairing=False)


def pump_connect(request, on_close, ping_interval, ping_timeout, max_message_size):
    """`websocket_connect` for the upstream leg. `on_close()` is called when it has closed (before pairing, any
    message it receives is ignored)."""
    request.headers = HTTPHeaders(request.headers)
    request = _RequestProxy(request, HTTPRequest._DEFAULTS)
    connection = PumpClientConnection(
        request, on_message_callback=lambda message: on_close() if message is None else None,
        ping_interval=ping_interval, ping_timeout=ping_timeout, max_message_size=max_message_size)
    return connection.connect_future


def _take_socket(ws):
    """The leg's socket and the bytes its IOStream read but did not deliver. The IOStream is left inert (closed
    without closing the socket, which now belongs to the transport); the protocol writes through a TransportStream."""
    stream = ws.stream
    buffered = bytes(stream._read_buffer[:stream._read_buffer_size])
    if stream._state is not None:
        stream.io_loop.remove_handler(stream.socket)
        stream._state = None
    stream._closed = True
    ws.stream = TransportStream()
    return stream.socket, buffered


async def pair(server_leg, client_leg, *, inspect_client, inspect_upstream, on_client_messages, on_upstream_messages,
               client_tally, upstream_tally):
    """Move both legs onto asyncio transports and start relaying. Raises StreamClosedError if either is gone."""
    for ws in (server_leg, client_leg):
        await ws.stream.write(b"")  # what tornado still had to write (the handshake) is out
    max_size = server_leg.params.max_message_size
    loop = asyncio.get_running_loop()
    legs = []
    for ws, inspect, on_messages, tally in ((server_leg, inspect_client, on_client_messages, client_tally),
                                            (client_leg, inspect_upstream, on_upstream_messages, upstream_tally)):
        sock, buffered = _take_socket(ws)
        legs.append((ws, sock, Leg(ws, FrameScanner(inspect, max_size, tally), on_messages, buffered)))
    (server_ws, _, server), (client_ws, _, client) = legs
    server.other, client.other = client, server
    server_ws.feeder, client_ws.feeder = client.scanner, server.scanner
    for ws, sock, leg in legs:
        await loop.connect_accepted_socket(lambda leg=leg: leg, sock)
    server_ws.paired.set_result(client_ws)
    client_ws.paired.set_result(server_ws)
    _release_handshake(client_ws.handler)
    server.start()
    client.start()


def _release_handshake(connection):
    """Drop what the upstream leg's handshake left on its WebSocketClientConnection (request, response headers,
    HTTP connection, inert IOStream, message queue): a few kilobytes per socket that a relay never reads again."""
    connection.request = connection.headers = connection.connection = connection.stream = None
    connection.read_queue = None  # messages go to on_message_callback
    connection.tcp_client.close()
