"""HeyGen's Streaming API (v1 paths), called with our key; the browser never sees it."""
from urllib.parse import urlencode

from clients.http import Upstream

WS_PATH = "/v1/ws/streaming.chat"


class HeyGenClient:
    provider = "heygen"

    def __init__(self, http, base_url, api_key):
        self.upstream = Upstream(http, base_url, "HeyGen")
        self.api_key = api_key

    def _key(self):
        return {"x-api-key": self.api_key}

    @staticmethod
    def new_session_body(client_body, config):
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

    async def create_token(self):
        return await self.upstream.call("POST", "/v1/streaming.create_token", headers=self._key(), body={})

    async def new_session(self, body, heygen_token=None):
        """streaming.new; with a token from create_token the session is bound to it, as HeyGen's SDK does."""
        headers = {"Authorization": f"Bearer {heygen_token}"} if heygen_token else self._key()
        return await self.upstream.call("POST", "/v1/streaming.new", headers=headers, body=body)

    async def session_call(self, name, body):
        """Any per-session call: start, task, stop, interrupt, keep_alive."""
        return await self.upstream.call("POST", f"/v1/streaming.{name}", headers=self._key(), body=body)

    async def stop_session(self, session, reason):
        return await self.session_call("stop", {"session_id": session.session_id})

    async def abandon(self, session_id):
        """Stop a session the gateway could not record."""
        return await self.session_call("stop", {"session_id": session_id})

    @staticmethod
    def is_concurrency_error(response):
        """HeyGen's answer when our account's concurrent sessions are all in use (UNVERIFIED: known only as a 400;
        the emulator's message names the limit)."""
        body = response.json()
        return (response.status in (400, 429) and isinstance(body, dict)
                and "concurrent" in str(body.get("message", "")).lower())

    async def final_turns(self, session, turns):
        """HeyGen keeps no transcript: the turns the gateway recorded are the transcript."""
        return turns, None

    def websocket_url(self, session_id, heygen_token, client_query):
        """The upstream socket URL: the client's own query parameters, with HeyGen's token substituted."""
        params = [(k, v) for k, v in client_query if k not in ("session_id", "session_token")]
        params = [("session_id", session_id), ("session_token", heygen_token)] + params
        base = self.upstream.base_url
        scheme, rest = base.split("://", 1)
        ws_scheme = "wss" if scheme == "https" else "ws"
        return f"{ws_scheme}://{rest}{WS_PATH}?{urlencode(params)}"
