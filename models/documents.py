"""MongoDB documents: the shape of every stored record, its validation and its indexes, declared once with
MongoEngine. All session state lives here (not in process memory), so several gateway processes behind one nginx can
serve the same session. Times are float unix seconds. Documents are not strict: during a rolling deploy, or with
sandbox data from an older version, a field one version does not know is ignored, not an error.

The documents declare; the repositories beside them (one per collection) read and write, in one dialect: pymongo's
queries and update operators on the collection named here (`COLLECTION`)."""
from mongoengine import DateTimeField, DictField, Document, FloatField, IntField, ListField, StringField

from domain.names import CONTRACTS, FLUSH_STATES, PROVIDERS, ROLES, SESSION_STATUSES


class TurnReport(Document):
    """One report of an utterance, from one path, as it arrived. A session's reports are merged into its transcript
    when read (domain/transcript.py), so writing one is a single insert whatever the transcript's length."""
    session_id = StringField(required=True)
    role = StringField(required=True, choices=ROLES)
    transcript = StringField(required=True)
    absolute_timestamp = FloatField(required=True)
    # The path that reported it: task, socket (HeyGen's events), frame (the client's TextFrame), reported, upstream.
    sources = ListField(StringField())
    task_ids = ListField(StringField())
    # When MongoDB's TTL monitor may delete it (set when its session's hand-off finished, with retention on): the
    # database's own backstop to the sweep (services/erasure.py), deleting words even when no gateway runs.
    expire_at = DateTimeField()

    COLLECTION = "turn_reports"
    meta = {"collection": COLLECTION, "strict": False,
            "indexes": [("session_id", "absolute_timestamp"), {"fields": ["expire_at"], "expireAfterSeconds": 0}]}


class ProcessLease(Document):
    """A live gateway process: its heartbeat, and the oldest turn it still holds in memory (models.turns)."""
    process_id = StringField(required=True, unique=True)
    host = StringField()
    pid = IntField()
    started_at = FloatField(required=True)
    heartbeat_at = FloatField(required=True)
    pending_since = FloatField()  # when its oldest turn not yet in MongoDB was seen; None when it holds none
    address = StringField()  # its internal URL (INTERNAL_URL): where other processes forward a room's commands

    COLLECTION = "gateway_processes"
    meta = {"collection": COLLECTION, "strict": False, "indexes": ["heartbeat_at"]}


