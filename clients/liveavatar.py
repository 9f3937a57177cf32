"""LiveAvatar's API (HeyGen's successor), called with our key; the browser never sees it or LiveAvatar's tokens."""
from urllib.parse import quote

from clients.http import Upstream
from models.errors import ServiceUnavailable, UpstreamUnavailable
from models.transcript import merge_all, new_turn

# Why the gateway ended a session -> LiveAvatar's stop reason.
STOP_REASONS = {
    "stopped": "USER_CLOSED",
    "socket_closed": "USER_DISCONNECTED",
    "idle": "IDLE_TIMEOUT",
    "never_started": "ZOMBIE_SESSION_REAP",
    "max_age": "MAX_DURATION_REACHED",
}
MAX_TRANSCRIPT_PAGES = 500


def liveavatar_config(config):
    """The customer's LiveAvatar settings from the Petya config: its `liveAvatar` block, when there is one, wins over
    the top-level fields (LiveAvatar ids differ from HeyGen's); LiveAvatar's context is Petya's knowledge base."""
    block = config.get("liveAvatar") if isinstance(config.get("liveAvatar"), dict) else {}
    merged = {**config, **{k: v for k, v in block.items() if v is not None}}
    return {"avatar_id": merged.get("avatarId"), "voice_id": merged.get("voiceId"),
            "context_id": merged.get("contextId") or merged.get("knowledgeBaseId"),
            "language": merged.get("language") or "en"}


class LiveAvatarClient:
    provider = "liveavatar"

    def __init__(self, http, base_url, api_key):
        self.upstream = Upstream(http, base_url, "LiveAvatar")
        self.api_key = api_key

    def _key(self):
        if not self.api_key:
            raise ServiceUnavailable("LiveAvatar is not configured on this gateway")
        return {"X-API-KEY": self.api_key}

    async def create_token(self, config):
        la = liveavatar_config(config)
        body = {"mode": "FULL", "avatar_id": la["avatar_id"],
                "avatar_persona": {"voice_id": la["voice_id"], "context_id": la["context_id"],
                                   "language": la["language"]}}
        return await self.upstream.call("POST", "/v1/sessions/token", headers=self._key(), body=body)

    async def start(self, upstream_token):
        """Bearer-only upstream; no body, as LiveAvatar's SDK sends it."""
        self._key()
        return await self.upstream.call("POST", "/v1/sessions/start",
                                        headers={"Authorization": f"Bearer {upstream_token}"})

    async def keep_alive(self, session_id):
        return await self.upstream.call("POST", "/v1/sessions/keep-alive", headers=self._key(),
                                        body={"session_id": session_id})

    async def stop(self, session_id, reason):
        return await self.upstream.call("POST", "/v1/sessions/stop", headers=self._key(),
                                        body={"session_id": session_id, "reason": reason})

    async def stop_session(self, session, reason):
        if reason == "idle" and session.status == "created":
            reason = "never_started"
        return await self.stop(session.session_id, STOP_REASONS.get(reason, "UNKNOWN"))

    async def abandon(self, session_id):
        """Stop a session the gateway could not record."""
        return await self.stop(session_id, "SERVER_ERROR")

    async def transcript(self, session_id):
        """Every entry of LiveAvatar's server-side transcript, following next_timestamp page by page."""
        entries, start = [], None
        path = f"/v1/sessions/{quote(session_id, safe='')}/transcript"
        for _ in range(MAX_TRANSCRIPT_PAGES):
            query = f"start_timestamp={start}" if start is not None else ""
            response = await self.upstream.call("GET", path, headers=self._key(), query=query)
            data = (response.json() or {}).get("data") if response.ok else None
            if not isinstance(data, dict):
                raise UpstreamUnavailable(f"LiveAvatar transcript answered {response.status}")
            entries.extend(data.get("transcript_data") or [])
            start = data.get("next_timestamp")
            if start is None:
                return entries
        raise UpstreamUnavailable("LiveAvatar transcript did not end")

    async def final_turns(self, session, turns):
        """LiveAvatar's transcript merged with the turns the client reported, each utterance once."""
        entries = await self.transcript(session.session_id)
        upstream = [new_turn(e["role"], e["transcript"], e["absolute_timestamp"], "upstream")
                    for e in entries if e.get("role") in ("user", "avatar") and (e.get("transcript") or "").strip()]
        return merge_all(upstream, turns), None
