"""The gateway's OpenAPI 3.1 document (`GET /openapi.json`), generated with apispec from the marshmallow schemas of
handlers/schemas.py (request bodies, answers, error bodies) and the operations each route registers
(handlers/contracts.py), and the pieces those operations are written with.

Every route is in it, at its root path; `servers` names the two prefixes the API is served under ("" and
/api/v1/avatar), and the routes served at the root only (operators' routes, demo console) say so with servers of
their own. Each operation lists every status it can answer: the gateway's own (its error envelope), and, for the
routes that forward to HeyGen or LiveAvatar, the provider's answers passed through with their own status and body
(UpstreamError; other 4xx/5xx statuses as 4XX/5XX).
"""
from __future__ import annotations

import json
from importlib import metadata
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from handlers import schemas
from handlers.base import ALLOWED_HEADERS, ALLOWED_METHODS
from handlers.contracts import PREFIXES, Contract

ROOT_ONLY = [{"url": "/", "description": "served at the root only"}]

# --- components -------------------------------------------------------------------------------------------------------

SCHEMAS = [
    # request bodies
    "SessionRef", "OptionalSessionRef", "TokenRequest", "NewSession", "Task", "ReportedMessage",
    # errors
    "GatewayError", "NotReadyError", "UpstreamSocketError", "ConcurrencyLimitError", "UpstreamError",
    # answers
    "HeyGenTokenAnswer", "HeyGenAnswer", "HeyGenSessionAnswer", "HeyGenTaskAnswer", "RecordedAnswer",
    "TranscriptAnswer", "LiveAvatarAnswer", "LiveAvatarTokenAnswer", "LiveAvatarStartAnswer", "Health", "Ready",
]

HEADERS = {
    "Access-Control-Allow-Origin": ("The request's Origin, echoed (never *), when it is allowed (CORS_ORIGINS).",
                                    {"type": "string"}),
    "Access-Control-Allow-Credentials": ("With an allowed Origin.", {"type": "string", "enum": ["true"]}),
    "Access-Control-Allow-Methods": ("With an allowed Origin.", {"type": "string", "enum": [ALLOWED_METHODS]}),
    "Access-Control-Allow-Headers": ("With an allowed Origin.", {"type": "string", "enum": [ALLOWED_HEADERS]}),
    "Access-Control-Max-Age": ("With an allowed Origin: seconds a preflight may be cached.",
                               {"type": "string", "pattern": "^[0-9]+$"}),
    "Vary": ("Origin: the CORS headers depend on it.", {"type": "string"}),
}
CORS = {name: {"$ref": f"#/components/headers/{name}"} for name in HEADERS}
RETRY_AFTER = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def any_of(*names: str) -> dict[str, Any]:
    return ref(names[0]) if len(names) == 1 else {"anyOf": [ref(name) for name in names]}


Schema = str | dict[str, Any] | None  # a component's name, a schema object, or no body


def answer(description: str, schema: Schema = None, media: str = "application/json",
           headers: dict[str, Any] | None = None, links: dict[str, Any] | None = None) -> dict[str, Any]:
    """A response: its body (a schema name, a schema object, or None for no body) and headers (CORS always)."""
    response = {"description": description, "headers": {**CORS, **(headers or {})}}
    if schema is not None:
        response["content"] = {media: {"schema": ref(schema) if isinstance(schema, str) else schema}}
    if links:
        response["links"] = links
    return response


