"""The gateway's own error vocabulary. Handlers render each as JSON `{"code": ..., "message": ...}` with its status.

`code` mirrors the HTTP status so the body stays in HeyGen's `{code, message}` envelope shape; `errors` (when set)
names the offending fields. They are tornado HTTPErrors, so a handler that raises one answers with its status
and tornado does not log it as an uncaught exception (the access log line records it).
"""
from tornado.web import HTTPError


class GatewayError(HTTPError):
    status = 500
    default_message = "internal error"

    def __init__(self, message=None, errors=None, status=None, retry_after=None):
        if status is not None:
            self.status = status
        super().__init__(self.status)
        self.message = message or self.default_message
        self.errors = errors
        self.retry_after = retry_after  # seconds, sent as Retry-After when set

    def __str__(self):
        return f"{self.status}: {self.message}"

    def body(self):
        body = {"code": self.status, "message": self.message}
        if self.errors:
            body["errors"] = self.errors
        return body


class BadRequest(GatewayError):
    status = 400
    default_message = "invalid request"


class Unauthorized(GatewayError):
    status = 401
    default_message = "missing or invalid API key"


class Forbidden(GatewayError):
    status = 403
    default_message = "forbidden"


class NotFound(GatewayError):
    status = 404
    default_message = "not found"


class Conflict(GatewayError):
    status = 409
    default_message = "conflict"


class PayloadTooLarge(GatewayError):
    status = 413
    default_message = "request body too large"


class UpstreamUnavailable(GatewayError):
    """An upstream (HeyGen, LiveAvatar, Petya) refused the connection or answered garbage."""
    status = 502
    default_message = "upstream unavailable"


class ServiceUnavailable(GatewayError):
    status = 503
    default_message = "service unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    default_message = "upstream timed out"


class TooManyRequests(GatewayError):
    """An upstream's rate limit (ours in front of it, or its own 429): try again after `retry_after` seconds."""
    status = 429
    default_message = "too many requests to the upstream: try again shortly"


class ConcurrencyLimitExceeded(GatewayError):
    """The customer's (or our upstream account's) concurrent sessions are all taken."""
    status = 429

    def __init__(self, message, limit=None, running=None, retry_after=5):
        super().__init__(message, retry_after=retry_after)  # a guess: sessions end on their own time
        self.limit, self.running = limit, running

    def body(self):
        return {"code": "concurrency_limit_exceeded", "message": self.message, "limit": self.limit,
                "running": self.running}
