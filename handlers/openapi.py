"""`GET /openapi.json`: the gateway's contract, an OpenAPI 3.1 document generated with apispec from the marshmallow
schemas of handlers/schemas.py (request bodies, answers, error bodies), built once on the first request.

Every route of handlers/routes.py is in it (tests/test_openapi.py checks that against the route table), at its root
path; `servers` names the two prefixes the API is served under ("" and /api/v1/avatar), and the routes served at the
root only (operators' routes, demo console) say so with servers of their own. Each operation lists every status it
can answer: the gateway's own (its error envelope), and, for the routes that forward to HeyGen or LiveAvatar, the
provider's answers passed through with their own status and body (UpstreamError; other 4xx/5xx statuses as 4XX/5XX).
"""
import functools
import json
from importlib import metadata

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from handlers import schemas
from handlers.base import ALLOWED_HEADERS, ALLOWED_METHODS, BaseHandler

PREFIX = "/api/v1/avatar"  # handlers.routes.PREFIXES (not imported: routes imports this module)
ROOT_ONLY = [{"url": "/", "description": "served at the root only"}]

# --- components -------------------------------------------------------------------------------------------------------

SCHEMAS = [
    # request bodies
    "SessionRef", "OptionalSessionRef", "TokenRequest", "NewSession", "Task", "ReportedMessage",
    # errors
    "GatewayError", "NotReadyError", "ConcurrencyLimitError", "UpstreamError",
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


def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def any_of(*names):
    return ref(names[0]) if len(names) == 1 else {"anyOf": [ref(name) for name in names]}


def answer(description, schema=None, media="application/json", headers=None, links=None):
    """A response: its body (a schema name, a schema object, or None for no body) and headers (CORS always)."""
    response = {"description": description, "headers": {**CORS, **(headers or {})}}
    if schema is not None:
        response["content"] = {media: {"schema": ref(schema) if isinstance(schema, str) else schema}}
    if links:
        response["links"] = links
    return response


def error(description, *names, retry_after=False, headers=None):
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
    "SessionTokenQuery": {"type": "apiKey", "in": "query", "name": "session_token",
                          "description": "The HeyGen gateway token from /v1/streaming.create_token, on the "
                                         "WebSocket URL (as HeyGen's SDK sends it)."},
}
BY_KEY = [{"ApiKey": []}, {"ApiKeyBearer": []}]
BY_KEY_OR_TOKEN = BY_KEY + [{"GatewayToken": []}]


# --- operations -------------------------------------------------------------------------------------------------------

def json_body(schema, required, description=None):
    body = {"required": required, "content": {"application/json": {"schema": ref(schema)}}}
    if description:
        body["description"] = description
    return body


def shared(name):
    return {"$ref": f"#/components/responses/{name}"}


def upstream_ranges(provider):
    return {"4XX": shared(f"{provider}Error"), "5XX": shared(f"{provider}ServerError")}


def shared_responses():
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


def statuses(*codes, upstream=None, session=False, auth="401_any", body_400=BODY_400, too_many=None):
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
        "429": lambda: error(too_many + also, "ConcurrencyLimitError", *passed, retry_after=True),
        "502": lambda: shared("UpstreamUnavailable"),
        "503": lambda: shared("ServiceUnavailable"),
        "504": lambda: shared("UpstreamTimeout"),
    }
    responses = {code: table[code]() for code in codes}
    if upstream:
        responses.update(upstream_ranges(upstream))
    return responses


def operation(op_id, summary, description, responses, security=BY_KEY_OR_TOKEN, body=None, parameters=None,
              tags=("HeyGen",)):
    op = {"operationId": op_id, "summary": summary, "description": description, "tags": list(tags),
          "security": security, "responses": responses}
    if body:
        op["requestBody"] = body
    if parameters:
        op["parameters"] = parameters
    return op


def preflight(sibling):
    return {"operationId": sibling["operationId"] + "Preflight", "summary": "CORS preflight",
            "tags": sibling["tags"], "security": [],
            "description": "Answered 204 with the CORS headers when the Origin is allowed (CORS_ORIGINS).",
            "responses": {"204": shared("Preflight"), "400": shared("BadFraming"), "413": shared("PayloadTooLarge")}}


