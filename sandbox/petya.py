"""Petya reference implementation: the two endpoints Petya exposes to the gateway, over MongoDB.

- `GET /api/v1/avatar/config` — avatar config of the customer whose API key is in `X-Api-Key` or
  `Authorization: Bearer <key>`.
- `POST /api/v1/avatar/conversations/<conversationId>/status` — the gateway (service token as Bearer) hands off one
  session's status and transcript; every accepted change is also kept as a delivery record.

A conversation spans sessions (the plugin keeps its conversation id across a page reload and an upstream idle
timeout), so the reference stores each hand-off under its session and never lets one session's hand-off touch
another's words (`record_status`). The conversation keeps:

- `sessions`: one entry per session, in the order they started (`session_start`): `{sessionId, status, transcript,
  deliveryId, receivedAt, transcriptDeliveryId}` and whichever of SESSION_FIELDS its hand-off carried. A list, not
  an object keyed by session id: ids come from outside, and a MongoDB field name must not hold `.` or start with `$`.
- `transcript`: every session's turns merged in spoken order (`merge_transcripts`), whatever order the hand-offs
  arrived in;
- `sessionId` and `status`: those of the latest-started session (the last of `sessions`) — the conversation is as
  live as its newest session;
- `createdAt`, `updatedAt`.

The rules, in the order they apply:

1. A delivery id seen before is a repeat: 200 with `"repeat": true`, nothing written (without a delivery id — an older
   gateway — a hand-off that would store exactly what its session holds is the repeat).
2. Another session's hand-off, late or not, adds or changes that session's entry only.
3. A new hand-off for a session already stored (another delivery id: the gateway never sends one, but) replaces that
   session's entry — except its words: a hand-off with fewer turns than the session holds (none, say, re-sent after
   the gateway's retention erased its copy) keeps the words the reference has (`transcriptDeliveryId` still names
   the delivery they came from). Words Petya has are never lost to a later hand-off.

The config holds CONFIG_FIELDS over DEFAULT_CONFIG, and whatever else an account was created or updated with. One
optional field says who serves the customer's sessions: `provider`, "heygen" or "liveavatar" (PROVIDERS) or null —
for a plugin speaking HeyGen's contract (`/v1/streaming.*`), the gateway serves it with that provider; absent or
null, the gateway's HEYGEN_CONTRACT_PROVIDER decides. Another, `accountId` (a string or null), names the customer's
account for usage and billing: the gateway puts it in each hand-off. Both are absent from the config until set (null
once set to null). Any other provider value is refused, wherever it comes in: 400 naming the field on the admin
route, ConfigValidationError from `create_account` and `update_account_config`.

For the demo console (browser, another origin, so with CORS), protected by the service token as Bearer:
- `GET` / `PUT /api/v1/admin/accounts/config` — read / update the avatar config of the account whose API key is
  in `X-Api-Key` (PUT takes a JSON object of CONFIG_FIELDS; only the fields given change; a bad one: 400
  `{"message": "<field> …"}`, nothing changed).
- `GET /api/v1/avatar/conversations/<conversationId>` — the stored conversation (404 when there is none).

State lives in MongoDB through pymongo (not mongoengine, whose default connection belongs to the gateway). Times are
float unix seconds. pymongo calls run in a small thread pool so the IOLoop never blocks.
"""
import hashlib
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pymongo
import tornado.ioloop
import tornado.web
from pymongo import ReturnDocument

from sandbox.common import EmulatorHandler, Recorder

