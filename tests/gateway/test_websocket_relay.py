"""The streaming-chat relay: frames both ways unchanged and in order, close codes, auth, origins, transcript."""
import asyncio
import json
import os
import time

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from sandbox.stack import Sandbox
from tests.helpers.client import FAST, GatewayClient, eventually
from tests.helpers.flows import WS_PARAMS, connected, open_session, read_events, socket_says, ws_url
from tests.helpers.frames import frame, masked_frames
from tests.helpers.processes import GatewayProcess, in_background


@pytest.mark.gen_test(timeout=20)
async def test_frames_pass_both_ways_unchanged_and_in_order(sandbox, client):
    session_id, _, ws = await connected(sandbox, client)
    frames = [bytes([i]) * (i * 37 + 1) for i in range(20)] + ["plain text", b"\x00\xff" * 512]
    for message in frames:
        await ws.write_message(message, binary=isinstance(message, bytes))
    received = sandbox.heygen.sessions[session_id].ws_received
    await eventually(lambda: len(received) == len(frames))
    assert [payload for _, payload in received] == frames
    assert [binary for binary, _ in received] == [isinstance(f, bytes) for f in frames]
    # HeyGen -> browser: the emulator's user_start answer to mic audio arrives as sent.
    events = await read_events(ws, "user_start")
    assert events[-1] == {"event_type": "user_start"}
    ws.close()


@pytest.mark.parametrize("pump", ["fast", "plain"])
@pytest.mark.gen_test(timeout=20)
async def test_upstream_close_code_reaches_the_browser(make_sandbox, pump):
    sandbox = await make_sandbox(RELAY_PUMP=pump)
    session_id, _, ws = await connected(sandbox, GatewayClient(sandbox.gateway_url))
    await sandbox.heygen.drop_sockets(session_id, code=4001, reason="kicked")
    while await ws.read_message() is not None:
        pass
    ws.close()
    assert (ws.close_code, ws.close_reason) == (4001, "kicked")


@pytest.mark.parametrize("pump", ["fast", "plain"])
@pytest.mark.gen_test(timeout=20)
async def test_browser_close_code_reaches_heygen(make_sandbox, pump):
    sandbox = await make_sandbox(RELAY_PUMP=pump)
    session_id, _, ws = await connected(sandbox, GatewayClient(sandbox.gateway_url))
    ws.close(4002, "tab closed")
    closes = sandbox.heygen.sessions[session_id].ws_closes
    await eventually(lambda: closes)
    assert closes == [(4002, "tab closed")]


@pytest.mark.gen_test(timeout=20)
async def test_stop_closes_the_browser_socket_normally(sandbox, client):
    session_id, _, ws = await connected(sandbox, client)
    await client.call("/v1/streaming.stop", {"session_id": session_id})
    while await ws.read_message() is not None:
        pass
    ws.close()
    assert ws.close_code == 1000  # never 1005/1006


ALLOWED = "https://shop.example.com"


async def refused(url):
    """The error a browser's handshake was answered instead of a 101: (status, JSON body, headers). As every error of
    the gateway's, JSON with the CORS headers."""
    try:
        ws = await websocket_connect(HTTPRequest(url, headers={"Origin": ALLOWED}))
    except HTTPClientError as exc:
        assert exc.response is not None, exc
        headers = exc.response.headers
        assert headers["Content-Type"].startswith("application/json")
        assert headers["Access-Control-Allow-Origin"] == ALLOWED
        body = json.loads(exc.response.body)
        assert body["code"] == exc.code and isinstance(body["message"], str)
        return exc.code, body, headers
    ws.close()
    raise AssertionError("the handshake was answered 101")


async def nothing_left_behind(sandbox, session_id):
    """No relay held, none counted, and the socket's close recorded on the session (it had been recorded open)."""
    assert len(sandbox.gateway.relays) == 0 and sandbox.gateway.metrics.relay.sockets == 0

    async def close_recorded():
        record = await sandbox.gateway.sessions.get(session_id)
        return not record.sockets and record.socket_closed_at

    await eventually(close_recorded)