def error(description: str, *names: str, retry_after: bool = False,
          headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An error answer: the gateway's envelope or, with more schema names, any of them."""
    return answer(description, any_of(*(names or ("GatewayError",))),
                  headers={**(RETRY_AFTER if retry_after else {}), **(headers or {})})


# The statuses, each once with its wording; operations pick theirs (`statuses`).
FRAMING = "a Content-Length that is not a number, or Transfer-Encoding with Content-Length"
BODY_400 = ("a body that is not a JSON object (not UTF-8, NaN, nested more than 32 levels, a lone surrogate "
            "escape), a missing or invalid field (named in `message` and `errors`), or " + FRAMING)
TOO_LARGE = ("a body over MAX_BODY_SIZE, answered as soon as the declared Content-Length (or a chunked body going "
             "over) shows it; the connection is closed after the answer")
PETYA = "Petya (the customer's config)"
STATUS_TEXT = {
    "401_key": "missing or unknown API key (X-Api-Key, or Authorization: Bearer <key>)",
    "401_any": "missing or unknown API key, or an invalid, expired or used gateway token, or a token of the other "
               "provider",
    "404_session": "the session does not exist, belongs to another customer or provider, or is not this token's",
    "502": f"an upstream refused the connection or answered garbage, or {PETYA} answered 5xx",
    "503": f"{PETYA} unreachable; MongoDB unavailable or busy, or a session that could not be recorded (and was "
           "stopped); the turn queue full (tasks and reported messages, before HeyGen is called); LiveAvatar not "
           "configured on this gateway (its routes). Retry-After comes with all but the first and the last",
    "504": "an upstream did not answer within UPSTREAM_REQUEST_TIMEOUT",
}

# --- security ---------------------------------------------------------------------------------------------------------

SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key",
               "description": "The customer's API key (any header case); its avatar config comes from Petya."},
    "ApiKeyBearer": {"type": "http", "scheme": "bearer",
                     "description": "The customer's API key as `Authorization: Bearer <key>`."},
    "GatewayToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                     "description": "A gateway session token, from /v1/streaming.create_token (HeyGen) or "
                                    "/v1/sessions/token (LiveAvatar), as the providers' SDKs send it. It reaches only "
                                    "sessions of its own provider, and a LiveAvatar token only its own session."},
    "AdminToken": {"type": "http", "scheme": "bearer",
                   "description": "ADMIN_TOKEN, for the admin API (off without it)."},
    "SessionTokenQuery": {"type": "apiKey", "in": "query", "name": "session_token",
                          "description": "The HeyGen gateway token from /v1/streaming.create_token, on the "
                                         "WebSocket URL (as HeyGen's SDK sends it)."},
}
BY_KEY: list[dict[str, list[str]]] = [{"ApiKey": []}, {"ApiKeyBearer": []}]
BY_KEY_OR_TOKEN = BY_KEY + [{"GatewayToken": []}]


# --- operations -------------------------------------------------------------------------------------------------------

def json_body(schema: str, required: bool, description: str | None = None) -> dict[str, Any]:
    body = {"required": required, "content": {"application/json": {"schema": ref(schema)}}}
    if description:
        body["description"] = description
    return body


