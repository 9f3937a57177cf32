"""The gateway's routes: every API route under the root and, identically, under /api/v1/avatar; the operators'
routes (/healthz, /readyz, /metrics) at the root of the public port, or only on ADMIN_ADDRESS when that is set."""
from tornado.routing import PathMatches

from handlers.base import NoBodyHandler, NotFoundHandler
from handlers.demo import DemoHandler
from handlers.health import HealthHandler, ReadyHandler
from handlers.heygen import (CreateTokenHandler, InterruptHandler, KeepAliveHandler, NewSessionHandler,
                             OtherSessionCallHandler, StartHandler, StartListeningHandler, StopHandler,
                             StopListeningHandler, TaskHandler)
from handlers import liveavatar
from handlers.messages import AvatarMessageHandler, UserMessageHandler
from handlers.metrics import MetricsHandler
from handlers.openapi import OpenAPIHandler
from handlers.transcript import TranscriptHandler
from handlers.websocket import StreamingChatRelay

PREFIXES = ("", "/api/v1/avatar")

API = [
    (r"/v1/streaming\.create_token", CreateTokenHandler),
    (r"/v1/streaming\.new", NewSessionHandler),
    (r"/v1/streaming\.start", StartHandler),
    (r"/v1/streaming\.task", TaskHandler),
    (r"/v1/streaming\.stop", StopHandler),
    (r"/v1/streaming\.interrupt", InterruptHandler),
    (r"/v1/streaming\.keep_alive", KeepAliveHandler),
    (r"/v1/streaming\.start_listening", StartListeningHandler),
    (r"/v1/streaming\.stop_listening", StopListeningHandler),
    (r"/v1/streaming\.avatar_message", AvatarMessageHandler),
    (r"/v1/streaming\.user_message", UserMessageHandler),
    (r"/v1/streaming\.transcript", TranscriptHandler),
    (r"/v1/ws/streaming\.chat", StreamingChatRelay),
    (r"/v1/sessions/token", liveavatar.SessionTokenHandler),
    (r"/v1/sessions/start", liveavatar.StartHandler),
    (r"/v1/sessions/stop", liveavatar.StopHandler),
    (r"/v1/sessions/keep-alive", liveavatar.KeepAliveHandler),
    (r"/openapi\.json", OpenAPIHandler),  # the contract (handlers/openapi.py), under both prefixes
    # Any other per-session HeyGen call, after every route above (HeyGen's account-wide streaming.list is not one).
    (r"/v1/streaming\.(?!list$)([a-z][a-z_]{0,39})", OtherSessionCallHandler),
]


OPERATIONS = [
    (r"/healthz", HealthHandler),
    (r"/readyz", ReadyHandler),
    (r"/metrics", MetricsHandler),
]


class WithBody(PathMatches):
    """A path, for the requests that carry a body (any Content-Length but 0, or a Transfer-Encoding)."""

    def match(self, request):
        headers = request.headers
        if headers.get("Content-Length", "0") == "0" and "Transfer-Encoding" not in headers:
            return None
        return super().match(request)


def routes(gateway):
    deps = {"gateway": gateway}
    # The WebSocket relay reads a request whole before it runs; a handshake carries no body, so one that comes with
    # a body is answered by a handler that refuses it without reading it (413 / 400 JSON, with CORS headers).
    table = [(WithBody(prefix + path), NoBodyHandler, deps)
             for prefix in PREFIXES for path, handler in API if handler is StreamingChatRelay]
    table += [(prefix + path, handler, deps) for prefix in PREFIXES for path, handler in API]
    if not gateway.settings.admin_address:
        table += admin_routes(gateway)
    table.append((r"/demo/?", DemoHandler, deps))
    table.append((r"/demo/(.+)", DemoHandler, deps))
    return table


def admin_routes(gateway):
    """The operators' routes: on the public port, or on their own listener (ADMIN_ADDRESS)."""
    return [(path, handler, {"gateway": gateway}) for path, handler in OPERATIONS]


DEFAULT_HANDLER = NotFoundHandler
