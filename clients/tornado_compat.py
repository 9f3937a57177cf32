"""Every private or undocumented tornado name the gateway relies on, each named once, here (tornado==6.6.1).

Two parts of the gateway reach below tornado's public API, for speed:

- the socket relay's fast pump (relay/pump.py, relay/frames.py): it takes both legs' sockets from their IOStreams
  once the handshakes are done, keeps tornado's WebSocketProtocol13 for the close handshake and keep-alive pings, and
  moves bytes itself;
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

import inspect
import socket
from collections.abc import Callable
from typing import Any

from tornado import http1connection, httpclient, util, websocket
from tornado.concurrent import Future
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httputil import HTTPHeaders
from tornado.iostream import IOStream
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
)
# Signatures of the hooked methods as this module calls them.
SIGNATURES: dict[tuple[type, str], tuple[str, ...]] = {
    (WebSocketProtocol13, "_write_frame"): ("self", "fin", "opcode", "data", "flags"),
    (WebSocketProtocol13, "_receive_frame_loop"): ("self",),
    (WebSocketProtocol13, "_abort"): ("self",),
    (WebSocketHandler, "on_ws_connection_close"): ("self", "close_code", "close_reason"),
    (WebSocketClientConnection, "on_ws_connection_close"): ("self", "close_code", "close_reason"),
    (CurlAsyncHTTPClient, "_curl_setup_request"): ("self", "curl", "request", "buffer", "headers"),
    (CurlAsyncHTTPClient, "_curl_header_callback"): ("self", "headers", "header_callback", "header_line_bytes"),
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


def protocol_params(ping_interval: float | None, ping_timeout: float | None, max_message_size: int) -> Any:
    """The parameters a WebSocketProtocol13 is built with (permessage-deflate never negotiated)."""
    return websocket._WebSocketParams(ping_interval=ping_interval, ping_timeout=ping_timeout,
                                      max_message_size=max_message_size, compression_options=None)


class _Connection(WebSocketClientConnection):
    """A client connection whose protocol its creator makes. (One class for all: a class per connection would cost
    a couple of kilobytes per socket.)"""

    def __init__(self, make_protocol: Callable[[WebSocketClientConnection], Any], *args: Any, **kwargs: Any) -> None:
        self.make_protocol = make_protocol
        super().__init__(*args, **kwargs)

    def get_websocket_protocol(self) -> Any:
        return self.make_protocol(self)


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
    IOStream, message queue): a few kilobytes per socket that a relay never reads again."""
    connection.request = connection.headers = connection.connection = connection.stream = None  # type: ignore
    connection.read_queue = None  # type: ignore[assignment]
    connection.tcp_client.close()


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
