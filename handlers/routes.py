"""The gateway's routes: every one under the root and, identically, under /api/v1/avatar."""
from handlers.base import NotFoundHandler
from handlers.demo import DemoHandler
from handlers.health import HealthHandler
from handlers.heygen import (CreateTokenHandler, InterruptHandler, KeepAliveHandler, NewSessionHandler, StartHandler,
                             StopHandler, TaskHandler)
from handlers import liveavatar
from handlers.messages import AvatarMessageHandler, UserMessageHandler
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
    (r"/v1/streaming\.avatar_message", AvatarMessageHandler),
    (r"/v1/streaming\.user_message", UserMessageHandler),
    (r"/v1/streaming\.transcript", TranscriptHandler),
    (r"/v1/ws/streaming\.chat", StreamingChatRelay),
    (r"/v1/sessions/token", liveavatar.SessionTokenHandler),
    (r"/v1/sessions/start", liveavatar.StartHandler),
    (r"/v1/sessions/stop", liveavatar.StopHandler),
    (r"/v1/sessions/keep-alive", liveavatar.KeepAliveHandler),
]


def routes(gateway):
    deps = {"gateway": gateway}
    table = [(prefix + path, handler, deps) for prefix in PREFIXES for path, handler in API]
    table.append((r"/healthz", HealthHandler, deps))
    table.append((r"/demo/?", DemoHandler))
    table.append((r"/demo/(.+)", DemoHandler))
    return table


DEFAULT_HANDLER = NotFoundHandler
