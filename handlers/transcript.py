"""The transcript of a session as the gateway holds it, for its owner (the demo console shows it live)."""
from handlers.base import BaseHandler
from models.errors import BadRequest
from models.transcript import for_petya


class TranscriptHandler(BaseHandler):
    async def get(self):
        customer = await self.authenticate()
        session_id = self.get_query_argument("session_id", "")
        if not session_id:
            raise BadRequest("invalid field: session_id", errors={"session_id": ["Missing data for required field."]})
        session = await self.owned_session(session_id, customer, touch=False)
        turns = await self.gateway.sessions.transcript(session.session_id)
        self.send_json({"code": 100, "message": "success", "data": {
            "session_id": session.session_id, "provider": session.provider, "status": session.status,
            "flush_state": session.flush_state, "transcript": for_petya(turns, with_sources=True)}})
