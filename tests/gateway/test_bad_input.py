"""No input gets a 5xx: a property-based fuzzer (hypothesis) over every route, method, header and body shape.

A real sandbox (emulators, Petya reference, gateway, SecantusDB) runs on its own IOLoop in a background thread for
the module; the fuzzer sends real HTTP (http.client) and raw-socket WebSocket handshakes from the test thread. Every
answer must be < 500; a 4xx with a body is JSON (except HEAD); an allowed Origin is echoed back; and no secret — our
upstream keys, Petya's token, the HMAC secret, the customer's key, any session token an emulator issued or any gateway
token the gateway handed out (outside the answer that handed it out) — appears in any answer or any log line.
"""
import base64
import collections
import http.client
import json
import logging
import os
import re
import socket
import time
import traceback
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from handlers.app import CONTRACTS
from handlers.contracts import PREFIXES
from sandbox.stack import DEMO_API_KEY
from tests.helpers.threaded import ThreadedSandbox

ALLOWED = "https://shop.example.com"
FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))


# --- the sandbox, on its own loop ----------------------------------------------------------------------------------

class LogLines(logging.Handler):
    """Every log line printed while the fuzzer runs (message and traceback), whatever the logger."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        if record.name == "tornado.access":
            # the emulators' own access logs (they see upstream tokens by design); the gateway's is gateway.access
            return
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.lines.append(f"{record.levelname} {record.name}: {text}")


class World(ThreadedSandbox):
    """The sandbox running in a thread, plus everything the fuzzer learned: answers, tokens, counts."""

    def __init__(self, mongodb_uri):
        super().__init__(mongodb_uri, "fuzz", CORS_ORIGINS=ALLOWED, UPSTREAM_REQUEST_TIMEOUT="5",
                         UPSTREAM_CONNECT_TIMEOUT="2", MAX_CONCURRENT_SESSIONS="1000")  # the quota is not fuzzed
        self.requests = 0
        self.statuses = collections.Counter()
        self.server_errors = []
        self.answers = []  # (issued_tokens, text) of every answer
        self.issued = {}  # ilgt_ token -> index of the answer that handed it out
        self.log = LogLines()

    # --- what the emulators and the gateway consider secret -------------------------------------------------------

    def secrets(self):
        sandbox = self.sandbox
        fixed = [sandbox.heygen.api_key, sandbox.liveavatar.api_key, sandbox.settings.petya_auth_token,
                 sandbox.settings.gateway_secret, DEMO_API_KEY]
        upstream = list(sandbox.heygen.tokens)
        for session in list(sandbox.liveavatar.sessions.values()):
            upstream.append(session.token)
            if session.livekit_agent_token:
                upstream.append(session.livekit_agent_token)  # kept server-side (handlers/liveavatar.py)
        return fixed, upstream

    # --- recording answers ----------------------------------------------------------------------------------------

    def record(self, method, path, status, reason, headers, body, sent_origin):
        """Check one answer and keep its text for the secret scan."""
        self.requests += 1
        self.statuses[status] += 1
        text = f"{status} {reason}\n" + "\n".join(f"{k}: {v}" for k, v in headers) + "\n\n" + \
            body.decode("latin-1")
        if status >= 500:
            self.server_errors.append(f"{method} {path} -> {status}: {body[:300]!r}")
        assert status < 500, f"{method} {path} -> {status}: {body[:500]!r}"
        lowered = {k.lower(): v for k, v in headers}
        if 400 <= status < 500 and body and method != "HEAD":
            assert lowered.get("content-type", "").startswith("application/json"), (method, path, status, text[:500])
            assert isinstance(json.loads(body), dict), (method, path, status, body[:300])
        if sent_origin and sent_origin.rstrip("/") == ALLOWED and status != 101:
            assert lowered.get("access-control-allow-origin") == sent_origin, (method, path, status, text[:800])
        elif sent_origin:
            assert "access-control-allow-origin" not in lowered, (method, path, status, text[:800])
        issued = set(re.findall(GATEWAY_TOKEN, text))
        new = issued - set(self.issued)
        if new:
            assert path.split("?")[0].endswith(("/v1/streaming.create_token", "/v1/sessions/token")) \
                and status == 200, \
                (method, path, status, text[:500])
            for token in new:
                self.issued[token] = len(self.answers)
        self.answers.append((new, text))


# A gateway token: JWT-shaped under our key id (models.tokens), or a legacy opaque ilgt_ one.
GATEWAY_TOKEN = r"ilgt_[A-Za-z0-9_\-]{20,}|eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImlsZ3QxIn0\.[\w\-]+\.[\w\-]+"


@pytest.fixture(scope="module")
def world(mongodb_server_uri):
    root = logging.getLogger()
    old_level = root.level
    world = World(mongodb_server_uri)
    pymongo_logger = logging.getLogger("pymongo")  # its DEBUG chatter (pool, server selection) carries no secret
    old_pymongo_level = pymongo_logger.level
    root.addHandler(world.log)
    root.setLevel(logging.DEBUG)
    pymongo_logger.setLevel(logging.INFO)
    try:
        world.start()
        world.sandbox.heygen.max_sessions = 10000  # the fuzzer opens many; HeyGen's concurrency limit is not under test
        yield world
    finally:
        try:
            world.stop()
        finally:
            root.removeHandler(world.log)
            root.setLevel(old_level)
            pymongo_logger.setLevel(old_pymongo_level)


# --- sending -------------------------------------------------------------------------------------------------------

def send(world, method, path, headers=(), body=None):
    """One HTTP request on a fresh connection; the answer recorded and checked. Returns (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", world.port, timeout=20)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        names = {name.lower() for name, _ in headers}
        if "host" not in names:
            connection.putheader("Host", f"127.0.0.1:{world.port}")
        for name, value in headers:
            connection.putheader(name, value)
        if body is not None and "content-length" not in names:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body if body is not None else None)
        response = connection.getresponse()
        payload = response.read()
        origin = next((v for n, v in headers if n.lower() == "origin"), None)
        world.record(method, path, response.status, response.reason, response.getheaders(), payload,
                     origin.decode("latin-1") if isinstance(origin, bytes) else origin)
        return response.status, payload
    finally:
        connection.close()


