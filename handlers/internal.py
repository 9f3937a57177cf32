"""The gateway processes' calls to each other, about the rooms one of them holds (services/rooms.py): never a customer's
or a browser's. Authenticated with a key derived from GATEWAY_SECRET (`Authorization: Bearer`), served at the root
only, not in the OpenAPI document; nginx need not (and the example does not) expose them.

- `POST /internal/rooms/{session_id}/command` `{command, wait}`: publish a command in the room this process holds
  (503 while it holds it no more: the caller answers its own caller 503 + Retry-After).
- `GET /internal/rooms/{session_id}/socket` (WebSocket): a bridged session's HeyGen events as text frames, from the
  room this process holds; the HeyGen SDK's binary TextFrames sent on it (its default `speak`) become talks. The
  browser's streaming.chat socket is relayed here by whichever process it reached (relay/handler.py), which connects
  it before answering the browser's handshake: 503 + Retry-After here (this process holds the room no more) is
  503 + Retry-After there.
"""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from tornado.websocket import WebSocketClosedError, WebSocketHandler

from domain import bridge
from domain.errors import BadRequest, NotFound
from handlers.base import BaseHandler, GatewayHandlerMixin, bearer_is
from handlers.contracts import Contract, Route
from relay.pipecat import text_of
from services.rooms import handing_over

if TYPE_CHECKING:
    from handlers.app import Gateway

log = logging.getLogger("gateway.rooms")


def authorized(gateway: Gateway, header: str | None) -> bool:
    return bearer_is(header, gateway.rooms.key)


class CommandHandler(BaseHandler):
    async def post(self, session_id: str) -> None:
        if not authorized(self.gateway, self.request.headers.get("Authorization")):
            raise NotFound("not found")  # the internal routes do not exist for anyone else
        self.log_session_id = session_id
        try:
            body = json.loads(self.body or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("command"), dict) \
                or not isinstance(body["command"].get("event_id"), str):
            raise BadRequest("a command with an event_id is required")
        result = await self.gateway.rooms.perform(session_id, body["command"], bool(body.get("wait")))
        self.send_json(result)


class RoomSocketHandler(GatewayHandlerMixin, WebSocketHandler):
    """A bridged session's HeyGen events, from the room this process holds."""

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.session_id = ""

    def check_origin(self, origin: str) -> bool:
        return False  # processes send no Origin; a browser never reaches this

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if not authorized(self.gateway, self.request.headers.get("Authorization")):
            raise NotFound("not found")  # the internal routes do not exist for anyone else
        self.log_session_id = session_id = args[0]
        if not self.gateway.rooms.hears(session_id):  # answered before the upgrade; the relay answers its browser
            raise handing_over()  # 503 + Retry-After in turn (relay/handler.py)
        await super().get(*args, **kwargs)  # no await between the check and open(): the agent is still there then

    def open(self, session_id: str) -> None:
        self.session_id = session_id
        if not self.gateway.rooms.listen(session_id, self):  # checked in get(), with nothing awaited since: defensive
            self.close(1013, "the session's room is being handed over; try again")

    def send_event(self, text: str) -> None:
        try:
            self.write_message(text)
        except WebSocketClosedError:
            self.on_close()

    def end(self, code: int, reason: str) -> None:
        self.close(code, reason)

    def on_message(self, message: str | bytes) -> None:
        """The HeyGen SDK's speak() over the socket (a pipecat TextFrame) is a talk; audio frames have nowhere to go
        (LiveAvatar hears the user in the room)."""
        if isinstance(message, bytes) and (text := text_of(message)) and text.strip():
            self.gateway.background.spawn(self._talk(text))

    async def _talk(self, text: str) -> None:
        try:
            await self.gateway.rooms.perform(self.session_id, bridge.command("avatar.speak_response", text))
        except Exception as exc:
            log.warning("talk from the socket of %s not published: %s", self.session_id, exc)

    def on_close(self) -> None:
        self.gateway.rooms.unlisten(self.session_id, self)


def no_operations() -> dict[str, Any]:
    return {}


CONTRACT = Contract("internal", (
    Route(r"/internal/rooms/([^/]+)/command", CommandHandler, "/internal/rooms/{session_id}/command",
          no_operations, prefixed=False, preflight=False, documented=False),
    Route(r"/internal/rooms/([^/]+)/socket", RoomSocketHandler, "/internal/rooms/{session_id}/socket",
          no_operations, prefixed=False, preflight=False, documented=False, no_body=True),
))