# Links: from an answer that names a session to the calls on that session (for readers, and for stateful testing).
AFTER_NEW = ["streamingStart", "streamingTask", "streamingInterrupt", "streamingKeepAlive", "streamingStartListening",
             "streamingStopListening", "streamingStop", "streamingAvatarMessage", "streamingUserMessage",
             "streamingTranscript", "streamingChatSocket"]
AFTER_START = ["streamingTask", "streamingInterrupt", "streamingStop", "streamingAvatarMessage", "streamingTranscript"]
AFTER_TASK = ["streamingTask", "streamingInterrupt", "streamingStop", "streamingTranscript"]
AFTER_TOKEN = ["sessionsKeepAlive", "sessionsStop", "streamingAvatarMessage", "streamingUserMessage",
               "streamingTranscript"]


def links(expression, targets):
    """OpenAPI links to the calls `targets` on the session `expression` names."""
    table = {}
    for op_id in targets:
        link = {"operationId": op_id, "description": "The same session."}
        if op_id in ("streamingTranscript", "streamingChatSocket"):
            link["parameters"] = {"session_id": expression}
        else:
            link["requestBody"] = {"session_id": expression}
        table[op_id] = link
    return table


def heygen_session_call(op_id, name, description, body="SessionRef", ok="HeyGenAnswer", more=(), then=()):
    return operation(
        op_id, f"HeyGen streaming.{name}", description + " Forwarded to HeyGen with our key once the caller is shown "
        "to own the session (404 otherwise, and HeyGen is not called); HeyGen's answer passes through.",
        {"200": answer("HeyGen's answer", ok, links=links("$request.body#/session_id", then) if then else None),
         **statuses("400", "401", "404", "413", *more, "502", "503", "504", upstream="HeyGen", session=True)},
        body=json_body(body, True))