def raw_exchange(world, request, method="GET", path="?", origin=None):
    """A raw request on a socket (a WebSocket handshake); reads the answer head and its body."""
    sock = socket.create_connection(("127.0.0.1", world.port), timeout=20)
    try:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer: {request[:300]!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        _, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
        status = int(status)
        length = int(next((v for n, v in headers if n.lower() == "content-length"), "0"))
        if status != 101:
            while len(rest) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
        else:
            rest = b""
        world.record(method, path, status, reason, headers, rest[:length] if status != 101 else b"", origin)
        return status
    finally:
        sock.close()


# --- what a real client would hold: sessions and tokens of the demo customer ---------------------------------------

class Fixtures:
    """Fresh sessions and tokens for one fuzzer (the previous one may have stopped its sessions)."""

    def __init__(self, world):
        key = [("X-Api-Key", DEMO_API_KEY), ("Content-Type", "application/json")]
        _, body = send(world, "POST", "/v1/streaming.create_token", key)
        self.heygen_token = json.loads(body)["data"]["token"]
        self.heygen_sessions = []
        for _ in range(2):
            send(world, "POST", "/v1/streaming.create_token", key)
            status, body = send(world, "POST", "/v1/streaming.new", key, b'{"version": "v2"}')
            assert status == 200, body
            self.heygen_sessions.append(json.loads(body)["data"]["session_id"])
        send(world, "POST", "/v1/streaming.start", key, json.dumps({"session_id": self.heygen_sessions[0]}).encode())
        status, body = send(world, "POST", "/v1/sessions/token", key, b'{"conversation_id": "fuzz"}')
        assert status == 200, body
        data = json.loads(body)["data"]
        self.liveavatar_session, self.liveavatar_token = data["session_id"], data["session_token"]
        self.session_ids = self.heygen_sessions + [self.liveavatar_session]
        self.tokens = [self.heygen_token, self.liveavatar_token]


# --- strategies ----------------------------------------------------------------------------------------------------

API_PATHS = [prefix + route.pattern.replace("\\", "") for prefix in PREFIXES for contract in CONTRACTS
             for route in contract.routes if route.prefixed]
OTHER_PATHS = ["/healthz", "/readyz", "/metrics", "/demo", "/demo/", "/demo/x", "/demo/demo.html",
               "/demo/../server.py", "/demo/%2e%2e/x", "/", "/v1", "/v1/streaming.nope", "/api/v1/avatar",
               "/api/v1/avatar/healthz", "/v1/sessions/x"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
FIELDS = ["session_id", "text", "task_type", "task_mode", "quality", "version", "conversation_id", "voice",
          "avatar_id", "knowledge_base_id", "language", "mode", "reason"]

# Odd unicode: controls, NUL, lone surrogates (only expressible through a JSON escape), noncharacters, RTL marks,
# combining marks, emoji, private use.
odd_text = st.lists(st.one_of(
    st.characters(codec=None),
    st.characters(categories=["Cs"]),
    st.sampled_from(["\x00", "\ufffe", "\uffff", "\u202e", "\u0301", "\U0001f600", "\ue000", "\u2028", "$", ".",
                     "\\", '"', "{", "ilgt_", "$where", "../", "%00", "a" * 300])), max_size=20).map("".join)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         odd_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(odd_text, inner, max_size=4)), max_leaves=12)