@pytest.mark.gen_test(timeout=20)
async def test_upstream_unreachable_is_answered_502_before_the_upgrade(sandbox, client):
    token, session = await open_session(client)
    await sandbox.served["heygen"].stop()
    status, body, _ = await refused(ws_url(sandbox, session["session_id"], token))
    assert status == 502 and body["message"] == "HeyGen unreachable for the socket"
    await nothing_left_behind(sandbox, session["session_id"])


@pytest.mark.gen_test(timeout=30)
async def test_a_session_opened_without_a_token_gets_409_for_its_socket_and_heygen_is_not_asked(sandbox, client):
    """streaming.new with the API key alone leaves the gateway no HeyGen session token, and HeyGen serves a socket
    only with one: the browser is told so (409), rather than a 502 after HeyGen's 401."""
    new = await client.call("/v1/streaming.new", {"version": "v2"})  # no unused token of the customer to take
    assert new.status == 200, new.json
    session_id = new.data["session_id"]
    token = (await client.call("/v1/streaming.create_token")).data["token"]  # the customer's, to authenticate with
    asked = len(sandbox.heygen.recorder.calls("/v1/ws/streaming.chat"))
    status, body, _ = await refused(ws_url(sandbox, session_id, token))
    assert status == 409 and "streaming.create_token" in body["message"]
    assert len(sandbox.heygen.recorder.calls("/v1/ws/streaming.chat")) == asked
    assert len(sandbox.gateway.relays) == 0 and not (await sandbox.gateway.sessions.get(session_id)).sockets


@pytest.mark.parametrize("pump", ["fast", "plain"])
@pytest.mark.gen_test(timeout=30)
async def test_upstream_refusing_the_socket_is_answered_502_naming_its_status(make_sandbox, pump):
    sandbox = await make_sandbox(RELAY_PUMP=pump, SOCKET_GRACE_PERIOD="30")  # the session outlives the refusals
    client = GatewayClient(sandbox.gateway_url)
    token, session = await open_session(client)
    session_id = session["session_id"]
    heygen_session = sandbox.heygen.sessions[session_id]
    heygen_token, heygen_session.token = heygen_session.token, "something-else"  # HeyGen refuses ours: 401
    status, body, _ = await refused(ws_url(sandbox, session_id, token))
    assert (status, body["message"], body["upstreamStatus"]) == (502, "HeyGen refused the socket (HTTP 401)", 401)
    heygen_session.token = heygen_token

    for upstream_status in (403, 500):
        async def refuse(_session, upstream_status=upstream_status):
            return upstream_status, {"code": upstream_status, "message": "no"}

        sandbox.heygen.on_socket_handshake = refuse
        status, body, _ = await refused(ws_url(sandbox, session_id, token))
        assert status == 502 and body["upstreamStatus"] == upstream_status
        assert body["message"] == f"HeyGen refused the socket (HTTP {upstream_status})"
    await nothing_left_behind(sandbox, session_id)
    sandbox.heygen.on_socket_handshake = None
    ws = await websocket_connect(ws_url(sandbox, session_id, token))  # HeyGen accepts again: so does the gateway
    assert sandbox.heygen.sessions[session_id].sockets
    ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_upstream_that_never_answers_its_handshake_is_answered_504_in_time(make_sandbox):
    """HeyGen accepts the connection, reads the handshake and never answers: 504 once UPSTREAM_REQUEST_TIMEOUT is
    up (the whole handshake's bound; UPSTREAM_CONNECT_TIMEOUT bounds only the TCP connect, which succeeded)."""
    sandbox = await make_sandbox(UPSTREAM_REQUEST_TIMEOUT="1.5", UPSTREAM_CONNECT_TIMEOUT="0.5")
    client = GatewayClient(sandbox.gateway_url)
    token, session = await open_session(client)
    release = asyncio.Event()
    handshakes = []

    async def hang(session):
        handshakes.append(session.session_id)
        await release.wait()
        return 503, {"code": 503, "message": "too late"}  # to a connection the gateway has closed meanwhile

    sandbox.heygen.on_socket_handshake = hang
    started = time.monotonic()
    status, body, _ = await refused(ws_url(sandbox, session["session_id"], token))
    elapsed = time.monotonic() - started
    release.set()
    assert status == 504 and body["message"] == "HeyGen did not answer the socket's handshake in time"
    assert handshakes == [session["session_id"]]  # it was reached, and kept waiting
    assert 1.5 <= elapsed < 1.5 + 1.0, elapsed
    await nothing_left_behind(sandbox, session["session_id"])


