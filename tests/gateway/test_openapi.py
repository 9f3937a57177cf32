"""The contract: /openapi.json documents every route and method of the route table, and the gateway answers as it says.

The schemathesis run is real HTTP to a real gateway: a sandbox (emulators, Petya reference, gateway, SecantusDB) runs
on its own IOLoop in a background thread for the module, as in tests/gateway/test_bad_input.py; schemathesis loads the
document from the gateway's /openapi.json and sends its cases from the test thread with the demo customer's API key,
checking every answer: no 5xx, a documented status, a body conforming to its schema, the documented Content-Type and
headers. Then its stateful phase follows the document's links over real sessions, and the statuses a healthy sandbox
never answers are provoked one by one and checked the same way. Deterministic (a fixed seed, derandomized: every run
sends the same requests) and bounded: about a thousand requests, some 15 seconds.
"""
import collections
import copy
import json
import re
import time
import urllib.request

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from schemathesis.config import SchemathesisConfig

from handlers import openapi
from handlers.app import CONTRACTS
from handlers.contracts import PREFIXES, WithBody, route_table
from sandbox.stack import DEMO_API_KEY
from tests.helpers.threaded import ThreadedSandbox

ALLOWED = "https://shop.example.com"
WEBSOCKET = "/v1/ws/streaming.chat"
EXAMPLES = 8  # fuzzed cases per operation (schemathesis' own explicit and coverage cases come on top)


# --- the document against the route table ---------------------------------------------------------------------------

def implemented_methods(handler):
    """The HTTP methods a handler class serves (those it overrides from tornado's RequestHandler)."""
    import tornado.web
    return {method for method in handler.SUPPORTED_METHODS
            if getattr(handler, method.lower(), None) is not getattr(tornado.web.RequestHandler, method.lower())}


def doc_path(pattern):
    """The document's path of a route pattern: lookaheads dropped, a capture group as a {parameter}."""
    path = re.sub(r"\(\?!.*?\)", "", pattern)
    path = re.sub(r"\(.*\)", "{}", path).replace("\\", "")
    return path[:-2] if path.endswith("/?") else path


def document_bytes_of():
    return openapi.serialize(openapi.build(CONTRACTS))


def built_document():
    return json.loads(document_bytes_of())


def served_routes():
    """(prefix, doc path with {} for parameters, handler) of every route the public port serves (ADMIN_ADDRESS unset).
    The handshake-with-a-body twin of the WebSocket route (WithBody) is the WebSocket route's refusal, not a route."""
    internal = {route.pattern for contract in CONTRACTS for route in contract.routes if not route.documented}
    for matcher, handler, _ in route_table(CONTRACTS, {}, admin_apart=False):
        if isinstance(matcher, WithBody) or matcher in internal:  # the processes' own calls (handlers/internal.py)
            continue
        prefix = next((p for p in PREFIXES if p and matcher.startswith(p + "/")), "")
        yield prefix, doc_path(matcher[len(prefix):]), handler


def test_every_route_and_method_is_documented():
    document = built_document()
    documented = {re.sub(r"\{[^}]*\}", "{}", path): item for path, item in document["paths"].items()}
    top_servers = {server["url"].rstrip("/") for server in document["servers"]}
    seen = collections.defaultdict(set)
    for prefix, path, handler in served_routes():
        assert path in documented, f"{prefix}{path} ({handler.__name__}) is not in the document"
        item = documented[path]
        methods = {key.upper() for key in item if key not in ("servers", "parameters", "summary", "description")}
        assert methods == implemented_methods(handler), (path, handler.__name__)
        seen[path].add(prefix)
    # Each path is documented under exactly the prefixes it is served under: its own servers, else the document's.
    for path, item in documented.items():
        servers = {server["url"].rstrip("/") for server in item.get("servers", [])} or top_servers
        assert seen[path] == servers, (path, seen[path], servers)
    # What the contracts register: every route, at the path its pattern serves, and nothing else.
    routes = [route for contract in CONTRACTS for route in contract.routes if route.documented]
    for route in routes:
        assert doc_path(route.pattern) == re.sub(r"\{[^}]*\}", "{}", route.path), route
    assert {doc_path(route.pattern) for route in routes} == set(documented)


