"""HeyGen's contract: the flows behind the HeyGen-shaped routes (`/v1/streaming.*`), whoever serves the session.

`HeyGenContract` holds what is the same whoever serves a session — who owns it, the customer's quota, the turn a task
records, ending the session and its hand-off — and hands the rest to the server paired with the session's provider: a
`HeyGenServer`: HeyGen itself (`HeyGenOnHeyGen`: the calls are forwarded, with the customer's config injected and our
key), or LiveAvatar (`HeyGenOnLiveAvatar`, services/heygen_on_liveavatar.py). Which one serves a customer's new sessions
is the customer's Petya config `provider`, else HEYGEN_CONTRACT_PROVIDER; a session keeps the provider it was opened
with.

With HeyGen's v2 rooms, when `streaming.new` answers an agent token the gateway keeps it (the browser never sees it)
and its room agent joins the room at `streaming.start` to hear the avatar's words (services/rooms.py).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Protocol

from clients.heygen import HeyGenClient
from clients.http import UpstreamResponse
from domain.answers import Answer
from domain.errors import ConcurrencyLimitExceeded, Unauthorized, UpstreamUnavailable
from domain.names import ContractName, ProviderName
from domain.records import Customer, SessionFacts, Turn
from domain.transcript import new_turn
from services.lifecycle import Lifecycle
from services.rooms import LISTEN_JOIN_WAIT, RoomAgents
from services.sessions import Sessions
from services.turns import TurnQueue

CONTRACT = ContractName.HEYGEN
# Tokens the browser has no use for: HeyGen's agent token lets its holder join the room as an agent.
SERVER_SIDE_FIELDS = ("livekit_agent_token",)
TURN_WRITE_WAIT = 0.5  # seconds a task's answer waits for its turn to be stored before answering anyway


class HeyGenServer(Protocol):
    """A provider serving HeyGen's contract."""
    provider: ProviderName

    async def create_token(self, customer: Customer) -> Answer:
        """streaming.create_token: the gateway's token in HeyGen's envelope."""
        ...

    async def open(self, customer: Customer, request: dict[str, Any]) -> Answer:
        """streaming.new: open a session upstream and record it (Sessions.record), under the customer's quota."""
        ...

    async def call(self, session: SessionFacts, name: str, request: dict[str, Any]) -> UpstreamResponse:
        """Any other per-session call (`streaming.<name>`), the session's ownership checked."""
        ...


class HeyGenOnHeyGen:
    """HeyGen's contract served by HeyGen: the calls are forwarded, with our key and the customer's config."""
    provider = ProviderName.HEYGEN

    def __init__(self, heygen: HeyGenClient, sessions: Sessions, rooms: RoomAgents | None = None) -> None:
        self.heygen = heygen
        self.sessions = sessions
        self.rooms = rooms  # None: the gateway never joins HeyGen's rooms

    async def create_token(self, customer: Customer) -> Answer:
        response = await self.heygen.create_token()
        body = response.json()
        if not response.ok:
            return response.answer()
        heygen_token = ((body or {}).get("data") or {}).get("token")
        if not heygen_token:
            raise UpstreamUnavailable("HeyGen answered create_token without a token")
        body["data"]["token"] = await self.sessions.mint_token(customer, CONTRACT, self.provider, heygen_token)
        return Answer(200, body=body)

    async def open(self, customer: Customer, request: dict[str, Any]) -> Answer:
        """With a gateway token the new session is bound to it, as HeyGen binds its own (one session per token)."""
        conversation_id = request.pop("conversation_id", None)
        sessions, heygen = self.sessions, self.heygen
        token = await sessions.claim_token(customer, self.provider)
        if customer.token and token is None:
            raise Unauthorized("session token already used: create a new one")
        upstream_token = token.upstream_token if token else None
        try:
            response = await heygen.new_session(heygen.new_session_body(request, customer.config), upstream_token)
        except Exception:
            if token:
                await sessions.release_token(token)
            raise
        body = response.json()
        session_id = ((body or {}).get("data") or {}).get("session_id") if response.ok else None
        if not session_id:
            if token and response.status != 401:  # HeyGen did not consume it
                await sessions.release_token(token)
            if response.ok:
                raise UpstreamUnavailable("HeyGen answered streaming.new without a session_id")
            if heygen.is_concurrency_error(response):
                raise ConcurrencyLimitExceeded("all of the gateway's HeyGen sessions are in use: try again shortly")
            return response.answer()
        data = body["data"]
        agent_token = data.pop("livekit_agent_token", None) if self.rooms is not None else None
        for field in SERVER_SIDE_FIELDS:
            data.pop(field, None)
        await sessions.record(heygen, session_id, CONTRACT, customer, conversation_id, upstream_token,
                              room_url=data.get("url") if agent_token else None, agent_token=agent_token)
        if token:
            await sessions.bind_token(token, session_id)
        data["intro"] = customer.config.get("intro")
        return Answer(response.status, body=body, session_id=session_id)

    async def call(self, session: SessionFacts, name: str, request: dict[str, Any]) -> UpstreamResponse:
        response = await self.heygen.session_call(name, request)
        if name == "start" and response.ok and session.agent_token and self.rooms is not None:
            # Usually in the room within ~0.1 s, before the first task; a slow room server does not hold the start
            # up for long (the agent goes on joining), and one away leaves the transcript to the client's reports.
            await self.rooms.hold_soon(session, LISTEN_JOIN_WAIT)
        return response


