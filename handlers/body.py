"""Request bodies: read at most MAX_BODY_SIZE bytes of one (answering 413 as soon as a body shows it is over), and
parse it as JSON strictly."""
from __future__ import annotations

import json
import sys
from typing import Any

import tornado.web
from tornado.httputil import HTTPInputError
from tornado.iostream import StreamClosedError

from clients.tornado_compat import chunked_body
from domain.errors import BadRequest, GatewayError, PayloadTooLarge
from handlers.linger import linger_after_answer

# How deeply a request body may nest: far beyond any real body, and well within what json and the BSON encoder
# handle without recursing out of the stack.
MAX_JSON_DEPTH = 32
UNLIMITED = 1 << 62


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _nested_deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def parse_json_body(raw: bytes) -> Any:
    """A request body parsed as JSON (RFC 8259: UTF-8, no NaN/Infinity), or BadRequest saying why not. Strings that
    cannot be encoded again (a `\\udc00` escape of a lone surrogate) are refused here rather than failing later in
    the BSON encoder or an upstream call."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    try:
        body = json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise BadRequest(f"request body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError:
        raise BadRequest("request body is not valid JSON") from None
    if _nested_deeper_than(body, MAX_JSON_DEPTH):
        raise BadRequest(f"request body is nested more than {MAX_JSON_DEPTH} levels deep")
    if "\\ud" in text.lower():  # only an escape can bring in a surrogate: the UTF-8 decode refused the rest
        try:
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise BadRequest("request body has a string that is not valid Unicode (a lone surrogate escape)") from None
    return body


class BodyLimitMixin:
    """For `@tornado.web.stream_request_body` handlers: the body is received here, at most MAX_BODY_SIZE bytes of it.

    A declared Content-Length over the limit is answered 413 before any of the body is read, and a chunked body is
    answered 413 as soon as it goes over, keeping no more of it; either way the connection is closed after the answer
    (tornado stops reading an answered request's body by closing), lingeringly (handlers/linger.py): half-closed,
    and what the client still sends is discarded for at most LINGER_SECONDS / LINGER_IDLE / LINGER_BYTES, so that a
    client writing its whole body before reading gets to read the answer. The same holds for any answer given
    before the body was read (a refused framing, a 405 from tornado). Tornado's own per-connection cap is lifted for
    these handlers, so its bare `400` never follows our answer. Handlers read the body with `self.body` (or
    `load_body`): `request.body` is not filled in streaming mode. A subclass that must refuse a request from its
    headers overrides `refuse_early`, not `prepare`."""

    _received: bytearray | bytes | None = None
    _sent: Any = None
    _cut_off = False  # answered before the whole body was read: the connection closes (lingeringly) after the answer
    _answered = False  # finish() was called
    _prepared = False  # prepare() let the request through: tornado reads its body before the handler's method runs

    def __init__(self, application: Any, request: Any, **kwargs: Any) -> None:
        # Lifted before anything can answer (tornado answers an unknown method 405 before prepare() runs).
        request.connection.set_max_body_size(UNLIMITED)
        super().__init__(application, request, **kwargs)  # type: ignore[call-arg]

    @property
    def body(self) -> bytes:
        if self._received is None:
            return b""
        if not isinstance(self._received, bytes):
            self._received = bytes(self._received)
        return self._received

    def finish(self, chunk: Any = None) -> Any:
        if not self._prepared and not self._answered and self._has_body():
            self._cut_off = True  # answered before prepare() (tornado's 405): the body is unread
        if self._cut_off:
            self.set_header("Connection", "close")  # type: ignore[attr-defined]
            linger_after_answer(self.request.connection)  # type: ignore[attr-defined]
        self._answered = True
        self._sent = super().finish(chunk)  # type: ignore[misc]
        return self._sent

    async def prepare(self) -> None:
        """Refuse a bad request before its body is read (see `refuse_early`); the answer is on the wire and the
        connection closed before tornado goes on to read the body."""
        try:
            self.refuse_early()
        except (GatewayError, tornado.web.HTTPError):
            self._cut_off = True
            self.send_error(exc_info=sys.exc_info())  # type: ignore[attr-defined]
            if self._sent is not None:
                try:
                    await self._sent
                except StreamClosedError:
                    pass
            return
        self._prepared = True

    def _has_body(self) -> bool:
        headers = self.request.headers  # type: ignore[attr-defined]
        return "Transfer-Encoding" in headers or headers.get("Content-Length", "0").strip() not in ("", "0")

    def max_body_size(self) -> int:
        return self.gateway.settings.max_body_size  # type: ignore[attr-defined]

    def refuse_early(self) -> None:
        """Raise a GatewayError to answer now, from the headers alone: a body framing tornado would refuse with a
        bare 400, or a declared length over MAX_BODY_SIZE."""
        limit = self.max_body_size()
        headers = self.request.headers  # type: ignore[attr-defined]
        try:
            chunked_body(headers)  # also refuses Transfer-Encoding with Content-Length
        except HTTPInputError:
            raise BadRequest("invalid Transfer-Encoding") from None
        declared = headers.get("Content-Length")
        if declared is None:
            return
        values = {value.strip() for value in declared.split(",")}
        length = values.pop() if len(values) == 1 else ""
        if not (length.isascii() and length.isdigit()):
            raise BadRequest("invalid Content-Length")
        if int(length) > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")

    def data_received(self, chunk: bytes) -> None:
        if self._answered:
            return
        limit = self.max_body_size()
        if self._received is None:
            self._received = bytearray()
        if len(self._received) + len(chunk) > limit:
            self._received, self._cut_off = None, True
            error = PayloadTooLarge(f"request body exceeds {limit} bytes")
            self.send_error(exc_info=(type(error), error, None))  # type: ignore[attr-defined]
            return
        self._received += chunk