class Body(bytes):
    """A request body that shows itself shortly when hypothesis reports a failing example."""

    def _repr_pretty_(self, printer, cycle):
        shown = bytes(self) if len(self) <= 120 else bytes(self[:60]) + b"..." + bytes(self[-20:])
        printer.text(f"Body({shown!r}, {len(self)} bytes)")


def nested(depth, open_="[", close="]", inner="1"):
    return (open_ * depth + inner + close * depth).encode()


FIXED_BODIES = [
    b"", b" ", b"\r\n", b"null", b"[]", b"{}", b"0", b'"x"', b"{", b"}", b"{'a': 1}", b"{\"a\": 1,}",
    b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b'{"text": "\xed\xb0\x80"}', b'{"text": "\xc3\x28"}',
    b'{"session_id": "\\udc00", "text": "x"}', b'{"text": "\\ud800", "session_id": "x"}', b'{"\\udfff": 1}',
    b'{"text": NaN}', b'{"text": Infinity}', b'{"n": 1e999999}', b'{"n": ' + b"9" * 5000 + b"}",
    nested(33), nested(1000), nested(20000), nested(30, '{"a":', "}"), nested(5000, '{"a":', "}"),
    b'{"session_id": ' + nested(40) + b"}", b"[" * 40000,
    b'{"text": "' + b"a" * 60000 + b'"}', b'{"text": "' + b"a" * 70000 + b'"}', b"x" * 65537,
]
FIXED_BODIES = [Body(body) for body in FIXED_BODIES]


@st.composite
def bodies(draw, world_fixtures):
    kind = draw(st.sampled_from(["fixed", "object", "value", "binary", "fields", "invalid-utf8", "plausible"]))
    if kind == "plausible":  # what a client sends, with odd text: goes through to MongoDB and the upstreams
        return json.dumps({"session_id": draw(st.sampled_from(world_fixtures.session_ids)), "text": draw(odd_text),
                           "task_type": draw(st.sampled_from(["repeat", "talk"])), "conversation_id": draw(odd_text),
                           "quality": "low", "version": "v2"}).encode()
    if kind == "fixed":
        return draw(st.sampled_from(FIXED_BODIES))
    if kind == "value":
        return json.dumps(draw(json_values)).encode()
    if kind == "binary":
        return draw(st.binary(max_size=200))
    fields = {}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=5, unique=True)):
        if name == "session_id":
            fields[name] = draw(st.one_of(st.sampled_from(world_fixtures.session_ids), json_values))
        elif name == "task_type":
            fields[name] = draw(st.one_of(st.sampled_from(["talk", "repeat", "chat", "sing"]), json_values))
        elif name == "quality":
            fields[name] = draw(st.one_of(st.sampled_from(["low", "medium", "high"]), json_values))
        else:
            fields[name] = draw(json_values)
    if kind == "invalid-utf8":
        return json.dumps(fields).encode()[:-1] + b', "text": "\xff\xfe' + draw(st.binary(max_size=8)) + b'"}'
    return json.dumps(fields).encode()  # ensure_ascii: lone surrogates become \\udXXX escapes