def paths():
    """{root path: {method: operation}} for every route; path-level `servers` for the root-only ones."""
    liveavatar, ops = ("LiveAvatar",), ("Operations",)
    table = {
        "/v1/streaming.create_token": {"post": operation(
            "streamingCreateToken", "Mint a HeyGen session token",
            "Mints HeyGen's session token server-side and answers the gateway's own token in its place, bound to "
            "the customer (its config is snapshotted into it). The body, if any, is not read.",
            {"200": answer("the gateway's token in HeyGen's envelope", "HeyGenTokenAnswer"),
             **statuses("400", "401", "413", "502", "503", "504", upstream="HeyGen", auth="401_key",
                        body_400=FRAMING)},
            security=BY_KEY)},
        "/v1/streaming.new": {"post": operation(
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
            body=json_body("NewSession", False, "Any other field is forwarded to HeyGen as it is."))},
        "/v1/streaming.start": {"post": heygen_session_call("streamingStart", "start", "Starts the session.",
                                                            then=AFTER_START)},
        "/v1/streaming.task": {"post": heygen_session_call(
            "streamingTask", "task", "A repeat task is the avatar saying `text`, a talk task the user saying it: "
            "its turn is recorded once HeyGen performed it. 503 (Retry-After) when the turn queue is full, before "
            "HeyGen is called.", body="Task", ok="HeyGenTaskAnswer", then=AFTER_TASK)},
        "/v1/streaming.stop": {"post": heygen_session_call(
            "streamingStop", "stop", "Stops HeyGen's session, then ends the gateway's: the transcript is handed to "
                                     "Petya exactly once.")},
        "/v1/streaming.interrupt": {"post": heygen_session_call("streamingInterrupt", "interrupt",
                                                                "Interrupts the avatar.")},
        "/v1/streaming.keep_alive": {"post": heygen_session_call("streamingKeepAlive", "keep_alive",
                                                                 "Keeps the session alive (counts as activity).")},
        "/v1/streaming.start_listening": {"post": heygen_session_call("streamingStartListening", "start_listening",
                                                                      "The SDK's start_listening.")},
        "/v1/streaming.stop_listening": {"post": heygen_session_call("streamingStopListening", "stop_listening",
                                                                     "The SDK's stop_listening.")},
        "/v1/streaming.{name}": {"post": {
            **heygen_session_call(
                "streamingOtherCall", "<name>", "Any other HeyGen session call (a newer SDK's), with the client's "
                "body. HeyGen's account-wide streaming.list is never forwarded (404). A name with a route of its own "
                "above is that route (405 for transcript, which is GET).", more=("405",)),
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[a-z][a-z_]{0,39}$"},
                            "description": "HeyGen's call name, as in POST /v1/streaming.<name>."}],
        }},
        "/v1/streaming.avatar_message": {"post": operation(
            "streamingAvatarMessage", "Report what the avatar said",
            "Text the client received over LiveKit (HeyGen v2, LiveAvatar), recorded as an avatar turn (the same "
            "utterance from two paths counts once). 409 once the session's hand-off fixed its cut-off.",
            {"200": answer("recorded (or a repeat)", "RecordedAnswer"),
             **statuses("400", "401", "404", "409", "413", "502", "503", "504", session=True)},
            body=json_body("ReportedMessage", True))},
        "/v1/streaming.user_message": {"post": operation(
            "streamingUserMessage", "Report what the user said",
            "As avatar_message, recorded as a user turn.",
            {"200": answer("recorded (or a repeat)", "RecordedAnswer"),
             **statuses("400", "401", "404", "409", "413", "502", "503", "504", session=True)},
            body=json_body("ReportedMessage", True))},
        "/v1/streaming.transcript": {"get": operation(
            "streamingTranscript", "The session's transcript",
            "The transcript as the gateway holds it (each turn once, in spoken order, with the paths that reported "
            "it), the session's status and its hand-off state; for the session's owner, either provider.",
            {"200": answer("the transcript", "TranscriptAnswer"),
             **statuses("400", "401", "404", "413", "502", "503", "504", session=True,
                        body_400="session_id missing, a query argument that is not UTF-8, or " + FRAMING)},
            parameters=[{"name": "session_id", "in": "query", "required": True,
                         "schema": {"type": "string", "minLength": 1}}])},
        "/v1/ws/streaming.chat": {"get": websocket()},
        "/v1/sessions/token": {"post": operation(
            "sessionsToken", "Mint a LiveAvatar session",
            "Calls LiveAvatar with our key and the customer's config ({mode: FULL, avatar_id, avatar_persona}); "
            "answers the gateway's token in place of LiveAvatar's. The session is recorded now, so one minted and "
            "never started is still reaped.",
            {"200": answer("the session and the gateway's token in LiveAvatar's envelope", "LiveAvatarTokenAnswer",
                           links=links("$response.body#/data/session_id", AFTER_TOKEN)),
             **statuses("400", "401", "413", "429", "502", "503", "504", upstream="LiveAvatar", auth="401_key",
                        too_many="the customer's concurrent sessions are all taken (concurrency_limit_exceeded, "
                                 "before LiveAvatar is called), or LiveAvatar's rate limit (Retry-After)")},
            security=BY_KEY, tags=liveavatar,
            body=json_body("TokenRequest", False, "`conversation_id` only; other fields are ignored."))},
        "/v1/sessions/start": {"post": operation(
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
            security=[{"GatewayToken": []}], tags=liveavatar)},
        "/v1/sessions/stop": {"post": operation(
            "sessionsStop", "Stop the LiveAvatar session",
            "Stops LiveAvatar's session (reason USER_CLOSED), then hands LiveAvatar's transcript, merged with the "
            "reported turns, to Petya once. A session already ended is answered 200 from the gateway's record.",
            {"200": answer("LiveAvatar's answer", "LiveAvatarAnswer"),
             **statuses("400", "401", "404", "413", "429", "502", "503", "504", upstream="LiveAvatar", session=True,
                        too_many="LiveAvatar's rate limit (Retry-After)")},
            tags=liveavatar, body=json_body("OptionalSessionRef", False))},
        "/v1/sessions/keep-alive": {"post": operation(
            "sessionsKeepAlive", "Keep the LiveAvatar session alive",
            "Forwarded to LiveAvatar; counts as activity.",
            {"200": answer("LiveAvatar's answer", "LiveAvatarAnswer"),
             **statuses("400", "401", "404", "413", "429", "502", "503", "504", upstream="LiveAvatar", session=True,
                        too_many="LiveAvatar's rate limit (Retry-After)")},
            tags=liveavatar, body=json_body("OptionalSessionRef", False))},
        "/openapi.json": {"get": operation(
            "openapi", "This document", "The gateway's contract (OpenAPI 3.1), under either prefix.",
            {"200": answer("the OpenAPI document", {"type": "object"}), **statuses("400", "413", body_400=FRAMING)},
            security=[], tags=ops)},
        "/healthz": {"get": operation(
            "healthz", "Liveness", "200 while the process answers (MongoDB is not asked). Root only; only on "
                                   "ADMIN_ADDRESS when that is set (then 404 here).",
            {"200": answer("alive", "Health"), **statuses("400", "413", body_400=FRAMING)}, security=[], tags=ops)},
        "/readyz": {"get": operation(
            "readyz", "Readiness", "200 when this process can serve, else 503 with the reason. Root only; only on "
                                   "ADMIN_ADDRESS when that is set (then 404 here).",
            {"200": answer("ready", "Ready"), **statuses("400", "413", body_400=FRAMING),
             "503": error("not ready: shutting down, lease lost, turn queue full or MongoDB not answering a ping",
                          "NotReadyError", retry_after=True)},
            security=[], tags=ops)},
        "/metrics": {"get": operation(
            "metrics", "Prometheus metrics", "This process's metrics in Prometheus text format, or OpenMetrics when "
                                             "the scraper's Accept asks for it. Root only; only on ADMIN_ADDRESS when "
                                             "that is set (then 404 here).",
            {"200": {**answer("the metrics"),
                     "content": {"text/plain": {"schema": {"type": "string"}},
                                 "application/openmetrics-text": {"schema": {"type": "string"}}}},
             **statuses("400", "413", body_400=FRAMING)},
            security=[], tags=ops)},
        "/demo": demo(None),
        "/demo/{file}": demo("file"),
    }
    for path, operations in table.items():
        if not path.startswith("/demo"):
            operations["options"] = preflight(next(iter(operations.values())))
        if path in ("/healthz", "/readyz", "/metrics") or path.startswith("/demo"):
            operations["servers"] = ROOT_ONLY
    return table


