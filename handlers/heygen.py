"""HeyGen's contract: the HeyGen-shaped routes, so a plugin (or HeyGen's SDK) built against HeyGen works unchanged
against the gateway. The handlers parse and authorize; services/heygen_contract.py does the rest. The streaming-chat
socket is relay/handler.py."""
from __future__ import annotations

from typing import Any

from marshmallow import Schema

from domain.answers import Answer
from domain.names import ContractName
from domain.records import Customer
from handlers.base import BaseHandler
from handlers.contracts import Contract, Route
from handlers.openapi import BY_KEY, FRAMING, STATUS_TEXT, answer, error, json_body, links, operation, shared, statuses
from handlers.schemas import NEW_SESSION, SESSION_REF, TASK
from relay.handler import StreamingChatRelay
from services.heygen_contract import HeyGenContract

CONTRACT_NAME = ContractName.HEYGEN


class CreateTokenHandler(BaseHandler):
    """Mints HeyGen's session token server-side; the browser gets the gateway's token, bound to the customer."""

    async def post(self) -> None:
        customer = await self.authenticate(allow_token=False)
        self.answer(await self.gateway.heygen_contract.create_token(customer))


class NewSessionHandler(BaseHandler):
    """streaming.new with the customer's avatar config injected, answered with HeyGen's body plus data.intro."""

    async def post(self) -> None:
        customer = await self.authenticate(contract=CONTRACT_NAME)
        request = self.load_body(NEW_SESSION)
        self.answer(await self.gateway.heygen_contract.new_session(customer, request))


class SessionCallHandler(BaseHandler):
    """A per-session call, forwarded once the caller is shown to own the session (`call`: its name, or the URL's)."""

    call = ""
    schema: Schema = SESSION_REF

    async def post(self, name: str | None = None) -> None:
        customer = await self.authenticate(contract=CONTRACT_NAME)
        request = self.load_body(self.schema)
        self.log_session_id = request["session_id"]
        self.answer(await self.act(self.gateway.heygen_contract, customer, request, self.call or name or ""))

    async def act(self, contract: HeyGenContract, customer: Customer, request: dict[str, Any], name: str) -> Answer:
        return await contract.call(customer, name, request)


class StartHandler(SessionCallHandler):
    async def act(self, contract: HeyGenContract, customer: Customer, request: dict[str, Any], name: str) -> Answer:
        return await contract.start(customer, request)


class TaskHandler(SessionCallHandler):
    """A talk task is the user speaking; a repeat task is the avatar saying the given words: its turn is recorded."""
    schema = TASK

    async def act(self, contract: HeyGenContract, customer: Customer, request: dict[str, Any], name: str) -> Answer:
        return await contract.task(customer, request)


class StopHandler(SessionCallHandler):
    """Stops the session upstream, then ends it here: the transcript goes to Petya exactly once."""

    async def act(self, contract: HeyGenContract, customer: Customer, request: dict[str, Any], name: str) -> Answer:
        return await contract.stop(customer, request)


class InterruptHandler(SessionCallHandler):
    call = "interrupt"


class KeepAliveHandler(SessionCallHandler):
    call = "keep_alive"


class StartListeningHandler(SessionCallHandler):
    call = "start_listening"


class StopListeningHandler(SessionCallHandler):
    call = "stop_listening"


class OtherSessionCallHandler(SessionCallHandler):
    """A HeyGen session call the gateway does not list (a newer SDK's): `POST /v1/streaming.<name>` forwarded with
    the client's body once the caller is shown to own its `session_id`, so it can only ever act on the caller's own
    session. HeyGen's answer passes through (its 404 for a name it does not know)."""


# --- the contract's routes and their OpenAPI operations --------------------------------------------------------------

# Links: from an answer that names a session to the calls on that session (for readers, and for stateful testing).
AFTER_NEW = ["streamingStart", "streamingTask", "streamingInterrupt", "streamingKeepAlive", "streamingStartListening",
             "streamingStopListening", "streamingStop", "streamingAvatarMessage", "streamingUserMessage",
             "streamingTranscript", "streamingChatSocket"]
