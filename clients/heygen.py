"""HeyGen's Streaming API (v1 paths; docs/upstream.md#heygen-rest-api), called with our key; the browser never sees
it. The HeyGen provider."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient

from clients.http import Upstream, UpstreamResponse
from clients.provider import says_concurrent
from domain.names import ProviderName
from domain.records import Session, Turn

WS_PATH = "/v1/ws/streaming.chat"


class HeyGenClient:
    name = ProviderName.HEYGEN
    label = "HeyGen"

    def __init__(self, http: AsyncHTTPClient, base_url: str, api_key: str) -> None:
        self.upstream = Upstream(http, base_url, "HeyGen")
        self.api_key = api_key

    def _key(self) -> dict[str, str]:
        return {"x-api-key": self.api_key}

    @staticmethod
    def new_session_body(client_body: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        """The client's streaming.new body with the customer's avatar, knowledge base and voice forced in:
        the browser keeps quality, version and the like, but cannot pick another avatar, knowledge base or voice."""
        body = {k: v for k, v in client_body.items() if k not in ("avatar_id", "avatar_name", "knowledge_base_id")}
        body["avatar_id"] = config.get("avatarId")
        if config.get("knowledgeBaseId"):
            body["knowledge_base_id"] = config["knowledgeBaseId"]
        voice = dict(client_body["voice"]) if isinstance(client_body.get("voice"), dict) else {}
        voice.pop("voice_id", None)
        if config.get("voiceId"):
            voice["voice_id"] = config["voiceId"]
        body.pop("voice", None)
        if voice:
            body["voice"] = voice
        return body

    async def create_token(self) -> UpstreamResponse:
        return await self.upstream.call("POST", "/v1/streaming.create_token", headers=self._key(), body={})

    async def new_session(self, body: dict[str, Any], heygen_token: str | None = None) -> UpstreamResponse:
        """streaming.new; with a token from create_token the session is bound to it, as HeyGen's SDK does."""
        headers = {"Authorization": f"Bearer {heygen_token}"} if heygen_token else self._key()
        return await self.upstream.call("POST", "/v1/streaming.new", headers=headers, body=body)

    async def session_call(self, name: str, body: dict[str, Any]) -> UpstreamResponse:
        """Any per-session call: start, task, stop, interrupt, keep_alive, ..."""
        return await self.upstream.call("POST", f"/v1/streaming.{name}", headers=self._key(), body=body)

    # --- the Provider interface (clients/provider.py) -------------------------------------------------------------

    async def stop_session(self, session: Session, reason: str) -> UpstreamResponse:
        return await self.session_call("stop", {"session_id": session.session_id})

    async def abandon(self, session_id: str) -> UpstreamResponse:
        return await self.session_call("stop", {"session_id": session_id})

    def is_concurrency_error(self, response: UpstreamResponse) -> bool:
        """HeyGen's answer when our account's concurrent sessions are all in use (UNVERIFIED: known only as a 400;
        the emulator's message names the limit)."""
        return says_concurrent(response)

    async def erase(self, session_id: str) -> UpstreamResponse | None:
        """HeyGen's streaming API offers no way to delete what it keeps of a session (UNVERIFIED that it keeps
        any): nothing to ask."""
        return None

    async def final_turns(self, session: Session, recorded: list[Turn]) -> tuple[list[Turn], str | None]:
        """HeyGen keeps no transcript: the turns the gateway recorded are the transcript."""
        return recorded, None

    # --- the streaming-chat socket (relay/) --------------------------------------------------------------------

    def websocket_url(self, session_id: str, heygen_token: str | None, client_query: list[tuple[str, str]]) -> str:
        """The upstream socket URL: the client's own query parameters, with HeyGen's token substituted."""
        params = [(k, v) for k, v in client_query if k not in ("session_id", "session_token")]
        # A session opened with the API key (no token from create_token) has none: "None", as HeyGen is sent it.
        params = [("session_id", session_id), ("session_token", str(heygen_token))] + params
        base = self.upstream.base_url
        scheme, rest = base.split("://", 1)
        ws_scheme = "wss" if scheme == "https" else "ws"
        return f"{ws_scheme}://{rest}{WS_PATH}?{urlencode(params)}"