@pytest.mark.parametrize("pump", ["fast", "plain"])
@pytest.mark.gen_test(timeout=30)
async def test_a_browser_leaving_before_its_handshake_is_answered_leaves_nothing_behind(make_sandbox, pump, caplog):
    """The browser gives up while the gateway is connecting HeyGen (its handshake unanswered): once HeyGen's socket
    opens, the gateway closes it; no relay is held and the socket's close is recorded."""
    sandbox = await make_sandbox(RELAY_PUMP=pump)
    client = GatewayClient(sandbox.gateway_url)
    token, session = await open_session(client)
    session_id = session["session_id"]
    reached, release = asyncio.Event(), asyncio.Event()

    async def slow(_session):
        reached.set()
        await release.wait()  # HeyGen answers once the browser has gone

    sandbox.heygen.on_socket_handshake = slow
    host, port = sandbox.gateway_url.split("//")[1].split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    path = ws_url(sandbox, session_id, token).split(f":{port}", 1)[1]
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await asyncio.wait_for(reached.wait(), 5)
    writer.close()
    await eventually(lambda: sandbox.gateway.metrics.relay.sockets == 0)  # the gateway heard it leave
    release.set()
    heygen = sandbox.heygen.sessions[session_id]
    await eventually(lambda: heygen.ws_closes and not heygen.sockets)  # HeyGen's socket opened, and was closed
    await nothing_left_behind(sandbox, session_id)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text


@pytest.mark.parametrize("pump", ["fast", "plain"])
@pytest.mark.gen_test(timeout=120)
async def test_what_heygen_sends_at_once_after_its_handshake_reaches_the_browser_every_time(make_sandbox, pump):
    """HeyGen writes the moment its socket opens (the emulator's on_socket_open: right behind its 101, often in the
    TCP segment the gateway reads the 101 from), and again the moment the browser has its 101. The gateway connects
    HeyGen before answering the browser, and nothing reads HeyGen's leg until a pump takes it over: each of 200
    browsers (10 at a time) finds HeyGen's side of its socket there when answered, and gets both, in order."""
    sandbox = await make_sandbox(RELAY_PUMP=pump, SOCKET_GRACE_PERIOD="30")
    client = GatewayClient(sandbox.gateway_url)
    token, session = await open_session(client)
    session_id = session["session_id"]
    heygen = sandbox.heygen.sessions[session_id]

    def greet(socket):  # the browser's own query parameters reach HeyGen: `probe` says which browser it is
        probe = socket.get_query_argument("probe")
        socket.write_message(json.dumps({"event_type": "greeting", "probe": probe}))
        socket.write_message(probe.encode(), binary=True)

    sandbox.heygen.on_socket_open = greet

    async def browser(probe):
        ws = await websocket_connect(ws_url(sandbox, session_id, token) + f"&probe={probe}")
        try:
            upstream = [s for s in heygen.sockets if s.get_query_argument("probe") == probe]
            assert len(upstream) == 1, f"HeyGen's side of socket {probe} is not there when the browser is answered"
            await upstream[0].send_json({"event_type": "user_start", "probe": probe})
            return [await asyncio.wait_for(ws.read_message(), 5) for _ in range(3)]
        finally:
            ws.close()

    for batch in range(20):
        probes = [str(batch * 10 + i) for i in range(10)]
        for probe, messages in zip(probes, await asyncio.gather(*map(browser, probes)), strict=True):
            assert messages == [json.dumps({"event_type": "greeting", "probe": probe}), probe.encode(),
                                json.dumps({"event_type": "user_start", "probe": probe})], messages
    await eventually(lambda: len(sandbox.gateway.relays) == 0)


