"""Every private or undocumented tornado name the gateway relies on, each named once, here (tornado==6.6.1).

Three parts of the gateway reach below tornado's public API, for speed (and the relay for memory):

- the socket relay's fast pump (relay/pump.py, relay/frames.py): it takes both legs' sockets from their IOStreams
  once the handshakes are done, keeps tornado's WebSocketProtocol13 for the close handshake and keep-alive pings, and
  moves bytes itself; what an idle relayed socket keeps is kept small (the handshake's leftovers released, the
  attributes tornado sets on its objects in their classes' shared key tables: `share_keys`);
- the upstream curl client (clients/http.py): a leaner per-request setup and header parsing than tornado's;
- the lingering close of a connection whose request body was answered unread (handlers/linger.py): the stream a
  request arrived on (`connection_stream`).

They reach tornado only through this module: hook classes that map tornado's private methods to names of ours, and
functions for the private attributes. `missing()` lists what a tornado release no longer has;
tests/unit/test_tornado_compat.py asserts it is empty and that the overridden methods keep their signatures, so a
tornado upgrade fails there, in one place, loudly. At run time the relay falls back to its plain pump
(relay/plain.py, public API only) when anything is missing, and the curl client to tornado's own setup.
"""
from __future__ import annotations

import functools
import inspect
import socket
from collections.abc import Callable, Iterable
from typing import Any

from tornado import http1connection, httpclient, util, websocket
from tornado.concurrent import Future
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httputil import HTTPHeaders
from tornado.iostream import IOStream
from tornado.tcpclient import TCPClient
from tornado.websocket import WebSocketClientConnection, WebSocketHandler, WebSocketProtocol13

# (owner, name, what for): every private or undocumented name used below, checked by missing().
NAMES: tuple[tuple[Any, str, str], ...] = (
    (util, "_websocket_mask", "unmask a client frame's payload (C speedup when built)"),
    (httpclient, "_RequestProxy", "a websocket_connect request with the client defaults"),
    (httpclient.HTTPRequest, "_DEFAULTS", "those defaults"),
    (websocket, "_WebSocketParams", "a protocol's ping and size parameters"),
    (WebSocketProtocol13, "_receive_frame_loop", "hook: the pump reads the socket instead"),
    (WebSocketProtocol13, "_write_frame", "hook: the gateway's own frames wait for a frame boundary"),
    (WebSocketProtocol13, "_abort", "close the socket at once"),
    (WebSocketProtocol13, "on_connection_close", "undocumented: the socket is gone"),
    (WebSocketHandler, "get_websocket_protocol", "undocumented hook: the browser leg's protocol"),
    (WebSocketHandler, "on_ws_connection_close", "undocumented: tells the handler its socket closed"),
    (WebSocketClientConnection, "get_websocket_protocol", "undocumented hook: the upstream leg's protocol"),
    (WebSocketClientConnection, "on_ws_connection_close", "undocumented: tells the connection it closed"),
    (CurlAsyncHTTPClient, "_curl_setup_request", "hook: the lean per-request curl setup"),
    (CurlAsyncHTTPClient, "_curl_header_callback", "hook: only the kept response headers parsed"),
    (CurlAsyncHTTPClient, "_set_timeout", "hook: libcurl's timer (its M_TIMERFUNCTION)"),
    (http1connection, "is_transfer_encoding_chunked", "undocumented: tornado's own check of a body's framing"),
)
# Instance attributes (set in __init__, so checked on a fresh object by the test): (class, attribute).
ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("WebSocketProtocol13", "_received_pong"), ("WebSocketProtocol13", "_ping_coroutine"),
    ("WebSocketProtocol13", "client_terminated"), ("WebSocketProtocol13", "params"),
    ("IOStream", "_read_buffer"), ("IOStream", "_read_buffer_size"), ("IOStream", "_state"),
    ("IOStream", "_closed"),
    ("WebSocketClientConnection", "connect_future"), ("WebSocketClientConnection", "tcp_client"),
    ("WebSocketClientConnection", "read_queue"),
    ("HTTP1Connection", "stream"),
    ("RequestHandler", "_headers"), ("RequestHandler", "_write_buffer"), ("RequestHandler", "_transforms"),
    ("WebSocketClientConnection", "parsed"), ("WebSocketClientConnection", "parsed_hostname"),
    ("WebSocketClientConnection", "key"), ("WebSocketClientConnection", "chunks"),
    ("WebSocketClientConnection", "release_callback"), ("WebSocketClientConnection", "_sockaddr"),
)

