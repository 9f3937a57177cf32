"""Request bodies the gateway validates (marshmallow), and the bodies it answers with, from which the OpenAPI document
(handlers/openapi.py) is generated. Unknown request fields are kept and forwarded upstream; the answer schemas
are not used to serialize anything, only to document (and, in tests, check) what the handlers send."""
from typing import Any

from marshmallow import INCLUDE, Schema, fields, validate

from domain.names import FLUSH_STATES, PROVIDERS, ROLES, SESSION_STATUSES, TURN_SOURCES

ID = validate.Length(min=1, max=256)
TEXT = validate.Length(min=1, max=20000)


def doc(text: str, **metadata: Any) -> dict[str, Any]:
    """A field's `metadata`: its description in the OpenAPI document (and example, etc.)."""
    return {"description": text, **metadata}


# --- request bodies --------------------------------------------------------------------------------------------------

class Body(Schema):
    """A request body: a JSON object whose fields not named here are kept and forwarded upstream as they are."""

    class Meta:
        unknown = INCLUDE


class SessionRef(Body):
    session_id = fields.String(required=True, validate=ID, metadata=doc("The session, as streaming.new answered it."))


class OptionalSessionRef(Body):
    session_id = fields.String(validate=ID, metadata=doc(
        "The session, as /v1/sessions/token answered it; required with X-Api-Key, optional with the session's own "
        "gateway token (Authorization: Bearer)."))


class TokenRequest(Body):
    conversation_id = fields.String(allow_none=True, validate=ID, metadata=doc(
        "The chatbot conversation the transcript is handed to Petya under (else the session id)."))


class NewSession(Body):
    quality = fields.String(validate=validate.OneOf(["low", "medium", "high"]))
    version = fields.String(validate=validate.Length(max=16), metadata=doc("HeyGen's streaming version, e.g. v2."))
    conversation_id = fields.String(allow_none=True, validate=ID, metadata=doc(
        "The chatbot conversation the transcript is handed to Petya under (else the session id). Not forwarded."))


class Task(SessionRef):
    text = fields.String(required=True, validate=TEXT)
    # HeyGen's docs name "chat" what the SDK calls "talk"; both make the avatar answer. Default per docs: repeat.
    task_type = fields.String(validate=validate.OneOf(["talk", "repeat", "chat"]), metadata=doc(
        "repeat (the default): the avatar says `text`, recorded as an avatar turn; talk / chat: the user said "
        "`text` and the avatar answers, recorded as a user turn."))
    task_mode = fields.String(validate=validate.OneOf(["sync", "async"]))


class ReportedMessage(SessionRef):
    text = fields.String(required=True, validate=TEXT, metadata=doc("The words the client received over LiveKit."))


SESSION_REF = SessionRef()
OPTIONAL_SESSION_REF = OptionalSessionRef()
TOKEN_REQUEST = TokenRequest()
NEW_SESSION = NewSession()
TASK = Task()
REPORTED_MESSAGE = ReportedMessage()


# --- answers: the gateway's errors ------------------------------------------------------------------------------------

class GatewayError(Schema):
    """The gateway's own error envelope (domain/errors.py, answered by handlers/errors.py), also for tornado's own
    errors (405, …)."""

    code = fields.Integer(required=True, metadata=doc("The HTTP status again, in HeyGen's {code, message} shape."))
    message = fields.String(required=True)
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()), metadata=doc(
        "For a validation error: the offending fields, each with what is wrong with it."))


class NotReadyError(GatewayError):
    """503 from /readyz."""

    status = fields.String(required=True, validate=validate.OneOf(["unavailable"]))
    reason = fields.String(required=True, validate=validate.OneOf(
        ["shutting_down", "lease_lost", "turn_queue_full", "mongodb_unavailable"]))


class UpstreamSocketError(GatewayError):
    """502 from the streaming-chat socket's handshake: the upstream refused its own (or could not be reached)."""

    upstreamStatus = fields.Integer(metadata=doc(
        "The status the upstream answered the gateway's handshake with, when it answered one."))


class ConcurrencyLimitError(Schema):
    """429 when the customer's concurrent sessions (or our upstream account's) are all taken."""

    code = fields.String(required=True, validate=validate.OneOf(["concurrency_limit_exceeded"]))
    message = fields.String(required=True)
    limit = fields.Integer(required=True, allow_none=True, metadata=doc(
        "The customer's limit (null when it is our upstream account's that is reached)."))
    running = fields.Integer(required=True, allow_none=True, metadata=doc(
        "Sessions the customer has running or opening (null when it is our upstream account's limit)."))


class UpstreamError(Schema):
    """An error answer of HeyGen or LiveAvatar, passed through with its own status and JSON body (HeyGen:
    {code, message}; LiveAvatar: {code, message, data} or FastAPI's {detail})."""

    class Meta:
        unknown = INCLUDE

    code = fields.Raw(metadata=doc("The provider's own error code.", type=["integer", "string"]))
    message = fields.String()
    detail = fields.Raw(metadata=doc("LiveAvatar's validation details (FastAPI)."))