@st.composite
def header_sets(draw, world_fixtures):
    headers = []
    auth = draw(st.sampled_from(["none", "key", "key-lower", "garbage-key", "bearer-key", "bearer-garbage",
                                 "bearer-ilgt-junk", "bearer-token", "basic", "odd-key", "both"]))
    garbage = draw(st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                           max_size=30))
    if auth == "key":
        headers.append(("X-Api-Key", DEMO_API_KEY))
    elif auth == "key-lower":
        headers.append(("x-api-key", DEMO_API_KEY))
    elif auth == "garbage-key":
        headers.append(("X-Api-Key", garbage.encode("latin-1")))
    elif auth == "bearer-key":
        headers.append(("Authorization", f"Bearer {DEMO_API_KEY}"))
    elif auth == "bearer-garbage":
        headers.append(("Authorization", b"Bearer " + garbage.encode("latin-1")))
    elif auth == "bearer-ilgt-junk":
        headers.append(("Authorization", b"Bearer ilgt_" + garbage.encode("latin-1")))
    elif auth == "bearer-token":
        headers.append(("Authorization", "Bearer " + draw(st.sampled_from(world_fixtures.tokens))))
    elif auth == "basic":
        headers.append(("Authorization", "Basic " + base64.b64encode(garbage.encode()).decode()))
    elif auth == "odd-key":  # UTF-8 (arriving as latin-1) without the controls HTTP forbids in a header
        value = re.sub(rb"[\x00-\x1f\x7f]", b"", draw(odd_text).encode("utf-8", "surrogatepass"))
        headers.append(("X-Api-Key", value or b"x"))
    elif auth == "both":
        headers += [("X-Api-Key", DEMO_API_KEY),
                    ("Authorization", "Bearer " + draw(st.sampled_from(world_fixtures.tokens)))]
    origin = draw(st.sampled_from([None, ALLOWED, ALLOWED, "https://evil.example.net", "null", ALLOWED + "/"]))
    if origin:
        headers.append(("Origin", origin))
    content_type = draw(st.sampled_from([None, "application/json", "text/plain", "application/x-www-form-urlencoded",
                                         "multipart/form-data; boundary=x", "application/json; charset=latin-1"]))
    if content_type:
        headers.append(("Content-Type", content_type))
    for name in draw(st.lists(st.sampled_from(["X-Forwarded-For", "X-Real-IP", "X-Forwarded-Proto", "X-Scheme",
                                               "Accept", "Accept-Encoding", "Cookie", "Range", "If-None-Match",
                                               "If-Modified-Since", "Expect"]), max_size=3, unique=True)):
        headers.append((name, garbage.encode("latin-1")))
    return headers


def path_strategy(world_fixtures):
    query = st.one_of(
        st.just(""),
        st.builds(lambda sid: "?session_id=" + quote(sid, safe=""), st.sampled_from(world_fixtures.session_ids)),
        st.builds(lambda t: "?session_id=" + quote(t.encode("utf-8", "surrogatepass"), safe=""), odd_text),
        st.sampled_from(["?session_id=%ff", "?session_id=%ed%b0%80", "?session_id=", "?a=%", "?%zz=1",
                         "?session_id=x&session_id=y", "?session_token=ilgt_x"]))
    random_path = st.text(st.sampled_from("abcxyz0123456789-._~/%"), min_size=1, max_size=30).map(lambda p: "/" + p)
    return st.tuples(st.sampled_from(API_PATHS + OTHER_PATHS) | random_path, query).map("".join)


# --- the fuzzers ---------------------------------------------------------------------------------------------------

