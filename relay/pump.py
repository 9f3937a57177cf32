"""The relay's two legs: tornado WebSocket protocols for the handshakes, then bytes moved between two sockets.

Tornado's `WebSocketProtocol13` reads a message as three or four awaited IOStream reads, unmasks it, calls a handler,
and a relay then re-frames, masks and writes it: per frame, tens of microseconds of Python in each direction. Once
the browser's leg (`WebSocketHandler`) and HeyGen's (`websocket_connect`) are both open, `pair()` moves each leg's
socket from its IOStream to an asyncio transport (`Leg`), whose `data_received` gets whatever the socket had: one
call per read, not per frame, with no futures or task switches. `relay.frames.FrameScanner` reads the chunk's
frame headers and hands over the payloads the transcript needs; the chunk is written, unchanged, to the other leg's
transport. Backpressure: when a transport's write buffer passes its high-water mark (asyncio's default, 64 KiB),
the leg feeding it stops reading until it drains; while a turn waits for room in the turn queue, its leg stops
reading too, and the chunk that carried it is forwarded only once the turn is queued.

Each leg keeps its tornado protocol object, which now writes through `TransportStream`: close frames are answered as
tornado answers them, keep-alive pings go out every `ping_interval` and a missing pong closes the leg,
`close()` still works, and `on_ws_connection_close` is called once when the socket is gone. The gateway's own frames
(close, pings) go in only at a frame boundary of what the other leg forwards, held until one comes. Each leg's pings
carry `relay.frames.PING_MARK`, so their pongs are told from the far end's, which pass through like any other ping or
pong.

A leg that is never paired (the relay failed before both were open) stays plain tornado.

This is the only module of the relay that reaches below tornado's public API, and it does so only through
clients/tornado_compat.py. relay/plain.py is the same relay on tornado's public API (RELAY_PUMP=plain): slower, and
the oracle this one is tested against (tests/gateway/test_relay_pumps.py).
"""
from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, cast

from tornado.concurrent import Future
from tornado.httpclient import HTTPRequest
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClientConnection

from clients.tornado_compat import (
    PROTOCOL_KEYS,
    HookedProtocol,
    connect_client,
    protocol_params,
    release_handshake,
    share_keys,
    take_socket,
)
from relay.frames import PING_MARK, FrameScanner, ProtocolError

Inspected = list[tuple[int, bytes]]


def _done_future() -> Future[None]:
    future: Future[None] = Future()
    future.set_result(None)
    return future


