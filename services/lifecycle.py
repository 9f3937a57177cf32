"""How sessions end and how their transcripts reach Petya.

- `end()` claims the end of a session atomically (one winner across processes), stops it upstream unless the
  caller already did, and queues the flush in MongoDB before trying to deliver it.
- A flush is leased before delivery, retried with backoff while Petya is down or answers 5xx (also after a
  restart: the state is in MongoDB), and kept with its error when Petya rejects it (4xx). Its first lease fixes
  the session's cut-off (reports after it are refused); before reading the transcript it waits until every turn
  seen before the cut-off is stored — in this process (services/turns.py) and in every other live one (their
  leases publish the oldest turn they hold). Every attempt carries the same delivery id, so Petya applies it once.
- A periodic sweep (safe in several processes at once: every end is claimed atomically) releases the sockets of
  processes whose lease expired (services/leases.py), ends sessions whose sockets closed longer than the grace period
  ago without a stop, reaps sessions gone quiet for SESSION_IDLE_TIMEOUT or older than SESSION_MAX_AGE (stopping
  them upstream: a leaked session holds one of our few concurrent slots), and delivers every due flush.
- Socket closes are recorded here too, coalesced (see socket_closed).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING

from clients.petya import PetyaClient
from clients.provider import Providers
from domain.errors import GatewayError, ServiceUnavailable
from domain.names import ProviderName
from domain.records import Session
from domain.transcript import for_petya
from domain.usage import duration_seconds, handoff_fields
from models.sessions import SessionRepository
from observability import metrics
from services.background import Background
from services.erasure import Erasure
from services.leases import Leases
from services.rooms import RoomAgents
from services.sessions import Sessions
from services.turns import TurnQueue

if TYPE_CHECKING:
    from conf import Settings

log = logging.getLogger("gateway.lifecycle")

# How long a flush waits in-process for this process's own turns before it gives its lease back and tries later.
LOCAL_SETTLE_WAIT = 1.0
# How long a socket close that could not be recorded waits before the next try (doubling).
RECORD_RETRY_INITIAL, RECORD_RETRY_MAX = 0.1, 5.0


def delivery_id(session_id: str) -> str:
    """The hand-off's idempotency key: the same for every attempt, from every process."""
    return "dlv_" + hashlib.sha256(f"handoff:{session_id}".encode()).hexdigest()[:32]


