"""HeyGen's contract served by LiveAvatar (FULL mode): the plugin keeps speaking HeyGen, LiveAvatar serves the session.

HeyGen is retiring its streaming API in favour of LiveAvatar, whose client is different (commands published in the
room instead of REST tasks). For a customer whose Petya config says `provider: "liveavatar"` (else the setting
HEYGEN_CONTRACT_PROVIDER), `HeyGenContract` hands every call to this server:

- `streaming.create_token`: a gateway token, as for HeyGen.
- `streaming.new`: LiveAvatar `sessions/token` (the customer's avatar, voice, context, language; `quality` as the
  video quality) and `sessions/start`, answered in HeyGen's envelope with LiveAvatar's room URL and client token.
- `streaming.start`: the room agent joins the room (services/rooms.py); 200 once it is in.
- `streaming.task`: `avatar.speak_text` (repeat, the default) or `avatar.speak_response` (talk) on `agent-control`;
  `task_mode: "sync"` answers once the avatar has finished that utterance.
- `streaming.interrupt`, `start_listening`, `stop_listening`: `avatar.interrupt`, `avatar.start_listening`,
  `avatar.stop_listening`.
- `streaming.keep_alive`: LiveAvatar's keep-alive.
- `streaming.stop`: LiveAvatar's stop; the hand-off merges LiveAvatar's transcript with what the room agent heard.

Its answers are made here in HeyGen's envelope, as `UpstreamResponse`s, so the contract treats them as it treats
HeyGen's. LiveAvatar's agent token never leaves the server.
"""
from __future__ import annotations

import json
import time
from typing import Any

from clients.http import UpstreamResponse
from clients.liveavatar import LiveAvatarClient
from domain import bridge
from domain.answers import Answer
from domain.errors import BadRequest, ConcurrencyLimitExceeded, RoomUnavailable, Unauthorized, UpstreamUnavailable
from domain.names import ContractName, ProviderName
from domain.records import Customer, SessionFacts
from domain.tokens import mirrored
from services.lifecycle import Lifecycle
from services.rooms import RoomAgents
from services.sessions import Sessions

CONTRACT = ContractName.HEYGEN
HEYGEN_OK = 100  # HeyGen's success code


def heygen_answer(data: Any = None, status: int = 200, code: int = HEYGEN_OK,
                  message: str = "success") -> UpstreamResponse:
    """An answer in HeyGen's envelope, as if HeyGen had given it."""
    body = {"code": code, "data": data, "message": message}
    return UpstreamResponse(status, json.dumps(body).encode(), "application/json")


def video_settings(request: dict[str, Any]) -> dict[str, Any]:
    """HeyGen's `quality` and `video_encoding` as LiveAvatar's video_settings."""
    settings: dict[str, Any] = {}
    quality = bridge.VIDEO_QUALITY.get(str(request.get("quality") or "").lower())
    if quality:
        settings["quality"] = quality
    if str(request.get("video_encoding") or "").upper() in ("VP8", "H264"):
        settings["encoding"] = str(request["video_encoding"]).upper()
    return settings


