"""The relay's two legs as tornado WebSocket protocols that, once paired, move bytes between their streams.

Tornado's `WebSocketProtocol13` reads a message as three or four awaited reads, unmasks it, calls a handler, and the
relay then re-frames, masks and writes it: per frame, tens of microseconds of Python in each direction. After the
handshakes, the browser's leg (`WebSocketHandler`) and HeyGen's (`websocket_connect`) are paired here, and each
leg's receive loop becomes a pump: read whatever the socket has (one read per chunk, not per frame), let
`clients.wsframes.FrameScanner` read its frame headers and hand over the payloads the transcript needs, write the
chunk as it came to the other leg, and wait until that write is flushed to the kernel before reading again — so a
slow reader slows its writer (backpressure) instead of growing a buffer.

What tornado does for a leg is kept: close frames are answered and end the loop (`on_ws_connection_close` is called
as before), keep-alive pings go out on `ping_interval` and a missing pong closes the leg, `close()` and
`write_message()` still work. The gateway's own frames (close on shutdown, pings) are written only at a frame
boundary of what the pump forwards into that leg, held until one comes. Each leg's pings carry
`wsframes.PING_MARK`, so their pongs are told from the far end's, which pass through like every other ping and pong.

An unpaired leg (the relay failed before both were open) is plain tornado.
"""
import asyncio

from tornado.concurrent import Future
from tornado.httpclient import HTTPRequest, _RequestProxy
from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClientConnection, WebSocketProtocol13, _WebSocketParams

from clients.wsframes import PING_MARK, FrameScanner, ProtocolError

READ_CHUNK = 65536  # most bytes taken from a socket per read
YIELD_AFTER = 256 * 1024  # bytes moved back to back, without waiting for the socket, before other tasks get a turn


class PumpProtocol(WebSocketProtocol13):
    """One leg. `paired` resolves to the other leg (pump) or None (plain tornado)."""

    def __init__(self, handler, mask_outgoing, params, waits_for_pairing):
        super().__init__(handler, mask_outgoing, params)
        self.paired = Future()
        self.waits_for_pairing = waits_for_pairing  # the client leg's loop starts before pairing; the server's after
        self.scanner = None  # this leg's incoming direction, once paired
        self.on_messages = None  # called with the scanner's inspected messages; may return an awaitable
        self.feeder = None  # the other leg while its pump writes into this leg's stream
        self.held = []  # this leg's own frames waiting for a boundary in what the feeder writes

    # --- pairing ------------------------------------------------------------------------------------------------

    def pair_with(self, other, scanner, on_messages):
        self.scanner, self.on_messages = scanner, on_messages
        if not self.paired.done():
            self.paired.set_result(other)

    async def _receive_frame_loop(self):
        if not self.waits_for_pairing and not self.paired.done():
            self.paired.set_result(None)
        other = await self.paired
        if other is None:
            return await super()._receive_frame_loop()
        try:
            await self._pump(other)
        except StreamClosedError:
            self._abort()
        finally:
            other.feeder = None
            other.flush_held()
            self.handler.on_ws_connection_close(self.close_code, self.close_reason)

    async def _pump(self, other):
        """This leg's frames to the other leg's stream, chunk by chunk, until a close frame or the socket ends."""
        stream, out, scanner = self.stream, other.stream, self.scanner
        read = stream.read_bytes
        other.feeder = self
        moved = 0
        while not self.client_terminated:
            future = read(READ_CHUNK, partial=True)
            if future.done():  # already buffered: fairness to other tasks after a long run
                moved += READ_CHUNK
                if moved >= YIELD_AFTER:
                    moved = 0
                    await asyncio.sleep(0)
            else:
                moved = 0
            data = await future
            try:
                forward, messages, event = scanner.feed(data)
            except ProtocolError as error:
                self.close(error.code, error.reason)
                self._abort()
                return
            if messages:
                waiting = self.on_messages(messages)
                if waiting is not None:
                    await waiting
            if forward:
                await self._forward(out, forward, other)
            elif other.held and scanner.boundary is not None:
                other.flush_held()
            if event is not None:
                if event[0] == "pong":
                    self._received_pong = True
                else:  # a close frame: answered as tornado answers it
                    _, self.close_code, self.close_reason = event
                    self.client_terminated = True
                    self.close(self.close_code)

    async def _forward(self, out, forward, other):
        boundary = self.scanner.boundary
        try:
            if other.held and boundary is not None:
                if boundary:
                    out.write(forward[:boundary])
                other.flush_held()
                forward = forward[boundary:]
                if not forward:
                    return
            written = out.write(forward)
            if not written.done():
                await written
        except StreamClosedError:
            pass  # the other leg has gone; its close ends this one

    # --- the gateway's own frames -------------------------------------------------------------------------------

    def _write_frame(self, fin, opcode, data, flags=0):
        feeder = self.feeder
        if feeder is None or feeder.scanner.at_boundary:
            return super()._write_frame(fin, opcode, data, flags)
        future = Future()
        self.held.append((fin, opcode, data, flags, future))
        return future

    def flush_held(self):
        """Write the frames held for a boundary (dropped if the stream has closed meanwhile)."""
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
        super().close(code, reason)


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


def pair(server_leg, client_leg, *, inspect_client, inspect_upstream, on_client_messages, on_upstream_messages,
         client_tally, upstream_tally):
    """Start pumping both ways between the browser's leg and the upstream's."""
    max_size = server_leg.params.max_message_size
    for stream in (server_leg.stream, client_leg.stream):
        stream.set_nodelay(True)  # frames are small and latency counts: no Nagle delay on either leg
    server_leg.pair_with(client_leg, FrameScanner(inspect_client, max_size, client_tally), on_client_messages)
    client_leg.pair_with(server_leg, FrameScanner(inspect_upstream, max_size, upstream_tally), on_upstream_messages)