class Lifecycle:
    def __init__(self, sessions: Sessions, providers: Providers, petya: PetyaClient, settings: Settings,
                 turns: TurnQueue, leases: Leases, background: Background, rooms: RoomAgents | None = None) -> None:
        self.sessions = sessions
        self.records: SessionRepository = sessions.repository
        self.providers = providers
        self.petya = petya
        self.settings = settings
        self.turns = turns
        self.leases = leases
        self.background = background
        self.erasure: Erasure | None = None  # retention and erasure (services/erasure.py), set by the application
        self.rooms = rooms  # the room agents (services/rooms.py): they leave when a session ends, and are taken over
        if rooms is not None:  # LiveAvatar said the session stopped: it is over upstream already
            rooms.end_session = lambda session_id, reason: self.end(session_id, reason, stop_upstream=False)
        self.lease_seconds = 2 * settings.upstream_request_timeout + 5
        self._sweeping = False
        self._closes: dict[tuple[str, str], float] = {}  # (session id, socket id) -> closed at: not yet written
        self._recording_closes: asyncio.Task[None] | None = None  # the task writing them

    def start(self) -> None:
        self.background.every(self.settings.sweep_interval, self.sweep)
        self.background.spawn(self.sweep())  # flushes left pending by a previous run

    # --- sockets ----------------------------------------------------------------------------------------------------

    def socket_closed(self, session_id: str, socket_id: str, at: float) -> asyncio.Task[None] | None:
        """Record a socket's close (the sweep then ends the session after the grace period). Closes are coalesced:
        those that come while a write is under way go together in the next one (2,000 sockets closing at once make a
        few bulk writes, not 2,000 round trips), retried until MongoDB takes them. Should this process die first,
        its lease expires and the sockets count as closed all the same. Bounded by the sockets this process holds."""
        self._closes[(session_id, socket_id)] = at
        if self._recording_closes is None:
            self._recording_closes = self.background.spawn(self._record_closes())
        return self._recording_closes

    async def _record_closes(self) -> None:
        delay = RECORD_RETRY_INITIAL
        try:
            while self._closes:
                closes, self._closes = self._closes, {}
                try:
                    await self.records.sockets_closed(closes)
                    delay = RECORD_RETRY_INITIAL
                except ServiceUnavailable:
                    self._closes = {**closes, **self._closes}
                    if self.records.store.closed:
                        return  # stopping: the lease's release covers them
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, RECORD_RETRY_MAX)
        finally:
            self._recording_closes = None

    # --- ending a session -----------------------------------------------------------------------------------------

    async def end(self, session_id: str, reason: str, stop_upstream: bool = True,
                  abandoned_before: float | None = None, hand_off: bool = True) -> bool:
        """End a session once: True for the caller that won the claim. Without `hand_off` (an erasure) its hand-off
        is cancelled instead of queued."""
        session = await self.records.claim_end(session_id, reason, self.sessions.clock(),
                                               abandoned_before=abandoned_before, hand_off=hand_off)
        if session is None:
            return False
        metrics.SESSIONS_ENDED.labels(provider=session.provider, reason=reason).inc()
        metrics.SESSION_SECONDS.labels(provider=session.provider).inc(
            duration_seconds(session.started_at, self.sessions.clock()))
        log.info("session %s ended (%s)", session_id, reason)
        if stop_upstream:
            await self.stop_upstream(session, reason)
        if self.rooms is not None:
            await self.rooms.leave(session_id)  # held here; a holder elsewhere leaves at its next check
        if hand_off:
            self.background.spawn(self.deliver(session_id))
        return True

    async def stop_upstream(self, session: Session, reason: str) -> None:
        try:
            response = await self.providers[ProviderName(session.provider)].stop_session(session, reason)
            if not response.ok:
                await self.records.note_stop_error(session.session_id,
                                                   f"upstream stop answered {response.status}")
        except GatewayError as exc:
            log.warning("could not stop %s session %s upstream: %s", session.provider, session.session_id, exc)
            await self.records.note_stop_error(session.session_id, exc.message)

    # --- the hand-off ---------------------------------------------------------------------------------------------

    async def deliver(self, session_id: str | None = None) -> bool | None:
        """Deliver one due flush (this session's, or any): True when Petya took it, False when it did not or must
        wait for turns, None when no flush was due."""
        clock = self.sessions.clock
        session = await self.records.lease_flush(self.lease_seconds, clock(), session_id)
        if session is None:
            return None
        assert session.flush_cutoff is not None  # the lease fixed it
        if not await self.wait_for_turns(session.flush_cutoff):
            await self.records.flush_defer(session.session_id, clock() + self.settings.lease_heartbeat)
            metrics.HANDOFFS.labels(outcome="deferred").inc()
            return False
        recorded = await self.sessions.transcript(session.session_id)
        try:
            turns, note = await self.providers[ProviderName(session.provider)].final_turns(session, recorded)
        except GatewayError as exc:
            turns, note = recorded, f"provider transcript unavailable: {exc.message}"
        note = "; ".join(n for n in (note, session.room_note) if n) or None  # what the transcript may lack
        outcome = await self.petya.post_status(session.conversation_id, session.session_id, for_petya(turns),
                                               delivery_id(session.session_id), note=note,
                                               fields=handoff_fields(session))
        if outcome.delivered:
            metrics.HANDOFFS.labels(outcome="delivered").inc()
            metrics.HANDOFF_ATTEMPTS.labels(outcome="delivered").observe(session.flush_attempts)
            expire_at = self._words_expire_at()
            await self.records.flush_done(session.session_id, clock(), note, expire_at)
            if expire_at is not None and self.erasure is not None:
                await self.erasure.expire_turns(session.session_id, expire_at)
            log.info("transcript of %s delivered to Petya (%d turns)", session.session_id, len(turns))
            return True
        if outcome.retry:
            metrics.HANDOFFS.labels(outcome="retry").inc()
            delay = min(self.settings.flush_retry_initial * 2 ** (session.flush_attempts - 1),
                        self.settings.flush_retry_max)
            await self.records.flush_retry(session.session_id, clock() + delay, outcome.error)
            log.warning("flush of %s failed (%s); retry in %.1fs", session.session_id, outcome.error, delay)
        else:
            metrics.HANDOFFS.labels(outcome="rejected").inc()
            metrics.HANDOFF_ATTEMPTS.labels(outcome="rejected").observe(session.flush_attempts)
            expire_at = self._words_expire_at()
            await self.records.flush_rejected(session.session_id, outcome.error, expire_at)
            if expire_at is not None and self.erasure is not None:
                await self.erasure.expire_turns(session.session_id, expire_at)
            log.error("flush of %s rejected: %s", session.session_id, outcome.error)
        return False

    def _words_expire_at(self) -> float | None:
        return self.erasure.words_expire_at(self.sessions.clock()) if self.erasure is not None else None

    async def wait_for_turns(self, cutoff: float) -> bool:
        """Wait, for up to two heartbeats of the other processes, until turns_settled(cutoff); False if not yet."""
        heartbeat = self.settings.lease_heartbeat
        for _ in range(5):
            if await self.turns_settled(cutoff):
                return True
            await asyncio.sleep(heartbeat / 2)
        return False

    async def turns_settled(self, cutoff: float) -> bool:
        """Whether every turn seen before `cutoff` is in MongoDB: this process's (waited for briefly), and every
        other live process's, as its lease published after the cut-off. A dead process's lease stops counting
        once it expires, which bounds the wait."""
        if not await self.turns.settled(cutoff, LOCAL_SETTLE_WAIT):
            return False
        for lease in await self.leases.others_alive():
            pending = lease.get("pending_since")
            if lease["heartbeat_at"] < cutoff or (pending is not None and pending <= cutoff):
                return False
        return True

    # --- the sweep ------------------------------------------------------------------------------------------------

    async def sweep(self) -> None:
        if self._sweeping:
            return
        self._sweeping = True
        try:
            for process_id, last_heartbeat in await self.leases.expired():
                released = await self.records.release_sockets(process_id, last_heartbeat)
                if self.rooms is not None:
                    taken = await self.rooms.take_over(process_id)
                    metrics.REAPER_ACTIONS.labels(kind="rooms_taken_over").inc(taken)
                await self.leases.remove(process_id, last_heartbeat)
                metrics.REAPER_ACTIONS.labels(kind="lease_expired").inc()
                metrics.REAPER_ACTIONS.labels(kind="sockets_released").inc(released)
                log.warning("process %s stopped heartbeating: %d sessions' sockets count as closed", process_id,
                            released)
            if self.rooms is not None:
                await self.rooms.check()
            now = self.sessions.clock()
            before = now - self.settings.socket_grace_period
            for session_id in await self.records.abandoned(before):
                if await self.end(session_id, "socket_closed", abandoned_before=before):
                    metrics.REAPER_ACTIONS.labels(kind="socket_closed").inc()
            quiet = await self.records.quiet(idle_before=now - self.settings.session_idle_timeout,
                                             born_before=now - self.settings.session_max_age)
            for session_id, reason in quiet:
                if await self.end(session_id, reason):
                    metrics.REAPER_ACTIONS.labels(kind=reason).inc()
            while await self.deliver() is not None:
                pass
            if self.erasure is not None:
                await self.erasure.forget_due()
                await self.erasure.retry_upstream()
        except ServiceUnavailable as exc:  # MongoDB away: the next sweep tries again
            log.warning("sweep skipped: %s", exc.message)
        except Exception:  # the next sweep tries again; never let one failure stop the loop
            log.exception("sweep failed")
        finally:
            self._sweeping = False