# Every instance attribute tornado sets on a relayed socket's objects, in the order it sets them, for share_keys():
# a browser's handler (RequestHandler, WebSocketHandler; the last seven are the methods it disables at the 101), a leg
# (WebSocketProtocol13) and an upstream connection (WebSocketClientConnection, simple_httpclient._HTTPConnection).
# tests/unit/test_tornado_compat.py checks tornado still assigns each; tests/gateway/test_relay_memory.py that a
# relayed socket's objects carry no other.
HANDLER_KEYS = (
    "application", "request", "_headers_written", "_finished", "_auto_finish", "_prepared_future", "ui", "_headers",
    "_write_buffer", "_status_code", "_reason", "ws_connection", "close_code", "close_reason", "_on_close_called",
    "_transforms", "path_args", "path_kwargs", "open_args", "open_kwargs",
    "write", "redirect", "set_header", "set_cookie", "set_status", "flush", "finish")
PROTOCOL_KEYS = (
    "handler", "stream", "client_terminated", "server_terminated", "mask_outgoing", "params", "_final_frame",
    "_frame_opcode", "_masked_frame", "_frame_mask", "_frame_length", "_fragmented_message_buffer",
    "_fragmented_message_opcode", "_waiting", "_compression_options", "_decompressor", "_compressor",
    "_frame_compressed", "_message_bytes_in", "_message_bytes_out", "_wire_bytes_in", "_wire_bytes_out",
    "_received_pong", "_pong_future", "_pending_pong", "close_code", "close_reason", "_ping_coroutine",
    "_selected_subprotocol")
CONNECTION_KEYS = (
    "connect_future", "read_queue", "key", "_on_message_callback", "close_code", "close_reason", "params",
    "tcp_client", "io_loop", "start_time", "start_wall_time", "client", "request", "release_callback",
    "final_callback", "max_buffer_size", "max_header_size", "max_body_size", "code", "headers", "chunks",
    "_decompressor", "_timeout", "_sockaddr", "parsed", "parsed_hostname", "stream", "connection", "protocol")
# Signatures of the hooked methods as this module calls them.
SIGNATURES: dict[tuple[type, str], tuple[str, ...]] = {
    (WebSocketProtocol13, "_write_frame"): ("self", "fin", "opcode", "data", "flags"),
    (WebSocketProtocol13, "_receive_frame_loop"): ("self",),
    (WebSocketProtocol13, "_abort"): ("self",),
    (WebSocketHandler, "on_ws_connection_close"): ("self", "close_code", "close_reason"),
    (WebSocketClientConnection, "on_ws_connection_close"): ("self", "close_code", "close_reason"),
    (CurlAsyncHTTPClient, "_curl_setup_request"): ("self", "curl", "request", "buffer", "headers"),
    (CurlAsyncHTTPClient, "_curl_header_callback"): ("self", "headers", "header_callback", "header_line_bytes"),
    (CurlAsyncHTTPClient, "_set_timeout"): ("self", "msecs"),
}


def missing() -> list[str]:
    """The names of NAMES this tornado does not have, and the hooked methods whose signature changed."""
    gone = [f"{getattr(owner, '__name__', owner)}.{name}" for owner, name, _ in NAMES if not hasattr(owner, name)]
    for (owner, name), expected in SIGNATURES.items():
        method = getattr(owner, name, None)
        if method is not None and tuple(inspect.signature(method).parameters) != expected:
            gone.append(f"{owner.__name__}.{name}{expected} (signature changed)")
    return gone


websocket_mask: Callable[[bytes, bytes], bytes] = getattr(util, "_websocket_mask", util._websocket_mask_python)