class TransportStream:
    """What WebSocketProtocol13 uses of its IOStream, over the asyncio transport its leg moved to. Writes made before
    the transport exists (while it is being set up) are kept and written first."""
    __slots__ = ("_early", "error", "io_loop", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.io_loop = IOLoop.current()
        self.error = None
        self._early: list[bytes] | None = []

    def attach(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        early, self._early = self._early, None
        for data in early or ():
            transport.write(data)

    def write(self, data: bytes) -> Future[None]:
        if self.transport is None:
            if self._early is None:
                raise StreamClosedError()
            self._early.append(data)
        elif self.transport.is_closing():
            raise StreamClosedError()
        else:
            self.transport.write(data)
        return _done_future()

    def closed(self) -> bool:
        return self.transport is not None and self.transport.is_closing()

    def close(self, exc_info: Any = False) -> None:
        if self.transport is not None:
            self.transport.close()  # asyncio writes what is buffered first
        else:
            self._early = None

    def set_nodelay(self, value: bool) -> None:
        pass  # asyncio sets TCP_NODELAY on every TCP transport


class Leg(asyncio.Protocol):
    """One leg's socket on an asyncio transport: its bytes in, through its scanner, out to the other leg. (Slotted:
    two per relayed socket, thousands of them.)"""
    __slots__ = ("buffered", "ended", "on_messages", "other", "pauses", "scanner", "transport", "waiting", "ws")

    def __init__(self, ws: PumpProtocol, scanner: FrameScanner,
                 on_messages: Callable[[Inspected], Awaitable[None] | None], buffered: bytes) -> None:
        self.ws = ws  # the leg's PumpProtocol; it writes through a TransportStream
        self.scanner = scanner
        self.on_messages = on_messages  # inspected messages -> None, or an awaitable while turns wait for room
        # Bytes the IOStream had read but not delivered, and any that arrive before start(): they come first. None
        # once started.
        self.buffered: bytes | None = buffered
        self.other: Leg = self  # the other Leg, once paired
        self.transport: Any = None
        self.pauses = 0  # reasons not to read now: the other leg's buffer is full; a turn waits for room
        self.ended = False  # a close frame came: nothing after it is read
        self.waiting: asyncio.Future[None] | None = None  # forwarding a chunk once its turns are queued

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        cast(TransportStream, self.ws.stream).attach(transport)
        self.pause()  # until start(): both legs' transports must exist before bytes flow

    def start(self) -> None:
        buffered, self.buffered = self.buffered, None
        if buffered:
            self.data_received(buffered)
        self.resume()

    def data_received(self, data: bytes) -> None:
        if self.buffered is not None:  # not started: bytes that came though reading was paused wait with the rest
            self.buffered += data
            return
        if self.ended:
            return
        try:
            forward, messages, event = self.scanner.feed(data)
        except ProtocolError as error:
            self.ended = True
            self.ws.close(error.code, error.reason)
            self.ws.abort()
            return
        if messages:
            waiting = self.on_messages(messages)
            if waiting is not None:  # the turn queue is full: this leg waits with it, its chunk unforwarded
                self.pause()
                self.waiting = asyncio.ensure_future(self._forward_when_queued(waiting, forward, event))
                return
        self.forward(forward, event)

    async def _forward_when_queued(self, waiting: Awaitable[None], forward: bytes,
                                   event: tuple[Any, ...] | None) -> None:
        try:
            await waiting
        finally:
            self.forward(forward, event)
            self.resume()

    def forward(self, data: bytes, event: tuple[Any, ...] | None) -> None:
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
            if event[0] == "pong":
                self.ws.received_pong = True
            else:  # a close frame: answered as tornado answers it
                self.ended = True
                self.ws.terminated_by_peer(event[1], event[2])

    def pause(self) -> None:
        self.pauses += 1
        if self.pauses == 1 and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        self.pauses -= 1
        if self.pauses == 0 and not self.transport.is_closing():
            self.transport.resume_reading()

    def pause_writing(self) -> None:  # this leg's write buffer is full: the leg feeding it waits
        self.other.pause()

    def resume_writing(self) -> None:
        self.other.resume()

    def eof_received(self) -> bool:
        return False  # a half-closed WebSocket is a closed one

    def connection_lost(self, exc: BaseException | None) -> None:
        ws = self.ws
        ws.abort()
        other = self.other.ws
        other.feeder = None
        other.flush_held()
        ws.tell_handler_closed()


class Pinger:
    """Keep-alive pings for every leg of one IOLoop with the same interval, from one periodic callback (tornado
    runs a task per leg, about a kilobyte each, for thousands of mostly idle sockets). Each tick pings every leg;
    a leg whose last ping got no pong by the next tick is closed ("ping timed out"): the timeout is the interval."""
    _running: dict[tuple[IOLoop, float], Pinger] = {}  # (io_loop, interval) -> Pinger

    def __init__(self, io_loop: IOLoop, interval: float) -> None:
        self.key = (io_loop, interval)
        self.legs: set[PumpProtocol] = set()
        self.callback = PeriodicCallback(self.tick, interval * 1000)

    @classmethod
    def add(cls, leg: PumpProtocol, interval: float) -> None:
        key = (IOLoop.current(), interval)
        pinger = cls._running.get(key)
        if pinger is None:
            pinger = cls._running[key] = cls(*key)
            pinger.callback.start()
        pinger.legs.add(leg)
        leg.ping_task = pinger  # where tornado keeps a leg's ping task (PumpProtocol.close takes it back)

    def discard(self, leg: PumpProtocol) -> None:
        self.legs.discard(leg)
        if not self.legs:
            self.callback.stop()
            self._running.pop(self.key, None)

    def tick(self) -> None:
        for leg in list(self.legs):
            if leg.ping_sent and not leg.received_pong:
                leg.close(reason="ping timed out")
                continue
            leg.ping_sent = True
            leg.received_pong = False
            try:
                leg.write_ping(b"")
            except StreamClosedError:
                self.discard(leg)


class PumpProtocol(HookedProtocol):
    """One leg. `paired` resolves to the other leg once both are on transports, or to None: plain tornado. (Its own
    attributes in slots, tornado's in the class's shared key table: two per relayed socket, thousands of them.)"""
    __slots__ = ("feeder", "held", "paired", "ping_sent", "waits_for_pairing")

    def __init__(self, handler: Any, mask_outgoing: bool, params: Any, waits_for_pairing: bool) -> None:
        super().__init__(handler, mask_outgoing, params)
        self.paired: Future[PumpProtocol | None] = Future()
        self.waits_for_pairing = waits_for_pairing  # the client leg's loop starts before pairing; the server's after
        self.feeder: FrameScanner | None = None  # the other leg's scanner, while it forwards into this leg
        # this leg's own frames waiting for a frame boundary in what the feeder forwards (a list only while some do)
        self.held: list[tuple[bool, int, bytes, int, Future[None]]] | None = None
        self.ping_sent = False

    def start_pinging(self) -> None:
        if self.ping_interval > 0 and self.ping_task is None:
            Pinger.add(self, self.ping_interval)

    async def receive_frames(self) -> None:
        if not self.waits_for_pairing and not self.paired.done():
            self.paired.set_result(None)
        if await self.paired is None and not isinstance(self.stream, TransportStream):
            await super().receive_frames()
        # else the leg's Leg reads it (or its socket, taken, was closed while pairing)

    def write_frame(self, fin: bool, opcode: int, data: bytes, flags: int = 0) -> Future[None]:
        feeder = self.feeder
        if feeder is None or feeder.at_boundary:
            return self.write_frame_now(fin, opcode, data, flags)
        future: Future[None] = Future()
        if self.held is None:
            self.held = []
        self.held.append((fin, opcode, data, flags, future))
        return future

    def flush_held(self) -> None:
        """Write the frames held for a boundary (dropped if the leg has closed meanwhile)."""
        held, self.held = self.held, None
        for fin, opcode, data, flags, future in held or ():
            try:
                if self.stream is not None and not self.stream.closed():
                    self.write_frame_now(fin, opcode, data, flags)
            except StreamClosedError:
                pass
            future.set_result(None)

    def write_ping(self, data: bytes) -> None:
        super().write_ping(data or PING_MARK)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if not self.paired.done():
            self.paired.set_result(None)  # a leg closed before pairing reads its close answer as plain tornado
        pinger = self.ping_task
        self.ping_task = None
        super().close(code, reason)
        if pinger is not None:
            pinger.discard(self)


share_keys(PumpProtocol, PROTOCOL_KEYS)


def server_protocol(handler: Any) -> PumpProtocol:
    """The browser's leg for `WebSocketHandler.get_websocket_protocol` (permessage-deflate never negotiated)."""
    params = protocol_params(handler.ping_interval, handler.ping_timeout, handler.max_message_size)
    return PumpProtocol(handler, False, params, waits_for_pairing=False)


def pump_connect(request: HTTPRequest, on_close: Callable[[], None], ping_interval: float | None,
                 ping_timeout: float | None, max_message_size: int) -> Future[Any]:
    """`websocket_connect` for the upstream leg. Nothing reads it until `pair()` takes its socket: what the upstream
    sends meanwhile waits there (or in the IOStream's buffer, which goes with the socket), however long the browser's
    side takes. `on_close()` is called when it has closed (a leg closed unpaired is read by tornado, and what it
    receives then is ignored)."""
    return connect_client(
        request, _upstream_protocol, on_message=functools.partial(_closed_on_none, on_close),
        ping_interval=ping_interval, ping_timeout=ping_timeout, max_message_size=max_message_size)


def _closed_on_none(on_close: Callable[[], None], message: Any) -> None:
    if message is None:  # the leg has closed
        on_close()


async def pair(server_leg: PumpProtocol, client_leg: PumpProtocol, *, inspect_client: Callable[[int, int | None], bool],
               inspect_upstream: Callable[[int, int | None], bool],
               on_client_messages: Callable[[Inspected], Awaitable[None] | None],
               on_upstream_messages: Callable[[Inspected], Awaitable[None] | None],
               client_tally: Any, upstream_tally: Any) -> None:
    """Move both legs onto asyncio transports and start relaying. Raises StreamClosedError if either is gone, or
    closes, before they are paired (the caller closes both)."""
    for ws in (server_leg, client_leg):
        assert ws.stream is not None
        await ws.stream.write(b"")  # what tornado still had to write (the handshake) is out
    if _either_gone(server_leg, client_leg):
        raise StreamClosedError()
    max_size = server_leg.params.max_message_size
    loop = asyncio.get_running_loop()
    legs = []
    for ws, inspect, on_messages, tally in ((server_leg, inspect_client, on_client_messages, client_tally),
                                            (client_leg, inspect_upstream, on_upstream_messages, upstream_tally)):
        assert ws.stream is not None
        sock, buffered = take_socket(ws.stream)
        stream = TransportStream()
        ws.stream = stream  # type: ignore[assignment]  # what the protocol writes through from now on
        legs.append((ws, sock, Leg(ws, FrameScanner(inspect, max_size, tally), on_messages, buffered)))
    (server_ws, _, server), (client_ws, _, client) = legs
    server.other, client.other = client, server
    server_ws.feeder, client_ws.feeder = client.scanner, server.scanner
    for _, sock, leg in legs:
        await loop.connect_accepted_socket(functools.partial(_itself, leg), sock)
    if _either_gone(server_ws, client_ws):  # closed while its transport was being set up: end both
        for leg in (server, client):
            if leg.transport is not None:
                leg.transport.close()
        raise StreamClosedError()
    server_ws.paired.set_result(client_ws)
    client_ws.paired.set_result(server_ws)
    # Messages go to on_message_callback; a relay never reads the rest of the handshake again.
    release_handshake(cast(WebSocketClientConnection, client_ws.handler))
    server.start()
    client.start()


def _upstream_protocol(connection: WebSocketClientConnection) -> PumpProtocol:
    return PumpProtocol(connection, True, connection.params, waits_for_pairing=True)


def _itself(leg: Leg) -> Leg:
    return leg


def _either_gone(*legs: PumpProtocol) -> bool:
    """Whether a leg was closed (it resolves `paired` to None when it is) or its stream is."""
    return any(ws.paired.done() or ws.stream is None or ws.stream.closed() for ws in legs)
