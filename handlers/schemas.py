"""Request bodies the gateway validates (marshmallow). Unknown fields are kept and forwarded upstream."""
from marshmallow import Schema, fields, validate

ID = validate.Length(min=1, max=256)
TEXT = validate.Length(min=1, max=20000)


class SessionRef(Schema):
    session_id = fields.String(required=True, validate=ID)


class OptionalSessionRef(Schema):
    session_id = fields.String(validate=ID)


class TokenRequest(Schema):
    conversation_id = fields.String(allow_none=True, validate=ID)


class NewSession(Schema):
    quality = fields.String(validate=validate.OneOf(["low", "medium", "high"]))
    version = fields.String(validate=validate.Length(max=16))
    conversation_id = fields.String(allow_none=True, validate=ID)


class Task(SessionRef):
    text = fields.String(required=True, validate=TEXT)
    # HeyGen's docs name "chat" what the SDK calls "talk"; both make the avatar answer. Default per docs: repeat.
    task_type = fields.String(validate=validate.OneOf(["talk", "repeat", "chat"]))
    task_mode = fields.String(validate=validate.OneOf(["sync", "async"]))


class ReportedMessage(SessionRef):
    text = fields.String(required=True, validate=TEXT)


SESSION_REF = SessionRef()
OPTIONAL_SESSION_REF = OptionalSessionRef()
TOKEN_REQUEST = TokenRequest()
NEW_SESSION = NewSession()
TASK = Task()
REPORTED_MESSAGE = ReportedMessage()