class HeyGenOnLiveAvatar:
    provider = ProviderName.LIVEAVATAR

    def __init__(self, liveavatar: LiveAvatarClient, sessions: Sessions, rooms: RoomAgents,
                 lifecycle: Lifecycle) -> None:
        self.liveavatar = liveavatar
        self.sessions = sessions
        self.rooms = rooms
        self.lifecycle = lifecycle

    async def create_token(self, customer: Customer) -> Answer:
        token = await self.sessions.mint_token(customer, CONTRACT, self.provider, None)
        return Answer(200, body={"error": None, "data": {"token": token}})

    async def open(self, customer: Customer, request: dict[str, Any]) -> Answer:
        """A LiveAvatar session minted and started; a gateway token presented is bound to it (one session each)."""
        conversation_id = request.pop("conversation_id", None)
        token = await self.sessions.claim_token(customer, self.provider)
        if customer.token and token is None:
            raise Unauthorized("session token already used: create a new one")
        try:
            response = await self.liveavatar.create_token(customer.config, video_settings(request))
        except Exception:
            if token:
                await self.sessions.release_token(token)
            raise
        data = (response.json() or {}).get("data") if response.ok else None
        if not isinstance(data, dict) or not data.get("session_id") or not data.get("session_token"):
            if token:
                await self.sessions.release_token(token)
            if response.ok:
                raise UpstreamUnavailable("LiveAvatar answered without a session")
            return response.answer()
        session_id, upstream_token = str(data["session_id"]), str(data["session_token"])
        mode = (mirrored(upstream_token, ("start_session_data",)).get("start_session_data") or {}).get("mode")
        if mode not in (None, "FULL"):  # e.g. a context with a voice agent makes a LITE session
            await self.liveavatar.abandon(session_id)
            raise UpstreamUnavailable(f"LiveAvatar opened a {mode} session; HeyGen's contract needs FULL mode")
        started = await self.liveavatar.start_token(upstream_token)
        room = (started.json() or {}).get("data") if started.ok else None
        if not isinstance(room, dict) or not room.get("livekit_url") or not room.get("livekit_agent_token"):
            await self.liveavatar.abandon(session_id)
            if token:
                await self.sessions.release_token(token)
            if self.liveavatar.is_concurrency_error(started):
                raise ConcurrencyLimitExceeded("all of the gateway's LiveAvatar sessions are in use: try again "
                                               "shortly")
            if started.ok:
                raise UpstreamUnavailable("LiveAvatar started the session without a room")
            return started.answer()
        await self.sessions.record(self.liveavatar, session_id, CONTRACT, customer, conversation_id,
                                   upstream_token, room_url=room["livekit_url"],
                                   agent_token=room["livekit_agent_token"], started=True)
        if token:
            await self.sessions.bind_token(token, session_id)
        limit = room.get("max_session_duration")
        return Answer(200, session_id=session_id, body={"code": HEYGEN_OK, "message": "success", "data": {
            "session_id": session_id, "url": room["livekit_url"], "access_token": room.get("livekit_client_token"),
            "is_paid": True, "session_duration_limit": limit if isinstance(limit, int) else None,
            "sdp": None, "ice_servers": None, "ice_servers2": None, "intro": customer.config.get("intro")}})

    async def call(self, session: SessionFacts, name: str, request: dict[str, Any]) -> UpstreamResponse:
        if name == "start":
            return await self._start(session)
        if name == "task":
            return await self._task(session, request)
        if name == "keep_alive":
            response = await self.liveavatar.keep_alive(session)
            return heygen_answer() if response.ok else response
        if name == "stop":
            self.rooms.stopping(session.session_id)
            response = await self.liveavatar.stop(session.session_id, "USER_CLOSED")
            await self.rooms.leave(session.session_id)
            return heygen_answer() if response.ok else response
        if name in bridge.CALL_COMMANDS:
            await self.rooms.command(session, bridge.command(bridge.CALL_COMMANDS[name]))
            return heygen_answer()
        return heygen_answer(None, 400, 400, f"streaming.{name} is not served for LiveAvatar sessions")

    async def _start(self, session: SessionFacts) -> UpstreamResponse:
        """200 once the room agent is in the room; if it cannot join, the session is ended (stopped upstream)."""
        try:
            await self.rooms.hold(session)
        except RoomUnavailable:
            await self.lifecycle.end(session.session_id, "room_unavailable")
            raise
        return heygen_answer()

    async def _task(self, session: SessionFacts, request: dict[str, Any]) -> UpstreamResponse:
        text = request.get("text")
        if not isinstance(text, str) or not text.strip():
            raise BadRequest("invalid field: text", errors={"text": ["a non-empty string is required"]})
        command = bridge.task_command(request.get("task_type"), text)
        sync = request.get("task_mode") == "sync"
        started = time.time()
        result = await self.rooms.command(session, command, wait=sync)
        duration_ms = bridge.estimated_duration_ms(text)
        if sync and isinstance(result.get("ended_at"), (int, float)):
            duration_ms = max(1, round((result["ended_at"] - started) * 1000))
        return heygen_answer({"task_id": command["event_id"], "duration_ms": duration_ms})
