"""The gateway's own additions to the plugins' contracts, for either provider: what a client reports was said (text
it received over LiveKit, where HeyGen v2 and LiveAvatar send it), and the transcript as the gateway holds it."""
from __future__ import annotations

from typing import Any

from domain.errors import BadRequest
from handlers.base import BaseHandler
from handlers.contracts import Contract, Route
from handlers.openapi import FRAMING, answer, json_body, operation, statuses
from handlers.schemas import REPORTED_MESSAGE


class ReportedMessageHandler(BaseHandler):
    """`recorded: true` means a new utterance; either way the turn is in the hand-off to Petya (409 once the
    session's hand-off fixed its cut-off)."""

    role = ""

    async def post(self) -> None:
        customer = await self.authenticate()
        request = self.load_body(REPORTED_MESSAGE)
        self.log_session_id = request["session_id"]
        added = await self.gateway.transcripts.report(customer, request["session_id"], self.role, request["text"])
        self.send_json({"code": 100, "message": "success", "data": {"recorded": added}})


class AvatarMessageHandler(ReportedMessageHandler):
    role = "avatar"


class UserMessageHandler(ReportedMessageHandler):
    role = "user"


class TranscriptHandler(BaseHandler):
    """The transcript of a session as the gateway holds it, for its owner (the demo console shows it live)."""

    async def get(self) -> None:
        customer = await self.authenticate()
        session_id = self.get_query_argument("session_id", "")
        if not session_id:
            raise BadRequest("invalid field: session_id", errors={"session_id": ["Missing data for required field."]})
        self.log_session_id = session_id
        data = await self.gateway.transcripts.of(customer, session_id)
        self.send_json({"code": 100, "message": "success", "data": data})


def reported(op_id: str, summary: str, description: str) -> dict[str, Any]:
    return {"post": operation(
        op_id, summary, description,
        {"200": answer("recorded (or a repeat)", "RecordedAnswer"),
         **statuses("400", "401", "404", "409", "413", "502", "503", "504", session=True)},
        body=json_body("ReportedMessage", True))}


def transcript() -> dict[str, Any]:
    return {"get": operation(
        "streamingTranscript", "The session's transcript",
        "The transcript as the gateway holds it (each turn once, in spoken order, with the paths that reported "
        "it), the session's status and its hand-off state; for the session's owner, either provider.",
        {"200": answer("the transcript", "TranscriptAnswer"),
         **statuses("400", "401", "404", "413", "502", "503", "504", session=True,
                    body_400="session_id missing, a query argument that is not UTF-8, or " + FRAMING)},
        parameters=[{"name": "session_id", "in": "query", "required": True,
                     "schema": {"type": "string", "minLength": 1}}])}


CONTRACT = Contract("reports", (
    Route(r"/v1/streaming\.avatar_message", AvatarMessageHandler, "/v1/streaming.avatar_message",
          lambda: reported("streamingAvatarMessage", "Report what the avatar said",
                           "Text the client received over LiveKit (HeyGen v2, LiveAvatar), recorded as an avatar turn "
                           "(the same utterance from two paths counts once). 409 once the session's hand-off fixed "
                           "its cut-off.")),
    Route(r"/v1/streaming\.user_message", UserMessageHandler, "/v1/streaming.user_message",
          lambda: reported("streamingUserMessage", "Report what the user said",
                           "As avatar_message, recorded as a user turn.")),
    Route(r"/v1/streaming\.transcript", TranscriptHandler, "/v1/streaming.transcript", transcript),
))
