"""LiveAvatar's contract: the LiveAvatar-shaped routes. The plugin, or LiveAvatar's own web SDK given the gateway as
its `apiUrl`, runs sessions without ever holding our key or LiveAvatar's session token. The handlers parse and
authorize; services/liveavatar_contract.py does the rest."""
from __future__ import annotations

from typing import Any

from domain.answers import Answer
from domain.errors import Unauthorized
from domain.names import ContractName
from domain.records import Customer
from handlers.base import BaseHandler
from handlers.contracts import Contract, Route
from handlers.openapi import BY_KEY, FRAMING, answer, json_body, links, operation, statuses
from handlers.schemas import OPTIONAL_SESSION_REF, TOKEN_REQUEST
from services.liveavatar_contract import LiveAvatarContract

CONTRACT_NAME = ContractName.LIVEAVATAR


class SessionTokenHandler(BaseHandler):
    """Mints LiveAvatar's session with the customer's config; the browser gets the gateway's token in its place."""

    async def post(self) -> None:
        customer = await self.authenticate(allow_token=False)
        request = self.load_body(TOKEN_REQUEST)
        self.answer(await self.gateway.liveavatar_contract.new_session(customer, request))


class StartHandler(BaseHandler):
    """Bearer-only, as upstream: our token in, LiveAvatar's token out; LiveAvatar's 201 body plus data.intro."""

    async def post(self) -> None:
        if self.credentials()[1] is None:
            raise Unauthorized("start needs the session token from /v1/sessions/token (Authorization: Bearer)")
        customer = await self.authenticate(contract=CONTRACT_NAME)
        self.log_session_id = LiveAvatarContract.session_named(customer, None)
        self.answer(await self.gateway.liveavatar_contract.start(customer))


class SessionCallHandler(BaseHandler):
    """A call on the session the body's session_id names (with the API key), or the caller's gateway token does."""

    async def post(self) -> None:
        customer = await self.authenticate(contract=CONTRACT_NAME)
        request = self.load_body(OPTIONAL_SESSION_REF)
        self.log_session_id = LiveAvatarContract.session_named(customer, request)
        self.answer(await self.act(self.gateway.liveavatar_contract, customer, request))

    async def act(self, contract: LiveAvatarContract, customer: Customer, request: dict[str, Any]) -> Answer:
        raise NotImplementedError


class StopHandler(SessionCallHandler):
    """Stops the session upstream, then ends it here: LiveAvatar's transcript, merged, goes to Petya once."""

    async def act(self, contract: LiveAvatarContract, customer: Customer, request: dict[str, Any]) -> Answer:
        return await contract.stop(customer, request)


class KeepAliveHandler(SessionCallHandler):
    async def act(self, contract: LiveAvatarContract, customer: Customer, request: dict[str, Any]) -> Answer:
        return await contract.keep_alive(customer, request)


# --- the contract's routes and their OpenAPI operations --------------------------------------------------------------

TAGS = ("LiveAvatar",)
AFTER_TOKEN = ["sessionsKeepAlive", "sessionsStop", "streamingAvatarMessage", "streamingUserMessage",
               "streamingTranscript"]


def token() -> dict[str, Any]:
    return {"post": operation(
        "sessionsToken", "Mint a LiveAvatar session",
        "Calls LiveAvatar with our key and the customer's config ({mode: FULL, avatar_id, avatar_persona}); "
        "answers the gateway's token in place of LiveAvatar's. The session is recorded now, so one minted and "
        "never started is still reaped.",
        {"200": answer("the session and the gateway's token in LiveAvatar's envelope", "LiveAvatarTokenAnswer",
                       links=links("$response.body#/data/session_id", AFTER_TOKEN)),
         **statuses("400", "401", "413", "429", "502", "503", "504", upstream="LiveAvatar", auth="401_key",
                    too_many="the customer's concurrent sessions are all taken (concurrency_limit_exceeded, "
                             "before LiveAvatar is called), or LiveAvatar's rate limit (Retry-After)")},
        security=BY_KEY, tags=TAGS,
        body=json_body("TokenRequest", False, "`conversation_id` only; other fields are ignored."))}


def start() -> dict[str, Any]:
    return {"post": operation(
        "sessionsStart", "Start the LiveAvatar session",
        "Bearer-only, as upstream: the gateway token from /v1/sessions/token in, LiveAvatar's token out. "
        "LiveAvatar's answer (201) plus data.intro; LiveAvatar's agent token stays server-side. The body, if "
        "any, is not read.",
        {"200": answer("LiveAvatar's answer plus data.intro", "LiveAvatarStartAnswer"),
         "201": answer("LiveAvatar's answer plus data.intro", "LiveAvatarStartAnswer"),
         **statuses("400", "401", "404", "413", "429", "502", "503", "504", upstream="LiveAvatar", session=True,
                    body_400=FRAMING,
                    auth="401_any",
                    too_many="our LiveAvatar account's concurrent sessions are all in use "
                             "(concurrency_limit_exceeded), or LiveAvatar's rate limit (Retry-After)")},
        security=[{"GatewayToken": []}], tags=TAGS)}


def stop() -> dict[str, Any]:
    return {"post": operation(
        "sessionsStop", "Stop the LiveAvatar session",
        "Stops LiveAvatar's session (reason USER_CLOSED), then hands LiveAvatar's transcript, merged with the "
        "reported turns, to Petya once. A session already ended is answered 200 from the gateway's record.",
        {"200": answer("LiveAvatar's answer", "LiveAvatarAnswer"),
         **statuses("400", "401", "404", "413", "429", "502", "503", "504", upstream="LiveAvatar", session=True,
                    too_many="LiveAvatar's rate limit (Retry-After)")},
        tags=TAGS, body=json_body("OptionalSessionRef", False))}


def keep_alive() -> dict[str, Any]:
    return {"post": operation(
        "sessionsKeepAlive", "Keep the LiveAvatar session alive",
        "Forwarded to LiveAvatar; counts as activity.",
        {"200": answer("LiveAvatar's answer", "LiveAvatarAnswer"),
         **statuses("400", "401", "404", "413", "429", "502", "503", "504", upstream="LiveAvatar", session=True,
                    too_many="LiveAvatar's rate limit (Retry-After)")},
        tags=TAGS, body=json_body("OptionalSessionRef", False))}


CONTRACT = Contract(CONTRACT_NAME, (
    Route(r"/v1/sessions/token", SessionTokenHandler, "/v1/sessions/token", token),
    Route(r"/v1/sessions/start", StartHandler, "/v1/sessions/start", start),
    Route(r"/v1/sessions/stop", StopHandler, "/v1/sessions/stop", stop),
    Route(r"/v1/sessions/keep-alive", KeepAliveHandler, "/v1/sessions/keep-alive", keep_alive),
), tag={"name": "LiveAvatar", "description": "LiveAvatar routes: LiveAvatar's web SDK works with the gateway as its "
                                             "apiUrl."})