AFTER_START = ["streamingTask", "streamingInterrupt", "streamingStop", "streamingAvatarMessage", "streamingTranscript"]
AFTER_TASK = ["streamingTask", "streamingInterrupt", "streamingStop", "streamingTranscript"]


def session_call(op_id: str, name: str, description: str, body: str = "SessionRef", ok: str = "HeyGenAnswer",
                 more: tuple[str, ...] = (), then: list[str] | None = None) -> dict[str, Any]:
    return operation(
        op_id, f"HeyGen streaming.{name}", description + " Forwarded to HeyGen with our key once the caller is shown "
        "to own the session (404 otherwise, and HeyGen is not called); HeyGen's answer passes through.",
        {"200": answer("HeyGen's answer", ok, links=links("$request.body#/session_id", then) if then else None),
         **statuses("400", "401", "404", "413", *more, "502", "503", "504", upstream="HeyGen", session=True)},
        body=json_body(body, True))


def call_route(name: str, handler: type, op_id: str, description: str, **kwargs: Any) -> Route:
    return Route(rf"/v1/streaming\.{name}", handler, f"/v1/streaming.{name}",
                 lambda: {"post": session_call(op_id, name, description, **kwargs)})


def create_token() -> dict[str, Any]:
    return {"post": operation(
        "streamingCreateToken", "Mint a HeyGen session token",
        "Mints HeyGen's session token server-side and answers the gateway's own token in its place, bound to "
        "the customer (its config is snapshotted into it). The body, if any, is not read.",
        {"200": answer("the gateway's token in HeyGen's envelope", "HeyGenTokenAnswer"),
         **statuses("400", "401", "413", "502", "503", "504", upstream="HeyGen", auth="401_key",
                    body_400=FRAMING)},
        security=BY_KEY)}


def new_session() -> dict[str, Any]:
    return {"post": operation(
        "streamingNew", "HeyGen streaming.new with the customer's avatar",
        "HeyGen's streaming.new with the customer's avatar_id, knowledge_base_id and voice.voice_id forced in "
        "(the client keeps quality, version and the like). With a gateway token the session is bound to it (a "
        "token opens one session). Answers HeyGen's body plus data.intro.",
        {"200": answer("HeyGen's answer plus data.intro", "HeyGenSessionAnswer",
                       links=links("$response.body#/data/session_id", AFTER_NEW)),
         **statuses("400", "401", "413", "429", "502", "503", "504", upstream="HeyGen",
                    too_many="the customer's concurrent sessions (maxConcurrentSessions, else "
                             "MAX_CONCURRENT_SESSIONS) are all taken, or HeyGen's for our account "
                             "(concurrency_limit_exceeded, before HeyGen is called for the former)")},
        body=json_body("NewSession", False, "Any other field is forwarded to HeyGen as it is."))}


def other_call() -> dict[str, Any]:
    return {"post": {
        **session_call(
            "streamingOtherCall", "<name>", "Any other HeyGen session call (a newer SDK's), with the client's "
            "body. HeyGen's account-wide streaming.list is never forwarded (404). A name with a route of its own "
            "above is that route (405 for transcript, which is GET).", more=("405",)),
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": "^[a-z][a-z_]{0,39}$"},
                        "description": "HeyGen's call name, as in POST /v1/streaming.<name>."}],
    }}


