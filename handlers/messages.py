"""Text a client reports having received (HeyGen v2 and LiveAvatar send it over LiveKit, not through us)."""
from handlers.base import BaseHandler
from handlers.schemas import REPORTED_MESSAGE
from models.errors import Conflict
from models.transcript import new_turn


class ReportedMessageHandler(BaseHandler):
    role = None

    async def post(self):
        customer = await self.authenticate()
        request = self.load_body(REPORTED_MESSAGE)
        session = await self.owned_session(request["session_id"], customer)
        if session.flush_state in ("delivering", "delivered", "rejected"):
            raise Conflict("session has ended and its transcript was handed over")
        added = await self.gateway.sessions.add_turn(
            session.session_id, new_turn(self.role, request["text"], self.gateway.sessions.clock(), "reported"),
            tell_duplicate=True)
        self.send_json({"code": 100, "message": "success", "data": {"recorded": added}})


class AvatarMessageHandler(ReportedMessageHandler):
    role = "avatar"


class UserMessageHandler(ReportedMessageHandler):
    role = "user"