def websocket():
    handshake = [
        ("Upgrade", {"type": "string", "enum": ["websocket"]}),
        ("Connection", {"type": "string", "enum": ["Upgrade"]}),
        ("Sec-WebSocket-Version", {"type": "string", "enum": ["13"]}),
        ("Sec-WebSocket-Key", {"type": "string", "pattern": "^[A-Za-z0-9+/]{21}[AQgw]==$",
                               "description": "16 random bytes, base64"}),
    ]
    parameters = [{"name": name, "in": "header", "required": True, "schema": schema} for name, schema in handshake]
    parameters += [
        {"name": "session_id", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1},
         "description": "The session, as streaming.new answered it."},
        {"name": "Origin", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "A browser's: must be in CORS_ORIGINS (403 otherwise)."},
    ]
    return operation(
        "streamingChatSocket", "HeyGen's streaming-chat WebSocket, relayed",
        "The WebSocket handshake (RFC 6455). The caller must own the session; then the gateway opens HeyGen's "
        "socket with HeyGen's token substituted (other query parameters pass through) and relays frames both ways, "
        "unchanged. Upstream failures after the upgrade close the socket (1011; 1013 when MongoDB is away). A "
        "handshake with a body is refused (400, 413 over MAX_BODY_SIZE). HeyGen's SDK opens it at the root of its "
        "host, whatever its basePath.",
        {"101": answer("switching to the WebSocket protocol", headers={
            "Upgrade": {"schema": {"type": "string"}}, "Connection": {"schema": {"type": "string"}},
            "Sec-WebSocket-Accept": {"schema": {"type": "string"}}}),
         "400": error("a malformed handshake (Upgrade, Connection, HTTP/1.1 with Host, Sec-WebSocket-Key), "
                      "session_id or session_token missing, a query argument that is not UTF-8, a body"),
         "401": error("an invalid or expired session token, or one of LiveAvatar"),
         "403": error("an Origin not in CORS_ORIGINS"),
         "404": error(STATUS_TEXT["404_session"] + ", or it has ended"),
         "413": shared("PayloadTooLarge"),
         "426": error("a Sec-WebSocket-Version other than 13, or none", headers={
             "Sec-WebSocket-Version": {"description": "the version spoken", "schema": {"type": "string",
                                                                                       "enum": ["13"]}}}),
         "503": error("MongoDB unavailable (with Retry-After)", retry_after=True)},
        security=[{"SessionTokenQuery": []}], parameters=parameters)