def chat_socket() -> dict[str, Any]:
    handshake = [
        ("Upgrade", {"type": "string", "enum": ["websocket"]}),
        ("Connection", {"type": "string", "enum": ["Upgrade"]}),
        ("Sec-WebSocket-Version", {"type": "string", "enum": ["13"]}),
        ("Sec-WebSocket-Key", {"type": "string", "pattern": "^[A-Za-z0-9+/]{21}[AQgw]==$",
                               "description": "16 random bytes, base64"}),
    ]
    parameters: list[dict[str, Any]] = [{"name": name, "in": "header", "required": True, "schema": schema}
                                        for name, schema in handshake]
    parameters += [
        {"name": "session_id", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1},
         "description": "The session, as streaming.new answered it."},
        {"name": "Origin", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "A browser's: must be in CORS_ORIGINS (403 otherwise)."},
    ]
    return {"get": operation(
        "streamingChatSocket", "HeyGen's streaming-chat WebSocket, relayed",
        "The WebSocket handshake (RFC 6455). The caller must own the session; then the gateway opens HeyGen's "
        "socket with HeyGen's token substituted (other query parameters pass through) — for a session served by "
        "LiveAvatar, the socket of the room agent's events — and only once it is open answers 101 and relays "
        "frames both ways, unchanged, what HeyGen sent meanwhile first. An upstream that refuses the socket or "
        "cannot be reached is answered 502 (a refusal's status in `upstreamStatus`), one that does not answer in "
        "time 504, a room changing hands 503 with Retry-After. A handshake with a body is refused (400, 413 over "
        "MAX_BODY_SIZE). HeyGen's SDK opens it at the root of its host, whatever its basePath.",
        {"101": answer("switching to the WebSocket protocol", headers={
            "Upgrade": {"schema": {"type": "string"}}, "Connection": {"schema": {"type": "string"}},
            "Sec-WebSocket-Accept": {"schema": {"type": "string"}}}),
         "400": error("a malformed handshake (Upgrade, Connection, HTTP/1.1 with Host, Sec-WebSocket-Key), "
                      "session_id or session_token missing, a query argument that is not UTF-8, a body"),
         "401": error("an invalid or expired session token, or one of LiveAvatar"),
         "403": error("an Origin not in CORS_ORIGINS"),
         "404": error(STATUS_TEXT["404_session"] + ", or it has ended"),
         "409": error("the session was opened with the API key alone, without a token from streaming.create_token: "
                      "HeyGen serves its socket only with one (the gateway does not ask it)"),
         "413": shared("PayloadTooLarge"),
         "426": error("a Sec-WebSocket-Version other than 13, or none", headers={
             "Sec-WebSocket-Version": {"description": "the version spoken", "schema": {"type": "string",
                                                                                       "enum": ["13"]}}}),
         "502": error("HeyGen refused the socket (its status in `upstreamStatus`) or could not be reached; the "
                      "session's room could not be joined", "UpstreamSocketError"),
         "503": error("MongoDB unavailable, or the session's room changing hands (with Retry-After)",
                      retry_after=True),
         "504": error("HeyGen did not answer the socket's handshake within UPSTREAM_REQUEST_TIMEOUT (or the TCP "
                      "connect within UPSTREAM_CONNECT_TIMEOUT)")},
        security=[{"SessionTokenQuery": []}], parameters=parameters)}


CONTRACT = Contract(CONTRACT_NAME, (
    Route(r"/v1/streaming\.create_token", CreateTokenHandler, "/v1/streaming.create_token", create_token),
    Route(r"/v1/streaming\.new", NewSessionHandler, "/v1/streaming.new", new_session),
    call_route("start", StartHandler, "streamingStart", "Starts the session.", then=AFTER_START),
    call_route("task", TaskHandler, "streamingTask",
               "A repeat task is the avatar saying `text`, a talk task the user saying it: its turn is recorded once "
               "HeyGen performed it. 503 (Retry-After) when the turn queue is full, before HeyGen is called.",
               body="Task", ok="HeyGenTaskAnswer", then=AFTER_TASK),
    call_route("stop", StopHandler, "streamingStop",
               "Stops HeyGen's session, then ends the gateway's: the transcript is handed to Petya exactly once."),
    call_route("interrupt", InterruptHandler, "streamingInterrupt", "Interrupts the avatar."),
    call_route("keep_alive", KeepAliveHandler, "streamingKeepAlive", "Keeps the session alive (counts as activity)."),
    call_route("start_listening", StartListeningHandler, "streamingStartListening", "The SDK's start_listening."),
    call_route("stop_listening", StopListeningHandler, "streamingStopListening", "The SDK's stop_listening."),
    Route(r"/v1/ws/streaming\.chat", StreamingChatRelay, "/v1/ws/streaming.chat", chat_socket, no_body=True),
    # Any other per-session call, after every other route (HeyGen's account-wide streaming.list is not one).
    Route(r"/v1/streaming\.(?!list$)([a-z][a-z_]{0,39})", OtherSessionCallHandler, "/v1/streaming.{name}",
          other_call, catch_all=True),
), tag={"name": "HeyGen", "description": "HeyGen-compatible routes: a client built against HeyGen's API works "
                                         "unchanged against these."})