def shared(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def upstream_ranges(provider: str) -> dict[str, Any]:
    return {"4XX": shared(f"{provider}Error"), "5XX": shared(f"{provider}ServerError")}


def shared_responses() -> dict[str, Any]:
    """The answers that read the same on every operation (components.responses)."""
    table = {
        "Preflight": answer("preflight answered (no body)"),
        "BadFraming": error(FRAMING),
        "MethodNotAllowed": error("a method the route does not serve (on any route: the methods not listed for it; "
                                  "on POST /v1/streaming.{name}: transcript, a GET route). No Allow header."),
        "Conflict": error("the session's hand-off to Petya fixed its cut-off: the message is not in it"),
        "PayloadTooLarge": error(TOO_LARGE),
        "UpstreamUnavailable": error(STATUS_TEXT["502"]),
        "ServiceUnavailable": error(STATUS_TEXT["503"], retry_after=True),
        "UpstreamTimeout": error(STATUS_TEXT["504"]),
    }
    for provider in ("HeyGen", "LiveAvatar"):
        table[f"{provider}Error"] = error(f"any other error {provider} answers, passed through with its status and "
                                          "body", "UpstreamError")
        table[f"{provider}ServerError"] = error(f"a server error of {provider}, passed through with its status and "
                                                "body", "UpstreamError")
    return table


def statuses(*codes: str, upstream: str | None = None, session: bool = False, auth: str = "401_any",
             body_400: str = BODY_400, too_many: str | None = None) -> dict[str, Any]:
    """The error answers of an operation. `upstream`: the provider whose own answers pass through (its 4xx/5xx bodies
    at every status), `session`: it names a session (404), `too_many`: what its 429 means."""
    passed = ("GatewayError", "UpstreamError") if upstream else ("GatewayError",)
    also = f"; or {upstream}'s own answer, passed through" if upstream else ""
    table = {
        "400": lambda: error(body_400 + also, *passed),
        "401": lambda: error(STATUS_TEXT[auth] + also, *passed),
        "404": lambda: error((STATUS_TEXT["404_session"] if session else "not found") + also, *passed),
        "405": lambda: shared("MethodNotAllowed"),
        "409": lambda: shared("Conflict"),
        "413": lambda: shared("PayloadTooLarge"),
        "429": lambda: error((too_many or "") + also, "ConcurrencyLimitError", *passed, retry_after=True),
        "502": lambda: shared("UpstreamUnavailable"),
        "503": lambda: shared("ServiceUnavailable"),
        "504": lambda: shared("UpstreamTimeout"),
    }
    responses = {code: table[code]() for code in codes}
    if upstream:
        responses.update(upstream_ranges(upstream))
    return responses


def operation(op_id: str, summary: str, description: str, responses: dict[str, Any],
              security: list[dict[str, list[str]]] = BY_KEY_OR_TOKEN, body: dict[str, Any] | None = None,
              parameters: list[dict[str, Any]] | None = None, tags: tuple[str, ...] = ("HeyGen",)) -> dict[str, Any]:
    op = {"operationId": op_id, "summary": summary, "description": description, "tags": list(tags),
          "security": security, "responses": responses}
    if body:
        op["requestBody"] = body
    if parameters:
        op["parameters"] = parameters
    return op


def preflight(sibling: dict[str, Any]) -> dict[str, Any]:
    """The OPTIONS operation of a route, beside `sibling`, one of its operations. It declares the parameters of the
    path the sibling declares (each operation must declare every parameter of its path), as any string: a preflight
    is answered on any path, an unknown route's included (handlers/base.py, NotFoundHandler)."""
    op = {"operationId": sibling["operationId"] + "Preflight", "summary": "CORS preflight",
          "tags": sibling["tags"], "security": [],
          "description": "Answered 204 with the CORS headers when the Origin is allowed (CORS_ORIGINS).",
          "responses": {"204": shared("Preflight"), "400": shared("BadFraming"), "413": shared("PayloadTooLarge")}}
    in_path = [{"name": parameter["name"], "in": "path", "required": True, "schema": {"type": "string"},
                "description": "Any value: a preflight is answered whatever the path names."}
               for parameter in sibling.get("parameters", []) if parameter.get("in") == "path"]
    if in_path:
        op["parameters"] = in_path
    return op


def links(expression: str, targets: list[str]) -> dict[str, Any]:
    """OpenAPI links to the calls `targets` on the session `expression` names."""
    table = {}
    for op_id in targets:
        link: dict[str, Any] = {"operationId": op_id, "description": "The same session."}
        if op_id in ("streamingTranscript", "streamingChatSocket"):
            link["parameters"] = {"session_id": expression}
        else:
            link["requestBody"] = {"session_id": expression}
        table[op_id] = link
    return table


def build(contracts: tuple[Contract, ...]) -> dict[str, Any]:
    """The document of what `contracts` register, as a dict."""
    try:
        version = metadata.version("ilianaai-avatar")
    except metadata.PackageNotFoundError:
        version = "0"
    spec = APISpec(
        title="ilianaai-avatar gateway", version=version, openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={"description": DESCRIPTION},
        servers=[{"url": "/", "description": "the root"},
                 {"url": PREFIXES[1], "description": "the same API under the prefix (not the operators' routes, the "
                                                     "demo "
                                                "console, nor — for HeyGen's SDK — the WebSocket)"}],
        tags=[contract.tag for contract in contracts if contract.tag],
    )
    for name in SCHEMAS:
        spec.components.schema(name, schema=getattr(schemas, name))
    for name, (description, schema) in HEADERS.items():
        spec.components.header(name, {"description": description, "schema": schema})
    spec.components.header("Retry-After", {
        "description": "Seconds to wait before trying again: on 429 for a rate limit (not for "
                       "concurrency_limit_exceeded), on 503 when MongoDB is away or the turn queue is full.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"}})
    for name, response in shared_responses().items():
        spec.components.response(name, response)
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    root_only = []
    for contract in contracts:
        for route in contract.routes:
            if not route.documented:
                continue
            operations = route.operations()
            if route.preflight:
                operations["options"] = preflight(next(iter(operations.values())))
            if not route.prefixed:
                root_only.append(route.path)
            spec.path(path=route.path, operations=operations)
    document: dict[str, Any] = spec.to_dict()
    for path in root_only:
        document["paths"][path]["servers"] = ROOT_ONLY
    document["webhooks"] = {"petyaHandOff": HAND_OFF}
    return document