def demo(parameter):
    """The demo console: /demo (and /demo/) is the page, /demo/<file> its static files."""
    media = {"text/html": {"schema": {"type": "string"}}}
    if parameter:
        media.update({"text/css": {"schema": {"type": "string"}}, "text/javascript": {"schema": {"type": "string"}},
                      "application/javascript": {"schema": {"type": "string"}}})
    ok = {**answer("the file"), "content": media,
          "headers": {**CORS, "Cache-Control": {"schema": {"type": "string", "enum": ["no-cache"]}}}}
    errors = {
        "304": answer("not modified (If-None-Match / If-Modified-Since)"),
        "400": error("a query argument that is not UTF-8, or " + FRAMING),
        "403": error("a path outside the console's directory"),
        "404": error("no such file"),
        "413": shared("PayloadTooLarge"),
        "416": error("a Range that is not satisfiable"),
    }
    if not parameter:
        del errors["403"]
        del errors["404"]
    responses = {"200": ok, "206": {**ok, "description": "part of the file (Range)"}, **errors}
    params = [{"name": parameter, "in": "path", "required": True, "schema": {"type": "string"},
               "description": "a file of the console", "example": "demo.js"}] if parameter else None
    suffix = "File" if parameter else ""
    return {
        method: operation(f"demo{suffix}{method.title()}", "The demo console" + (f": a file" if parameter else ""),
                          "The demo console (`GET /demo` or `/demo/`), driving the public API as the plugin does. "
                          "Root only." + (" HEAD: the same headers, no body." if method == "head" else ""),
                          responses, security=[], parameters=params, tags=("Demo",))
        for method in ("get", "head")
    }


def build():
    """The document, as a dict."""
    try:
        version = metadata.version("ilianaai-avatar")
    except metadata.PackageNotFoundError:
        version = "0"
    spec = APISpec(
        title="ilianaai-avatar gateway", version=version, openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={"description": DESCRIPTION},
        servers=[{"url": "/", "description": "the root"},
                 {"url": PREFIX, "description": "the same API under the prefix (not the operators' routes, the demo "
                                                "console, nor — for HeyGen's SDK — the WebSocket)"}],
        tags=[{"name": "HeyGen", "description": "HeyGen-compatible routes: a client built against HeyGen's API "
                                                "works unchanged against these."},
              {"name": "LiveAvatar", "description": "LiveAvatar routes: LiveAvatar's web SDK works with the gateway "
                                                    "as its apiUrl."},
              {"name": "Operations", "description": "Liveness, readiness, metrics, this document."},
              {"name": "Demo", "description": "The demo console."}],
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
    for path, operations in paths().items():
        if operations.pop("servers", None):
            root_only.append(path)
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    for path in root_only:
        document["paths"][path]["servers"] = ROOT_ONLY
    return document


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


@functools.cache
def document_bytes():
    """The document, serialized once (on the first request)."""
    return json.dumps(build(), ensure_ascii=False, separators=(",", ":")).encode()


def document():
    return json.loads(document_bytes())


class OpenAPIHandler(BaseHandler):
    def get(self):
        self.finish(document_bytes())