def test_every_operation_documents_its_errors_and_headers():
    document = built_document()
    components = document["components"]
    assert set(components["securitySchemes"]) == {"AdminToken", "ApiKey", "ApiKeyBearer", "GatewayToken",
                                                  "SessionTokenQuery"}
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method == "servers":
                continue
            responses = op["responses"]
            if method == "options":
                assert set(responses) == {"204", "400", "413"}, path
            else:
                assert {"400", "413"} <= set(responses), (path, method)  # every handler refuses a bad body framing
            if op["security"]:
                assert "401" in responses, (path, method)
            for status, response in responses.items():
                if "$ref" in response:
                    response = components["responses"][response["$ref"].rsplit("/", 1)[-1]]
                assert "Access-Control-Allow-Origin" in response["headers"], (path, method, status)
                if status in ("429", "503"):
                    assert "Retry-After" in response["headers"], (path, method, status)
    task = document["paths"]["/v1/streaming.task"]["post"]
    assert task["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Task"}
    assert components["schemas"]["Task"]["required"] == ["session_id", "text"]
    assert components["schemas"]["Task"]["additionalProperties"] is True  # unknown fields are forwarded


def spec_errors(document):
    return [str(error).splitlines()[0] for error in OpenAPIV31SpecValidator(document).iter_errors()]


def test_the_document_passes_openapi_spec_validator():
    """openapi-spec-validator on the document as served (built, serialized, parsed): OpenAPI 3.1's meta-schema, and
    its own checks of `paths` (each operation declares every parameter of its path, the preflights included;
    operationIds unique; defaults valid against their schemas). Its own checks do not walk `webhooks`, which get the
    meta-schema only (a webhook response without its description is refused below, to show it looks there): their
    body schemas are checked here against OpenAPI 3.1's schema dialect."""
    document = built_document()
    assert spec_errors(document) == []
    broken = copy.deepcopy(document)
    del broken["webhooks"]["petyaHandOff"]["post"]["responses"]["200"]["description"]
    assert spec_errors(broken)
    assert set(document["webhooks"]) == {"petyaHandOff"}
    for item in document["webhooks"].values():
        for op in item.values():
            for media in op["requestBody"]["content"].values():
                OAS31Validator.check_schema(media["schema"])


# --- the sandbox, on its own loop -----------------------------------------------------------------------------------

ADMIN_TOKEN = "openapi-test-admin-token"


@pytest.fixture(scope="module")
def running(mongodb_server_uri):
    world = ThreadedSandbox(mongodb_server_uri, "openapi", CORS_ORIGINS=ALLOWED, UPSTREAM_REQUEST_TIMEOUT="2",
                    UPSTREAM_CONNECT_TIMEOUT="2", MAX_CONCURRENT_SESSIONS="1000", ADMIN_TOKEN=ADMIN_TOKEN).start()
    world.sandbox.heygen.max_sessions = 10000  # schemathesis opens many; HeyGen's limit is not what this tests
    try:
        yield world
    finally:
        world.stop()


def fetch(url, headers=None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=20) as response:
        return response.status, dict(response.headers), response.read()


def test_document_is_served_under_both_prefixes(running):
    status, headers, body = fetch(running.url + "/openapi.json", {"Origin": ALLOWED})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert headers["Access-Control-Allow-Origin"] == ALLOWED
    assert body == document_bytes_of()  # built once
    assert fetch(running.url + "/api/v1/avatar/openapi.json")[2] == body
    loaded = schemathesis.openapi.from_url(running.url + "/openapi.json")
    loaded.validate()  # against the OpenAPI 3.1 meta-schema


# --- schemathesis ---------------------------------------------------------------------------------------------------