def test_every_route_every_method_every_body(world):
    fixtures = Fixtures(world)

    @settings(FUZZ, max_examples=2000)
    # The answers that were 5xx or not JSON before the fuzzer existed, always tried first.
    @example(method="HEAD", path="/demo", headers=[("Origin", ALLOWED)], body=None)
    @example(method="GET", path="/demo/no-such.js", headers=[("Origin", ALLOWED)], body=None)
    @example(method="POST", path="/demo", headers=[("Origin", ALLOWED)], body=Body(b"{}"))
    @example(method="POST", path="/v1/no.such.route", headers=[("Origin", ALLOWED)], body=Body(b"x" * 70000))
    @example(method="GET", path="/api/v1/avatar/v1/ws/streaming.chat", headers=[("Origin", ALLOWED)],
             body=Body(b"x" * 70000))
    @example(method="POST", path="/v1/streaming.task", headers=[("X-Api-Key", DEMO_API_KEY), ("Origin", ALLOWED)],
             body=Body(b'{"text": "' + b"a" * 70000 + b'"}'))
    @given(method=st.sampled_from(METHODS) | st.sampled_from(["FOO", "PROPFIND", "TRACE", "CONNECT", "get", "M-1"]),
           path=path_strategy(fixtures), headers=header_sets(fixtures), body=st.none() | bodies(fixtures))
    def fuzz(method, path, headers, body):
        send(world, method, path, headers, body)

    fuzz()


def test_deep_requests_of_the_customer(world):
    """Valid credentials and real session ids with odd bodies: the handlers, MongoDB and the upstream calls."""
    fixtures = Fixtures(world)

    @settings(FUZZ, max_examples=1000)
    @example(path="/v1/streaming.task", auth=[("X-Api-Key", DEMO_API_KEY)], origin=[], session_id="x",
             body=Body(b'{"session_id": "\\udc00", "text": "hi"}'))
    @example(path="/v1/streaming.avatar_message", auth=[("X-Api-Key", DEMO_API_KEY)], origin=[], session_id="x",
             body=Body(b'{"session_id": "x", "text": "\\ud800"}'))
    @example(path="/v1/streaming.new", auth=[("X-Api-Key", DEMO_API_KEY)], origin=[], session_id="x",
             body=Body(b"[" * 5000 + b"]" * 5000))
    @given(path=st.sampled_from([p for p in API_PATHS if "ws/" not in p]),
           auth=st.sampled_from([[("X-Api-Key", DEMO_API_KEY)]] + [[("Authorization", f"Bearer {t}")]
                                                                   for t in fixtures.tokens]),
           origin=st.sampled_from([[], [("Origin", ALLOWED)]]),
           session_id=st.sampled_from(fixtures.session_ids) | odd_text,
           body=bodies(fixtures))
    def fuzz(path, auth, origin, session_id, body):
        if path.endswith("transcript"):
            path += "?session_id=" + quote(session_id.encode("utf-8", "surrogatepass"), safe="")
            send(world, "GET", path, auth + origin, None)
        else:
            send(world, "POST", path, auth + origin + [("Content-Type", "application/json")], body)

    fuzz()


def _ws_key(kind, data):
    return {"valid": base64.b64encode(data[:16].ljust(16, b"k")).decode(),
            "short": base64.b64encode(data[:15]).decode(), "long": base64.b64encode(data.ljust(20, b"k")).decode(),
            "garbage": data.hex()[:10] or "x", "not-base64": "!!!!" * 6, "empty": ""}[kind]


# Each handshake field: its valid value first, then odd ones. A fuzzed handshake breaks none to three fields.
WS_FIELDS = {
    "upgrade": ["websocket", None, "WebSocket", "h2c", "", "websocket, foo"],
    "connection": ["Upgrade", None, "keep-alive, Upgrade", "close", "upgrade", "garbage"],
    "key": ["valid", None, "short", "long", "garbage", "not-base64", "empty"],
    "version": ["13", None, "8", "", "13, 8", "garbage"],
    "session": ["real", "random", "missing", "odd"],
    "token": ["heygen", "liveavatar", "junk", "missing", "odd", "heygen+junk"],
    "http": ["1.1", "1.0"],
    "origin": [None, ALLOWED, "https://evil.example.net"],
}