DEFAULT_CONFIG = {
    "avatarId": "Katya_Chair_Sitting_public",
    "intro": "Hello and welcome. How can I help you today?",
    "knowledgeBaseId": None,
    "voiceId": None,
    "language": "en",
}
STATUSES = ("active", "completed", "failed")
ROLES = ("user", "avatar")
CONFIG_FIELDS = ("avatarId", "intro", "knowledgeBaseId", "voiceId", "language", "provider", "accountId")
REQUIRED_CONFIG_FIELDS = ("avatarId", "language")  # non-empty strings; the others may be null
PROVIDERS = ("heygen", "liveavatar")  # `provider`: who serves the customer's sessions (null: the gateway's default)
TIMESTAMP_FIELDS = ("absolute_timestamp", "timestamp")  # a turn's time, unix seconds: the first one present
# What a hand-off may say about its session besides its words, all optional (an older gateway sends none), stored on
# the session's entry as given; null is the same as absent.
SESSION_STRING_FIELDS = ("provider", "contract", "endReason", "accountId", "transcriptNote")
SESSION_NUMBER_FIELDS = ("startedAt", "endedAt", "durationSeconds")  # unix seconds / seconds
SESSION_FIELDS = SESSION_STRING_FIELDS + SESSION_NUMBER_FIELDS


def key_hash(api_key):
    return hashlib.sha256(api_key.encode()).hexdigest()


class StatusValidationError(ValueError):
    """A status body that does not match the contract; the message names the field."""


def validate_status_body(body, idempotency_key=None):
    """(sessionId, status, transcript, deliveryId, fields) from a status body and its Idempotency-Key header, or
    StatusValidationError naming the bad field. deliveryId, when both are sent, must equal the header. `fields`: the
    SESSION_FIELDS the body gives (not null), each a string or a number as SESSION_*_FIELDS say."""
    if body is None:
        raise StatusValidationError("body must be a JSON object")
    delivery_id = body.get("deliveryId", idempotency_key)
    if delivery_id is not None and (not isinstance(delivery_id, str) or not delivery_id):
        raise StatusValidationError("deliveryId must be a non-empty string")
    if idempotency_key is not None and delivery_id != idempotency_key:
        raise StatusValidationError("deliveryId must equal the Idempotency-Key header")
    session_id = body.get("sessionId")
    if not isinstance(session_id, str) or not session_id:
        raise StatusValidationError("sessionId must be a non-empty string")
    status = body.get("status")
    if status not in STATUSES:
        raise StatusValidationError(f"status must be one of {', '.join(STATUSES)}")
    transcript = body.get("transcript")
    if not isinstance(transcript, list):
        raise StatusValidationError("transcript must be a list")
    for i, turn in enumerate(transcript):
        where = f"transcript[{i}]"
        if not isinstance(turn, dict):
            raise StatusValidationError(f"{where} must be an object")
        if turn.get("role") not in ROLES:
            raise StatusValidationError(f"{where}.role must be one of {', '.join(ROLES)}")
        if not isinstance(turn.get("transcript"), str):
            raise StatusValidationError(f"{where}.transcript must be a string")
        for name in TIMESTAMP_FIELDS:
            if name in turn and not is_number(turn[name]):
                raise StatusValidationError(f"{where}.{name} must be a number")
    fields = {name: body[name] for name in SESSION_FIELDS if body.get(name) is not None}
    for name, value in fields.items():
        if name in SESSION_NUMBER_FIELDS and not is_number(value):
            raise StatusValidationError(f"{name} must be a number")
        if name in SESSION_STRING_FIELDS and not isinstance(value, str):
            raise StatusValidationError(f"{name} must be a string")
    return session_id, status, transcript, delivery_id, fields


def stored_sessions(conversation):
    """The session entries of a stored conversation. One stored before conversations kept their sessions (a sandbox's
    old data) holds one session, its top-level one: read as such, so its words are kept too."""
    if "sessions" in conversation or "sessionId" not in conversation:
        return conversation.get("sessions", [])
    return [{"sessionId": conversation["sessionId"], "status": conversation["status"],
             "transcript": conversation["transcript"], "deliveryId": None,
             "receivedAt": conversation.get("updatedAt", 0), "transcriptDeliveryId": None}]


def turn_time(turn):
    """A turn's time (unix seconds), or None when it has none."""
    return next((turn[name] for name in TIMESTAMP_FIELDS if is_number(turn.get(name))), None)


