"""What the gateway knows of a session, a token and a customer, as the storage layer hands them over: immutable
records whose fields are the stored fields."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypedDict


class Turn(TypedDict):
    """One utterance: who said it, the words, when (unix seconds), the paths that reported it, its task ids."""
    role: str
    transcript: str
    absolute_timestamp: float
    sources: list[str]
    task_ids: list[str]


@dataclass(frozen=True, slots=True)
class Session:
    """A session as stored (models/documents.py: AvatarSession)."""
    session_id: str
    provider: str
    conversation_id: str
    customer: str  # HMAC of the customer's API key, never the key
    created_at: float
    last_activity_at: float
    status: str = "created"
    contract: str | None = None  # None: stored before contracts were recorded, then the provider's own
    upstream_token: str | None = None
    started_at: float | None = None
    account_id: str | None = None
    room_url: str | None = None
    agent_token: str | None = None
    room_holder: str | None = None
    room_note: str | None = None
    sockets: tuple[dict[str, Any], ...] = ()
    socket_closed_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    stop_error: str | None = None
    flush_state: str = "none"
    flush_attempts: int = 0
    flush_next_at: float | None = None
    flush_lease_until: float | None = None
    flush_error: str | None = None
    flush_cutoff: float | None = None
    flush_lease_id: str | None = None
    end_claim: str | None = None
    status_before_end: str | None = None
    flushed_at: float | None = None
    transcript_note: str | None = None
    words_expire_at: float | None = None
    words_deleted_at: float | None = None
    erased_at: float | None = None
    upstream_erase_at: float | None = None
    upstream_erase_attempts: int = 0

    @property
    def served_contract(self) -> str:
        return self.contract or self.provider


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What never changes about a session once it is recorded: enough for the calls that only forward. (No status:
    a caller that needs it reads the session.)"""
    session_id: str
    provider: str
    contract: str
    customer: str
    conversation_id: str
    upstream_token: str | None
    room_url: str | None = None  # the provider's LiveKit room, when the gateway's room agent joins it
    agent_token: str | None = None

    @classmethod
    def of(cls, session: Session) -> SessionFacts:
        return cls(session.session_id, session.provider, session.served_contract, session.customer,
                   session.conversation_id, session.upstream_token, session.room_url, session.agent_token)

    @property
    def bridged(self) -> bool:
        """HeyGen's contract served by LiveAvatar: the gateway speaks HeyGen to the plugin and LiveAvatar upstream."""
        return self.contract == "heygen" and self.provider == "liveavatar"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A gateway token's server-side record (models/documents.py: GatewayToken), found by the token's hash."""
    id: Any  # its MongoDB _id
    token_hash: str
    customer: str
    provider: str
    created_at: float
    expires_at: float
    contract: str | None = None  # None: stored before contracts were recorded, then the provider's own
    upstream_token: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the customer's avatar config when it was minted
    session_id: str | None = None  # bound at streaming.new (HeyGen) or at mint (LiveAvatar)

    @property
    def served_contract(self) -> str:
        return self.contract or self.provider


@dataclass(frozen=True, slots=True)
class Customer:
    """The caller: its id (HMAC of its API key), its avatar config, and the gateway token it presented, if any."""
    id: str
    config: dict[str, Any]
    token: TokenRecord | None = None


_FIELDS: dict[type[Any], tuple[tuple[str, str, bool], ...]] = {}  # record type -> (field, stored key, required)


def _stored_fields(record_type: type[Any]) -> tuple[tuple[str, str, bool], ...]:
    """(field, stored key, required) of a record type, worked out once per type."""
    fields = _FIELDS.get(record_type)
    if fields is None:
        fields = _FIELDS[record_type] = tuple(
            (f.name, "_id" if f.name == "id" else f.name,
             f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(record_type))
    return fields


def from_document(record_type: type[Any], document: dict[str, Any]) -> Any:
    """A record from a stored document: its fields that the record declares (unknown ones ignored, as the
    documents ignore them during a rolling deploy); `_id` as `id`."""
    values = {}
    for name, key, required in _stored_fields(record_type):
        value = document.get(key)
        if value is not None:
            values[name] = tuple(value) if name == "sockets" else value
        elif required:
            values[name] = None
    return record_type(**values)
