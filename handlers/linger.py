"""Lingering close: how the gateway ends a connection whose request body it answered without reading (a 413 from the
Content-Length, a body going over MAX_BODY_SIZE, a refused framing), so that the client reads the answer.

Closing a socket with unread bytes in its receive buffer sends a TCP reset, not a FIN; a client still sending its
body (a browser, curl, Python's http.client — any that writes the whole body before reading) then sees a connection
reset or a broken pipe, not the answer, which its kernel may even discard. So, as nginx does (`lingering_close`,
https://nginx.org/en/docs/http/ngx_http_core_module.html#lingering_close), once the answer is written the gateway
half-closes (shutdown(SHUT_WR): a FIN after the answer, so the client sees the answer end), then reads and discards what
the client still sends, and closes when the client closes, or at the first of these bounds:

- LINGER_SECONDS (5 s) from the answer in all (nginx's `lingering_time`, 30 s by default);
- LINGER_IDLE (2 s) without a byte from the client (nginx's `lingering_timeout`, 5 s by default);
- LINGER_BYTES (8 MiB) discarded (nginx has no such bound): a client sending forever is cut off at once at
  loopback or LAN speed, and after LINGER_SECONDS on a slow link;
- LINGER_MAX_CONNECTIONS (1024) lingering at once per listener: past it a connection is closed at once, as before.

Nothing blocks: the socket is read without blocking from an IOLoop handler, at most LINGER_READ_PER_WAKEUP bytes per
wake-up, into one scratch buffer per listener. A lingering connection is no longer one of the HTTPServer's (its HTTP
exchange is over); `LingeringHTTPServer.close_all_connections()` ends these too.

Only public tornado API is used here — `TCPServer.handle_stream` and `IOStream.close_fd` are documented for
overriding — but for the one undocumented attribute that leads from a request to its stream, which lives in
clients/tornado_compat.py.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

from clients.tornado_compat import connection_stream

LINGER_SECONDS = 5.0
LINGER_IDLE = 2.0
LINGER_BYTES = 8 << 20
LINGER_MAX_CONNECTIONS = 1024
LINGER_READ_PER_WAKEUP = 1 << 20


@dataclass(eq=False)
class _Lingerer:
    sock: socket.socket
    deadline: float  # LINGER_SECONDS after the answer
    last_read: float
    discarded: int = 0
    timeout: Any = field(default=None)  # the IOLoop timeout of the next check


class Lingering:
    """The connections of one listener being closed lingeringly (see the module's docstring for the bounds)."""

    def __init__(self, seconds: float | None = None, idle: float | None = None, max_bytes: int | None = None,
                 max_connections: int | None = None) -> None:
        self.seconds = LINGER_SECONDS if seconds is None else seconds
        self.idle = LINGER_IDLE if idle is None else idle
        self.max_bytes = LINGER_BYTES if max_bytes is None else max_bytes
        self.max_connections = LINGER_MAX_CONNECTIONS if max_connections is None else max_connections
        self.connections: set[_Lingerer] = set()
        self._scratch = memoryview(bytearray(64 << 10))

    def take(self, sock: socket.socket) -> bool:
        """Half-close `sock` (its answer is written) and discard what still comes, closing it within the bounds.
        False, with `sock` untouched, when it should just be closed (too many lingering, or already broken)."""
        if len(self.connections) >= self.max_connections:
            return False
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False  # reset or not connected: nothing to wait for
        io_loop = IOLoop.current()
        now = io_loop.time()
        lingerer = _Lingerer(sock, deadline=now + self.seconds, last_read=now)
        self.connections.add(lingerer)
        io_loop.add_handler(sock.fileno(), lambda fd, events: self._readable(lingerer), IOLoop.READ)
        self._schedule(lingerer)
        return True

    def _schedule(self, lingerer: _Lingerer) -> None:
        lingerer.timeout = IOLoop.current().call_at(min(lingerer.deadline, lingerer.last_read + self.idle),
                                                    self._check, lingerer)

    def _check(self, lingerer: _Lingerer) -> None:
        now = IOLoop.current().time()
        if now >= lingerer.deadline or now >= lingerer.last_read + self.idle:
            self._close(lingerer)
        else:
            self._schedule(lingerer)  # bytes came meanwhile: the idle bound starts again from the last of them

    def _readable(self, lingerer: _Lingerer) -> None:
        read = 0
        while read < LINGER_READ_PER_WAKEUP:
            try:
                count = lingerer.sock.recv_into(self._scratch)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                count = 0  # reset by the client: nothing more to wait for
            if count == 0:  # the client closed
                self._close(lingerer)
                return
            read += count
            lingerer.discarded += count
            if lingerer.discarded > self.max_bytes:
                self._close(lingerer)
                return
        if read:
            lingerer.last_read = IOLoop.current().time()

    def _close(self, lingerer: _Lingerer) -> None:
        if lingerer not in self.connections:
            return
        self.connections.discard(lingerer)
        io_loop = IOLoop.current()
        if lingerer.timeout is not None:
            io_loop.remove_timeout(lingerer.timeout)
        try:
            io_loop.remove_handler(lingerer.sock.fileno())
        except (OSError, ValueError, KeyError):
            pass
        lingerer.sock.close()

    def close_all(self) -> None:
        for lingerer in list(self.connections):
            self._close(lingerer)


class LingeringStream(IOStream):
    """An IOStream whose close, once `linger()` was called, hands its socket to a Lingering instead of closing it
    (IOStream.close() calls `close_fd` after taking the socket off the IOLoop)."""

    def __init__(self, sock: socket.socket, lingering: Lingering, **kwargs: Any) -> None:
        super().__init__(sock, **kwargs)
        self.lingering = lingering
        self.lingers = False

    def linger(self) -> None:
        self.lingers = True

    def close_fd(self) -> None:
        if self.lingers and self.error is None and self.lingering.take(self.socket):
            self.socket = None  # type: ignore[assignment]  # the Lingering owns it now; tornado does the same
            return
        super().close_fd()


class LingeringHTTPServer(HTTPServer):
    """An HTTPServer whose connections' streams are LingeringStreams (plain TCP only: with TLS, tornado's stream is
    kept and closes as usual)."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.lingering = Lingering()

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        if type(stream) is IOStream:  # made by TCPServer and not used yet: the same socket, in our stream
            stream = LingeringStream(stream.socket, self.lingering, max_buffer_size=self.max_buffer_size,
                                     read_chunk_size=self.read_chunk_size)
        super().handle_stream(stream, address)

    async def close_all_connections(self) -> None:
        await super().close_all_connections()
        self.lingering.close_all()


def linger_after_answer(connection: Any) -> None:
    """Have the connection of a request close lingeringly when tornado closes it (after the answer is written)."""
    stream = connection_stream(connection)
    if isinstance(stream, LingeringStream):
        stream.linger()