async def browsers_writing_at_once(heygen, url):
    """100 browsers on one session's socket `url`, ten at a time, each writing two frames the moment it has its 101:
    each frame reaches HeyGen (the emulator's session `heygen`), once and in order."""
    async def browser(probe):
        ws = await websocket_connect(url)
        ws.write_message(f"first {probe}")
        ws.write_message(f"second {probe}")
        await eventually(lambda: (False, f"second {probe}") in heygen.ws_received)
        ws.close()

    for batch in range(10):
        await asyncio.gather(*(browser(batch * 10 + i) for i in range(10)))
    texts = [payload for binary, payload in heygen.ws_received if not binary]
    for probe in range(100):
        assert texts.count(f"first {probe}") == 1 and texts.count(f"second {probe}") == 1, probe
        assert texts.index(f"first {probe}") < texts.index(f"second {probe}")


@pytest.mark.parametrize("pump", ["fast", "plain"])
@pytest.mark.gen_test(timeout=120)
async def test_what_the_browser_sends_at_once_after_its_handshake_reaches_heygen_every_time(make_sandbox, pump):
    """The browser writes the moment it has its 101, while the gateway is still pairing the two legs (its bytes can
    arrive before the other leg's transport exists: they wait, in order): each of 100 browsers' frames reach HeyGen,
    once each and in order."""
    sandbox = await make_sandbox(RELAY_PUMP=pump, SOCKET_GRACE_PERIOD="30")
    client = GatewayClient(sandbox.gateway_url)
    token, session = await open_session(client)
    heygen = sandbox.heygen.sessions[session["session_id"]]
    await browsers_writing_at_once(heygen, ws_url(sandbox, session["session_id"], token))
    await eventually(lambda: len(sandbox.gateway.relays) == 0 and not heygen.sockets)  # every leg closed


@pytest.mark.gen_test(timeout=120)
async def test_what_the_browser_sends_at_once_after_its_handshake_reaches_heygen_under_uvloop(
        mongodb_server_uri, db_name, tmp_path):
    """The same on uvloop (EVENT_LOOP's default; the in-process gateways of these tests run on the tests' asyncio
    loop), so with the gateway as a process of its own, on the fast pump: uvloop delivered a browser's first frame to
    its leg before the other leg had a transport (an AttributeError, and the frame lost). No error in the gateway's
    log."""
    sandbox = Sandbox(mongodb_server_uri, database=db_name,
                      **{**FAST, "EVENT_LOOP": "uvloop", "RELAY_PUMP": "fast", "SOCKET_GRACE_PERIOD": "30"})
    sandbox.start_upstreams()
    gateway = GatewayProcess(sandbox.env, str(tmp_path / "gateway.log"))
    try:
        await in_background(gateway.start)
        token, session = await open_session(GatewayClient(gateway.url))
        sid = session["session_id"]
        heygen = sandbox.heygen.sessions[sid]
        url = f"{gateway.url.replace('http://', 'ws://')}/v1/ws/streaming.chat?session_id={sid}&session_token={token}" \
              f"&{WS_PARAMS}"
        try:
            await browsers_writing_at_once(heygen, url)
            await eventually(lambda: not heygen.sockets)  # every leg closed
        except AssertionError as failure:
            raise AssertionError(f"{failure}; the gateway's log ends:\n{gateway.log()[-3000:]}") from failure
    finally:
        await in_background(gateway.terminate)
        await sandbox.stop()
    log = gateway.log()
    assert "'EVENT_LOOP': 'uvloop'" in log and "plain pump" not in log, log[-3000:]  # (fast: no fallback)
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


