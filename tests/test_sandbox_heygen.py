"""The HeyGen Streaming API emulator: REST envelopes and errors, spoken tasks and the streaming.chat socket."""
import asyncio
import json
from urllib.parse import urlencode

import pytest
import tornado.websocket
from tornado.httpclient import HTTPClientError

from sandbox.heygen import HeyGenEmulator

API_KEY = "sandbox-heygen-key"
AVATAR = "Wayne_20240711"


@pytest.fixture
def emulator(io_loop):  # io_loop first, so stop() runs before the loop closes
    emulator = HeyGenEmulator(api_key=API_KEY, max_sessions=2, chunk_delay=0.001)
    yield emulator
    emulator.stop()


@pytest.fixture
def app(emulator):
    return emulator.make_app()


@pytest.fixture
def api(http_client, base_url):
    """call(path, body, token=None) -> (HTTP status, JSON body); the API key unless a Bearer token is given."""
    async def call(path, body=None, token=None, method="POST"):
        headers = {"Authorization": f"Bearer {token}"} if token else {"X-Api-Key": API_KEY}
        headers["Content-Type"] = "application/json"
        response = await http_client.fetch(base_url + path, method=method, headers=headers, raise_error=False,
                                           body=json.dumps(body or {}) if method == "POST" else None)
        return response.code, json.loads(response.body)
    return call


@pytest.fixture
def open_socket(base_url):
    """open_socket(session_id, token) -> a client connection, closed at teardown."""
    connections = []

    async def connect(session_id, token):
        query = urlencode({"session_id": session_id, "session_token": token, "arch_version": "v2"})
        url = base_url.replace("http", "ws", 1) + "/v1/ws/streaming.chat?" + query
        connection = await tornado.websocket.websocket_connect(url)
        connections.append(connection)
        return connection

    yield connect
    for connection in connections:
        connection.close()


async def new_token_session(api):
    _, created = await api("/v1/streaming.create_token")
    token = created["data"]["token"]
    code, body = await api("/v1/streaming.new", {"avatar_name": AVATAR, "version": "v2"}, token=token)
    assert code == 200
    return token, body["data"]["session_id"]


async def started_session(api):
    token, session_id = await new_token_session(api)
    assert await api("/v1/streaming.start", {"session_id": session_id}, token=token) == (
        200, {"code": 100, "message": "success", "data": None})
    return token, session_id


async def read_json(connection):
    return json.loads(await asyncio.wait_for(connection.read_message(), 1))


@pytest.mark.gen_test
async def test_session_token_is_one_use(emulator, api):
    token, session_id = await new_token_session(api)
    assert emulator.sessions[session_id].token == token
    assert emulator.tokens[token]["used_by"] == session_id
    again = await api("/v1/streaming.new", {"avatar_name": AVATAR}, token=token)
    assert again == (401, {"code": 400112, "message": "Unauthorized"})
    assert (await api("/v1/streaming.create_token", token=token))[0] == 401  # tokens cannot mint tokens
    assert len(emulator.recorder.calls("/v1/streaming.new", "POST")) == 2


@pytest.mark.gen_test
async def test_new_session_answer_and_errors(emulator, api):
    code, body = await api("/v1/streaming.new", {"avatar_id": AVATAR, "quality": "high"})
    assert (code, body["code"], body["message"]) == (200, 100, "success")
    assert {"session_id", "url", "access_token", "realtime_endpoint", "livekit_agent_token"} <= body["data"].keys()
    assert body["data"]["access_token"].count(".") == 2 and body["data"]["sdp"] is None
    assert await api("/v1/streaming.new", {"avatar_id": "Nobody"}) == (
        400, {"code": 10013, "message": "avatar not found"})
    assert (await api("/v1/streaming.new", {"avatar_id": AVATAR}))[0] == 200
    code, body = await api("/v1/streaming.new", {"avatar_id": AVATAR})  # max_sessions=2
    assert (code, body["code"]) == (400, 10004)
    _, listed = await api("/v1/streaming.list", method="GET")
    assert len(listed["data"]["sessions"]) == 2
    assert (await api("/v1/streaming.new", {}, token="forged"))[1]["code"] == 400112


@pytest.mark.gen_test
async def test_task_errors(api):
    _, session_id = await new_token_session(api)
    assert await api("/v1/streaming.task", {"session_id": session_id, "text": "hi"}) == (
        400, {"code": 400006, "message": "Session is not in correct state"})
    assert await api("/v1/streaming.task", {"session_id": session_id}) == (
        400, {"code": 40001, "message": "Missing required parameters: text"})
    assert await api("/v1/streaming.task", {"session_id": "gone", "text": "hi"}) == (
        400, {"code": 400004, "message": "Session does not exist. SessionID: gone"})


