"""The LiveAvatar emulator's FULL mode in a room of the sandbox's room server: the official Python `livekit` rtc SDK
joins with the `livekit_client_token` that /v1/sessions/start answers, publishes agent-control commands as the web SDK
does (`{event_id, event_type, text}`) and receives the agent-response events; the server-side transcript is what was
said in the room. Real HTTP, real sockets, real WebRTC on loopback."""
import asyncio
import json

import pytest
from livekit import rtc

from sandbox.liveavatar import DEFAULT_AVATAR_ID, LiveAvatarEmulator, sandbox_reply
from sandbox.livekit import RoomServer
from tests.helpers.rooms import LiveAvatarRoom, until

API_KEY = "test-liveavatar-key"
WORD = 0.05  # seconds per word: quick speeches


@pytest.fixture
def server(io_loop):
    server = RoomServer().listen()
    yield server
    io_loop.run_sync(server.close)


@pytest.fixture
def emulator(server):
    emulator = LiveAvatarEmulator(api_key=API_KEY, rooms=server, seconds_per_word=WORD)
    yield emulator
    emulator.stop()


@pytest.fixture
def app(emulator):
    return emulator.make_app()


@pytest.fixture
def call(http_client, base_url):
    async def call(path, body=None, headers=None, method="POST"):
        response = await http_client.fetch(base_url + path, method=method, headers=headers or {},
                                           body=None if method == "GET" else json.dumps(body or {}),
                                           raise_error=False)
        return response.code, json.loads(response.body)
    return call


@pytest.fixture
def started(call):
    async def started(mode="FULL"):
        body = {"mode": mode, "avatar_id": DEFAULT_AVATAR_ID}
        if mode == "FULL":
            body["avatar_persona"] = {"language": "en"}
        code, minted = await call("/v1/sessions/token", body, {"X-API-KEY": API_KEY})
        assert code == 200, minted
        token = minted["data"]["session_token"]
        code, reply = await call("/v1/sessions/start", headers={"Authorization": f"Bearer {token}"})
        assert code == 201, reply
        return token, reply["data"]
    return started


@pytest.mark.gen_test(timeout=60)
async def test_full_mode_room_obeys_agent_control_and_answers_on_agent_response(emulator, server, started, call):
    token, data = await started()
    session_id = data["session_id"]
    assert data["livekit_url"] == server.url and server.url.startswith("ws://127.0.0.1:")
    assert server.verify(data["livekit_client_token"]) and server.verify(data["livekit_agent_token"])
    room = server.rooms[session_id]
    assert sorted(room.participants) == sorted(["heygen", f"liveavatar-agent-{session_id}"])

    client = LiveAvatarRoom()
    await client.room.connect(data["livekit_url"], data["livekit_client_token"])
    remote = client.room.remote_participants
    assert {p.identity for p in remote.values()} == {"heygen", f"liveavatar-agent-{session_id}"}
    kinds = sorted(pub.kind for pub in remote["heygen"].track_publications.values())
    assert kinds == sorted([rtc.TrackKind.KIND_VIDEO, rtc.TrackKind.KIND_AUDIO])

    # repeat: the avatar says the text, word by word
    repeat_id = await client.command("avatar.speak_text", text="Hello there, welcome")
    await until(lambda: ("avatar.speak_ended", None) in client.types(), what="the repeat's speak_ended")
    assert client.types() == [("avatar.speak_started", None), ("avatar.transcription.chunk", "Hello"),
                              ("avatar.transcription.chunk", "there,"), ("avatar.transcription.chunk", "welcome"),
                              ("avatar.transcription", "Hello there, welcome"), ("avatar.speak_ended", None)]
    assert all(sender == f"liveavatar-agent-{session_id}" and event["source_event_id"] == repeat_id
               and event["session_id"] == session_id for sender, event in client.events)
    assert len({event["event_id"] for _, event in client.events}) == len(client.events)  # each its own id

    # message: the user's turn, then the avatar's (sandbox) reply
    await client.command("avatar.speak_response", text="Do you ship to Spain?")
    reply = sandbox_reply("Do you ship to Spain?")
    await until(lambda: ("avatar.transcription", reply) in client.types(), what="the reply's transcription")
    assert client.types("user.transcription", "avatar.transcription") == [
        ("avatar.transcription", "Hello there, welcome"), ("user.transcription", "Do you ship to Spain?"),
        ("avatar.transcription", reply)]

    # interrupt: the speech under way stops; its transcription holds what was said
    await client.command("avatar.speak_text", text="one two three four five six seven eight nine ten " * 3)
    await client.command("avatar.speak_text", text="queued and dropped")
    await until(lambda: len(client.types("avatar.transcription.chunk")) >= 3 + len(reply.split()) + 2,
                what="a few words of the long speech")
    await client.command("avatar.interrupt")
    await until(lambda: client.types()[-1] == ("avatar.speak_ended", None), what="the interrupted speak_ended")
    interrupted = client.types("avatar.transcription")[-1][1]
    assert interrupted.startswith("one two") and len(interrupted.split()) < 30
    await client.command("avatar.start_listening")
    await until(lambda: emulator.sessions[session_id].listening, what="listening")
    await client.command("avatar.stop_listening")
    await until(lambda: not emulator.sessions[session_id].listening, what="not listening")
    await asyncio.sleep(4 * WORD)
    assert "queued and dropped" not in [t for _, t in client.types("avatar.transcription")]

    # the server-side transcript is what was said in the room
    code, page = await call(f"/v1/sessions/{session_id}/transcript", headers={"X-API-KEY": API_KEY}, method="GET")
    assert code == 200
    assert [(e["role"], e["transcript"]) for e in page["data"]["transcript_data"]] == [
        ("avatar", "Hello there, welcome"), ("user", "Do you ship to Spain?"), ("avatar", reply),
        ("avatar", interrupted)]

    # stop: session.stopped with the reason, then the room closes
    code, _ = await call("/v1/sessions/stop", {"reason": "USER_CLOSED"}, {"Authorization": f"Bearer {token}"})
    assert code == 200
    await until(lambda: client.types("session.stopped"), what="session.stopped")
    stopped = client.events[-1][1]
    assert stopped["event_id"] and {k: v for k, v in stopped.items() if k != "event_id"} == {
        "event_type": "session.stopped", "session_id": session_id, "source_event_id": None,
        "stop_reason": "USER_CLOSED"}
    await until(lambda: client.room.connection_state == rtc.ConnectionState.CONN_DISCONNECTED,
                what="the client told to leave")
    await until(lambda: session_id not in server.rooms, what="the room closed")


