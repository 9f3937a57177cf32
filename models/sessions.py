"""Session and token records: every read and atomic transition the gateway makes, run on the store's executor.

Each transition is a single conditional update in MongoDB, so two gateway processes racing over one session
(a stop here, a socket close there) can never both win it.
"""
import functools
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from models import metrics
from models.cache import TTLCache
from models.documents import AvatarSession, GatewayToken, SessionClaims, TurnReport
from models.errors import ConcurrencyLimitExceeded, Conflict, NotFound
from models.store import blocking
from models.transcript import merge_all, merge_turn

_CLAIMING = "__claiming__"


@functools.lru_cache(maxsize=4096)  # keys seen lately: an HMAC per request was a percent of a proxied call's CPU
def customer_id(secret, api_key):
    """A stable id for a customer's API key; the key itself is never stored (in MongoDB)."""
    return hmac.new(secret.encode(), api_key.encode(), hashlib.sha256).hexdigest()


def token_hash(token):
    return hashlib.sha256(token.encode()).hexdigest()


REPORT_FIELDS = ("role", "transcript", "absolute_timestamp", "sources", "task_ids")
NO_SOCKET = {"sockets.0": {"$exists": False}}  # a session none of whose sockets is open
DUPLICATE_KEY = 11000


# Bounds of the in-process caches (oldest evicted first: a miss costs one MongoDB round trip, nothing else).
CACHED_TOKENS = 50_000
CACHED_SESSIONS = 50_000


@dataclass(frozen=True)
class SessionFacts:
    """What never changes about a session once it is recorded: enough for the calls that only forward. (No status:
    a caller that needs it reads the session from MongoDB.)"""
    session_id: str
    provider: str
    customer: str
    conversation_id: str
    upstream_token: str | None