CONFIG = {
    "seed": 20251109,
    "generation": {"deterministic": True, "database": "none", "max-examples": EXAMPLES, "mode": "all"},
    "request-timeout": 15,
    # A preflight takes no input: its coverage cases would only repeat its path's undeclared-method cases.
    "operations": [{"include-method": "OPTIONS", "phases": {"coverage": {"enabled": False}}}],
    "checks": {
        # A valid request may still be answered 400 by HeyGen or LiveAvatar (a session in the wrong state, passed
        # through): validator_agrees_with_document below tells those from the gateway's own validation.
        "positive_data_acceptance": {"expected-statuses": ["101", "2xx", "400", "401", "404", "409", "429"]},
        # 101: the WebSocket handshake's success.
        "not_a_server_error": {"expected-statuses": ["101", "2xx", "3xx", "4xx"]},
        # 426: the handshake's answer to a Sec-WebSocket-Version other than 13 (RFC 6455).
        "negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "405", "413", "426"]},
        "missing_required_header": {"expected-statuses": ["400", "401", "403", "426"]},
    },
}


# The one conditional requirement a body schema cannot say: LiveAvatar's stop and keep-alive need session_id unless
# the caller presents the session's own token (the field's description says so).
CONDITIONAL = {"session_id": ["required without a session token"]}


def validator_agrees_with_document(ctx, response, case):
    """A request the document calls valid is never refused by the gateway's own validation (the marshmallow schemas
    the document is generated from): a 400 of it is an upstream's (a session in the wrong state), never the
    gateway's `invalid field` or `request body`."""
    if case.meta and case.meta.generation.mode.is_positive and response.status_code == 400:
        body = response.json() if response.content else {}
        message = str(body.get("message", "")) if isinstance(body, dict) else ""
        if body.get("errors") == CONDITIONAL and case.path in ("/v1/sessions/stop", "/v1/sessions/keep-alive"):
            return
        assert not message.startswith(("invalid field", "request body")), \
            f"{case.method} {case.path}: the document's valid request refused: {message}"


def call(case, validate=True):
    """The case, sent with the allowed Origin. (schemathesis sends each on a connection of its own, closed after the
    answer: a WebSocket handshake answered 101 leaves nothing behind but the gateway's relay, which sees the client
    leave.)"""
    if validate:
        return case.call_and_validate(headers={"Origin": ALLOWED}, additional_checks=EXTRA_CHECKS)
    return case.call(headers={"Origin": ALLOWED})


def cors_headers_for_an_allowed_origin(ctx, response, case):
    """Every answer (but the 101 of an upgrade) echoes the allowed Origin every request is sent with."""
    if response.status_code != 101:
        assert response.headers.get("access-control-allow-origin") == [ALLOWED], \
            f"{case.method} {case.path} {response.status_code}: {response.headers.get('access-control-allow-origin')}"


EXTRA_CHECKS = [validator_agrees_with_document, cors_headers_for_an_allowed_origin]


class Tally:
    def __init__(self):
        self.cases = 0
        self.started = None
        self.statuses = collections.defaultdict(collections.Counter)
        self.phases = collections.Counter()
        self.stateful = 0


TALLY = Tally()


def post(url, body, headers):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def contract(running):
    """The document, loaded by schemathesis from the gateway itself, with credentials for every security
    scheme: the demo customer's key, a LiveAvatar gateway token (the one route that takes nothing else) and a HeyGen
    gateway token for the WebSocket URL."""
    key = {"X-Api-Key": DEMO_API_KEY}
    heygen_token = post(running.url + "/v1/streaming.create_token", {}, key)["data"]["token"]
    liveavatar_token = post(running.url + "/v1/sessions/token", {"conversation_id": "contract"}, key)["data"][
        "session_token"]
    config = SchemathesisConfig.from_dict({**CONFIG, "auth": {"openapi": {
        "ApiKey": {"api_key": DEMO_API_KEY}, "GatewayToken": {"bearer": liveavatar_token},
        "SessionTokenQuery": {"api_key": heygen_token}, "AdminToken": {"bearer": ADMIN_TOKEN}}}})
    # Loaded from under the prefix: schemathesis leaves out the operation that served the document it loaded, and
    # GET /openapi.json (at the root, where the cases go) is to be tested too.
    schema = schemathesis.openapi.from_url(running.url + "/api/v1/avatar/openapi.json", config=config)
    schema.config.update(base_url=running.url)
    TALLY.started = time.monotonic()
    return schema


