"""Forgetting what was said: words kept only as long as allowed (retention), and at once on request (erasure).

A session's words are stored in one place, its turn reports (models/turns.py); what else the gateway keeps of a
session — ids, times, provider, account, end reason — is what usage needs, and stays. The errors kept on a session
(Petya's answer to a hand-off, an upstream's answer to a stop) could quote words, so they go with them.

- **Retention** (TRANSCRIPT_RETENTION_DAYS; 0 keeps words forever). When a session's hand-off is delivered or
  rejected, its `words_expire_at` is set that long after (services/lifecycle.py); the sweep deletes the words of every
  session due (`forget_due`), on time, and clears the errors kept on the session. A hand-off still waiting on Petya
  keeps its words: they are deleted only once Petya has them (or refused them for good). The database backs the
  sweep up: at the hand-off the session's turn reports get that expiry as `expire_at`, under a TTL index, so MongoDB's
  TTL monitor deletes them too, even with no gateway running (it runs once a minute; SecantusDB, the tests' server,
  honours TTL indexes as well). Cost per session: one update of its turn reports at the hand-off, one indexed query
  per sweep, and one delete by session when due.
- **Erasure** (`erase_conversation`, `DELETE /admin/conversations/{id}`). Every session of the conversation, whatever
  its state: a live one is stopped upstream first (ended as `erased`); a hand-off not yet delivered is cancelled
  (never delivered afterwards, reports refused from now on); its words are deleted now, and again one LEASE_TTL later
  (turns other processes still held when it was erased); the provider is asked to delete its own copy
  (LiveAvatar: `DELETE /v1/sessions/{id}/events`), retried with backoff by the sweep until it succeeds. A repeat
  finds every session already erased and answers zeros. Logged with ids and counts, never the words.
  What erasure cannot reach: a hand-off Petya already took (Petya erases its own copy), a hand-off on its way to Petya
  at that very moment, what HeyGen keeps (its API has no way to ask), LiveAvatar's data beyond its session events,
  and logs (which never hold words).
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from clients.provider import Providers
from domain.errors import GatewayError, ServiceUnavailable
from domain.names import ProviderName
from domain.records import Session
from models.sessions import SessionRepository
from models.turns import TurnRepository

log = logging.getLogger("gateway.erasure")

UPSTREAM_RETRY_INITIAL, UPSTREAM_RETRY_MAX = 5.0, 3600.0  # seconds between asks to a provider, doubling


@dataclass(frozen=True, slots=True)
class Erased:
    """What one erasure deleted."""
    sessions: int = 0
    turns: int = 0
    upstream_deletions: int = 0  # providers asked to delete their copy (and asked again until they do)


class Erasure:
    def __init__(self, sessions: SessionRepository, turns: TurnRepository, providers: Providers,
                 end_session: Callable[[str], Awaitable[bool]], retention_days: float, second_pass: float,
                 clock: Callable[[], float]) -> None:
        self.sessions = sessions
        self.turns = turns
        self.providers = providers
        self.end_session = end_session  # ends a live session as erased, stopped upstream, with no hand-off
        self.retention = retention_days * 86400  # seconds; 0: forever
        self.second_pass = second_pass  # seconds after an erasure its words are deleted again
        self.clock = clock

    def words_expire_at(self, now: float) -> float | None:
        """When a session whose hand-off finished now is to lose its words (None: never)."""
        return now + self.retention if self.retention > 0 else None

    async def expire_turns(self, session_id: str, at: float) -> None:
        """The database's backstop: its TTL monitor deletes the session's turn reports from `at` on, gateway or no
        gateway (MongoDB checks once a minute; SecantusDB honours TTL indexes as well, measured within 60-70 s)."""
        try:
            await self.turns.expire(session_id, at)
        except ServiceUnavailable:
            pass  # the sweep deletes them all the same
    async def forget(self, session_id: str) -> int:
        deleted = await self.turns.delete_session(session_id)
        await self.sessions.words_deleted(session_id, self.clock())
        return deleted

    async def forget_due(self) -> int:
        """The sweep's part: delete the words of every session due; how many sessions."""
        due = await self.sessions.words_due(self.clock())
        for session_id in due:
            await self.forget(session_id)
        if due:
            log.info("words of %d sessions deleted (retention)", len(due))
        return len(due)

    async def erase_conversation(self, conversation_id: str) -> Erased:
        now = self.clock()
        sessions = turns = upstream = 0
        for session in await self.sessions.of_conversation(conversation_id):
            provider = self.providers[ProviderName(session.provider)]
            asks = provider.name == ProviderName.LIVEAVATAR
            if session.status != "ended" and session.erased_at is None:
                await self.end_session(session.session_id)  # stopped upstream first; its hand-off cancelled
            marked = await self.sessions.erase(session.session_id, now, now + self.second_pass, upstream=asks)
            if marked is None:
                continue  # erased before
            sessions += 1
            upstream += int(asks)
            turns += await self.forget(session.session_id)
            if asks:
                await self._ask(marked)  # at once; the sweep asks again until the provider has done it
        log.info("conversation %s erased: %d sessions, %d turns, %d upstream deletions requested", conversation_id,
                 sessions, turns, upstream)
        return Erased(sessions, turns, upstream)

    async def retry_upstream(self) -> None:
        """The sweep's part: ask the providers again to delete what they keep of erased sessions."""
        for session in await self.sessions.upstream_erasures_due(self.clock()):
            await self._ask(session)

    async def _ask(self, session: Session) -> None:
        provider = self.providers[ProviderName(session.provider)]
        try:
            response = await provider.erase(session.session_id)
            done = response is None or response.ok or response.status == 404
            error = "" if done else f"answered {response.status if response is not None else '?'}"
        except (GatewayError, ServiceUnavailable) as exc:
            done, error = False, exc.message
        if done:
            await self.sessions.upstream_erased(session.session_id)
            return
        delay = min(UPSTREAM_RETRY_INITIAL * 2 ** session.upstream_erase_attempts, UPSTREAM_RETRY_MAX)
        log.warning("deleting session %s's events at %s failed (%s); next try in %.0fs", session.session_id,
                    provider.label, error, delay)
        await self.sessions.upstream_erase_later(session.session_id, self.clock() + delay)