class SessionStore:
    """Reads and transitions of sessions and tokens. Facts that never change once set — a token's record, a
    session's owner, provider and upstream token — are cached in the process (bounded), so the hot calls (keep-alive,
    tasks, interrupts, listening) make no MongoDB round trip of their own; their activity touches are coalesced into
    one bulk write every ACTIVITY_FLUSH seconds (models.lifecycle runs it)."""

    def __init__(self, store, clock=time.time, token_ttl=3600.0, session_ttl=3600.0):
        self.store = store
        self.clock = clock
        self.tokens = TTLCache(token_ttl, CACHED_TOKENS)  # token hash -> GatewayToken (expiry checked on use)
        self.facts = TTLCache(session_ttl, CACHED_SESSIONS)  # session id -> SessionFacts
        self._touched = {}  # session id -> latest activity time not yet written

    # --- gateway tokens -------------------------------------------------------------------------------------------

    @blocking
    def save_token(self, token, customer, provider, upstream_token, config, ttl, session_id=None):
        now = self.clock()
        GatewayToken(token_hash=token_hash(token), customer=customer, provider=provider,
                     upstream_token=upstream_token, config=config, session_id=session_id,
                     created_at=now, expires_at=now + ttl).save()

    async def find_token(self, token):
        """The token's record while it has not expired; None otherwise. Records are immutable in what callers read
        (customer, provider, upstream token, config; a LiveAvatar token's session), so they are cached."""
        key = token_hash(token)
        record = self.tokens.get(key)
        if record is None:
            record = await self.store.run(lambda: GatewayToken.objects(token_hash=key).first())
            if record is not None:
                self.tokens.set(key, record)
        return record if record is not None and record.expires_at > self.clock() else None

    @blocking
    def claim_token(self, customer, token_id=None):
        """Reserve a minted, unused HeyGen token for a new session: the one given, else the customer's newest."""
        query = dict(customer=customer, provider="heygen", session_id=None, expires_at__gt=self.clock())
        if token_id is not None:
            query["id"] = token_id
        return GatewayToken.objects(**query).order_by("-created_at").modify(set__session_id=_CLAIMING, new=True)

    @blocking
    def bind_token(self, token_doc, session_id):
        GatewayToken.objects(id=token_doc.id).update_one(set__session_id=session_id)

    @blocking
    def release_token(self, token_doc):
        GatewayToken.objects(id=token_doc.id, session_id=_CLAIMING).update_one(set__session_id=None)

    # --- sessions -------------------------------------------------------------------------------------------------

    @blocking
    def create(self, session_id, provider, conversation_id, customer, upstream_token=None):
        now = self.clock()
        session = AvatarSession(
            session_id=session_id, provider=provider, conversation_id=conversation_id or session_id,
            customer=customer, status="created", upstream_token=upstream_token, created_at=now, last_activity_at=now)
        session.save(force_insert=True)
        return session

    @blocking
    def claim_slot(self, customer, limit, ttl):
        """Take one of the customer's `limit` concurrent sessions before the upstream call that opens it; returns the
        claim's id, to release once the session is recorded (or was not opened). Counted across processes: live
        sessions plus the claims ahead of this one in the customer's line (taken atomically with the claim), so
        racing starts are admitted in order, never over the limit. ConcurrencyLimitExceeded when all are taken."""
        now, claim_id, collection = self.clock(), secrets.token_hex(8), SessionClaims._get_collection()
        while True:
            line = collection.find_one_and_update(
                {"_id": customer}, {"$push": {"claims": {"id": claim_id, "expires_at": now + ttl}}},
                return_document=ReturnDocument.AFTER)
            if line is not None:
                line = line["claims"]
                break
            try:  # the customer's first claim: its line starts now (racing first claims: one insert wins)
                collection.insert_one({"_id": customer, "claims": []})
            except DuplicateKeyError:
                pass
        ahead = [c for c in line[:-1] if c["expires_at"] > now]
        if len(ahead) < len(line) - 1:  # claims of processes that died mid-call: drop them
            SessionClaims._get_collection().update_one({"_id": customer},
                                                       {"$pull": {"claims": {"expires_at": {"$lte": now}}}})
        running = AvatarSession.objects(customer=customer, status__ne="ended").count() + len(ahead)
        if running >= limit:
            metrics.QUOTA_REFUSED.inc()
            self._release_slot(customer, claim_id)
            raise ConcurrencyLimitExceeded(f"this customer may run {limit} avatar sessions at once; end one first",
                                           limit=limit, running=running)
        return customer, claim_id

    @blocking
    def release_slot(self, claim):
        self._release_slot(*claim)

    @staticmethod
    def _release_slot(customer, claim_id):
        SessionClaims._get_collection().update_one({"_id": customer}, {"$pull": {"claims": {"id": claim_id}}})

    @blocking
    def get(self, session_id):
        return AvatarSession.objects(session_id=session_id).first()

    async def owned_facts(self, session_id, customer, provider=None):
        """The session's facts, if this customer created it (as owned()); the call counts as activity. No MongoDB
        round trip once the session is known to this process."""
        facts = self.facts.get(session_id)
        if facts is None:
            return self.remember(await self.owned(session_id, customer, provider, touch=True))
        if facts.customer != customer or (provider and facts.provider != provider):
            raise NotFound("session not found")
        self._touched[session_id] = self.clock()
        return facts

    def remember(self, session):
        facts = SessionFacts(session.session_id, session.provider, session.customer, session.conversation_id,
                             session.upstream_token)
        self.facts.set(session.session_id, facts)
        return facts

    @blocking
    def flush_touches(self):
        """Write the coalesced activity touches: one bulk write. Kept for the next try when MongoDB is away."""
        touched, self._touched = self._touched, {}
        if not touched:
            return 0
        try:
            AvatarSession._get_collection().bulk_write(
                [UpdateOne({"session_id": sid}, {"$max": {"last_activity_at": at}}) for sid, at in touched.items()],
                ordered=False)
        except Exception:
            for sid, at in touched.items():
                self._touched[sid] = max(at, self._touched.get(sid, 0))
            raise
        return len(touched)

    @blocking
    def owned(self, session_id, customer, provider=None, touch=False, before_cutoff=False):
        """The session, if this customer created it (with that provider, when given); NotFound otherwise: unknown,
        foreign and other-provider sessions look the same. With touch, the call also counts as activity, in the
        same round trip. With before_cutoff, atomically only while its flush has not fixed its cut-off (Conflict
        after it): what is accepted then is in the hand-off."""
        query = AvatarSession.objects(session_id=session_id, customer=customer)
        if provider:
            query = query.filter(provider=provider)
        if before_cutoff:
            session = query.filter(flush_cutoff=None).modify(new=True, set__last_activity_at=self.clock())
            if session is None and query.only("session_id").first() is not None:
                raise Conflict("session has ended and its transcript was handed over")
        elif touch:
            session = query.modify(new=True, set__last_activity_at=self.clock())
        else:
            session = query.first()
        if session is None:
            raise NotFound("session not found")
        return session

    @blocking
    def mark_started(self, session_id):
        AvatarSession.objects(session_id=session_id, status="created").update_one(
            set__status="started", set__last_activity_at=self.clock())

    @blocking
    def insert_turns(self, documents):
        """Store turn reports (models.turns builds them, each with its own _id): a single insert whatever the
        transcript's length. One already stored (a retry after a lost acknowledgement) counts as stored. Returns
        {_id: error} of those MongoDB refused for good."""
        try:
            TurnReport._get_collection().insert_many(documents, ordered=False)
        except BulkWriteError as exc:
            return {documents[e["index"]]["_id"]: e.get("errmsg", "")
                    for e in exc.details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY}
        return {}

    @blocking
    def is_new_utterance(self, session_id, turn):
        """Whether `turn` would add an utterance to the session's transcript (not another path's report of one)."""
        return merge_turn(self._transcript(session_id), turn)[1]

    def _transcript(self, session_id):
        reports = TurnReport.objects(session_id=session_id).order_by("absolute_timestamp").as_pymongo()
        return merge_all([], [{field: report[field] for field in REPORT_FIELDS} for report in reports])

    @blocking
    def transcript(self, session_id):
        """The session's transcript: every report, each utterance once (see models.transcript)."""
        return self._transcript(session_id)

    # --- sockets: each recorded against the process holding it (models.leases) -------------------------------------

    @blocking
    def socket_opened(self, session_id, socket_id, process_id):
        now = self.clock()
        AvatarSession._get_collection().update_one(
            {"session_id": session_id},
            {"$push": {"sockets": {"id": socket_id, "process": process_id, "opened_at": now}},
             "$set": {"last_activity_at": now}})

    @blocking
    def sockets_closed(self, closes):
        """Record that sockets closed: {(session id, socket id): closed at}, one bulk write. Repeating one (a retry)
        changes nothing."""
        if closes:
            AvatarSession._get_collection().bulk_write(
                [UpdateOne({"session_id": session_id, "sockets.id": socket_id},
                           {"$pull": {"sockets": {"id": socket_id}},
                            "$max": {"socket_closed_at": at, "last_activity_at": at}})
                 for (session_id, socket_id), at in closes.items()], ordered=False)

    @blocking
    def socket_moved(self, session_id, socket_id, process_id):
        """Record an open socket under this process's new lease (models.leases), then drop its old record."""
        collection = AvatarSession._get_collection()
        collection.update_one({"session_id": session_id, "status": {"$ne": "ended"}},
                              {"$push": {"sockets": {"id": socket_id, "process": process_id,
                                                     "opened_at": self.clock()}}})
        collection.update_one({"session_id": session_id},
                              {"$pull": {"sockets": {"id": socket_id, "process": {"$ne": process_id}}}})

    @blocking
    def release_sockets(self, process_id, last_heartbeat):
        """The sockets a dead process held count as closed at its last heartbeat."""
        return AvatarSession._get_collection().update_many(
            {"sockets.process": process_id},
            {"$pull": {"sockets": {"process": process_id}},
             "$max": {"socket_closed_at": last_heartbeat, "last_activity_at": last_heartbeat}}).modified_count

    @blocking
    def claim_end(self, session_id, reason, abandoned_before=None):
        """Atomically end a live session and queue its flush; returns the session as it was just before (so the
        caller sees whether it had started). None when it had already ended, or (with `abandoned_before`) when a
        socket is open again or closed after that time."""
        query = {"session_id": session_id, "status": {"$ne": "ended"}}
        if abandoned_before is not None:
            query.update(NO_SOCKET, socket_closed_at={"$lte": abandoned_before})
        now = self.clock()
        before = AvatarSession._get_collection().find_one_and_update(
            query, {"$set": {"status": "ended", "ended_at": now, "end_reason": reason,
                             "flush_state": "pending", "flush_next_at": now}})
        return AvatarSession._from_son(before) if before else None

    @blocking
    def note_stop_error(self, session_id, error):
        AvatarSession.objects(session_id=session_id).update_one(set__stop_error=error[:500])

    @blocking
    def quiet(self, idle_before, born_before, limit=100):
        """Live sessions nobody has touched since `idle_before` (and with no open socket), or created before
        `born_before`: (session_id, "max_age" | "idle") pairs for the reaper."""
        raw = {"status": {"$ne": "ended"},
               "$or": [{"created_at": {"$lt": born_before}},
                       {"last_activity_at": {"$lt": idle_before}, **NO_SOCKET}]}
        found = AvatarSession.objects(__raw__=raw).only("session_id", "created_at").limit(limit)
        return [(s.session_id, "max_age" if s.created_at < born_before else "idle") for s in found]

    @blocking
    def abandoned(self, before, limit=100):
        """Sessions whose sockets all closed before `before` and which nobody ended."""
        raw = {"status": {"$ne": "ended"}, "socket_closed_at": {"$lte": before}, **NO_SOCKET}
        return [s.session_id for s in AvatarSession.objects(__raw__=raw).only("session_id").limit(limit)]

    # --- flush to Petya -------------------------------------------------------------------------------------------

    @blocking
    def lease_flush(self, lease_seconds, session_id=None):
        """Take one due flush (pending and due, or delivering with an expired lease) for delivery. The first lease
        fixes the session's cut-off: reports are refused after it (see owned)."""
        now = self.clock()
        raw = {"$or": [{"flush_state": "pending", "flush_next_at": {"$lte": now}},
                       {"flush_state": "delivering", "flush_lease_until": {"$lte": now}}]}
        if session_id:
            raw["session_id"] = session_id
        leased = AvatarSession._get_collection().find_one_and_update(
            raw, {"$set": {"flush_state": "delivering", "flush_lease_until": now + lease_seconds},
                  "$inc": {"flush_attempts": 1}, "$min": {"flush_cutoff": now}},
            return_document=ReturnDocument.AFTER)
        return AvatarSession._from_son(leased) if leased else None

    @blocking
    def flush_defer(self, session_id, delay):
        """Give a leased flush back for `delay` seconds without counting an attempt (it waits for turns)."""
        AvatarSession.objects(session_id=session_id, flush_state="delivering").update_one(
            set__flush_state="pending", set__flush_next_at=self.clock() + delay, dec__flush_attempts=1)

    @blocking
    def flush_done(self, session_id, note=None):
        AvatarSession.objects(session_id=session_id, flush_state="delivering").update_one(
            set__flush_state="delivered", set__flushed_at=self.clock(), set__flush_error=None,
            set__transcript_note=note)

    @blocking
    def flush_retry(self, session_id, delay, error):
        AvatarSession.objects(session_id=session_id, flush_state="delivering").update_one(
            set__flush_state="pending", set__flush_next_at=self.clock() + delay, set__flush_error=error[:500])

    @blocking
    def flush_rejected(self, session_id, error):
        AvatarSession.objects(session_id=session_id, flush_state="delivering").update_one(
            set__flush_state="rejected", set__flush_error=error[:500])