class HeyGenContract:
    def __init__(self, servers: Mapping[ProviderName, HeyGenServer], sessions: Sessions, turns: TurnQueue,
                 lifecycle: Lifecycle, default_provider: ProviderName = ProviderName.HEYGEN) -> None:
        self.servers = servers
        self.sessions = sessions
        self.turns = turns
        self.lifecycle = lifecycle
        self.default_provider = default_provider

    def server_for(self, customer: Customer) -> HeyGenServer:
        """Who serves the customer's new sessions: the provider its gateway token was minted for, else the one its
        Petya config names, else HEYGEN_CONTRACT_PROVIDER."""
        if customer.token is not None and customer.token.provider in self.servers:
            return self.servers[ProviderName(customer.token.provider)]
        named = customer.config.get("provider")
        if named in self.servers:
            return self.servers[ProviderName(str(named))]
        return self.servers[self.default_provider]

    async def create_token(self, customer: Customer) -> Answer:
        return await self.server_for(customer).create_token(customer)

    async def new_session(self, customer: Customer, request: dict[str, Any]) -> Answer:
        async with self.sessions.slot(customer):  # the customer's quota, before the provider is called
            return await self.server_for(customer).open(customer, request)

    async def _session(self, customer: Customer, session_id: str) -> tuple[SessionFacts, HeyGenServer]:
        session = await self.sessions.owned_facts(session_id, customer, CONTRACT)
        return session, self.servers[ProviderName(session.provider)]

    async def call(self, customer: Customer, name: str, request: dict[str, Any]) -> Answer:
        """A per-session call: interrupt, keep_alive, start_listening, stop_listening, or one the gateway does not
        list (a newer SDK's), forwarded once the caller is shown to own the session."""
        session, server = await self._session(customer, request["session_id"])
        response = await server.call(session, name, request)
        return response.answer(session_id=session.session_id)

    async def start(self, customer: Customer, request: dict[str, Any]) -> Answer:
        """streaming.start; once the provider took it, the session counts as started."""
        session, server = await self._session(customer, request["session_id"])
        response = await server.call(session, "start", request)
        if response.ok:
            await self.sessions.mark_started(session.session_id)
        return response.answer(session_id=session.session_id)

    async def task(self, customer: Customer, request: dict[str, Any]) -> Answer:
        """A talk task is the user speaking; a repeat task is the avatar saying the given words. Its turn is queued
        for MongoDB (services/turns.py): the answer is the provider's, whether or not MongoDB is there."""
        with self.turns.take_slot() as slot:  # before the provider performs it: 503 when the queue is full
            session, server = await self._session(customer, request["session_id"])
            started = time.time()
            response = await server.call(session, "task", request)
            if response.ok:
                role = "avatar" if request.get("task_type", "repeat") == "repeat" else "user"
                task_id = ((response.json() or {}).get("data") or {}).get("task_id")
                turn: Turn = new_turn(role, request["text"], started, "task", str(task_id) if task_id else None)
                stored = slot.submit(session.session_id, turn)
                # Usually stored within a millisecond, so the transcript reads it back at once; never waited on long.
                await asyncio.wait([stored], timeout=TURN_WRITE_WAIT)
        return response.answer(session_id=session.session_id)

    async def stop(self, customer: Customer, request: dict[str, Any]) -> Answer:
        """Stop the session upstream, then end it here: the transcript goes to Petya exactly once."""
        session, server = await self._session(customer, request["session_id"])
        response = None
        try:
            response = await server.call(session, "stop", request)
        finally:
            # The provider not reached: the lifecycle tries the stop once more, and records why it failed.
            await self.lifecycle.end(session.session_id, "stopped", stop_upstream=response is None)
        return response.answer(session_id=session.session_id)