@pytest.mark.gen_test(timeout=60)
async def test_stop_mid_speech_keeps_the_words_said_and_idle_stops_the_session(emulator, server, started, call):
    _, data = await started()
    session_id = data["session_id"]
    client = LiveAvatarRoom()
    await client.room.connect(data["livekit_url"], data["livekit_client_token"])
    await client.command("avatar.speak_text", text="alpha beta gamma delta epsilon zeta eta theta iota kappa " * 4)
    await until(lambda: len(client.types("avatar.transcription.chunk")) >= 3, what="three words")
    code, _ = await call("/v1/sessions/stop", {"session_id": session_id}, {"X-API-KEY": API_KEY})
    assert code == 200
    await until(lambda: client.types("session.stopped"), what="session.stopped")
    said = [t for _, t in client.types("avatar.transcription")]
    assert len(said) == 1 and said[0].startswith("alpha beta gamma")
    assert client.types()[-3:] == [("avatar.transcription", said[0]), ("avatar.speak_ended", None),
                                   ("session.stopped", None)]
    assert [e["transcript"] for e in emulator.sessions[session_id].transcript] == said
    await until(lambda: client.room.connection_state == rtc.ConnectionState.CONN_DISCONNECTED, what="room closed")

    # idle: a session nobody talks to ends with IDLE_TIMEOUT, told in the room
    emulator.idle_timeout = 0.5
    _, data = await started()
    idle = LiveAvatarRoom()
    await idle.room.connect(data["livekit_url"], data["livekit_client_token"])
    await until(lambda: idle.types("session.stopped"), timeout=10, what="session.stopped on idle")
    assert idle.events[-1][1]["stop_reason"] == "IDLE_TIMEOUT"
    assert emulator.sessions[data["session_id"]].end_reason == "IDLE_TIMEOUT"


@pytest.mark.gen_test(timeout=30)
async def test_without_a_room_server_the_emulator_answers_as_before():
    emulator = LiveAvatarEmulator(api_key=API_KEY)
    session = emulator.mint({"mode": "FULL", "avatar_id": DEFAULT_AVATAR_ID, "avatar_persona": {}})
    emulator.start(session)
    await emulator.open_room(session)
    assert emulator.room_url.startswith("wss://") and session.room is None
    assert session.livekit_client_token.count(".") == 2
    emulator.end(session, "USER_CLOSED")
    assert [(e["event_type"], e["session_id"], e["stop_reason"]) for e in session.events] == [
        ("session.stopped", session.session_id, "USER_CLOSED")]
    emulator.stop()


@pytest.mark.gen_test(timeout=30)
async def test_start_without_a_free_room_is_refused_and_ends_the_session(emulator, server, started, call):
    server.max_rooms = 1
    await started()
    body = {"mode": "FULL", "avatar_id": DEFAULT_AVATAR_ID, "avatar_persona": {}}
    code, minted = await call("/v1/sessions/token", body, {"X-API-KEY": API_KEY})
    token = minted["data"]["session_token"]
    code, reply = await call("/v1/sessions/start", headers={"Authorization": f"Bearer {token}"})
    assert code == 503 and reply["code"] == 5003
    session = emulator.sessions[minted["data"]["session_id"]]
    assert session.status == "stopped" and session.end_reason == "SERVER_ERROR" and session.room is None
