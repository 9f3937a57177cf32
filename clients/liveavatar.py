"""LiveAvatar's API (HeyGen's successor; docs/upstream.md#liveavatar-rest-api), called with our key; the browser
never sees it or LiveAvatar's tokens. The LiveAvatar provider."""
from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient

from clients.http import Upstream, UpstreamResponse
from clients.provider import says_concurrent
from domain.errors import ServiceUnavailable, TooManyRequests, UpstreamUnavailable
from domain.names import ProviderName
from domain.records import Session, SessionFacts, Turn
from domain.transcript import merge_all, new_turn
from observability import metrics

# Why the gateway ended a session -> LiveAvatar's stop reason (docs/upstream.md#liveavatar-stop-reasons).
STOP_REASONS = {
    "stopped": "USER_CLOSED",
    "socket_closed": "USER_DISCONNECTED",
    "idle": "IDLE_TIMEOUT",
    "never_started": "ZOMBIE_SESSION_REAP",
    "max_age": "MAX_DURATION_REACHED",
    "room_unavailable": "SERVER_ERROR",
}
MAX_TRANSCRIPT_PAGES = 500
# Claims of LiveAvatar's session token that its web SDK reads (docs/upstream.md#liveavatar-token-claims), mirrored
# into the gateway's token: non-secret.
MIRRORED_CLAIMS = ("start_session_data", "session_id")


def liveavatar_config(config: dict[str, Any]) -> dict[str, Any]:
    """The customer's LiveAvatar settings from the Petya config: its `liveAvatar` block, when there is one, wins over
    the top-level fields (LiveAvatar ids differ from HeyGen's); LiveAvatar's context is Petya's knowledge base."""
    block = config.get("liveAvatar") if isinstance(config.get("liveAvatar"), dict) else {}
    merged = {**config, **{k: v for k, v in (block or {}).items() if v is not None}}
    return {"avatar_id": merged.get("avatarId"), "voice_id": merged.get("voiceId"),
            "context_id": merged.get("contextId") or merged.get("knowledgeBaseId"),
            "language": merged.get("language") or "en"}


# How long a call made with our key may wait for the rate limiter: a browser's briefly (RATE_LIMIT_WAIT), the
# gateway's own background calls (the reaper's stops, the hand-off's transcript reads) much longer.
BACKGROUND_WAIT = 30.0


class Limiter(Protocol):
    """What the client needs of a rate limiter (services/ratelimit.py)."""

    async def acquire(self, endpoint: str, max_wait: float) -> None: ...

    def upstream_refused(self, endpoint: str, retry_after: float) -> None: ...


