"""What a session's owner tells the gateway was said, and reads back: the text a client received over LiveKit and
reports (HeyGen v2 and LiveAvatar send it there, not through us), and the transcript as the gateway holds it."""
from __future__ import annotations

import asyncio
from typing import Any

from domain.records import Customer
from domain.transcript import for_petya, new_turn
from services.sessions import Sessions
from services.turns import TurnQueue

STORE_WAIT = 5.0  # seconds a report's answer waits for MongoDB to take the turn (it is in the hand-off either way)


class Transcripts:
    def __init__(self, sessions: Sessions, turns: TurnQueue) -> None:
        self.sessions = sessions
        self.turns = turns

    async def report(self, customer: Customer, session_id: str, role: str, text: str) -> bool:
        """Record what a client says `role` said: True when it is a new utterance, False when another path already
        reported it (either way it is in the hand-off). Accepted only atomically before the flush's cut-off (Conflict
        after it), and the flush waits for every turn accepted before its cut-off."""
        # The slot is taken before the cut-off check, so a flush that fixes its cut-off after the check waits for it.
        with self.turns.take_slot() as slot:
            session = await self.sessions.owned(session_id, customer, before_cutoff=True)
            turn = new_turn(role, text, slot.since, "reported")
            added = await self.sessions.is_new_utterance(session.session_id, turn)
            stored = slot.submit(session.session_id, turn)
        await asyncio.wait([stored], timeout=STORE_WAIT)
        return added

    async def of(self, customer: Customer, session_id: str) -> dict[str, Any]:
        """The session's transcript as the gateway holds it (each turn once, in spoken order, with the paths that
        reported it), its status and its hand-off's state; for the session's owner."""
        session = await self.sessions.owned(session_id, customer, touch=False)
        turns = await self.sessions.transcript(session.session_id)
        return {"session_id": session.session_id, "provider": session.provider, "status": session.status,
                "flush_state": session.flush_state, "transcript": for_petya(turns, with_sources=True)}