# --- answers: success bodies ------------------------------------------------------------------------------------------

class Passed(Schema):
    """The provider's JSON body, passed through as it is: fields other than those named here are the provider's."""

    class Meta:
        unknown = INCLUDE


class HeyGenToken(Passed):
    token = fields.String(required=True, metadata=doc("The gateway's session token (JWT-shaped), bound to the "
                                                      "customer; HeyGen's own stays server-side."))


class HeyGenTokenAnswer(Passed):
    error = fields.Raw(allow_none=True, metadata=doc("HeyGen's: null."))
    data = fields.Nested(HeyGenToken, required=True)


class HeyGenAnswer(Passed):
    """HeyGen's {code, message, data} envelope, passed through."""

    code = fields.Integer(metadata=doc("HeyGen's code (100: success)."))
    message = fields.String()
    data = fields.Raw(allow_none=True)


class HeyGenSession(Passed):
    session_id = fields.String(required=True)
    url = fields.String(allow_none=True, metadata=doc("The LiveKit server (v2)."))
    access_token = fields.String(allow_none=True, metadata=doc("The LiveKit room token (v2)."))
    intro = fields.String(required=True, allow_none=True, metadata=doc(
        "Added by the gateway: the customer's intro line from its Petya config."))


class HeyGenSessionAnswer(HeyGenAnswer):
    data = fields.Nested(HeyGenSession, required=True)  # type: ignore[assignment]


class HeyGenTask(Passed):
    task_id = fields.Raw(metadata=doc("HeyGen's task id.", type=["string", "integer"]))
    duration_ms = fields.Float()


class HeyGenTaskAnswer(HeyGenAnswer):
    data = fields.Nested(HeyGenTask, allow_none=True)  # type: ignore[assignment]


class Recorded(Schema):
    recorded = fields.Boolean(required=True, metadata=doc(
        "true: the turn is in the hand-off to Petya (a repeat of an utterance already recorded from another path "
        "answers false)."))


class RecordedAnswer(Schema):
    code = fields.Integer(required=True, validate=validate.OneOf([100]))
    message = fields.String(required=True, validate=validate.OneOf(["success"]))
    data = fields.Nested(Recorded, required=True)


class Turn(Schema):
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    transcript = fields.String(required=True)
    absolute_timestamp = fields.Float(required=True, metadata=doc("Unix seconds."))
    timestamp = fields.Float(required=True, metadata=doc("The same, under the other spec's name."))
    sources = fields.List(fields.String(validate=validate.OneOf(TURN_SOURCES)),
                          required=True, metadata=doc("The paths that reported this turn."))


class Transcript(Schema):
    session_id = fields.String(required=True)
    provider = fields.String(required=True, validate=validate.OneOf(PROVIDERS))
    status = fields.String(required=True, validate=validate.OneOf(SESSION_STATUSES))
    flush_state = fields.String(required=True, validate=validate.OneOf(FLUSH_STATES),
                                metadata=doc("The hand-off to Petya."))
    transcript = fields.List(fields.Nested(Turn), required=True, metadata=doc("Each turn once, in spoken order."))


class TranscriptAnswer(Schema):
    code = fields.Integer(required=True, validate=validate.OneOf([100]))
    message = fields.String(required=True, validate=validate.OneOf(["success"]))
    data = fields.Nested(Transcript, required=True)


class LiveAvatarAnswer(Passed):
    """LiveAvatar's {code, data, message} envelope, passed through."""

    code = fields.Integer(metadata=doc("LiveAvatar's code (1000: success)."))
    message = fields.String(allow_none=True)
    data = fields.Raw(allow_none=True)


class LiveAvatarToken(Passed):
    session_id = fields.String(required=True)
    session_token = fields.String(required=True, metadata=doc(
        "The gateway's session token (JWT-shaped, carrying LiveAvatar's start_session_data) in place of "
        "LiveAvatar's, which stays server-side."))


class LiveAvatarTokenAnswer(LiveAvatarAnswer):
    data = fields.Nested(LiveAvatarToken, required=True)  # type: ignore[assignment]


class LiveAvatarStart(Passed):
    session_id = fields.String()
    livekit_url = fields.String(allow_none=True)
    livekit_client_token = fields.String(allow_none=True)
    intro = fields.String(required=True, allow_none=True, metadata=doc(
        "Added by the gateway: the customer's intro line. LiveAvatar's livekit_agent_token is removed."))


class LiveAvatarStartAnswer(LiveAvatarAnswer):
    data = fields.Nested(LiveAvatarStart, required=True)  # type: ignore[assignment]


class Health(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok"]))


class Ready(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ready"]))