def session_start(entry):
    """When a stored session started, for ordering sessions: its `startedAt`, else its first turn's time, else when its
    hand-off was received."""
    if is_number(entry.get("startedAt")):
        return entry["startedAt"]
    first = next((t for t in map(turn_time, entry["transcript"]) if t is not None), None)
    return entry["receivedAt"] if first is None else first


def order_sessions(entries):
    """Session entries in the order they started (ties: by session id)."""
    return sorted(entries, key=lambda entry: (session_start(entry), entry["sessionId"]))


def merge_transcripts(entries):
    """The turns of `entries` (sessions in start order) in spoken order: by time; equal times by session, then by
    position in it. A turn without a time takes the time of the turn before it in its session (its session's start
    for the first), so it stays where it was said."""
    keyed = []
    for index, entry in enumerate(entries):
        at = session_start(entry)
        for position, turn in enumerate(entry["transcript"]):
            at = turn_time(turn) if turn_time(turn) is not None else at
            keyed.append(((at, index, position), turn))
    return [turn for _, turn in sorted(keyed, key=lambda item: item[0])]


class ConfigValidationError(ValueError):
    """A config change that does not fit the account config; the message names the field."""


def validate_config_changes(body):
    """The config changes in a PUT body, or ConfigValidationError naming the bad field."""
    if body is None:
        raise ConfigValidationError("body must be a JSON object")
    unknown = sorted(set(body) - set(CONFIG_FIELDS))
    if unknown:
        raise ConfigValidationError(f"{unknown[0]} is not a config field ({', '.join(CONFIG_FIELDS)})")
    for name, value in body.items():
        if name == "provider":
            validate_provider(value)
        elif name in REQUIRED_CONFIG_FIELDS:
            if not isinstance(value, str) or not value.strip():
                raise ConfigValidationError(f"{name} must be a non-empty string")
        elif value is not None and not isinstance(value, str):
            raise ConfigValidationError(f"{name} must be a string or null")
    return dict(body)


