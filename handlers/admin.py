"""The admin API, for operators and Petya: usage, and erasing a conversation. Served with the operators' routes (on
ADMIN_ADDRESS's listener when that is set, else at the root of PORT), behind `Authorization: Bearer <ADMIN_TOKEN>`;
without ADMIN_TOKEN it is off and answers 404.

- `GET /admin/usage?from=&to=&accountId=` (unix seconds; `from` defaults to 0, `to` to now): services/usage.py.
- `DELETE /admin/conversations/{conversationId}`: services/erasure.py. Idempotent.
"""
from __future__ import annotations

import math
from typing import Any

from domain.errors import BadRequest, NotFound, Unauthorized
from handlers.base import BaseHandler, bearer_is
from handlers.contracts import Contract, Route
from handlers.openapi import FRAMING, answer, error, operation, statuses

TAGS = ("Admin",)
ADMIN_AUTH: list[dict[str, list[str]]] = [{"AdminToken": []}]


class AdminHandler(BaseHandler):
    def prepare_admin(self) -> None:
        token = self.gateway.settings.admin_token
        if not token:
            raise NotFound("not found")  # the admin API is off
        if not bearer_is(self.request.headers.get("Authorization"), token):
            raise Unauthorized("the admin API needs Authorization: Bearer <ADMIN_TOKEN>")

    def seconds(self, name: str, default: float) -> float:
        raw = self.get_query_argument(name, "")
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise BadRequest(f"invalid query: {name}", errors={name: ["unix seconds, a number >= 0"]})
        return value


class UsageHandler(AdminHandler):
    async def get(self) -> None:
        self.prepare_admin()
        start, end = self.seconds("from", 0.0), self.seconds("to", self.gateway.sessions.clock())
        if end < start:
            raise BadRequest("invalid query: to is before from", errors={"to": ["must not be before from"]})
        account = self.get_query_argument("accountId", "") or None
        self.send_json(await self.gateway.usage.report(start, end, account))


class ConversationHandler(AdminHandler):
    async def delete(self, conversation_id: str) -> None:
        self.prepare_admin()
        erased = await self.gateway.erasure.erase_conversation(conversation_id)
        self.send_json({"conversationId": conversation_id, "sessions": erased.sessions, "turns": erased.turns,
                        "upstreamDeletions": erased.upstream_deletions})


ADMIN_ERRORS = {"401": error("no admin token, or a wrong one"),
                "404": error("the admin API is off (no ADMIN_TOKEN)")}


def usage() -> dict[str, Any]:
    number = {"type": "number", "minimum": 0}
    return {"get": operation(
        "adminUsage", "Usage per account and provider",
        "Per account (Petya's accountId, else the gateway's customer id) and provider: the sessions alive at some "
        "time in [from, to), the seconds the provider served them within it (a live session up to now), and the "
        "estimated credits (LiveAvatar FULL 2/min; HeyGen's rate unpublished: null).",
        {"200": answer("usage", {"type": "object", "required": ["from", "to", "accounts"], "properties": {
            "from": number, "to": number, "accounts": {"type": "array", "items": {"type": "object"}}}}),
         **statuses("400", "413", "503", body_400=FRAMING), **ADMIN_ERRORS},
        security=ADMIN_AUTH, tags=TAGS,
        parameters=[{"name": "from", "in": "query", "schema": number, "description": "unix seconds (default 0)"},
                    {"name": "to", "in": "query", "schema": number, "description": "unix seconds (default now)"},
                    {"name": "accountId", "in": "query", "schema": {"type": "string"}}])}


def conversations() -> dict[str, Any]:
    return {"delete": operation(
        "adminEraseConversation", "Erase a conversation",
        "Every stored word of the conversation's sessions, deleted at once whatever their state: a live session is "
        "stopped upstream first and its hand-off cancelled; LiveAvatar is asked to delete the sessions' events "
        "(retried until it has). Idempotent: a repeat answers zeros.",
        {"200": answer("what was deleted", {"type": "object", "properties": {
            "conversationId": {"type": "string"}, "sessions": {"type": "integer"}, "turns": {"type": "integer"},
            "upstreamDeletions": {"type": "integer"}}}),
         **statuses("400", "413", "502", "503", "504", body_400=FRAMING), **ADMIN_ERRORS},
        security=ADMIN_AUTH, tags=TAGS,
        parameters=[{"name": "conversationId", "in": "path", "required": True, "schema": {"type": "string"}}])}


CONTRACT = Contract("admin", (
    Route(r"/admin/usage", UsageHandler, "/admin/usage", usage, prefixed=False, admin=True),
    Route(r"/admin/conversations/([^/]+)", ConversationHandler, "/admin/conversations/{conversationId}",
          conversations, prefixed=False, admin=True),
), tag={"name": "Admin", "description": "Usage and erasure, behind ADMIN_TOKEN (off without it)."})
