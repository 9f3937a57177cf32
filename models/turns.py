"""The `turn_reports` collection: one document per report of an utterance, merged into a transcript when read
(domain/transcript.py), so that storing one is a single insert whatever the transcript's length."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo.errors import BulkWriteError

from domain.records import Turn
from domain.transcript import merge_all, merge_turn
from models.documents import TurnReport
from models.store import Repository, blocking

DUPLICATE_KEY = 11000


class TurnRepository(Repository):
    document = TurnReport

    @blocking
    def insert(self, documents: list[dict[str, Any]]) -> dict[Any, str]:
        """Store turn reports (services/turns.py builds them, each with its own _id): a single insert whatever their
        number. One already stored (a retry after a lost acknowledgement) counts as stored. Returns {_id: error} of
        those MongoDB refused for good."""
        try:
            self.collection.insert_many(documents, ordered=False)
        except BulkWriteError as exc:
            return {documents[e["index"]]["_id"]: e.get("errmsg", "")
                    for e in exc.details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY}
        return {}

    def _transcript(self, session_id: str) -> list[Turn]:
        reports = self.collection.find({"session_id": session_id}).sort("absolute_timestamp", 1)
        return merge_all([], [Turn(role=r["role"], transcript=r["transcript"],
                                   absolute_timestamp=r["absolute_timestamp"], sources=r["sources"],
                                   task_ids=r["task_ids"]) for r in reports])

    @blocking
    def expire(self, session_id: str, at: float) -> None:
        """Let MongoDB's TTL monitor delete the session's reports from `at` on (unix seconds)."""
        self.collection.update_many({"session_id": session_id},
                                    {"$set": {"expire_at": datetime.fromtimestamp(at, UTC)}})

    @blocking
    def delete_session(self, session_id: str) -> int:
        """Every report of the session's words, deleted; how many."""
        return self.collection.delete_many({"session_id": session_id}).deleted_count

    @blocking
    def transcript(self, session_id: str) -> list[Turn]:
        """The session's transcript: every report, each utterance once."""
        return self._transcript(session_id)

    @blocking
    def is_new_utterance(self, session_id: str, turn: Turn) -> bool:
        """Whether `turn` would add an utterance to the session's transcript (not another path's report of one)."""
        return merge_turn(self._transcript(session_id), turn)[1]