def validate_provider(value):
    """`provider` must be one of PROVIDERS, or null; else ConfigValidationError naming it."""
    if value is not None and (not isinstance(value, str) or value not in PROVIDERS):
        raise ConfigValidationError(f"provider must be one of {', '.join(PROVIDERS)}, or null")


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class PetyaReference:
    """Petya's gateway-facing API over MongoDB: accounts, conversations and a log of status deliveries."""

    def __init__(self, mongodb_uri, db_name="petya", service_token="sandbox-petya-service-token"):
        self.service_token = service_token
        self.recorder = Recorder()
        self.fail_status = None  # tests: every status hand-off is answered with it, nothing stored
        self.fail_sessions = {}  # tests: {sessionId: status}: that session's hand-offs are answered with it
        self.config_fail_status = None
        self.on_status = None  # tests: `async f(conversation_id)` run after a status is stored, before the answer
        self.client = pymongo.MongoClient(mongodb_uri, serverSelectionTimeoutMS=5000)
        db = self.client[db_name]
        self.accounts = db["accounts"]
        self.conversations = db["conversations"]
        self.delivery_log = db["deliveries"]
        self.accounts.create_index("api_key_sha256", unique=True)
        self.conversations.create_index("conversationId", unique=True)
        self.delivery_log.create_index("conversationId")
        self.delivery_log.create_index("deliveryId")  # one delivery per id: record_status checks under its lock
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="petya-reference")
        self.status_lock = threading.Lock()  # makes compare-then-write of a status atomic

    def make_app(self):
        args = dict(emulator=self)
        return tornado.web.Application([
            (r"/api/v1/avatar/config", ConfigHandler, args),
            (r"/api/v1/avatar/conversations/([^/]+)/status", ConversationStatusHandler, args),
            (r"/api/v1/avatar/conversations/([^/]+)", ConversationHandler, args),
            (r"/api/v1/admin/accounts/config", AccountConfigAdminHandler, args),
        ])

    async def run(self, fn, *args):
        """`fn(*args)` on the pymongo thread pool."""
        return await tornado.ioloop.IOLoop.current().run_in_executor(self.executor, fn, *args)

    # Accounts

    def create_account(self, api_key, name="Demo customer", **config):
        """Stores an account keyed by sha256(api_key); returns it (without _id) with its full config.
        ConfigValidationError for a bad `provider`."""
        if "provider" in config:
            validate_provider(config["provider"])
        now = time.time()
        account = {"api_key_sha256": key_hash(api_key), "name": name, "config": DEFAULT_CONFIG | config,
                   "createdAt": now, "updatedAt": now}
        self.accounts.insert_one(account)
        account.pop("_id")
        return account

    def update_account_config(self, api_key, **config):
        """Sets the given config fields on the account; returns it (without _id). KeyError for an unknown key,
        ConfigValidationError for a bad `provider` (nothing is changed)."""
        if "provider" in config:
            validate_provider(config["provider"])
        changes = {f"config.{name}": value for name, value in config.items()}
        account = self.accounts.find_one_and_update(
            {"api_key_sha256": key_hash(api_key)}, {"$set": {**changes, "updatedAt": time.time()}},
            projection={"_id": 0}, return_document=ReturnDocument.AFTER,
        )
        if account is None:
            raise KeyError("unknown API key")
        return account

    def config_for_key(self, api_key):
        """The account's config over DEFAULT_CONFIG, or None for an unknown key."""
        account = self.accounts.find_one({"api_key_sha256": key_hash(api_key)}, {"config": 1})
        if account is None:
            return None
        return DEFAULT_CONFIG | account.get("config", {})

    # Conversations

    def record_status(self, conversation_id, session_id, status, transcript, delivery_id=None, fields=None):
        """Stores one session's hand-off under its conversation (the rules are in this module's docstring) and logs the
        delivery with the SESSION_FIELDS it carried; returns False for a repeat (nothing written)."""
        fields = dict(fields or {})
        with self.status_lock:
            if delivery_id is not None and self.delivery_log.find_one({"deliveryId": delivery_id}, {"_id": 1}):
                return False
            current = self.conversations.find_one({"conversationId": conversation_id}) or {}
            sessions = [entry for entry in stored_sessions(current) if entry["sessionId"] != session_id]
            stored = next((e for e in stored_sessions(current) if e["sessionId"] == session_id), None)
            now = time.time()
            entry = {"sessionId": session_id, "status": status, "transcript": transcript, "deliveryId": delivery_id,
                     "receivedAt": now, "transcriptDeliveryId": delivery_id, **fields}
            if stored is not None and len(transcript) < len(stored["transcript"]):  # never lose words it has
                entry["transcript"] = stored["transcript"]
                entry["transcriptDeliveryId"] = stored.get("transcriptDeliveryId")
            unchanged = ("receivedAt", "deliveryId", "transcriptDeliveryId")
            if delivery_id is None and stored is not None and all(
                    entry.get(k) == stored.get(k) for k in set(entry) | set(stored) if k not in unchanged):
                return False
            sessions = order_sessions(sessions + [entry])
            latest = sessions[-1]
            self.conversations.replace_one(
                {"conversationId": conversation_id},
                {"conversationId": conversation_id, "sessionId": latest["sessionId"], "status": latest["status"],
                 "transcript": merge_transcripts(sessions), "sessions": sessions,
                 "createdAt": current.get("createdAt", now), "updatedAt": now},
                upsert=True,
            )
            self.delivery_log.insert_one({"conversationId": conversation_id, "sessionId": session_id,
                                          "status": status, "transcript": transcript, "at": now,
                                          "deliveryId": delivery_id, **fields})
            return True

    def get_conversation(self, conversation_id):
        """The stored conversation (without _id), or None."""
        return self.conversations.find_one({"conversationId": conversation_id}, {"_id": 0})

    def deliveries(self, conversation_id=None):
        """Accepted status deliveries (of one conversation, when given), oldest first."""
        query = {} if conversation_id is None else {"conversationId": conversation_id}
        return list(self.delivery_log.find(query, {"_id": 0}).sort([("at", 1), ("_id", 1)]))

    def close(self):
        self.executor.shutdown(wait=True)
        self.client.close()