def test_websocket_handshakes(world):
    fixtures = Fixtures(world)

    @settings(FUZZ, max_examples=700)
    @given(prefix=st.sampled_from(PREFIXES), how_many=st.sampled_from([0, 1, 1, 1, 1, 2, 2, 3]),
           broken=st.permutations(sorted(WS_FIELDS)), data=st.data(), key_data=st.binary(max_size=20), odd=odd_text,
           extra=st.lists(st.sampled_from(["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
                                           "Sec-WebSocket-Extensions: ;;;=,=", "Sec-WebSocket-Protocol: chat, ,",
                                           "Content-Length: 5", "X-Api-Key: " + DEMO_API_KEY,
                                           "Content-Type: application/x-www-form-urlencoded"]),
                          max_size=3, unique=True))
    def fuzz(prefix, how_many, broken, data, key_data, odd, extra):
        broken = broken[:how_many]
        field = {name: data.draw(st.sampled_from(values[1:]), label=name) if name in broken else values[0]
                 for name, values in WS_FIELDS.items()}
        query = []
        if field["session"] != "missing":
            value = {"real": fixtures.heygen_sessions[1], "random": "no-such-session",
                     "odd": odd.encode("utf-8", "surrogatepass")}[field["session"]]
            query.append("session_id=" + quote(value, safe=""))
        if field["token"] != "missing":
            value = {"heygen": fixtures.heygen_token, "liveavatar": fixtures.liveavatar_token,
                     "junk": "ilgt_junk", "odd": odd.encode("utf-8", "surrogatepass"),
                     "heygen+junk": fixtures.heygen_token}[field["token"]]
            query.append("session_token=" + quote(value, safe="") + ("%ff" if field["token"] == "heygen+junk" else ""))
        path = f"{prefix}/v1/ws/streaming.chat?" + "&".join(query + ["silence_response=false"])
        lines = [f"GET {path} HTTP/{field['http']}", f"Host: 127.0.0.1:{world.port}"]
        for name, header in [("upgrade", "Upgrade"), ("connection", "Connection"), ("version", "Sec-WebSocket-Version"),
                             ("origin", "Origin")]:
            if field[name] is not None:
                lines.append(f"{header}: {field[name]}")
        if field["key"] is not None:
            lines.append(f"Sec-WebSocket-Key: {_ws_key(field['key'], key_data)}")
        lines += extra
        body = b"a=%zz" if "Content-Length: 5" in extra else b""
        raw_exchange(world, ("\r\n".join(lines) + "\r\n\r\n").encode() + body, path=path, origin=field["origin"])

    fuzz()


def test_no_5xx_and_no_secret_anywhere(world):
    """The totals of the run, and the secret scan over every answer and every log line."""
    time.sleep(0.5)  # let the relays of upgraded sockets log their close
    fixed, upstream = world.secrets()
    print(f"\nfuzzer: {world.requests} requests, {len(world.server_errors)} answers 5xx, "
          f"{len(world.issued)} gateway tokens handed out, {len(upstream)} upstream tokens, "
          f"{len(world.log.lines)} log lines; statuses {dict(sorted(world.statuses.items()))}")
    assert not world.server_errors, world.server_errors[:10]
    assert world.requests >= 3500
    assert upstream and world.issued
    if os.environ.get("FUZZ_DUMP"):  # to read what the gateway logged during the run
        with open(os.environ["FUZZ_DUMP"], "w") as dump:
            dump.write("\n".join(world.log.lines))
    answers = "\n".join(text for _, text in world.answers)
    logged = "\n".join(world.log.lines)
    assert "gateway.access" in logged
    for secret in fixed + upstream:
        assert len(secret) >= 8
        assert secret not in answers, secret
        assert secret not in logged, secret
    for token, index in world.issued.items():
        # Not even a part of one: its signature (the header of every JWT-shaped token is the same, and not secret).
        assert token.rsplit(".", 1)[-1][:20] not in logged, token
        others = [text for i, (_, text) in enumerate(world.answers) if i != index and token in text]
        assert not others, (token, others[0][:300])
