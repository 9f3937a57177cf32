"""The streaming-chat relay: frames both ways unchanged and in order, close codes, auth, origins, transcript."""
import asyncio
import json
import os

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.helpers.client import GatewayClient, eventually
from tests.helpers.flows import connected, open_session, read_events, socket_says, ws_url
from tests.helpers.frames import frame, masked_frames


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


@pytest.mark.gen_test(timeout=20)
async def test_upstream_connect_failure_closes_with_1011_and_a_reason(sandbox, client):
    token, session = await open_session(client)
    await sandbox.served["heygen"].stop()
    ws = await websocket_connect(ws_url(sandbox, session["session_id"], token))
    assert await ws.read_message() is None
    ws.close()
    assert ws.close_code == 1011 and "upstream" in ws.close_reason


@pytest.mark.gen_test(timeout=20)
async def test_upstream_refusing_the_socket_closes_with_1011(sandbox, client):
    token, session = await open_session(client)
    sandbox.heygen.sessions[session["session_id"]].token = "something-else"  # HeyGen will refuse our token
    ws = await websocket_connect(ws_url(sandbox, session["session_id"], token))
    assert await ws.read_message() is None
    ws.close()
    assert ws.close_code == 1011 and "401" in ws.close_reason


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