def share_keys(cls: type, names: Iterable[str]) -> None:
    """Have every instance of `cls` keep the attributes `names` in one key table shared by the class (CPython's
    key-sharing instance dicts, PEP 412): a few hundred bytes an instance, not a dict of its own (1.5 KiB past 21
    attributes). CPython fills a class's table from its first instances and closes it as more are made, to at most
    30 names: an attribute first set once it is closed (tornado sets a handler's last ten after awaiting; sockets
    open concurrently) gives every instance that sets it a dict of its own. Set on a throwaway instance made before
    any other, the names are all there from the start. Call it once, right after the class is defined; `cls`'s own
    attributes are best in `__slots__`, leaving the table to tornado's (29 at most)."""
    probe: Any = object.__new__(cls)
    for name in names:
        object.__setattr__(probe, name, None)


# --- the relay's legs -------------------------------------------------------------------------------------------

class HookedProtocol(WebSocketProtocol13):
    """WebSocketProtocol13 with its private hooks under our names: `receive_frames()` (tornado's read loop unless
    overridden), `write_frame()` (tornado's framing and write unless overridden; `write_frame_now()` is tornado's),
    `abort()`, and the keep-alive state `received_pong` / `ping_task`."""

    async def _receive_frame_loop(self) -> None:
        await self.receive_frames()

    async def receive_frames(self) -> None:
        await super()._receive_frame_loop()

    def _write_frame(self, fin: bool, opcode: int, data: bytes, flags: int = 0) -> Future[None]:
        return self.write_frame(fin, opcode, data, flags)

    def write_frame(self, fin: bool, opcode: int, data: bytes, flags: int = 0) -> Future[None]:
        return self.write_frame_now(fin, opcode, data, flags)

    def write_frame_now(self, fin: bool, opcode: int, data: bytes, flags: int = 0) -> Future[None]:
        return super()._write_frame(fin, opcode, data, flags)

    def abort(self) -> None:
        self._abort()

    @property
    def received_pong(self) -> bool:
        return self._received_pong

    @received_pong.setter
    def received_pong(self, value: bool) -> None:
        self._received_pong = value

    @property
    def ping_task(self) -> Any:
        """Where tornado keeps a leg's ping task; close() cancels what it holds."""
        return self._ping_coroutine

    @ping_task.setter
    def ping_task(self, value: Any) -> None:
        self._ping_coroutine = value

    def terminated_by_peer(self, code: int | None, reason: str | None) -> None:
        """A close frame came: answered as tornado answers it."""
        self.client_terminated = True
        self.close_code, self.close_reason = code, reason
        self.close(code)

    def tell_handler_closed(self) -> None:
        """The socket is gone: the handler (or client connection) hears it as from tornado's own read loop."""
        self.handler.on_ws_connection_close(self.close_code, self.close_reason)


@functools.lru_cache(maxsize=8)
def protocol_params(ping_interval: float | None, ping_timeout: float | None, max_message_size: int) -> Any:
    """The parameters a WebSocketProtocol13 is built with (permessage-deflate never negotiated): one object for all
    the legs that have the same (tornado only reads them)."""
    return websocket._WebSocketParams(ping_interval=ping_interval, ping_timeout=ping_timeout,
                                      max_message_size=max_message_size, compression_options=None)


class _Connection(WebSocketClientConnection):
    """A client connection whose protocol its creator makes. (One class for all: a class per connection would cost
    a couple of kilobytes per socket.)"""
    __slots__ = ("make_protocol",)

    def __init__(self, make_protocol: Callable[[WebSocketClientConnection], Any], *args: Any, **kwargs: Any) -> None:
        self.make_protocol = make_protocol
        super().__init__(*args, **kwargs)
        self.params = protocol_params(self.params.ping_interval, self.params.ping_timeout,
                                      self.params.max_message_size)

    def get_websocket_protocol(self) -> Any:
        return self.make_protocol(self)


share_keys(_Connection, CONNECTION_KEYS)
_CLOSED_CLIENT = TCPClient()  # what a released connection closes again when it closes (nothing)
_CLOSED_CLIENT.close()