class LiveAvatarClient:
    """Every call made with our API key passes the rate limiter first; a 429 from LiveAvatar blocks that endpoint for
    its Retry-After and is raised as TooManyRequests (429 with Retry-After)."""

    name = ProviderName.LIVEAVATAR
    label = "LiveAvatar"

    def __init__(self, http: AsyncHTTPClient, base_url: str, api_key: str, limiter: Limiter,
                 browser_wait: float = 2.0) -> None:
        self.upstream = Upstream(http, base_url, "LiveAvatar")
        self.api_key = api_key
        self.limiter = limiter
        self.browser_wait = browser_wait

    def _key(self) -> dict[str, str]:
        if not self.api_key:
            raise ServiceUnavailable("LiveAvatar is not configured on this gateway")
        return {"X-API-KEY": self.api_key}

    async def _call(self, endpoint: str, method: str, path: str, wait: float | None = None,
                    bearer: str | None = None, **kwargs: Any) -> UpstreamResponse:
        """One call: with our key (rate-limited, waiting up to `wait` seconds) or with a session's Bearer token."""
        if bearer is None:
            headers = self._key()
            await self.limiter.acquire(endpoint, self.browser_wait if wait is None else wait)
        else:
            self._key()
            headers = {"Authorization": f"Bearer {bearer}"}
        response = await self.upstream.call(method, path, headers=headers, **kwargs)
        if response.status == 429:
            retry_after = response.retry_after if response.retry_after is not None else 1.0
            metrics.RATE_LIMITED.labels(upstream="liveavatar").inc()
            if bearer is None:
                self.limiter.upstream_refused(endpoint, retry_after)
            raise TooManyRequests("LiveAvatar is rate-limiting these calls: try again shortly",
                                  retry_after=max(1, round(retry_after + 0.49)))
        return response

    async def create_token(self, config: dict[str, Any],
                           video_settings: dict[str, Any] | None = None) -> UpstreamResponse:
        la = liveavatar_config(config)
        body: dict[str, Any] = {"mode": "FULL", "avatar_id": la["avatar_id"],
                                "avatar_persona": {"voice_id": la["voice_id"], "context_id": la["context_id"],
                                                   "language": la["language"]}}
        if video_settings:
            body["video_settings"] = video_settings
        return await self._call("sessions/token", "POST", "/v1/sessions/token", body=body)

    async def stop(self, session_id: str, reason: str, wait: float | None = None) -> UpstreamResponse:
        return await self._call("sessions/stop", "POST", "/v1/sessions/stop", wait=wait,
                                body={"session_id": session_id, "reason": reason})

    async def transcript(self, session_id: str) -> list[dict[str, Any]]:
        """Every entry of LiveAvatar's server-side transcript, following next_timestamp page by page."""
        entries: list[dict[str, Any]] = []
        start = None
        path = f"/v1/sessions/{quote(session_id, safe='')}/transcript"
        for _ in range(MAX_TRANSCRIPT_PAGES):
            query = f"start_timestamp={start}" if start is not None else ""
            response = await self._call("sessions/transcript", "GET", path, wait=BACKGROUND_WAIT, query=query)
            data = (response.json() or {}).get("data") if response.ok else None
            if not isinstance(data, dict):
                raise UpstreamUnavailable(f"LiveAvatar transcript answered {response.status}")
            entries.extend(data.get("transcript_data") or [])
            start = data.get("next_timestamp")
            if start is None:
                return entries
        raise UpstreamUnavailable("LiveAvatar transcript did not end")

    async def start(self, session: SessionFacts, body: dict[str, Any] | None = None) -> UpstreamResponse:
        """Bearer-only upstream (counted per session there, not against our key); no body, as LiveAvatar's SDK."""
        return await self.start_token(session.upstream_token)

    async def start_token(self, session_token: str | None) -> UpstreamResponse:
        return await self._call("sessions/start", "POST", "/v1/sessions/start", bearer=session_token)

    async def keep_alive(self, session: SessionFacts) -> UpstreamResponse:
        return await self._call("sessions/keep-alive", "POST", "/v1/sessions/keep-alive",
                                body={"session_id": session.session_id})

    # --- the Provider interface (clients/provider.py) -------------------------------------------------------------

    async def stop_session(self, session: Session, reason: str) -> UpstreamResponse:
        if reason == "idle" and session.status == "created":
            reason = "never_started"
        return await self.stop(session.session_id, STOP_REASONS.get(reason, "UNKNOWN"), wait=BACKGROUND_WAIT)

    async def abandon(self, session_id: str) -> UpstreamResponse:
        return await self.stop(session_id, "SERVER_ERROR", wait=BACKGROUND_WAIT)

    async def erase(self, session_id: str) -> UpstreamResponse | None:
        """`DELETE /v1/sessions/{id}/events`: LiveAvatar hard-deletes the session's events (whether its transcript
        is among them is UNVERIFIED: docs/upstream.md#liveavatar-rest-api)."""
        return await self._call("sessions/events", "DELETE", f"/v1/sessions/{quote(session_id, safe='')}/events",
                                wait=BACKGROUND_WAIT)

    def is_concurrency_error(self, response: UpstreamResponse) -> bool:
        """LiveAvatar's answer when our account's concurrent sessions are all in use (UNVERIFIED wording)."""
        return says_concurrent(response)

    async def final_turns(self, session: Session, recorded: list[Turn]) -> tuple[list[Turn], str | None]:
        """LiveAvatar's transcript merged with the turns the gateway recorded, each utterance once."""
        entries = await self.transcript(session.session_id)
        upstream = [new_turn(e["role"], e["transcript"], e["absolute_timestamp"], "upstream")
                    for e in entries if e.get("role") in ("user", "avatar") and (e.get("transcript") or "").strip()]
        return merge_all(upstream, recorded), None