@pytest.mark.parametrize("pump", ["fast", "plain"])
@pytest.mark.gen_test(timeout=30)
async def test_what_heygen_sends_before_the_browser_is_answered_waits_unread_for_the_pump(make_sandbox, pump,
                                                                                          monkeypatch):
    """Held between HeyGen's handshake and the browser's 101 (a slowed gateway): HeyGen's messages, a big one among
    them, and its close arrive meanwhile. Nothing reads or drops them: the browser gets them all, in order, then
    HeyGen's close code."""
    from relay.handler import StreamingChatRelay

    connect = StreamingChatRelay.connect_upstream

    async def slowly(self):
        upstream = await connect(self)
        await asyncio.sleep(0.3)  # HeyGen writes and closes meanwhile (below)
        return upstream

    monkeypatch.setattr(StreamingChatRelay, "connect_upstream", slowly)
    sandbox = await make_sandbox(RELAY_PUMP=pump)
    client = GatewayClient(sandbox.gateway_url)
    token, session = await open_session(client)
    big = os.urandom(300_000)
    sent = [json.dumps({"event_type": "user_start"}), big, json.dumps({"event_type": "user_stop"})]

    def write_and_close(socket):
        for message in sent:
            socket.write_message(message, binary=isinstance(message, bytes))
        socket.close(4003, "said my piece")

    sandbox.heygen.on_socket_open = write_and_close
    ws = await websocket_connect(ws_url(sandbox, session["session_id"], token))
    got = []
    while (message := await asyncio.wait_for(ws.read_message(), 5)) is not None:
        got.append(message)
    ws.close()
    assert got == sent
    assert (ws.close_code, ws.close_reason) == (4003, "said my piece")


async def handshake_status(url, origin=None):
    headers = {"Origin": origin} if origin else {}
    try:
        ws = await websocket_connect(HTTPRequest(url, headers=headers))
    except HTTPClientError as exc:
        return exc.code, json.loads(exc.response.body) if exc.response is not None and exc.response.body else None
    ws.close()
    return 101, None


@pytest.mark.gen_test(timeout=20)
async def test_handshake_checks_token_ownership_and_origin(sandbox, client):
    token, session = await open_session(client)
    session_id = session["session_id"]
    status, body = await handshake_status(ws_url(sandbox, session_id, "ilgt_forged"))
    assert status == 401 and body["code"] == 401
    sandbox.petya.create_account("other-key")
    other_token = (await GatewayClient(sandbox.gateway_url, "other-key").call("/v1/streaming.create_token"))
    status, body = await handshake_status(ws_url(sandbox, session_id, other_token.data["token"]))
    assert status == 404 and body["message"] == "session not found"
    status, _ = await handshake_status(ws_url(sandbox, "unknown", token))
    assert status == 404
    status, _ = await handshake_status(ws_url(sandbox, session_id, token), origin="https://evil.example.net")
    assert status == 403
    status, _ = await handshake_status(ws_url(sandbox, session_id, token), origin="https://shop.example.com")
    assert status == 101
    assert not any("evil" in (r.headers.get("origin") or "") for r in sandbox.heygen.recorder.requests)


@pytest.mark.gen_test(timeout=20)
async def test_socket_user_speech_and_duplicates_are_counted_once(sandbox, client):
    """The gateway's transcript observer on the socket. Real HeyGen v2 sends the avatar's and the user's words as
    LiveKit data, not on the socket (upstream-apis §0.1): the test writes them on the emulator's socket itself."""
    session_id, _, ws = await connected(sandbox, client)
    task = await client.call("/v1/streaming.task", {"session_id": session_id, "text": "Hi, I am Iliana.",
                                                    "task_type": "repeat"})
    await socket_says(sandbox, session_id, "Hi, I am Iliana.", task_id=task.data["task_id"])
    await read_events(ws, "avatar_end_message")
    # The client also reports the same avatar text it saw over LiveKit: still one turn.
    reply = await client.call("/v1/streaming.avatar_message", {"session_id": session_id, "text": "Hi, I am Iliana."})
    assert reply.status == 200 and reply.data == {"recorded": False}
    await socket_says(sandbox, session_id, "I need help with my order", kind="user", task_id="u-1")
    await read_events(ws, "user_end_message")
    reply = await client.call("/v1/streaming.user_message", {"session_id": session_id,
                                                            "text": "I need help with my order"})
    assert reply.data == {"recorded": False}
    reply = await client.call("/v1/streaming.user_message", {"session_id": session_id, "text": "Thanks!"})
    assert reply.data == {"recorded": True}
    await client.call("/v1/streaming.stop", {"session_id": session_id})
    await eventually(lambda: sandbox.petya.deliveries("conv-1"))
    turns = [(t["role"], t["transcript"]) for t in sandbox.petya.get_conversation("conv-1")["transcript"]]
    assert turns == [("avatar", "Hi, I am Iliana."), ("user", "I need help with my order"), ("user", "Thanks!")]
    ws.close()