class ConfigHandler(EmulatorHandler):
    async def get(self):
        petya = self.emulator
        if petya.config_fail_status:
            return self.reply(petya.config_fail_status, {"message": "Petya config lookup unavailable (simulated)"})
        api_key = self.request.headers.get("X-Api-Key") or self.bearer()
        config = await petya.run(petya.config_for_key, api_key) if api_key else None
        if config is None:
            return self.reply(401, {"message": "Invalid API key"})
        self.reply(200, config)


class ConversationStatusHandler(EmulatorHandler):
    async def post(self, conversation_id):
        petya = self.emulator
        if petya.fail_status:
            return self.reply(petya.fail_status, {"message": "Petya status update unavailable (simulated)"})
        if self.bearer() != petya.service_token:
            return self.reply(401, {"message": "Invalid service token"})
        body = self.json_body()
        try:
            session_id, status, transcript, delivery_id, fields = validate_status_body(
                body, self.request.headers.get("Idempotency-Key"))
        except StatusValidationError as error:
            return self.reply(400, {"message": str(error)})
        if petya.fail_sessions.get(session_id):
            return self.reply(petya.fail_sessions[session_id],
                              {"message": "Petya status update unavailable for this session (simulated)"})
        applied = await petya.run(petya.record_status, conversation_id, session_id, status, transcript,
                                  delivery_id, fields)
        if petya.on_status is not None:  # tests: a fault injected once Petya has taken the delivery
            await petya.on_status(conversation_id)
        self.reply(200, {"ok": True, "conversationId": conversation_id, "sessionId": session_id,
                         "repeat": not applied})


class CorsHandler(EmulatorHandler):
    """CORS for the routes the demo console calls from the browser: any Origin echoed, preflight answered 204."""

    def set_default_headers(self):
        origin = self.request.headers.get("Origin")
        if origin:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Allow-Methods", "GET, PUT, POST, OPTIONS")
            self.set_header("Access-Control-Allow-Headers", "Content-Type, Authorization, X-Api-Key")
            self.set_header("Access-Control-Max-Age", "600")
        self.set_header("Vary", "Origin")

    def options(self, *args):
        self.set_status(204)
        self.finish()

    def service_token_ok(self):
        if self.bearer() != self.emulator.service_token:
            self.reply(401, {"message": "Invalid service token"})
            return False
        return True


class ConversationHandler(CorsHandler):
    async def get(self, conversation_id):
        petya = self.emulator
        if not self.service_token_ok():
            return
        conversation = await petya.run(petya.get_conversation, conversation_id)
        if conversation is None:
            return self.reply(404, {"message": "Conversation not found"})
        self.reply(200, conversation)


class AccountConfigAdminHandler(CorsHandler):
    """The avatar config of the account whose key is in X-Api-Key, for an admin holding the service token."""

    def api_key(self):
        api_key = (self.request.headers.get("X-Api-Key") or "").strip()
        if not api_key:
            self.reply(400, {"message": "X-Api-Key (the account's API key) is required"})
        return api_key

    async def get(self):
        petya = self.emulator
        if not self.service_token_ok() or not (api_key := self.api_key()):
            return
        config = await petya.run(petya.config_for_key, api_key)
        if config is None:
            return self.reply(404, {"message": "Unknown API key"})
        self.reply(200, config)

    async def put(self):
        petya = self.emulator
        if not self.service_token_ok() or not (api_key := self.api_key()):
            return
        try:
            changes = validate_config_changes(self.json_body())
        except ConfigValidationError as error:
            return self.reply(400, {"message": str(error)})
        try:
            if changes:
                await petya.run(lambda: petya.update_account_config(api_key, **changes))
            config = await petya.run(petya.config_for_key, api_key)
        except KeyError:
            config = None
        if config is None:
            return self.reply(404, {"message": "Unknown API key"})
        self.reply(200, config)
