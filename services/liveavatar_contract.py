"""LiveAvatar's contract: the flows behind the LiveAvatar-shaped routes (`/v1/sessions/*`). The plugin, or LiveAvatar's
own web SDK given the gateway as its `apiUrl`, runs sessions without ever holding our key or LiveAvatar's session
token.

As for HeyGen's contract (services/heygen_contract.py), `LiveAvatarContract` holds what is the same whoever serves a
session, and a `LiveAvatarServer` per provider the rest; today LiveAvatar serves its own contract
(`LiveAvatarOnLiveAvatar`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from clients.http import UpstreamResponse
from clients.liveavatar import MIRRORED_CLAIMS, LiveAvatarClient
from domain.answers import Answer
from domain.errors import BadRequest, ConcurrencyLimitExceeded, UpstreamUnavailable
from domain.names import ContractName, ProviderName
from domain.records import Customer, Session, SessionFacts
from domain.tokens import mirrored
from services.lifecycle import Lifecycle
from services.rooms import LISTEN_JOIN_WAIT, RoomAgents
from services.sessions import Sessions

CONTRACT = ContractName.LIVEAVATAR
# Tokens the browser has no use for: LiveAvatar's agent token lets its holder join the room as the avatar's agent.
SERVER_SIDE_FIELDS = ("livekit_agent_token",)
# What the gateway answers a stop of a session that has already ended, in LiveAvatar's envelope.
ALREADY_STOPPED = {"code": 1000, "data": None, "message": "Session stopped"}


class LiveAvatarServer(Protocol):
    """A provider serving LiveAvatar's contract."""
    provider: ProviderName

    async def open(self, customer: Customer, request: dict[str, Any]) -> Answer:
        """sessions/token: open a session upstream, record it (Sessions.record) and answer the gateway's token."""
        ...

    async def start(self, session: SessionFacts) -> UpstreamResponse: ...

    async def keep_alive(self, session: SessionFacts) -> UpstreamResponse: ...

    async def stop(self, session: Session, reason: str) -> UpstreamResponse: ...


class LiveAvatarOnLiveAvatar:
    """LiveAvatar's contract served by LiveAvatar: the calls are forwarded, with our key (or the session's token)."""
    provider = ProviderName.LIVEAVATAR

    def __init__(self, liveavatar: LiveAvatarClient, sessions: Sessions, rooms: RoomAgents | None = None) -> None:
        self.liveavatar = liveavatar
        self.sessions = sessions
        self.rooms = rooms  # None: the gateway never joins LiveAvatar's rooms

    async def open(self, customer: Customer, request: dict[str, Any]) -> Answer:
        """The session is recorded now, so one minted and never started is still found and stopped."""
        response = await self.liveavatar.create_token(customer.config)
        body = response.json()
        data = body.get("data") if response.ok and isinstance(body, dict) else None
        if not isinstance(data, dict) or not data.get("session_id") or not data.get("session_token"):
            if response.ok:
                raise UpstreamUnavailable("LiveAvatar answered without a session")
            return response.answer()
        session_id, upstream_token = data["session_id"], data["session_token"]
        await self.sessions.record(self.liveavatar, session_id, CONTRACT, customer, request.get("conversation_id"),
                                   upstream_token)
        data["session_token"] = await self.sessions.mint_token(
            customer, CONTRACT, self.provider, upstream_token, mirrored(upstream_token, MIRRORED_CLAIMS), session_id)
        return Answer(200, body=body, session_id=session_id)

    async def start(self, session: SessionFacts) -> UpstreamResponse:
        """Started: the gateway's room agent joins the room to hear the words as they are said (LiveAvatar's
        transcript is read only after the stop)."""
        response = await self.liveavatar.start(session)
        if self.liveavatar.is_concurrency_error(response):
            raise ConcurrencyLimitExceeded("all of the gateway's LiveAvatar sessions are in use: try again shortly")
        data = (response.json() or {}).get("data") if response.ok else None
        if self.rooms is not None and isinstance(data, dict) and data.get("livekit_url") \
                and data.get("livekit_agent_token"):
            stored = await self.sessions.set_room(session.session_id, data["livekit_url"], data["livekit_agent_token"])
            if stored is not None:
                await self.rooms.hold_soon(SessionFacts.of(stored), LISTEN_JOIN_WAIT)
        return response

    async def keep_alive(self, session: SessionFacts) -> UpstreamResponse:
        return await self.liveavatar.keep_alive(session)

    async def stop(self, session: Session, reason: str) -> UpstreamResponse:
        if self.rooms is not None:
            self.rooms.stopping(session.session_id)
        return await self.liveavatar.stop(session.session_id, reason)


class LiveAvatarContract:
    def __init__(self, servers: Mapping[ProviderName, LiveAvatarServer], sessions: Sessions, lifecycle: Lifecycle,
                 default_provider: ProviderName = ProviderName.LIVEAVATAR) -> None:
        self.servers = servers
        self.sessions = sessions
        self.lifecycle = lifecycle
        self.default_provider = default_provider

    def server_for(self, customer: Customer) -> LiveAvatarServer:
        """Who serves the customer's new sessions."""
        return self.servers[self.default_provider]

    @staticmethod
    def session_named(customer: Customer, request: dict[str, Any] | None) -> str | None:
        """The session named by the body's session_id, or else by the caller's gateway token."""
        session_id = (request or {}).get("session_id") or (customer.token.session_id if customer.token else None)
        return str(session_id) if session_id else None

    def session_id(self, customer: Customer, request: dict[str, Any] | None) -> str:
        session_id = self.session_named(customer, request)
        if not session_id:
            raise BadRequest("invalid field: session_id", errors={"session_id": ["required without a session token"]})
        return session_id

    async def new_session(self, customer: Customer, request: dict[str, Any]) -> Answer:
        async with self.sessions.slot(customer):  # the customer's quota, before the provider is called
            return await self.server_for(customer).open(customer, request)

    async def start(self, customer: Customer) -> Answer:
        """The provider's answer plus data.intro; its agent token stays server-side."""
        session = await self.sessions.owned_facts(self.session_id(customer, None), customer, CONTRACT)
        response = await self.servers[ProviderName(session.provider)].start(session)
        if response.ok:
            await self.sessions.mark_started(session.session_id)
        body = response.json()
        if response.ok and isinstance(body, dict) and isinstance(body.get("data"), dict):
            for field in SERVER_SIDE_FIELDS:
                body["data"].pop(field, None)
            body["data"]["intro"] = customer.config.get("intro")
            return response.answer(body, session_id=session.session_id)
        return response.answer(session_id=session.session_id)

    async def stop(self, customer: Customer, request: dict[str, Any]) -> Answer:
        """Stop the session upstream, then end it here: the provider's transcript, merged, goes to Petya once. The web
        SDK's clean-up paths stop twice: a session already ended is answered from the gateway's record."""
        session = await self.sessions.owned(self.session_id(customer, request), customer, CONTRACT)
        if session.status == "ended":
            return Answer(200, body=ALREADY_STOPPED, session_id=session.session_id)
        response = None
        try:
            response = await self.servers[ProviderName(session.provider)].stop(session, "USER_CLOSED")
        finally:
            await self.lifecycle.end(session.session_id, "stopped", stop_upstream=response is None)
        return response.answer(session_id=session.session_id)

    async def keep_alive(self, customer: Customer, request: dict[str, Any]) -> Answer:
        session = await self.sessions.owned_facts(self.session_id(customer, request), customer, CONTRACT)
        response = await self.servers[ProviderName(session.provider)].keep_alive(session)
        return response.answer(session_id=session.session_id)