@pytest.mark.gen_test(timeout=20)
async def test_utterance_cut_off_by_a_closing_socket_is_kept(sandbox, client):
    session_id, _, ws = await connected(sandbox, client)
    task = await client.call("/v1/streaming.task", {"session_id": session_id,
                                                    "text": "one two three four five six seven", "task_type": "repeat"})
    # The first words on the socket, then it closes. (Real HeyGen v2 sends these as LiveKit data; this exercises the
    # gateway's transcript observer on socket frames.)
    task_id = task.data["task_id"]
    await sandbox.heygen.send_on_socket(session_id, {"type": "avatar_start_talking", "task_id": task_id})
    await sandbox.heygen.send_on_socket(session_id, {"type": "avatar_talking_message", "task_id": task_id,
                                                     "message": "one two"})
    await read_events(ws, "avatar_talking_message")
    await asyncio.sleep(0.05)
    ws.close()
    await eventually(lambda: sandbox.petya.deliveries("conv-1"))
    # The task's own record holds the whole text; the socket's partial words merged into it by task id.
    transcript = sandbox.petya.get_conversation("conv-1")["transcript"]
    assert [t["transcript"] for t in transcript] == ["one two three four five six seven"]


@pytest.mark.gen_test(timeout=60)
async def test_a_burst_of_utterances_on_one_socket_loses_none(sandbox, client):
    """Each completed utterance is written as it ends, concurrently with the others: none may be lost.
    (The utterances are written on the emulator's socket; real HeyGen v2 sends them as LiveKit data.)"""
    session_id, _, ws = await connected(sandbox, client)
    said = [f"utterance number {i} with a few words" for i in range(150)]
    await asyncio.gather(*(socket_says(sandbox, session_id, text, kind="user", task_id=f"u-{i}")
                           for i, text in enumerate(said)))
    await read_events(ws, "user_end_message", count=len(said), timeout=30)
    await client.call("/v1/streaming.stop", {"session_id": session_id})
    await eventually(lambda: sandbox.petya.deliveries("conv-1"), timeout=20)
    transcript = sandbox.petya.get_conversation("conv-1")["transcript"]
    assert sorted(t["transcript"] for t in transcript) == sorted(said)
    ws.close()


