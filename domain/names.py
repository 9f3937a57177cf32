"""The names the gateway's records and metrics use, each spelled once."""
from __future__ import annotations

from enum import StrEnum


class ProviderName(StrEnum):
    """Who serves a session upstream."""
    HEYGEN = "heygen"
    LIVEAVATAR = "liveavatar"


class ContractName(StrEnum):
    """What a plugin speaks to the gateway: HeyGen's streaming API, or LiveAvatar's sessions API. A session is
    opened through one contract and served by one provider; today each contract is served by its own provider."""
    HEYGEN = "heygen"
    LIVEAVATAR = "liveavatar"


PROVIDERS: tuple[str, ...] = tuple(name.value for name in ProviderName)
CONTRACTS: tuple[str, ...] = tuple(name.value for name in ContractName)
ROLES = ("user", "avatar")

# A session: created (the upstream session exists) -> started -> ended (stopped, reaped or abandoned).
SESSION_STATUSES = ("created", "started", "ended")
LIVE_STATUSES = ("created", "started")
# Its hand-off to Petya: none -> pending -> delivering (leased) -> delivered | rejected (4xx, kept); cancelled when
# its conversation was erased before it was delivered.
FLUSH_STATES = ("none", "pending", "delivering", "delivered", "rejected", "cancelled")
# Why a session ended: by its client (stopped), or by the reaper.
END_REASONS = ("stopped", "socket_closed", "idle", "max_age", "erased")
# The paths a turn can reach the gateway by: a task, HeyGen's socket events, the client's TextFrame, a client's
# report, the provider's own transcript.
TURN_SOURCES = ("task", "socket", "frame", "reported", "upstream", "room")
