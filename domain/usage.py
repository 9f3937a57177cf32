"""What a session used, pure: how long the provider served it, why it ended, what it is estimated to have cost, and
the fields of its hand-off that say so (Petya links them to the conversation for analytics and billing).

Times are unix seconds. A session's duration runs from the provider's start (billing starts: HeyGen's and LiveAvatar's
start calls; for HeyGen's contract on LiveAvatar, `streaming.new`, which starts LiveAvatar's session) to its end; 0
when it never started. Credits are estimates: LiveAvatar bills FULL mode 2 credits a minute, LITE 1, metered once a
minute (docs/upstream.md#liveavatar-credits; the gateway opens FULL sessions); HeyGen's per-minute rate for streaming is
not published, so its credits are not estimated (None).
"""
from __future__ import annotations

import re
from typing import Any

from domain.records import Session

CREDITS_PER_MINUTE: dict[str, float | None] = {"liveavatar": 2.0, "heygen": None}

# What the provider said when it ended a session itself (LiveAvatar's stop_reason, lower-cased) -> the endReason.
UPSTREAM_END_REASONS = {
    "idle_timeout": "upstream_idle",
    "no_credits": "no_credits",
    "max_duration_reached": "upstream_max_duration",
    "user_closed": "upstream_stopped",
    "user_disconnected": "upstream_user_disconnected",
    "server_error": "upstream_error",
    "zombie_session_reap": "upstream_reaped",
    "avatar_deleted": "upstream_avatar_deleted",
    "agent_hang_up": "upstream_agent_hang_up",
}
_NOT_A_NAME = re.compile(r"[^a-z0-9_]+")


def upstream_end_reason(stop_reason: str) -> str:
    """The endReason for a provider's own stop reason (an unknown one as `upstream_<its name>`, made safe)."""
    reason = _NOT_A_NAME.sub("_", stop_reason.strip().lower())[:40].strip("_") or "unknown"
    return UPSTREAM_END_REASONS.get(reason, f"upstream_{reason}")


def duration_seconds(started_at: float | None, ended_at: float | None) -> float:
    if started_at is None or ended_at is None:
        return 0.0
    return round(max(0.0, ended_at - started_at), 3)


def estimated_credits(provider: str, seconds: float) -> float | None:
    rate = CREDITS_PER_MINUTE.get(provider)
    return None if rate is None else round(rate * seconds / 60, 3)


def handoff_fields(session: Session) -> dict[str, Any]:
    """The hand-off's fields besides sessionId, status, transcript and deliveryId."""
    fields: dict[str, Any] = {
        "provider": session.provider,
        "contract": session.served_contract,
        "startedAt": session.started_at,
        "endedAt": session.ended_at,
        "durationSeconds": duration_seconds(session.started_at, session.ended_at),
        "endReason": session.end_reason,
    }
    if session.account_id:
        fields["accountId"] = session.account_id
    return fields