CONTRACT = schemathesis.pytest.from_fixture("contract")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    """schemathesis 4.32.5's from_fixture reads and rewrites `node._nodeid` (to name each operation's subtest), an
    attribute pytest 9 no longer has (its node ids are `_id` now): give it one."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@CONTRACT.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_the_gateway_answers_as_documented(case, running):
    response = call(case)
    TALLY.cases += 1
    TALLY.phases[case.meta.phase.name] += 1
    TALLY.statuses[case.operation.label][response.status_code] += 1


STATEFUL = settings(max_examples=25, stateful_step_count=6, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))


def test_sessions_as_the_links_chain_them(contract):
    """Sequences the document's links make (streaming.new -> start -> task -> stop, sessions/token -> keep-alive ...):
    calls on real sessions, so HeyGen and LiveAvatar answer and the turns reach MongoDB; the same checks."""

    class Sessions(contract.as_state_machine()):
        def call(self, case, **kwargs):
            return call(case, validate=False)

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            TALLY.stateful += 1
            TALLY.statuses[case.operation.label + " (stateful)"][response.status_code] += 1
            super().validate_response(response, case, additional_checks=EXTRA_CHECKS, **kwargs)

    Sessions.run(settings=STATEFUL)


def test_contract_totals(running):
    if not TALLY.cases:
        pytest.skip("the schemathesis tests did not run")
    elapsed = time.monotonic() - TALLY.started
    operations = {label for label in TALLY.statuses if not label.endswith("(stateful)")}
    phases = ", ".join(f"{count} {phase.value}" for phase, count in TALLY.phases.items())
    print(f"\nschemathesis: {TALLY.cases} cases ({phases}) over {len(operations)} operations, and "
          f"{TALLY.stateful} stateful calls, in {elapsed:.1f} s")
    for label, counts in sorted(TALLY.statuses.items()):
        print(f"  {label}: {dict(sorted(counts.items()))}")
    assert len(operations) == sum(len(item) - ("servers" in item) for item in built_document()["paths"].values())
    assert TALLY.cases >= 500 and TALLY.stateful >= 100


# --- the statuses a healthy sandbox does not answer, provoked one by one -------------------------------------------

def test_fault_answers_are_as_documented(running, contract):
    """The answers schemathesis cannot reach with good upstreams (a body too large, an old WebSocket version, a
    foreign Origin, HeyGen's concurrency limit, LiveAvatar's rate limit, an upstream unreachable or too slow, Petya
    away, the turn queue full, a report after the hand-off, HeyGen's own error), each checked against the document:
    a documented status, its schema, JSON, the CORS headers, Retry-After where documented."""
    sandbox, document = running.sandbox, built_document()
    key = {"X-Api-Key": DEMO_API_KEY, "Origin": ALLOWED}
    seen = []

    in_loop = running.call_in_loop

    def take_down(name):
        """Stop one of the sandbox's upstreams; returns what serves it again, on the same port."""
        async def stop():
            await sandbox.served[name].stop()

        async def start():
            sandbox.served[name].start()

        in_loop(stop)
        return lambda: in_loop(start)

    def send(method, path, status, body=None, headers=key, raw=None, retry_after=None, cors=True):
        response = requests.request(method, running.url + path, json=body, data=raw, headers=headers, timeout=20)
        route = path.split("?")[0]
        assert response.status_code == status, (method, path, response.status_code, response.text[:300])
        documented = document["paths"][route][method.lower()]["responses"]
        assert str(status) in documented, (method, route, status)
        contract[route][method].validate_response(response)  # the body against the status's schema
        assert response.headers["Content-Type"].startswith("application/json")
        if cors:
            assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
        if retry_after is not None:
            assert ("Retry-After" in response.headers) is retry_after, (path, status, dict(response.headers))
        seen.append(f"{method} {route} {status}")
        return response.json()

    handshake = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                 "Sec-WebSocket-Version": "13", "Origin": ALLOWED}
    session = send("POST", "/v1/streaming.new", 200, {})["data"]["session_id"]
    liveavatar = send("POST", "/v1/sessions/token", 200, {})["data"]["session_id"]

    send("POST", "/v1/streaming.task", 413, raw=b'{"text": "' + b"a" * 70000 + b'"}')
    send("GET", f"{WEBSOCKET}?session_id={session}", 426, headers={**handshake, "Sec-WebSocket-Version": "8"})
    send("GET", f"{WEBSOCKET}?session_id={session}&session_token=x", 403,
         headers={**handshake, "Origin": "https://evil.example.net"}, cors=False)
    # HeyGen's own answer passed through: a task before start.
    assert send("POST", "/v1/streaming.task", 400, {"session_id": session, "text": "hi"})["code"] != 400

    sandbox.heygen.max_sessions = 0
    try:
        body = send("POST", "/v1/streaming.new", 429, {}, retry_after=True)
        assert body["code"] == "concurrency_limit_exceeded"
    finally:
        sandbox.heygen.max_sessions = 10000

    sandbox.liveavatar.rate_limit = 0
    try:
        send("POST", "/v1/sessions/keep-alive", 429, {"session_id": liveavatar}, retry_after=True)
    finally:
        sandbox.liveavatar.rate_limit = None

    # The socket's upstream refusing it, or away: answered before the upgrade (a session of its own: each refusal
    # records a socket closed, and the grace period then ends the session).
    token = send("POST", "/v1/streaming.create_token", 200)["data"]["token"]
    opened = send("POST", "/v1/streaming.new", 200, {}, headers={"Authorization": f"Bearer {token}", "Origin": ALLOWED})
    chat = f"{WEBSOCKET}?session_id={opened['data']['session_id']}&session_token={token}"

    async def refuse(_session):
        return 403, {"code": 403, "message": "no"}

    sandbox.heygen.on_socket_handshake = refuse
    try:
        assert send("GET", chat, 502, headers=handshake)["upstreamStatus"] == 403
    finally:
        sandbox.heygen.on_socket_handshake = None

    back = take_down("heygen")
    try:
        send("POST", "/v1/streaming.create_token", 502)
        assert "upstreamStatus" not in send("GET", chat, 502, headers=handshake)
    finally:
        back()

    sandbox.heygen.response_delay = 2.5  # over UPSTREAM_REQUEST_TIMEOUT
    try:
        send("POST", "/v1/streaming.create_token", 504)
    finally:
        sandbox.heygen.response_delay = 0

    back = take_down("petya")
    try:  # a key the gateway has not cached: Petya must be asked
        send("POST", "/v1/streaming.create_token", 503, headers={**key, "X-Api-Key": "a-key-not-cached"})
    finally:
        back()

    turns = sandbox.gateway.turns
    capacity, turns.capacity = turns.capacity, 0
    try:
        assert send("GET", "/readyz", 503, retry_after=True)["reason"] == "turn_queue_full"
        send("POST", "/v1/streaming.user_message", 503, {"session_id": session, "text": "hi"}, retry_after=True)
    finally:
        turns.capacity = capacity

    send("POST", "/v1/streaming.stop", 200, {"session_id": session})
    deadline = time.monotonic() + 10
    while True:  # the hand-off fixes its cut-off just after the stop
        response = requests.post(running.url + "/v1/streaming.avatar_message", json={"session_id": session,
                                 "text": "late"}, headers=key, timeout=20)
        if response.status_code == 409 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    send("POST", "/v1/streaming.avatar_message", 409, {"session_id": session, "text": "late"})
    print("\nfault answers checked: " + ", ".join(seen))