_SECONDS = {"type": ["number", "null"], "description": "unix seconds"}
HAND_OFF = {"post": {
    "operationId": "petyaHandOff", "summary": "The hand-off the gateway posts to Petya",
    "description": "Sent to {PETYA_BASE_URL}/api/v1/avatar/conversations/{conversationId}/status when a session "
                   "ends, with `Authorization: Bearer PETYA_AUTH_TOKEN` and `Idempotency-Key` (= deliveryId), "
                   "retried until Petya answers 2xx (or 4xx: kept, not retried). Petya applies each deliveryId once.",
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["sessionId", "status", "transcript", "deliveryId"],
        "properties": {
            "sessionId": {"type": "string"},
            "status": {"type": "string", "enum": ["completed"]},
            "transcript": {"type": "array", "items": {"type": "object", "properties": {
                "role": {"type": "string", "enum": ["user", "avatar"]}, "transcript": {"type": "string"},
                "absolute_timestamp": {"type": "number"}, "timestamp": {"type": "number"}}},
                "description": "every turn once, in spoken order"},
            "deliveryId": {"type": "string", "description": "the idempotency key, the same on every attempt"},
            "provider": {"type": "string", "enum": ["heygen", "liveavatar"], "description": "who served it"},
            "contract": {"type": "string", "enum": ["heygen", "liveavatar"], "description": "what the plugin spoke"},
            "startedAt": {**_SECONDS, "description": "when the provider started it (null: never)"},
            "endedAt": {**_SECONDS, "description": "when it ended"},
            "durationSeconds": {"type": "number", "description": "startedAt to endedAt; 0 when never started"},
            "endReason": {"type": "string", "description": "stopped, socket_closed, idle, max_age, erased, "
                          "room_unavailable, or the provider's own: upstream_idle, no_credits, upstream_<reason>"},
            "accountId": {"type": "string", "description": "the customer's accountId in its Petya config, if any"},
            "transcriptNote": {"type": "string", "description": "only when the transcript may lack words: why"},
        }}}}},
    "responses": {"200": {"description": "taken (or a repeat of a deliveryId already applied)"}},
}}


DESCRIPTION = """\
The avatar-session gateway in front of HeyGen and LiveAvatar: the browser calls it instead of the providers, and never \
holds our upstream keys.

Every API route is served at the root and, identically, under `/api/v1/avatar` (the two `servers`); the operators' \
routes and the demo console only at the root. Every route but the WebSocket answers an `OPTIONS` preflight.

**Errors.** The gateway's own errors are JSON `{"code": <status>, "message": "…"}` (GatewayError), plus `errors` \
naming the fields of a validation error; a quota answers 429 `concurrency_limit_exceeded` (ConcurrencyLimitError). \
HeyGen's and LiveAvatar's own error answers pass through with their status and JSON body (UpstreamError). A method a \
route does not serve is answered 405 (MethodNotAllowed). Every error answer is JSON and carries the CORS headers for \
an allowed Origin; `Retry-After` comes with a rate limit's 429 and with 503 when MongoDB is away or the turn queue \
is full. Below HTTP: a request tornado cannot parse gets a bare 400; headers over HTTP_MAX_HEADER_SIZE or too slow \
get the connection closed.

**Authentication.** The customer's API key (`X-Api-Key`, or `Authorization: Bearer <key>`), or a gateway session token \
from create_token / sessions/token (`Authorization: Bearer <token>`). Every session call must come from the customer \
that created the session: anyone else, or an unknown session, gets 404 and the provider is not called.
"""


def serialize(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
