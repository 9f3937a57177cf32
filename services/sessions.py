"""Sessions and the gateway tokens that reach them: who owns what, the customer's quota, recording a session the
provider just opened (or stopping it when it cannot be recorded), and what never changes about a session, cached.

Facts that never change once set — a token's record, a session's owner, provider and upstream token — are cached in
the process (bounded: the oldest entry goes at the bound, and a miss costs one MongoDB round trip), so the hot calls
(keep-alive, tasks, interrupts, listening) make no MongoDB round trip of their own; their activity touches are
coalesced into one bulk write every ACTIVITY_FLUSH seconds.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from clients.provider import Provider
from domain.cache import TTLCache
from domain.errors import RETRY_AFTER, NotFound, ServiceUnavailable
from domain.records import Customer, Session, SessionFacts, TokenRecord, Turn
from domain.tokens import TokenSigner, token_hash
from models.claims import ClaimRepository
from models.sessions import SessionRepository
from models.tokens import TokenRepository
from models.turns import TurnRepository

log = logging.getLogger("gateway")

# Bounds of the in-process caches (oldest evicted first).
CACHED_TOKENS = 50_000
CACHED_SESSIONS = 50_000
# Seconds between the bulk writes of the hot calls' coalesced activity touches (at most a tenth of
# SESSION_IDLE_TIMEOUT: the idle reaper sees activity that much later).
ACTIVITY_FLUSH = 1.0
# Contracts whose tokens are minted for one session and reach only it (LiveAvatar's: its session exists at mint).
SESSION_BOUND_TOKENS = ("liveavatar",)


class _Opening:
    """What a quota slot (Sessions.slot) learns of the session opened under it: whether it was recorded."""
    recorded = False


# The slot the current task holds while it opens a session (set by Sessions.slot, read by Sessions.record).
_OPENING: contextvars.ContextVar[_Opening | None] = contextvars.ContextVar("opening", default=None)


class Sessions:
    def __init__(self, sessions: SessionRepository, tokens: TokenRepository, turns: TurnRepository,
                 claims: ClaimRepository, signer: TokenSigner, token_ttl: float = 3600.0,
                 session_ttl: float = 3600.0, max_concurrent: int = 3, claim_ttl: float = 65.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.repository = sessions
        self.token_records = tokens
        self.turn_reports = turns
        self.claims = claims
        self.signer = signer
        self.token_ttl = token_ttl
        self.max_concurrent = max_concurrent  # MAX_CONCURRENT_SESSIONS
        self.claim_ttl = claim_ttl  # how long a quota claim of a process that died mid-call counts
        self.clock = clock
        self.tokens: TTLCache[str, TokenRecord] = TTLCache(token_ttl, CACHED_TOKENS)  # hash -> record
        self.facts: TTLCache[str, SessionFacts] = TTLCache(session_ttl, CACHED_SESSIONS)  # session id -> facts
        self._touched: dict[str, float] = {}  # session id -> latest activity time not yet written

    # --- gateway tokens -------------------------------------------------------------------------------------------

    async def mint_token(self, customer: Customer, contract: str, provider: str, upstream_token: str | None,
                         claims: dict[str, Any] | None = None, session_id: str | None = None) -> str:
        """A new gateway token for the customer, and its record (the provider's token, the customer's config)."""
        token = self.signer.mint(contract, self.token_ttl, claims)
        now = self.clock()
        await self.token_records.save(token_hash(token), customer.id, provider, contract, upstream_token,
                                      customer.config, now, now + self.token_ttl, session_id)
        return token

    async def find_token(self, token: str) -> TokenRecord | None:
        """The token's record while it has not expired; None otherwise. Records are immutable in what callers read
        (customer, contract, provider, upstream token, config; a session-bound token's session), so they are
        cached."""
        key = token_hash(token)
        record = self.tokens.get(key)
        if record is None:
            record = await self.token_records.find(key)
            if record is not None:
                self.tokens.set(key, record)
        return record if record is not None and record.expires_at > self.clock() else None

    async def claim_token(self, customer: Customer, provider: str) -> TokenRecord | None:
        """Reserve a minted, unused token for a new session: the one the customer presented, else its newest."""
        return await self.token_records.claim(customer.id, provider, self.clock(),
                                              customer.token.id if customer.token else None)

    async def bind_token(self, token: TokenRecord, session_id: str) -> None:
        await self.token_records.bind(token.id, session_id)

    async def release_token(self, token: TokenRecord) -> None:
        await self.token_records.release(token.id)

    # --- who owns what --------------------------------------------------------------------------------------------

    def _reachable(self, session_id: str, customer: Customer, contract: str | None) -> str | None:
        """The contract a session must have been opened through for this caller; NotFound when its token cannot
        reach `session_id`. A gateway token reaches only sessions of its own contract, and a session-bound token
        only its own session."""
        token = customer.token
        if token is None:
            return contract
        if contract and contract != token.served_contract:
            raise NotFound("session not found")
        if token.served_contract in SESSION_BOUND_TOKENS and session_id != token.session_id:
            raise NotFound("session not found")
        return token.served_contract

    async def owned(self, session_id: str, customer: Customer, contract: str | None = None, touch: bool = True,
                    before_cutoff: bool = False) -> Session:
        """The customer's session (opened through that contract, when given); NotFound otherwise: unknown, foreign
        and other-contract sessions look the same. By default the call counts as activity on it. With
        before_cutoff, atomically only while its flush has not fixed its cut-off (Conflict after it)."""
        contract = self._reachable(session_id, customer, contract)
        session = await self.repository.owned(session_id, customer.id, self.clock(), before_cutoff=before_cutoff)
        if contract and session.served_contract != contract:
            raise NotFound("session not found")
        if touch:
            self._touched[session_id] = self.clock()  # written with the others (flush_touches): no round trip
        return session

    async def owned_facts(self, session_id: str, customer: Customer, contract: str | None = None) -> SessionFacts:
        """The session's facts, if this customer owns it (as owned()); the call counts as activity. No MongoDB round
        trip once the session is known to this process."""
        contract = self._reachable(session_id, customer, contract)
        facts = self.facts.get(session_id)
        if facts is None:
            return self.remember(await self.owned(session_id, customer, contract, touch=True))
        if facts.customer != customer.id or (contract and facts.contract != contract):
            raise NotFound("session not found")
        self._touched[session_id] = self.clock()
        return facts

    def remember_session(self, session: Session) -> Session:
        self.remember(session)
        return session

    def remember(self, session: Session) -> SessionFacts:
        facts = SessionFacts.of(session)
        self.facts.set(session.session_id, facts)
        return facts

    async def flush_touches(self) -> int:
        """Write the coalesced activity touches: one bulk write. Kept for the next try when MongoDB is away."""
        touched, self._touched = self._touched, {}
        if not touched:
            return 0
        try:
            await self.repository.touch_all(touched)
        except Exception:
            for sid, at in touched.items():
                self._touched[sid] = max(at, self._touched.get(sid, 0))
            raise
        return len(touched)

    # --- opening --------------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def slot(self, customer: Customer) -> AsyncIterator[None]:
        """One of the customer's concurrent sessions (`maxConcurrentSessions` in its Petya config, else
        MAX_CONCURRENT_SESSIONS), held while the upstream call that opens a session is under way;
        ConcurrencyLimitExceeded when all are taken, before any upstream call."""
        limit = customer.config.get("maxConcurrentSessions")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            limit = self.max_concurrent
        claim = await self.claims.claim(customer.id, limit, self.clock(), self.claim_ttl)
        opening = _Opening()
        entered = _OPENING.set(opening)
        try:
            yield
        finally:
            _OPENING.reset(entered)
            try:
                await self.claims.release(claim, opened=opening.recorded)
            except ServiceUnavailable:
                pass  # it expires by itself (and the customer's count of opened sessions misses it until recounted)

    async def record(self, provider: Provider, session_id: str, contract: str, customer: Customer,
                     conversation_id: str | None, upstream_token: str | None, room_url: str | None = None,
                     agent_token: str | None = None, started: bool = False) -> Session:
        """Record a session the provider just opened (`started`: and already started, billing); if that fails, stop it
        upstream rather than leak it (ServiceUnavailable then). The customer's Petya accountId goes with it."""
        try:
            now = self.clock()
            account = customer.config.get("accountId")
            session = self.remember_session(await self.repository.create(
                session_id, provider.name, contract, conversation_id, customer.id, upstream_token, now,
                room_url, agent_token, str(account) if account else None, now if started else None))
            opening = _OPENING.get()
            if opening is not None:
                opening.recorded = True
            return session
        except Exception as exc:
            log.error("could not record %s session %s (%s); stopping it", provider.name, session_id,
                      exc.message if isinstance(exc, ServiceUnavailable) else repr(exc))
            await provider.abandon(session_id)
            raise ServiceUnavailable("could not record the session; it was stopped", retry_after=RETRY_AFTER) from None

    # --- what the other services read and write -------------------------------------------------------------------

    async def get(self, session_id: str) -> Session | None:
        return await self.repository.get(session_id)

    async def set_room(self, session_id: str, room_url: str, agent_token: str) -> Session | None:
        """The room a session got when it started; this process's cached facts learn it too."""
        stored = await self.repository.set_room(session_id, room_url, agent_token)
        if stored is not None:
            self.remember(stored)
        return stored

    async def mark_started(self, session_id: str) -> None:
        await self.repository.mark_started(session_id, self.clock())

    async def transcript(self, session_id: str) -> list[Turn]:
        """The session's transcript as recorded: every report, each utterance once."""
        return await self.turn_reports.transcript(session_id)

    async def is_new_utterance(self, session_id: str, turn: Turn) -> bool:
        return await self.turn_reports.is_new_utterance(session_id, turn)

    async def socket_opened(self, session_id: str, socket_id: str, process_id: str) -> None:
        """Record an open socket against the lease of the process holding it (services/leases.py)."""
        await self.repository.socket_opened(session_id, socket_id, process_id, self.clock())

    async def socket_moved(self, session_id: str, socket_id: str, process_id: str) -> None:
        """Record an open socket under this process's new lease."""
        await self.repository.socket_moved(session_id, socket_id, process_id, self.clock())