@pytest.mark.gen_test
async def test_repeat_task_is_spoken_as_events(emulator, api, open_socket):
    token, session_id = await started_session(api)
    connection = await open_socket(session_id, token)
    text = "Hello there, I am  your avatar for today!"
    code, body = await api("/v1/streaming.task", {"session_id": session_id, "text": text, "task_type": "repeat"})
    assert code == 200
    task_id = body["data"]["task_id"]
    events = [await read_json(connection)]
    while events[-1]["type"] != "avatar_stop_talking":
        events.append(await read_json(connection))
    assert [e["type"] for e in events[:2] + events[-2:]] == [
        "avatar_start_talking", "avatar_talking_message", "avatar_end_message", "avatar_stop_talking"]
    assert {e["task_id"] for e in events} == {task_id}
    chunks = [e["message"] for e in events if e["type"] == "avatar_talking_message"]
    assert len(chunks) == 3 and "".join(chunks) == text
    assert emulator.sessions[session_id].tasks[0]["status"] == "done"


@pytest.mark.gen_test
async def test_interrupt_cuts_speech_short(emulator, api, open_socket):
    token, session_id = await started_session(api)
    connection = await open_socket(session_id, token)
    emulator.chunk_delay = 0.05
    await api("/v1/streaming.task", {"session_id": session_id, "text": "one two three four five six seven"})
    assert (await read_json(connection))["type"] == "avatar_start_talking"
    interrupted = await api("/v1/streaming.interrupt", {"session_id": session_id})
    assert interrupted == (200, {"code": 100, "message": "success"})
    events = [await read_json(connection)]
    while events[-1]["type"] != "avatar_stop_talking":
        events.append(await read_json(connection))
    assert "avatar_end_message" not in [e["type"] for e in events]
    assert emulator.sessions[session_id].tasks[0]["status"] == "interrupted"


@pytest.mark.gen_test
async def test_socket_records_frames_and_signals_user_speech(emulator, api, open_socket):
    token, session_id = await started_session(api)
    connection = await open_socket(session_id, token)
    for _ in range(3):
        await connection.write_message(b"\x12\x04audio", binary=True)
    await connection.write_message("text frame")
    assert await read_json(connection) == {"event_type": "user_start"}
    assert await read_json(connection) == {"event_type": "user_stop"}
    assert emulator.sessions[session_id].ws_received == [(True, b"\x12\x04audio")] * 3 + [(False, "text frame")]
    await emulator.user_says(session_id, "What time is it?")
    said = [await read_json(connection), await read_json(connection)]
    assert [e["type"] for e in said] == ["user_talking_message", "user_talking_message"]
    assert "".join(e["message"] for e in said) == "What time is it?"
    assert (await read_json(connection))["type"] == "user_end_message"


@pytest.mark.gen_test
async def test_handshake_rejected_with_wrong_token(emulator, api, open_socket):
    _, session_id = await new_token_session(api)
    other_token, _ = await new_token_session(api)
    with pytest.raises(HTTPClientError) as rejected:
        await open_socket(session_id, other_token)
    assert rejected.value.code == 401
    assert json.loads(rejected.value.response.body) == {"code": 400112, "message": "Unauthorized"}
    assert len(emulator.recorder.calls("/v1/ws/streaming.chat", "GET")) == 1


@pytest.mark.gen_test
async def test_stop_closes_sockets(emulator, api, open_socket):
    token, session_id = await started_session(api)
    connections = [await open_socket(session_id, token), await open_socket(session_id, token)]
    assert await api("/v1/streaming.stop", {"session_id": session_id}) == (
        200, {"code": 100, "message": "success", "data": {"status": "success"}})
    for connection in connections:
        assert await asyncio.wait_for(connection.read_message(), 1) is None
        assert connection.close_code == 1000
    assert emulator.sessions[session_id].closed_reason == "stopped"
    assert (await api("/v1/streaming.stop", {"session_id": session_id}))[1]["code"] == 400004
    assert emulator.active_sessions() == []


@pytest.mark.gen_test
async def test_idle_session_is_closed(emulator, api, open_socket):
    emulator.idle_timeout = 0.1
    token, session_id = await started_session(api)
    connection = await open_socket(session_id, token)
    assert await asyncio.wait_for(connection.read_message(), 1) is None
    assert connection.close_code == 1000
    assert emulator.sessions[session_id].closed_reason == "idle_timeout"
