"""The HeyGen Streaming API emulator: REST envelopes and errors, spoken tasks and the streaming.chat socket."""
import asyncio
import json
from urllib.parse import urlencode

import pytest
import tornado.httpserver
import tornado.netutil
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


async def read_socket_quietly(connection, wait=0.15):
    """Every text frame the socket carries within `wait` seconds (it should carry no avatar events)."""
    frames = []
    try:
        while True:
            frames.append(json.loads(await asyncio.wait_for(connection.read_message(), wait)))
    except TimeoutError:
        return frames


def text_frame(text):
    """pipecat.Frame{text: TextFrame{text}} as HeyGen's SDK encodes it (Frame.text = 1, TextFrame.text = 3),
    encoded by hand for texts under 128 bytes."""
    inner = b"\x1a" + bytes([len(text.encode())]) + text.encode()
    return b"\x0a" + bytes([len(inner)]) + inner


@pytest.mark.gen_test
async def test_repeat_task_is_spoken_as_events(emulator, api, open_socket):
    """Standalone (no room server) the events go nowhere but session.events; never on the socket (real HeyGen v2
    sends them as LiveKit data, upstream-apis §0.1)."""
    token, session_id = await started_session(api)
    connection = await open_socket(session_id, token)
    text = "Hello there, I am  your avatar for today!"
    code, body = await api("/v1/streaming.task", {"session_id": session_id, "text": text, "task_type": "repeat"})
    assert code == 200
    task_id = body["data"]["task_id"]
    events = await emulator.wait_for_event(session_id, "avatar_stop_talking")
    assert [e["type"] for e in events[:2] + events[-2:]] == [
        "avatar_start_talking", "avatar_talking_message", "avatar_end_message", "avatar_stop_talking"]
    assert {e["task_id"] for e in events} == {task_id}
    chunks = [e["message"] for e in events if e["type"] == "avatar_talking_message"]
    assert len(chunks) == 3 and "".join(chunks) == text
    assert emulator.sessions[session_id].tasks[0]["status"] == "done"
    assert await read_socket_quietly(connection) == []
    assert emulator.sessions[session_id].room is None and emulator.sessions[session_id].participant is None


@pytest.mark.gen_test
async def test_interrupt_cuts_speech_short(emulator, api, open_socket):
    _, session_id = await started_session(api)
    emulator.chunk_delay = 0.05
    await api("/v1/streaming.task", {"session_id": session_id, "text": "one two three four five six seven"})
    await emulator.wait_for_event(session_id, "avatar_start_talking")
    interrupted = await api("/v1/streaming.interrupt", {"session_id": session_id})
    assert interrupted == (200, {"code": 100, "message": "success"})
    events = await emulator.wait_for_event(session_id, "avatar_stop_talking")
    await asyncio.sleep(0.2)
    assert events == emulator.sessions[session_id].events  # nothing after the cut
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
    assert emulator.sessions[session_id].tasks == []  # audio and text frames are no tasks
    await emulator.user_says(session_id, "What time is it?")
    said = emulator.sessions[session_id].events
    assert [e["type"] for e in said] == ["user_talking_message", "user_talking_message", "user_end_message"]
    assert "".join(e["message"] for e in said[:2]) == "What time is it?"
    assert await read_socket_quietly(connection) == []  # the user's words are LiveKit data, not socket frames


@pytest.mark.gen_test
async def test_socket_text_frame_is_a_talk_task(emulator, api, open_socket):
    token, session_id = await started_session(api)
    connection = await open_socket(session_id, token)
    await connection.write_message(text_frame("Where is my order?"), binary=True)
    events = await emulator.wait_for_event(session_id, "avatar_end_message")
    task = emulator.sessions[session_id].tasks[0]
    assert (task["text"], task["task_type"], task["task_mode"]) == ("Where is my order?", "talk", "async")
    spoken = "".join(e["message"] for e in events if e["type"] == "avatar_talking_message")
    assert spoken == 'You said "Where is my order?". I am the sandbox avatar.'
    assert await read_socket_quietly(connection) == []  # a text frame is no speech: no user_start


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


@pytest.mark.gen_test(timeout=60)
async def test_session_room_carries_the_avatar_and_its_events(io_loop, http_client, base_url):
    """With a room server, as upstream v2: new answers the room's url and a client token, start seats the avatar
    (`heygen`, video + audio), its events and the user's words arrive as LiveKit data with no topic, a JSON-string
    talk published by the client is answered, and stop closes the room. Seen by the official Python SDK."""
    from livekit import rtc

    from sandbox.livekit import RoomServer
    from tests.helpers.rooms import until

    rooms = RoomServer().listen()
    emulator = HeyGenEmulator(api_key=API_KEY, rooms=rooms, seconds_per_word=0.02)
    server = tornado.httpserver.HTTPServer(emulator.make_app())
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    client = rtc.Room()
    try:
        async def call(path, body):
            response = await http_client.fetch(url + path, method="POST", body=json.dumps(body),
                                               headers={"X-Api-Key": API_KEY, "Content-Type": "application/json"})
            return json.loads(response.body)["data"]

        info = await call("/v1/streaming.new", {"avatar_name": AVATAR, "version": "v2"})
        session_id = info["session_id"]
        assert info["url"] == rooms.url and session_id in rooms.rooms
        assert rooms.verify(info["access_token"]).video.room == session_id
        await call("/v1/streaming.start", {"session_id": session_id})
        assert set(rooms.rooms[session_id].participants) == {"heygen"}

        data, tracks = [], []
        client.on("data_received", lambda p: data.append((p.participant.identity, p.topic, json.loads(p.data))))
        client.on("track_subscribed", lambda track, pub, participant: tracks.append((participant.identity, track.kind)))
        await client.connect(info["url"], info["access_token"])
        await until(lambda: len(tracks) == 2, what="the avatar's video and audio")
        assert sorted(tracks) == [("heygen", rtc.TrackKind.KIND_AUDIO), ("heygen", rtc.TrackKind.KIND_VIDEO)]

        task = await call("/v1/streaming.task", {"session_id": session_id, "text": "Hello from the shop",
                                                 "task_type": "repeat"})
        await until(lambda: any(e["type"] == "avatar_stop_talking" for _, _, e in data), what="the repeat spoken")
        assert {(sender, topic) for sender, topic, _ in data} == {("heygen", "")}
        events = [e for _, _, e in data]
        assert [e["type"] for e in events] == ["avatar_start_talking"] + ["avatar_talking_message"] * 4 + [
            "avatar_end_message", "avatar_stop_talking"]
        assert {e["task_id"] for e in events} == {task["task_id"]}
        assert "".join(e["message"] for e in events[1:5]) == "Hello from the shop"
        assert events == emulator.sessions[session_id].events

        # The SDK's LiveKit transport publishes a talk as a JSON string: the avatar answers.
        data.clear()
        await client.local_participant.publish_data(json.dumps("Any news?").encode(), reliable=True)
        await until(lambda: any(e["type"] == "avatar_end_message" for _, _, e in data), what="the talk answered")
        assert "".join(e.get("message", "") for _, _, e in data) == 'You said "Any news?". I am the sandbox avatar.'
        assert emulator.sessions[session_id].tasks[-1]["task_type"] == "talk"

        await emulator.user_says(session_id, "Thanks a lot")
        await until(lambda: data[-1][2]["type"] == "user_end_message", what="the user's words")

        await call("/v1/streaming.stop", {"session_id": session_id})
        await until(lambda: session_id not in rooms.rooms and not client.remote_participants, what="room closed")
    finally:
        await client.disconnect()
        emulator.stop()
        server.stop()
        await rooms.close()
