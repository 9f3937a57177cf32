"""Text a client reports having received (HeyGen v2 and LiveAvatar send it over LiveKit, not through us)."""
import asyncio

from handlers.base import BaseHandler
from handlers.schemas import REPORTED_MESSAGE
from models.transcript import new_turn

STORE_WAIT = 5.0  # seconds the answer waits for MongoDB to take the turn (it is in the hand-off either way)


class ReportedMessageHandler(BaseHandler):
    """`recorded: true` means the turn is in the hand-off to Petya: it is accepted only atomically before the
    flush's cut-off (409 after it), and the flush waits for every turn accepted before its cut-off."""

    role = None

    async def post(self):
        customer = await self.authenticate()
        request = self.load_body(REPORTED_MESSAGE)
        # The slot is taken before the cut-off check, so a flush that fixes its cut-off after the check waits for it.
        with self.gateway.turns.take_slot() as slot:
            session = await self.owned_session(request["session_id"], customer, before_cutoff=True)
            turn = new_turn(self.role, request["text"], slot.since, "reported")
            added = await self.gateway.sessions.is_new_utterance(session.session_id, turn)
            stored = slot.submit(session.session_id, turn)
        await asyncio.wait([stored], timeout=STORE_WAIT)
        self.send_json({"code": 100, "message": "success", "data": {"recorded": added}})


class AvatarMessageHandler(ReportedMessageHandler):
    role = "avatar"


class UserMessageHandler(ReportedMessageHandler):
    role = "user"
