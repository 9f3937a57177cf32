"""The relay on tornado's public API: message by message, `read_message` on HeyGen's leg and `on_message` on the
browser's, each forwarded with `write_message` (RELAY_PUMP=plain).

It is the fallback when this tornado lacks what the fast pump needs (clients/tornado_compat.py), and the oracle the
fast pump is tested against (tests/gateway/test_relay_pumps.py: the same traffic through both must arrive the same).
What differs, by design: tornado reassembles fragmented messages and sends them whole; each leg's pings are tornado's
own, and the far ends' pings are answered by tornado rather than passed through; frames are counted per message.
Backpressure: the next message of a leg is not read before the last one was written to the other leg (and its turns
queued), as tornado awaits what `on_message` returns and `read_message` waits to be called.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, WebSocketHandler, websocket_connect

from relay.frames import OP_BINARY, OP_TEXT
from relay.pipecat import TEXT_TAG
from relay.transcript import SocketTranscript

log = logging.getLogger("gateway.websocket")


async def connect(request: HTTPRequest, ping_interval: float | None, ping_timeout: float | None,
                  max_message_size: int) -> WebSocketClientConnection:
    """The upstream leg. Until `relay_upstream` reads it, tornado queues its first message and reads no further: what
    the upstream sends before the browser's side is open waits (on the socket, beyond the first)."""
    return await websocket_connect(request, ping_interval=ping_interval, ping_timeout=ping_timeout,
                                   max_message_size=max_message_size)


def _count(tally: Any, message: str | bytes) -> None:
    tally.frames += 1
    tally.bytes += len(message) if isinstance(message, bytes) else len(message.encode())


def client_message(message: str | bytes, upstream: WebSocketClientConnection, transcript: SocketTranscript,
                   tally: Any) -> Awaitable[None]:
    """One message from the browser: its words queued when it is a TextFrame, then it goes to HeyGen."""
    _count(tally, message)
    waiting = None
    if isinstance(message, bytes) and message[:1] == bytes((TEXT_TAG,)):
        waiting = transcript.from_client([(OP_BINARY, message)])
    return _forward(upstream, message, waiting)


async def _forward(to: Any, message: str | bytes, waiting: Awaitable[None] | None) -> None:
    if waiting is not None:
        await waiting  # the turn queue is full: this leg waits with it
    try:
        await to.write_message(message, binary=isinstance(message, bytes))
    except WebSocketClosedError:
        pass  # that leg has closed; its close reaches this one


def relay_upstream(handler: WebSocketHandler, upstream: WebSocketClientConnection, transcript: SocketTranscript,
                   tally: Any) -> asyncio.Task[None]:
    """Move HeyGen's messages to the browser until HeyGen's leg closes, then close the browser's (handler's
    `upstream_closed`)."""
    return asyncio.ensure_future(_upstream_to_client(handler, upstream, transcript, tally))  # the caller holds it


async def _upstream_to_client(handler: Any, upstream: WebSocketClientConnection, transcript: SocketTranscript,
                              tally: Any) -> None:
    try:
        while (message := await upstream.read_message()) is not None:
            _count(tally, message)
            waiting = transcript.from_upstream([(OP_TEXT, message.encode())]) if isinstance(message, str) else None
            await _forward(handler, message, waiting)
    except Exception:
        log.exception("relaying HeyGen's socket failed")
        upstream.close(1011)
    handler.upstream_closed()
