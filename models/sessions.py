"""The `avatar_sessions` collection: every read and atomic transition of a session, run on the store's executor.

Each transition is a single conditional update in MongoDB, so two gateway processes racing over one session (a stop
here, a socket close there) can never both win it.
"""
from __future__ import annotations

import dataclasses
import math
import secrets
from typing import Any

from pymongo import UpdateOne

from domain.errors import Conflict, NotFound
from domain.names import LIVE_STATUSES
from domain.records import Session, from_document
from models.documents import AvatarSession
from models.store import Repository, blocking, essential, when

LEASE_CANDIDATES = 10  # due flushes looked at per lease_flush
_LIVE = {"$ne": ["$status", "ended"]}


def touch(at: float) -> dict[str, Any]:
    """Update-pipeline fields: activity at `at` (and, while live, the reaper's view of it)."""
    return {"last_activity_at": {"$max": ["$last_activity_at", at]},
            "live_activity_at": {"$cond": [_LIVE, {"$max": [{"$ifNull": ["$live_activity_at", 0]}, at]},
                                           "$live_activity_at"]}}


def closed(at: float, keep: dict[str, Any]) -> dict[str, Any]:
    """Update-pipeline fields: sockets closed at `at` (those for which `keep`, on `$$this`, is false go)."""
    return {"sockets": {"$filter": {"input": {"$ifNull": ["$sockets", []]}, "cond": keep}},
            "socket_closed_at": {"$max": [{"$ifNull": ["$socket_closed_at", 0]}, at]},
            "live_closed_at": {"$cond": [_LIVE, {"$max": [{"$ifNull": ["$live_closed_at", 0]}, at]},
                                         "$live_closed_at"]},
            **touch(at)}


def _session(document: dict[str, Any] | None) -> Session | None:
    return from_document(Session, document) if document is not None else None


