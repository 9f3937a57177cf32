"""The one place where the gateway's errors (domain/errors.py) become HTTP answers: status, JSON body, headers."""
from __future__ import annotations

from typing import Any

from domain import errors

STATUS: dict[type[errors.GatewayError], int] = {
    errors.BadRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedWebSocketVersion: 426,
    errors.TooManyRequests: 429,
    errors.ConcurrencyLimitExceeded: 429,
    errors.UpstreamUnavailable: 502,
    errors.ServiceUnavailable: 503,
    errors.UpstreamTimeout: 504,
}


def status_of(error: errors.GatewayError) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def body_of(error: errors.GatewayError) -> dict[str, Any]:
    """The gateway's envelope `{"code": <status>, "message"}` (+ `errors`, + the error's details); a quota refusal
    answers `{"code": "concurrency_limit_exceeded", "message", "limit", "running"}`, as other avatar vendors do."""
    if isinstance(error, errors.ConcurrencyLimitExceeded):
        return {"code": "concurrency_limit_exceeded", "message": error.message, "limit": error.limit,
                "running": error.running}
    body: dict[str, Any] = {"code": status_of(error), "message": error.message}
    if error.errors:
        body["errors"] = error.errors
    body.update(error.details)
    return body


def headers_of(error: errors.GatewayError) -> dict[str, str]:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(0, round(error.retry_after)))
    if isinstance(error, errors.UnsupportedWebSocketVersion):
        headers["Sec-WebSocket-Version"] = "13"
    return headers