def connect_client(request: httpclient.HTTPRequest, protocol: Callable[[WebSocketClientConnection], Any],
                   on_message: Callable[[Any], None], ping_interval: float | None, ping_timeout: float | None,
                   max_message_size: int) -> Future[WebSocketClientConnection]:
    """`websocket_connect`, with the connection's protocol made by `protocol(connection)`."""
    request.headers = HTTPHeaders(request.headers)
    proxied = httpclient._RequestProxy(request, httpclient.HTTPRequest._DEFAULTS)
    connection = _Connection(protocol, proxied, on_message_callback=on_message,
                             ping_interval=ping_interval, ping_timeout=ping_timeout, max_message_size=max_message_size)
    return connection.connect_future


def take_socket(stream: IOStream) -> tuple[socket.socket, bytes]:
    """A stream's socket and the bytes it read but did not deliver. The IOStream is left inert (closed without closing
    the socket, which now belongs to whoever took it)."""
    buffered = bytes(stream._read_buffer[:stream._read_buffer_size])
    if stream._state is not None:
        stream.io_loop.remove_handler(stream.socket)
        stream._state = None
    stream._closed = True
    return stream.socket, buffered


def release_handshake(connection: WebSocketClientConnection) -> None:
    """Drop what a client connection's handshake left on it (request, response headers, HTTP connection, inert
    IOStream, message queue, parsed URL, handshake key, its own TCP client): a few kilobytes per socket that a relay
    never reads again. What it still does once released: close, and tell its message callback when it has."""
    connection.request = connection.headers = connection.connection = connection.stream = None  # type: ignore
    connection.read_queue = None  # type: ignore[assignment]
    connection.parsed = connection.parsed_hostname = connection.key = connection.chunks = None  # type: ignore
    connection.release_callback = connection._sockaddr = None  # type: ignore[assignment]
    connection.tcp_client.close()
    connection.tcp_client = _CLOSED_CLIENT  # on_connection_close() closes it again


_NO_HEADERS = HTTPHeaders()  # what a handler's 101 leaves of its response: nothing but frames is sent after it


def release_response(handler: WebSocketHandler) -> None:
    """Drop what a handler's 101 leaves once it is out (its headers, write buffer and output transforms): nothing
    but frames is sent after it, and tornado disables the methods that would use them."""
    handler._headers = _NO_HEADERS
    handler._write_buffer = handler._transforms = ()  # type: ignore[assignment]


# --- the curl client --------------------------------------------------------------------------------------------

class HookedCurlClient(CurlAsyncHTTPClient):
    """CurlAsyncHTTPClient with its per-request hooks under our names: `setup_request()` and `header_line()` (tornado's
    unless overridden); `body_too_large(curl)` marks a response over max_body_size as tornado reports it."""

    def _curl_setup_request(self, curl: Any, request: Any, buffer: Any, headers: Any) -> None:
        self.setup_request(curl, request, buffer, headers)

    def setup_request(self, curl: Any, request: Any, buffer: Any, headers: Any) -> None:
        super()._curl_setup_request(curl, request, buffer, headers)

    def _curl_header_callback(self, headers: Any, header_callback: Any, header_line_bytes: bytes) -> None:
        self.header_line(headers, header_callback, header_line_bytes)

    def header_line(self, headers: Any, header_callback: Any, header_line_bytes: bytes) -> None:
        super()._curl_header_callback(headers, header_callback, header_line_bytes)

    def _set_timeout(self, msecs: int) -> None:
        self.set_timer(msecs)

    def set_timer(self, msecs: int) -> None:
        """libcurl asks to be woken in `msecs` ms (tornado's, unless overridden)."""
        super()._set_timeout(msecs)

    @property
    def timer_pending(self) -> bool:
        """Whether the timer libcurl asked for is set and has not fired (tornado clears it when it fires)."""
        return self._timeout is not None

    @staticmethod
    def body_too_large(curl: Any) -> None:
        curl.info["body_too_large"] = True  # tornado's _finish reports it


def connection_stream(connection: Any) -> IOStream | None:
    """The IOStream a request arrived on, from its `request.connection` (an HTTP1Connection; None once detached)."""
    stream: IOStream | None = getattr(connection, "stream", None)
    return stream


def chunked_body(headers: HTTPHeaders) -> bool:
    """Whether a request's body is chunked; raises tornado.httputil.HTTPInputError for a framing tornado refuses
    (Transfer-Encoding with Content-Length, or an unknown coding)."""
    return http1connection.is_transfer_encoding_chunked(headers)