class SessionRepository(Repository):
    document = AvatarSession

    @essential  # after the provider acted: not refused for a busy queue (a retry could not redo it)
    def create(self, session_id: str, provider: str, contract: str, conversation_id: str | None, customer: str,
               upstream_token: str | None, now: float, room_url: str | None = None,
               agent_token: str | None = None, account_id: str | None = None,
               started_at: float | None = None) -> Session:
        session = AvatarSession(
            session_id=session_id, provider=str(provider), contract=str(contract),
            conversation_id=conversation_id or session_id, customer=customer, customer_live=customer, status="created",
            upstream_token=upstream_token, room_url=room_url, agent_token=agent_token,
            room_holder="" if agent_token else None, created_at=now, last_activity_at=now, account_id=account_id,
            started_at=started_at, live_activity_at=now, live_created_at=now)
        session.validate()
        document = session.to_mongo().to_dict()
        self.collection.insert_one(document)
        return from_document(Session, document)

    @blocking
    def get(self, session_id: str) -> Session | None:
        return self._by_key(session_id)

    async def owned(self, session_id: str, customer: str, now: float, before_cutoff: bool = False) -> Session:
        """The session, if this customer created it; NotFound otherwise: unknown and foreign sessions look the same.
        Found by its unique key alone, the owner checked here: a query with more predicates is planned as a
        collection scan by SecantusDB (tests/gateway/test_query_plans.py). Read on the event loop (Store.find_one:
        the first call of a session in a process waits on no executor thread). With before_cutoff, then confirmed
        atomically while its flush has not fixed its cut-off (Conflict after it): what is accepted then is in the
        hand-off."""
        found = await self.store.find_one(self.document, {"session_id": session_id})
        if found is None or found.get("customer") != customer:
            raise NotFound("session not found")
        if before_cutoff and (found.get("flush_cutoff") is not None or not await self.count_report(session_id, now)):
            raise Conflict("session has ended and its transcript was handed over")
        return from_document(Session, found)

    @blocking
    def count_report(self, session_id: str, now: float) -> bool:
        """Count a report on the session, atomically only while its cut-off is not fixed; whether it was."""
        open_ = {"$eq": [{"$ifNull": ["$flush_cutoff", None]}, None]}
        return bool(self.collection.update_one({"session_id": session_id}, [{"$set": {
            "reports": {"$cond": [open_, {"$add": [{"$ifNull": ["$reports", 0]}, 1]}, "$reports"]},
            "last_activity_at": {"$cond": [open_, {"$max": ["$last_activity_at", now]}, "$last_activity_at"]}}}],
        ).modified_count)

    @essential  # after the provider acted: not refused for a busy queue (a retry could not redo it)
    def mark_started(self, session_id: str, now: float) -> None:
        """created -> started, once (by the unique key alone; the condition is in the update)."""
        created = {"$eq": ["$status", "created"]}
        self.collection.update_one({"session_id": session_id}, [{"$set": {
            "status": {"$cond": [created, "started", "$status"]}, **touch(now),
            "started_at": {"$cond": [{"$eq": [{"$ifNull": ["$started_at", None]}, None]}, now, "$started_at"]}}}])

    @blocking
    def touch_all(self, touched: dict[str, float]) -> None:
        """Coalesced activity touches: {session id: latest activity time}, one bulk write."""
        self.collection.bulk_write(
            [UpdateOne({"session_id": sid}, [{"$set": touch(at)}]) for sid, at in touched.items()], ordered=False)

    @blocking
    def count_live(self) -> dict[tuple[str, str], int]:
        """{(provider, status): n} of the sessions not ended: one aggregate over the (status, ...) index."""
        pipeline: list[dict[str, Any]] = [{"$match": {"status": {"$in": list(LIVE_STATUSES)}}},
                    {"$group": {"_id": {"provider": "$provider", "status": "$status"}, "n": {"$sum": 1}}}]
        return {(row["_id"]["provider"], row["_id"]["status"]): row["n"]
                for row in self.collection.aggregate(pipeline)}

    # --- sockets: each recorded against the process holding it (services/leases.py) -----------------------------

    @blocking
    def socket_opened(self, session_id: str, socket_id: str, process_id: str, now: float) -> None:
        entry = {"id": socket_id, "process": process_id, "opened_at": now}
        self.collection.update_one({"session_id": session_id}, [{"$set": {
            "sockets": {"$concatArrays": [{"$ifNull": ["$sockets", []]}, [{"$literal": entry}]]}, **touch(now)}}])

    @blocking
    def sockets_closed(self, closes: dict[tuple[str, str], float]) -> None:
        """Record that sockets closed: {(session id, socket id): closed at}, one bulk write. Repeating one (a retry)
        changes nothing."""
        if closes:
            self.collection.bulk_write(
                [UpdateOne({"session_id": session_id}, [{"$set": closed(at, {"$ne": ["$$this.id", socket_id]})}])
                 for (session_id, socket_id), at in closes.items()], ordered=False)

    @blocking
    def socket_moved(self, session_id: str, socket_id: str, process_id: str, now: float) -> None:
        """Record an open socket under this process's new lease, then drop its old record."""
        self.collection.update_one({"session_id": session_id, "status": {"$ne": "ended"}},
                                   {"$push": {"sockets": {"id": socket_id, "process": process_id, "opened_at": now}}})
        self.collection.update_one({"session_id": session_id},
                                   {"$pull": {"sockets": {"id": socket_id, "process": {"$ne": process_id}}}})

    @blocking
    def release_sockets(self, process_id: str, last_heartbeat: float) -> int:
        """The sockets a dead process held count as closed at its last heartbeat."""
        return self.collection.update_many(
            {"sockets.process": process_id},
            [{"$set": closed(last_heartbeat, {"$ne": ["$$this.process", process_id]})}]).modified_count

    # --- the room agent's holder (services/rooms.py) -----------------------------------------------------------
    # By the unique key alone, any condition inside the update (an aggregation pipeline) and checked on what a read by
    # the same key returns: SecantusDB scans the collection for a filter with more predicates, and for any
    # findAndModify (tests/gateway/test_query_plans.py).

    def _by_key(self, session_id: str) -> Session | None:
        return _session(self.collection.find_one({"session_id": session_id}))

    @blocking
    def hold_room(self, session_id: str, process_id: str, dead: tuple[str, ...] = ()) -> Session | None:
        """Make `process_id` the holder of a live session's room: when nobody holds it (""), it holds it already, or
        its holder is one of `dead` (processes whose lease expired). The session as it is after; None when another
        live process holds it, the session has ended, or it has no room. Atomic per session: of two racing processes
        one holds it."""
        takes = {"$and": [{"$ne": ["$status", "ended"]},
                          {"$in": [{"$ifNull": ["$room_holder", None]}, ["", process_id, *dead]]}]}
        self.collection.update_one({"session_id": session_id}, [{"$set": when(takes, {"room_holder": process_id})}])
        session = self._by_key(session_id)
        held = session is not None and session.room_holder == process_id and session.status != "ended"
        return session if held else None

    def _hand_over(self, session_id: str, old: str, new: str, more: dict[str, Any] | None = None) -> None:
        """room_holder `old` -> `new` (and `more` set), only while `old` holds it."""
        holds = {"$eq": [{"$ifNull": ["$room_holder", None]}, old]}
        self.collection.update_one({"session_id": session_id}, [{"$set": when(holds, {"room_holder": new,
                                                                                      **(more or {})})}])

    @blocking
    def release_room(self, session_id: str, process_id: str) -> None:
        self._hand_over(session_id, process_id, "")

    @essential  # after the provider acted: not refused for a busy queue (a retry could not redo it)
    def set_room(self, session_id: str, room_url: str, agent_token: str) -> Session | None:
        """Record the room a started session got (LiveAvatar's contract learns it at start), unheld."""
        self.collection.update_one({"session_id": session_id}, {"$set": {
            "room_url": room_url, "agent_token": agent_token, "room_holder": ""}})
        return self._by_key(session_id)

    @blocking
    def give_up_room(self, session_id: str, process_id: str, note: str) -> None:
        """Nobody will hold this room ("-": never adopted by a sweep); `note` says what the transcript lacks."""
        self._hand_over(session_id, process_id, "-", {"room_note": note[:500]})

    @blocking
    def rooms_held_by(self, process_id: str, limit: int = 1000) -> list[str]:
        """The live sessions whose room agent `process_id` holds (a dead process's, to take over); with "", the
        started sessions whose room nobody holds (given back by a process that stopped, or could not rejoin). An
        ended session's holder is unset (claim_end), so the index holds live sessions only."""
        found = self.collection.find({"room_holder": process_id}, {"session_id": 1, "status": 1}).limit(limit)
        return [s["session_id"] for s in found
                if s.get("status") != "ended" and (process_id or s.get("status") == "started")]

    @blocking
    def rooms_moved(self, session_ids: list[str], old: str, new: str) -> None:
        """This process's rooms follow its lease to its new id (rare: one call per room)."""
        for session_id in session_ids:
            self._hand_over(session_id, old, new)

    @blocking
    def ended_among(self, session_ids: list[str]) -> list[str]:
        """Which of these sessions have ended (or are gone)."""
        live = {s["session_id"] for s in self.collection.find({"session_id": {"$in": session_ids}},
                                                              {"session_id": 1, "status": 1})
                if s.get("status") != "ended"}
        return [sid for sid in session_ids if sid not in live]

    @blocking
    def note_room(self, session_id: str, note: str) -> None:
        self.collection.update_one({"session_id": session_id}, {"$set": {"room_note": note[:500]}})

    # --- ending ---------------------------------------------------------------------------------------------------

    @essential  # after the provider acted: not refused for a busy queue (a retry could not redo it)
    def claim_end(self, session_id: str, reason: str, now: float,
                  abandoned_before: float | None = None, hand_off: bool = True) -> Session | None:
        """Atomically end a live session and queue its flush; returns the session as it was just before (its status,
        so the caller sees whether it had started). None when it had already ended, or (with `abandoned_before`) when
        a socket is open again or closed after that time. One conditional update by the unique key, then a read by
        it: the claim names its winner."""
        claim = secrets.token_hex(8)
        ends: dict[str, Any] = {"$ne": ["$status", "ended"]}
        if abandoned_before is not None:
            ends = {"$and": [ends, {"$eq": [{"$size": {"$ifNull": ["$sockets", []]}}, 0]},
                             {"$lte": [{"$ifNull": ["$socket_closed_at", math.inf]}, abandoned_before]}]}
        flush = {"flush_state": "pending", "flush_next_at": now, "flush_due_at": now} if hand_off else {
            "flush_state": "cancelled", "flush_due_at": None}
        changes = {"status": "ended", "ended_at": now, "end_reason": reason, "end_claim": claim, **flush,
                   "customer_live": None, "room_holder": None, "live_activity_at": None, "live_created_at": None,
                   "live_closed_at": None}
        self.collection.update_one({"session_id": session_id}, [{"$set": {
            "status_before_end": {"$cond": [ends, "$status", "$status_before_end"]}, **when(ends, changes)}}])
        session = self._by_key(session_id)
        if session is None or session.end_claim != claim:
            return None
        return dataclasses.replace(session, status=session.status_before_end or "created")

    @blocking
    def note_stop_error(self, session_id: str, error: str) -> None:
        self.collection.update_one({"session_id": session_id}, {"$set": {"stop_error": error[:500]}})

    @blocking
    def quiet(self, idle_before: float, born_before: float, limit: int = 100) -> list[tuple[str, str]]:
        """Live sessions nobody has touched since `idle_before` (and with no open socket), or created before
        `born_before`: (session_id, "max_age" | "idle") pairs for the reaper. Found by the live-only times, each
        one indexed field; the rest checked here."""
        fields = {"session_id": 1, "status": 1, "sockets": 1}
        old = [(s["session_id"], "max_age") for s in self.collection.find(
            {"live_created_at": {"$lt": born_before}}, fields).limit(limit) if s.get("status") != "ended"]
        idle = [(s["session_id"], "idle") for s in self.collection.find(
            {"live_activity_at": {"$lt": idle_before}}, fields).limit(limit)
            if s.get("status") != "ended" and not s.get("sockets")]
        found = dict(idle)
        found.update(old)  # max_age first
        return list(found.items())[:limit]

    @blocking
    def abandoned(self, before: float, limit: int = 100) -> list[str]:
        """Sessions whose sockets all closed before `before` and which nobody ended."""
        return [s["session_id"] for s in self.collection.find(
            {"live_closed_at": {"$lte": before}}, {"session_id": 1, "status": 1, "sockets": 1}).limit(limit)
            if s.get("status") != "ended" and not s.get("sockets")]

    # --- the hand-off to Petya ------------------------------------------------------------------------------------

    @blocking
    def lease_flush(self, lease_seconds: float, now: float, session_id: str | None = None) -> Session | None:
        """Take one due flush (pending and due, or delivering with an expired lease) for delivery. The first lease
        fixes the session's cut-off: reports are refused after it (see owned). Due flushes are found by one indexed
        time (`flush_due_at`, set only while one is pending or delivering); each is leased by one conditional update
        by the unique key, whose lease id names the winner."""
        if session_id:
            candidates = [session_id]
        else:
            candidates = [s["session_id"] for s in self.collection.find(
                {"flush_due_at": {"$lte": now}}, {"session_id": 1}).limit(LEASE_CANDIDATES)]
        for candidate in candidates:
            lease = secrets.token_hex(8)
            due = {"$or": [
                {"$and": [{"$eq": ["$flush_state", "pending"]}, {"$lte": [{"$ifNull": ["$flush_next_at", 0]}, now]}]},
                {"$and": [{"$eq": ["$flush_state", "delivering"]},
                          {"$lte": [{"$ifNull": ["$flush_lease_until", 0]}, now]}]}]}
            until = now + lease_seconds
            self.collection.update_one({"session_id": candidate}, [{"$set": when(due, {
                "flush_state": "delivering", "flush_lease_until": until, "flush_due_at": until, "flush_lease_id": lease,
                "flush_attempts": {"$add": [{"$ifNull": ["$flush_attempts", 0]}, 1]},
                "flush_cutoff": {"$min": [{"$ifNull": ["$flush_cutoff", now]}, now]}})}])
            session = self._by_key(candidate)
            if session is not None and session.flush_lease_id == lease and session.flush_state == "delivering":
                return session
        return None

    def _delivering(self, session_id: str, changes: dict[str, Any]) -> None:
        """Set `changes` (values, or expressions on the session) only while its flush is delivering."""
        delivering = {"$eq": ["$flush_state", "delivering"]}
        self.collection.update_one({"session_id": session_id}, [{"$set": when(delivering, changes)}])

    @blocking
    def flush_defer(self, session_id: str, next_at: float) -> None:
        """Give a leased flush back until `next_at` without counting an attempt (it waits for turns)."""
        self._delivering(session_id, {"flush_state": "pending", "flush_next_at": next_at, "flush_due_at": next_at,
                                      "flush_attempts": {"$add": ["$flush_attempts", -1]}})

    @blocking
    def flush_done(self, session_id: str, now: float, note: str | None = None,
                   words_expire_at: float | None = None) -> None:
        self._delivering(session_id, {"flush_state": "delivered", "flushed_at": now, "flush_error": None,
                                      "transcript_note": note, "words_expire_at": words_expire_at,
                                      "flush_due_at": None})

    @blocking
    def flush_retry(self, session_id: str, next_at: float, error: str) -> None:
        self._delivering(session_id, {"flush_state": "pending", "flush_next_at": next_at, "flush_due_at": next_at,
                                      "flush_error": error[:500]})

    @blocking
    def flush_rejected(self, session_id: str, error: str, words_expire_at: float | None = None) -> None:
        self._delivering(session_id, {"flush_state": "rejected", "flush_error": error[:500],
                                      "words_expire_at": words_expire_at, "flush_due_at": None})

    @blocking
    def backfill(self) -> int:
        """Sessions recorded by a version that kept no live-only fields (a rolling deploy): given them, once, at
        start (a scan, then none)."""
        live = self.collection.update_many(
            {"status": {"$ne": "ended"}, "live_created_at": None},
            [{"$set": {"live_created_at": "$created_at", "live_activity_at": "$last_activity_at",
                       "live_closed_at": "$socket_closed_at", "customer_live": "$customer"}}]).modified_count
        flushing = self.collection.update_many(
            {"flush_state": {"$in": ["pending", "delivering"]}, "flush_due_at": None},
            [{"$set": {"flush_due_at": {"$ifNull": ["$flush_next_at", "$flush_lease_until"]}}}]).modified_count
        return live + flushing

    # --- forgetting (services/erasure.py) -------------------------------------------------------------------------
    # Periodic finds by one indexed time each; writes by the unique key alone.

    @blocking
    def words_due(self, now: float, limit: int = 100) -> list[str]:
        """Sessions whose words are due for deletion."""
        found = self.collection.find({"words_expire_at": {"$lte": now}}, {"session_id": 1}).limit(limit)
        return [s["session_id"] for s in found]

    @blocking
    def words_deleted(self, session_id: str, now: float) -> None:
        """Its words are gone: what usage needs stays (ids, times, provider, account, end reason); errors that could
        quote them go too."""
        self.collection.update_one({"session_id": session_id}, {
            "$set": {"words_deleted_at": now}, "$unset": {"words_expire_at": "", "flush_error": "", "stop_error": ""}})

    @blocking
    def of_conversation(self, conversation_id: str, limit: int = 1000) -> list[Session]:
        return [from_document(Session, s) for s in self.collection.find({"conversation_id": conversation_id})
                .limit(limit)]

    @blocking
    def erase(self, session_id: str, now: float, second_pass_at: float, upstream: bool) -> Session | None:
        """Mark a session of an erased conversation, once (None when it was already): a hand-off not yet delivered
        is cancelled and its cut-off fixed (reports refused from now), its words are deleted again at
        `second_pass_at` (turns in flight when it was erased), and with `upstream` the provider is asked to delete
        its copy. One conditional update by the unique key: of two racing erasures one marks it."""
        first = {"$eq": [{"$ifNull": ["$erased_at", None]}, None]}
        undelivered = {"$in": [{"$ifNull": ["$flush_state", "none"]}, ["none", "pending", "delivering"]]}
        marks: dict[str, Any] = {"erased_at": now, "words_expire_at": second_pass_at,
                                 "flush_cutoff": {"$min": [{"$ifNull": ["$flush_cutoff", now]}, now]}}
        if upstream:
            marks["upstream_erase_at"] = now
        self.collection.update_one({"session_id": session_id}, [{"$set": {
            **when(first, marks),
            **when({"$and": [first, undelivered]}, {"flush_state": "cancelled", "flush_due_at": None})}}])
        session = self._by_key(session_id)
        return session if session is not None and session.erased_at == now else None

    @blocking
    def upstream_erasures_due(self, now: float, limit: int = 100) -> list[Session]:
        return [from_document(Session, s) for s in self.collection.find({"upstream_erase_at": {"$lte": now}})
                .limit(limit)]

    @blocking
    def upstream_erased(self, session_id: str) -> None:
        self.collection.update_one({"session_id": session_id}, {"$unset": {"upstream_erase_at": ""}})

    @blocking
    def upstream_erase_later(self, session_id: str, next_at: float) -> None:
        self.collection.update_one({"session_id": session_id}, {"$set": {"upstream_erase_at": next_at},
                                                                "$inc": {"upstream_erase_attempts": 1}})

    @blocking
    def usage(self, start: float, end: float, account: str | None = None) -> list[dict[str, Any]]:
        """What usage needs of every session alive at some time in [start, end) (created before `end`, not ended
        before `start`), of one account (its Petya accountId, else its customer id) when given. Two finds by one
        indexed time each, the rest checked here (a filter with more predicates is a collection scan for
        SecantusDB, tests/gateway/test_query_plans.py): the live sessions created before `end` (`live_created_at`,
        set only while live), then the sessions that ended at or after `start` (`ended_at`, sparse). Live ones
        first: a session that ends between the two finds is found by both and counted once, as ended."""
        fields = {"_id": 0, "session_id": 1, "provider": 1, "customer": 1, "account_id": 1, "created_at": 1,
                  "started_at": 1, "ended_at": 1, "status": 1}
        live = [s for s in self.collection.find({"live_created_at": {"$lt": end}}, fields)
                if s.get("status") != "ended"]  # (an ended one is found by the second find)
        ended = list(self.collection.find({"ended_at": {"$gte": start}}, fields))
        found = {s["session_id"]: s for s in [*live, *ended]}
        return [s for s in found.values() if s["created_at"] < end and (
            not account or s.get("account_id") == account or (not s.get("account_id") and s["customer"] == account))]