class AvatarSession(Document):
    session_id = StringField(required=True, unique=True)
    provider = StringField(required=True, choices=PROVIDERS)  # who serves it upstream
    contract = StringField(choices=CONTRACTS)  # what its plugin speaks (absent in older records: the provider's)
    conversation_id = StringField(required=True)
    customer = StringField(required=True)  # HMAC of the customer's API key, never the key
    # The customer again while the session is live, unset when it ends: the quota counts a customer's live sessions
    # by this one field (a query on customer and status is a collection scan for SecantusDB's planner).
    customer_live = StringField()
    # While the session is live (null once ended), so the sweep finds the live ones by one indexed field each rather
    # than a filter on status beside them: its last activity, its creation, the last close of one of its sockets.
    live_activity_at = FloatField()
    live_created_at = FloatField()
    live_closed_at = FloatField()
    end_claim = StringField()  # who won the end (models/sessions.py claim_end)
    status_before_end = StringField()
    status = StringField(required=True, choices=SESSION_STATUSES, default="created")
    upstream_token = StringField()  # the provider's session token; server-side only
    # The provider's LiveKit room and the token the gateway's room agent joins it with (server-side only), and the
    # gateway process whose room agent is in it (services/rooms.py): one holder per room, taken over when its
    # process's lease expires.
    room_url = StringField()
    agent_token = StringField()
    room_holder = StringField()  # "" while nobody holds it; absent for a session without a room
    room_note = StringField()  # what the room agent missed (a take-over's gap), said in the hand-off
    created_at = FloatField(required=True)
    last_activity_at = FloatField(required=True)
    started_at = FloatField()  # when the provider started it (billing starts): its start call, or at once (bridged)
    account_id = StringField()  # Petya's accountId for the customer, when its config carries one (usage, hand-off)
    # One entry per open socket: {"id", "process" (the ProcessLease holding it), "opened_at"}. A socket whose
    # process's lease expired counts as closed at that lease's last heartbeat (models.leases).
    sockets = ListField(DictField())
    socket_closed_at = FloatField()
    ended_at = FloatField()
    end_reason = StringField()
    stop_error = StringField()

    flush_state = StringField(choices=FLUSH_STATES, default="none")
    flush_attempts = IntField(default=0)
    flush_next_at = FloatField()
    flush_lease_until = FloatField()
    flush_lease_id = StringField()  # who holds the flush's lease (a conditional update's proof of winning it)
    flush_due_at = FloatField()  # when the sweep is to take the flush (pending: next_at; delivering: lease end)
    flush_error = StringField()
    flush_cutoff = FloatField()  # set when the flush first takes its lease: reports after it are refused (409)
    reports = IntField()  # client reports accepted before the cut-off (models/sessions.py: the atomic check)
    flushed_at = FloatField()
    transcript_note = StringField()  # why a provider transcript could not be merged, when it could not
    # Forgetting (services/erasure.py): when the session's words are due for deletion (its hand-off finished +
    # TRANSCRIPT_RETENTION_DAYS, or an erasure's second pass), when they were deleted, when its conversation was
    # erased, and when the provider is next asked to delete its own copy (None once it has).
    words_expire_at = FloatField()
    words_deleted_at = FloatField()
    erased_at = FloatField()
    upstream_erase_at = FloatField()
    upstream_erase_attempts = IntField(default=0)

    COLLECTION = "avatar_sessions"
    meta = {
        "collection": COLLECTION,
        "strict": False,
        "indexes": [
            "customer",
            "status",
            {"fields": ["flush_due_at"], "sparse": True},
            {"fields": ["live_activity_at"], "sparse": True},
            {"fields": ["live_created_at"], "sparse": True},
            {"fields": ["live_closed_at"], "sparse": True},
            "sockets.process",
            {"fields": ["customer_live"], "sparse": True},
            "room_holder",
            "conversation_id",
            "words_expire_at",
            "upstream_erase_at",
            {"fields": ["ended_at"], "sparse": True},  # usage: the sessions ended in or after a window
        ],
    }


class GatewayToken(Document):
    """The record of a gateway token (domain/tokens.py), the token the browser holds in place of the provider's."""
    token_hash = StringField(required=True, unique=True)
    customer = StringField(required=True)
    provider = StringField(required=True, choices=PROVIDERS)  # who serves its session
    contract = StringField(choices=CONTRACTS)  # what it was minted for (absent in older records: the provider's)
    upstream_token = StringField()
    config = DictField()  # the customer's avatar config when the token was minted
    session_id = StringField()  # bound at streaming.new (HeyGen) or at mint (LiveAvatar)
    # The customer while the token is not bound to a session, unset once it is: streaming.new finds the customer's
    # unused tokens by this one field (a query on customer and session_id is a collection scan for SecantusDB, and
    # one on customer alone would read every token the customer ever had).
    customer_unbound = StringField()
    created_at = FloatField(required=True)
    expires_at = FloatField(required=True)
    expire_at = DateTimeField()  # expires_at as a date: MongoDB's TTL monitor deletes the record after it

    COLLECTION = "gateway_tokens"
    meta = {"collection": COLLECTION, "strict": False,
            "indexes": [{"fields": ["customer_unbound"], "sparse": True},
                        {"fields": ["expire_at"], "expireAfterSeconds": 0}]}


class SessionClaims(Document):
    """The sessions being opened for one customer (their upstream calls under way), in the order they were claimed:
    each counts against the customer's concurrency quota until its session is recorded, or — if its process died
    meanwhile — until it expires. One document per customer, so a claim and its place in line are one atomic $push."""
    customer = StringField(primary_key=True)
    claims = ListField(DictField())  # {"id", "expires_at"}, oldest first
    opened = IntField()  # sessions of the customer recorded so far (ClaimRepository.claim's bound on the live ones)

    COLLECTION = "session_claims"
    meta = {"collection": COLLECTION, "strict": False}
