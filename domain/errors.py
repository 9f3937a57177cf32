"""The gateway's errors: plain exceptions, raised by any layer below the HTTP surface.

Each names what went wrong, not how it is answered: `handlers/errors.py` maps every class to its HTTP status, body
and headers, in one place. The answer's body is the gateway's envelope `{"code": <status>, "message": ...}`, plus
`errors` (the offending fields of a validation error) and `details` (fields some answers add)."""
from __future__ import annotations

from typing import Any

# What a caller is told to wait when something the gateway needs is away (the Retry-After of a 503): MongoDB, Petya.
RETRY_AFTER = 2


class GatewayError(Exception):
    default_message = "internal error"

    def __init__(self, message: str | None = None, *, errors: Any = None, retry_after: float | None = None,
                 details: dict[str, Any] | None = None) -> None:
        self.message: str = message or self.default_message
        super().__init__(self.message)
        self.errors = errors  # the offending fields, for a validation error
        self.retry_after = retry_after  # seconds, answered as Retry-After when set
        self.details = details or {}  # more fields of the answer's body

    def __str__(self) -> str:
        return self.message


class BadRequest(GatewayError):
    default_message = "invalid request"


class Unauthorized(GatewayError):
    default_message = "missing or invalid API key"


class Forbidden(GatewayError):
    default_message = "forbidden"


class NotFound(GatewayError):
    default_message = "not found"


class Conflict(GatewayError):
    default_message = "conflict"


class PayloadTooLarge(GatewayError):
    default_message = "request body too large"


class UnsupportedWebSocketVersion(GatewayError):
    """A WebSocket handshake in another version than 13 (RFC 6455 asks for 426 naming the version spoken)."""
    default_message = "unsupported Sec-WebSocket-Version: use 13"


class TooManyRequests(GatewayError):
    """An upstream's rate limit (ours in front of it, or its own 429): try again after `retry_after` seconds."""
    default_message = "too many requests to the upstream: try again shortly"


class ConcurrencyLimitExceeded(GatewayError):
    """The customer's (or our upstream account's) concurrent sessions are all taken."""

    def __init__(self, message: str, limit: int | None = None, running: int | None = None,
                 retry_after: float = 5) -> None:
        super().__init__(message, retry_after=retry_after)  # a guess: sessions end on their own time
        self.limit, self.running = limit, running


class UpstreamUnavailable(GatewayError):
    """An upstream (HeyGen, LiveAvatar, Petya) refused the connection or answered garbage."""
    default_message = "upstream unavailable"


class RoomUnavailable(UpstreamUnavailable):
    """The gateway's room agent could not join the session's LiveKit room (services/rooms.py)."""
    default_message = "the gateway could not join the session's room"


class ServiceUnavailable(GatewayError):
    """Something the gateway needs (MongoDB, Petya, room in the turn queue) is not there now."""
    default_message = "service unavailable"


class UpstreamTimeout(GatewayError):
    default_message = "upstream timed out"
