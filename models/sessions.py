"""Session and token records: every read and atomic transition the gateway makes, run on the store's executor.

Each transition is a single conditional update in MongoDB, so two gateway processes racing over one session
(a stop here, a socket close there) can never both win it.
"""
import hashlib
import hmac
import secrets
import time

from models.documents import AvatarSession, GatewayToken, TurnReport
from models.errors import NotFound
from models.store import blocking
from models.transcript import merge_all, merge_turn

TOKEN_PREFIX = "ilgt_"
_CLAIMING = "__claiming__"


def customer_id(secret, api_key):
    """A stable id for a customer's API key; the key itself is never stored."""
    return hmac.new(secret.encode(), api_key.encode(), hashlib.sha256).hexdigest()


def token_hash(token):
    return hashlib.sha256(token.encode()).hexdigest()


def new_gateway_token():
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


REPORT_FIELDS = ("role", "transcript", "absolute_timestamp", "sources", "task_ids")


class SessionStore:
    def __init__(self, store, clock=time.time):
        self.store = store
        self.clock = clock

    # --- gateway tokens -------------------------------------------------------------------------------------------

    @blocking
    def save_token(self, token, customer, provider, upstream_token, config, ttl, session_id=None):
        now = self.clock()
        GatewayToken(token_hash=token_hash(token), customer=customer, provider=provider,
                     upstream_token=upstream_token, config=config, session_id=session_id,
                     created_at=now, expires_at=now + ttl).save()

    @blocking
    def find_token(self, token):
        return GatewayToken.objects(token_hash=token_hash(token), expires_at__gt=self.clock()).first()

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
    def get(self, session_id):
        return AvatarSession.objects(session_id=session_id).first()

    @blocking
    def owned(self, session_id, customer, provider=None, touch=False):
        """The session, if this customer created it (with that provider, when given); NotFound otherwise: unknown,
        foreign and other-provider sessions look the same. With touch, the call also counts as activity, in the
        same round trip."""
        query = AvatarSession.objects(session_id=session_id, customer=customer)
        if provider:
            query = query.filter(provider=provider)
        session = query.modify(new=True, set__last_activity_at=self.clock()) if touch else query.first()
        if session is None:
            raise NotFound("session not found")
        return session

    @blocking
    def mark_started(self, session_id):
        AvatarSession.objects(session_id=session_id, status="created").update_one(
            set__status="started", set__last_activity_at=self.clock())

    @blocking
    def add_turn(self, session_id, turn, tell_duplicate=False):
        """Store one report of an utterance: a single insert, so concurrent writers never conflict and the cost does
        not grow with the transcript. With tell_duplicate, returns whether the utterance was new to the transcript
        (this reads the transcript, so only for reports the client sends)."""
        new = merge_turn(self._transcript(session_id), turn)[1] if tell_duplicate else None
        TurnReport(session_id=session_id, **{field: turn[field] for field in REPORT_FIELDS}).save(force_insert=True)
        return new

    def _transcript(self, session_id):
        reports = TurnReport.objects(session_id=session_id).order_by("absolute_timestamp").as_pymongo()
        return merge_all([], [{field: report[field] for field in REPORT_FIELDS} for report in reports])

    @blocking
    def transcript(self, session_id):
        """The session's transcript: every report, each utterance once (see models.transcript)."""
        return self._transcript(session_id)

    @blocking
    def socket_opened(self, session_id):
        AvatarSession.objects(session_id=session_id).update_one(
            inc__open_sockets=1, set__last_activity_at=self.clock())

    @blocking
    def socket_closed(self, session_id):
        now = self.clock()
        AvatarSession.objects(session_id=session_id).update_one(
            dec__open_sockets=1, set__socket_closed_at=now, set__last_activity_at=now)

    @blocking
    def claim_end(self, session_id, reason, abandoned_before=None):
        """Atomically end a live session and queue its flush; returns the session as it was just before (so the
        caller sees whether it had started). None when it had already ended, or (with `abandoned_before`) when a
        socket is open again or closed after that time."""
        query = dict(session_id=session_id, status__ne="ended")
        if abandoned_before is not None:
            query.update(open_sockets__lte=0, socket_closed_at__lte=abandoned_before)
        now = self.clock()
        return AvatarSession.objects(**query).modify(
            new=False, set__status="ended", set__ended_at=now, set__end_reason=reason,
            set__flush_state="pending", set__flush_next_at=now)

    @blocking
    def note_stop_error(self, session_id, error):
        AvatarSession.objects(session_id=session_id).update_one(set__stop_error=error[:500])

    @blocking
    def quiet(self, idle_before, born_before, limit=100):
        """Live sessions nobody has touched since `idle_before` (and with no open socket), or created before
        `born_before`: (session_id, "max_age" | "idle") pairs for the reaper."""
        raw = {"status": {"$ne": "ended"},
               "$or": [{"created_at": {"$lt": born_before}},
                       {"last_activity_at": {"$lt": idle_before}, "open_sockets": {"$lte": 0}}]}
        found = AvatarSession.objects(__raw__=raw).only("session_id", "created_at").limit(limit)
        return [(s.session_id, "max_age" if s.created_at < born_before else "idle") for s in found]

    @blocking
    def abandoned(self, before, limit=100):
        """Sessions whose sockets all closed before `before` and which nobody ended."""
        return [s.session_id for s in AvatarSession.objects(
            status__ne="ended", open_sockets__lte=0, socket_closed_at__lte=before).only("session_id").limit(limit)]

    # --- flush to Petya -------------------------------------------------------------------------------------------

    @blocking
    def lease_flush(self, lease_seconds, session_id=None):
        """Take one due flush (pending and due, or delivering with an expired lease) for delivery."""
        now = self.clock()
        raw = {"$or": [{"flush_state": "pending", "flush_next_at": {"$lte": now}},
                       {"flush_state": "delivering", "flush_lease_until": {"$lte": now}}]}
        if session_id:
            raw["session_id"] = session_id
        return AvatarSession.objects(__raw__=raw).modify(
            new=True, set__flush_state="delivering", set__flush_lease_until=now + lease_seconds,
            inc__flush_attempts=1)

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