@pytest.mark.gen_test(timeout=20)
async def test_both_legs_are_pinged(make_sandbox):
    sandbox = await make_sandbox(WS_PING_INTERVAL="0.1")
    client = GatewayClient(sandbox.gateway_url)
    session_id, _, ws = await connected(sandbox, client)
    browser_pings = []
    ws.on_ping = browser_pings.append  # tornado's client hook for a ping it received (it answers the pong itself)
    await asyncio.sleep(0.6)
    assert len(browser_pings) >= 3  # gateway -> browser
    assert sandbox.heygen.sessions[session_id].ws_pings >= 3  # gateway -> HeyGen
    ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_large_and_fragmented_messages_pass_intact_both_ways(sandbox, client):
    session_id, _, ws = await connected(sandbox, client)
    big = os.urandom(1024 * 1024 - 5)  # just under WS_MAX_MESSAGE_SIZE
    # Browser -> HeyGen: a text message in three fragments (sent raw: tornado's client never fragments), a big one.
    ws.protocol.stream.write(masked_frames((1, "héllo ".encode(), False), (0, b"wor", False), (0, b"ld", True)))
    await ws.write_message(big, binary=True)
    received = sandbox.heygen.sessions[session_id].ws_received
    await eventually(lambda: len(received) >= 2)
    assert received[:2] == [(False, "héllo world"), (True, big)]
    # HeyGen -> browser: as big, through the relay's chunked reads.
    heygen_socket = next(iter(sandbox.heygen.sessions[session_id].sockets))
    await heygen_socket.write_message(big[::-1], binary=True)
    while (message := await asyncio.wait_for(ws.read_message(), 10)) is not None and isinstance(message, str):
        pass
    assert message == big[::-1]
    ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_the_gateways_own_frames_wait_for_a_frame_boundary(make_sandbox):
    """While a frame trickles through the relay, a ping the gateway sends into that leg, or its close on shutdown,
    must go in after the frame, never inside it. (Timed pings are off: the test's own peers write raw bytes.)"""
    sandbox = await make_sandbox(WS_PING_INTERVAL="0")
    client = GatewayClient(sandbox.gateway_url)
    session_id, _, ws = await connected(sandbox, client)
    session = sandbox.heygen.sessions[session_id]
    relay = next(r for r in sandbox.gateway.relays if r.session.session_id == session_id)

    async def trickle(stream, raw, midway):
        step = len(raw) // 5 + 1
        for i in range(0, len(raw), step):
            stream.write(raw[i:i + step])
            await asyncio.sleep(0.05)
            if i == step:
                midway()

    # Browser -> HeyGen, with the gateway pinging HeyGen midway.
    payload = os.urandom(200_000)
    pings = session.ws_pings
    await trickle(ws.protocol.stream, masked_frames((2, payload, True)),
                  lambda: relay.upstream.protocol.write_ping(b""))
    await ws.write_message(b"after", binary=True)
    await eventually(lambda: len(session.ws_received) >= 2)
    assert session.ws_received[:2] == [(True, payload), (True, b"after")]
    await eventually(lambda: session.ws_pings == pings + 1)
    # HeyGen -> browser, with the gateway shutting down midway: the browser gets the whole frame, then 1001.
    heygen_socket = next(iter(session.sockets))
    await trickle(heygen_socket.ws_connection.stream, frame(2, payload[::-1]),
                  lambda: relay.close(1001, "gateway shutting down"))
    messages = []
    while (message := await asyncio.wait_for(ws.read_message(), 5)) is not None:
        messages.append(message)
    assert messages[-1] == payload[::-1]
    ws.close()
    assert (ws.close_code, ws.close_reason) == (1001, "gateway shutting down")


@pytest.mark.gen_test(timeout=20)
async def test_pongs_to_the_gateways_pings_keep_both_legs_open(make_sandbox):
    sandbox = await make_sandbox(WS_PING_INTERVAL="0.05")
    client = GatewayClient(sandbox.gateway_url)
    session_id, _, ws = await connected(sandbox, client)
    session = sandbox.heygen.sessions[session_id]
    pings = session.ws_pings
    await asyncio.sleep(0.5)
    assert session.ws_pings - pings >= 5
    assert session.sockets and not ws.protocol.is_closing()  # a pong not recognized would time the leg out
    await ws.write_message(b"still here", binary=True)
    await eventually(lambda: (True, b"still here") in session.ws_received)
    ws.close()


@pytest.mark.gen_test(timeout=60)
async def test_browsers_leaving_while_their_relay_is_being_set_up_leave_nothing_behind(sandbox, client, caplog):
    """Sockets closed (cleanly or by a reset) at once after the handshake, while the gateway connects to HeyGen and
    pairs the legs: no error, no relay left open, every close recorded."""
    import socket
    import struct

    sandbox.heygen.max_sessions = 8
    sessions = []
    for _ in range(8):
        token, session = await open_session(client)
        sessions.append((session["session_id"], token))

    async def leave(session_id, token, i):
        ws = await websocket_connect(ws_url(sandbox, session_id, token))
        await asyncio.sleep(0.002 * (i % 4))
        if i % 2:
            sock = ws.protocol.stream.socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
            ws.protocol.stream.close()
            ws.close()  # the client object's own bookkeeping: nothing more goes on the wire
        else:
            ws.close(1000)

    for _ in range(5):
        await asyncio.gather(*(leave(session_id, token, i) for i, (session_id, token) in enumerate(sessions)))
    await eventually(lambda: len(sandbox.gateway.relays) == 0 and sandbox.gateway.metrics.relay.sockets == 0,
                     timeout=15)

    async def closes_recorded():
        records = [await sandbox.gateway.sessions.get(session_id) for session_id, _ in sessions]
        return all(not record.sockets and record.socket_closed_at for record in records)

    await eventually(closes_recorded, timeout=15)
    await eventually(lambda: not any(sandbox.heygen.sessions[session_id].sockets for session_id, _ in sessions))
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text
