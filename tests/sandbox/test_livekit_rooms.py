"""The sandbox's LiveKit room server (sandbox/livekit/) with the official Python `livekit` rtc SDK (Rust core,
pinned in setup.py): real sockets, real WebRTC on loopback, nothing of ours mocked."""
import asyncio
import json
import time

import pytest
from livekit import rtc
from tornado.httpclient import AsyncHTTPClient

from sandbox.avatar import Avatar
from sandbox.livekit import RoomFull, RoomServer
from tests.helpers.rooms import SdkRoom, first_video_frames, until


@pytest.fixture
def server(io_loop):
    server = RoomServer().listen()
    yield server
    io_loop.run_sync(server.close)


@pytest.mark.gen_test(timeout=60)
async def test_python_sdk_exchanges_data_with_a_server_participant(server):
    room = server.room("session-1")
    heard, joined, left = [], [], []
    room.on_participant_joined = lambda p: joined.append(p.identity)
    room.on_participant_left = lambda p: left.append(p.identity)
    agent = await room.add_server_participant("liveavatar-agent-s1", name="Agent", on_data=heard.append)

    client = await SdkRoom().connect(server, "session-1", "plugin")
    assert {p.identity for p in client.room.remote_participants.values()} == {"liveavatar-agent-s1"}
    assert client.room.name == "session-1"
    assert "plugin" in room.participants and joined == ["liveavatar-agent-s1", "plugin"]

    # server participant -> client, on a topic, reliable and lossy
    agent.publish_data(json.dumps({"event_type": "avatar.speak_started"}), topic="agent-response")
    agent.publish_data(b"lossy-bytes", topic="agent-response", reliable=False)
    await until(lambda: len(client.data) == 2, what="both packets at the client")
    by_payload = {payload: (sender, topic, kind) for sender, topic, payload, kind in client.data}
    assert by_payload[b'{"event_type": "avatar.speak_started"}'] == (
        "liveavatar-agent-s1", "agent-response", rtc.DataPacketKind.KIND_RELIABLE)
    assert by_payload[b"lossy-bytes"] == ("liveavatar-agent-s1", "agent-response", rtc.DataPacketKind.KIND_LOSSY)

    # client -> server participant, on a topic
    command = json.dumps({"event_type": "avatar.speak_text", "text": "Hello"}).encode()
    await client.room.local_participant.publish_data(command, topic="agent-control", reliable=True)
    await until(lambda: heard, what="the client's packet at the server participant")
    assert heard[0].identity == "plugin" and heard[0].topic == "agent-control" and heard[0].payload == command
    assert heard[0].reliable and heard[0].packet.participant_sid == room.participants["plugin"].sid

    # a server participant joins and leaves: announced to the client
    late = await room.add_server_participant("late", name="Late")
    await until(lambda: client.joined == ["late"], what="participant_connected for 'late'")
    await late.leave()
    await until(lambda: client.left == ["late"], what="participant_disconnected for 'late'")

    # the client leaves: the room's hook hears it, the server participant stays
    await client.room.disconnect()
    await room.wait_for(lambda r: "plugin" not in r.participants)
    assert left == ["late", "plugin"] and list(room.participants) == ["liveavatar-agent-s1"]


@pytest.mark.gen_test(timeout=60)
async def test_data_between_two_sdk_clients_honours_destination_identities(server):
    room = server.room("session-2")
    heard = []
    agent = await room.add_server_participant("heygen", on_data=heard.append)
    alice = await SdkRoom().connect(server, "session-2", "alice")
    bob = await SdkRoom().connect(server, "session-2", "bob")
    await until(lambda: alice.joined == ["bob"], what="alice sees bob join")
    assert {p.identity for p in bob.room.remote_participants.values()} == {"heygen", "alice"}

    await alice.room.local_participant.publish_data(b"to bob only", topic="t", destination_identities=["bob"])
    await alice.room.local_participant.publish_data(b"to everyone", topic="t")
    agent.publish_data(b"heygen to alice", topic="t", destination_identities=["alice"])
    await until(lambda: len(bob.data) == 2 and len(heard) == 1 and len(alice.data) == 1, what="all deliveries")
    assert sorted(p for _, _, p, _ in bob.data) == [b"to bob only", b"to everyone"]
    assert all(sender == "alice" for sender, _, _, _ in bob.data)
    assert heard[0].payload == b"to everyone"
    assert alice.data[0][:3] == ("heygen", "t", b"heygen to alice")
    await asyncio.sleep(0.3)  # nothing else arrives late
    assert len(bob.data) == 2 and len(heard) == 1 and len(alice.data) == 1

    await bob.room.disconnect()
    await until(lambda: alice.left == ["bob"], what="alice sees bob leave")
    await room.close()  # the room closing disconnects alice
    await until(lambda: alice.room.connection_state == rtc.ConnectionState.CONN_DISCONNECTED,
                what="alice disconnected by the room closing")
    assert "session-2" not in server.rooms


@pytest.mark.parametrize("avatar_first", [True, False], ids=["avatar-first", "avatar-later"])
@pytest.mark.gen_test(timeout=60)
async def test_python_sdk_receives_the_avatars_video_and_audio(server, avatar_first):
    """One peer connection: the server asks for receive-only sections (MediaSectionsRequirement), the client offers
    them, the answer carries the avatar's tracks (mid_to_track_id names their sids)."""
    room = server.room("session-3")
    avatar = Avatar()
    if avatar_first:
        await avatar.join(room)
    client = SdkRoom()
    subscribed = []
    client.room.on("track_subscribed", lambda track, publication, participant: subscribed.append(
        (participant.identity, track)))
    await client.connect(server, "session-3", "viewer")
    if not avatar_first:
        await avatar.join(room)
    await until(lambda: len(subscribed) == 2, what="the avatar's two tracks subscribed")
    heygen = client.room.remote_participants["heygen"]
    video = next(pub for pub in heygen.track_publications.values() if pub.kind == rtc.TrackKind.KIND_VIDEO)
    assert (video.width, video.height, video.mime_type) == (320, 240, "video/VP8")
    assert sorted(track.kind for _, track in subscribed) == sorted([rtc.TrackKind.KIND_VIDEO,
                                                                    rtc.TrackKind.KIND_AUDIO])
    track = next(track for _, track in subscribed if track.kind == rtc.TrackKind.KIND_VIDEO)
    assert track.sid == video.sid
    frames = await asyncio.wait_for(first_video_frames(track, 3), 10)  # quiet: 5 fps
    assert (frames[0].width, frames[0].height) == (320, 240)
    speech = asyncio.ensure_future(avatar.speak("one two three four five six seven eight nine ten"))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await asyncio.wait_for(first_video_frames(track, 15), 10)
    assert time.monotonic() - started < 1.6  # speaking: 15 fps
    avatar.interrupt()
    await speech
    await client.room.disconnect()


@pytest.mark.gen_test(timeout=30)
async def test_tokens_are_checked(server):
    room = server.room("session-4")
    other = RoomServer(api_secret="another-secret-at-least-32-bytes-long")  # PyJWT warns below 32
    with pytest.raises(rtc.ConnectError):
        await rtc.Room().connect(server.url, other.token("session-4", "intruder"))
    assert list(room.participants) == []
    http = AsyncHTTPClient()
    base = server.url.replace("ws://", "http://")
    bad = await http.fetch(f"{base}/rtc/validate?access_token=nonsense", raise_error=False)
    good = await http.fetch(f"{base}/rtc/validate?access_token={server.token('session-4', 'x')}", raise_error=False)
    assert (bad.code, good.code) == (401, 200)


@pytest.mark.gen_test(timeout=30)
async def test_room_limits_and_duplicate_identities(io_loop):
    server = RoomServer(max_rooms=1, max_participants=2).listen()
    try:
        room = server.room("only")
        with pytest.raises(RoomFull):
            server.room("second")  # RoomFull: one room at most
        await room.add_server_participant("heygen")
        first = await SdkRoom().connect(server, "only", "user")
        second = await SdkRoom().connect(server, "only", "user")  # the same identity replaces the first
        await until(lambda: first.room.connection_state == rtc.ConnectionState.CONN_DISCONNECTED,
                    what="the older 'user' disconnected")
        assert room.participants["user"].sid == second.room.local_participant.sid
        with pytest.raises(rtc.ConnectError):
            await rtc.Room().connect(server.url, server.token("only", "third"))  # 429: the room is full
        http = AsyncHTTPClient()
        base = server.url.replace("ws://", "http://")
        full = await http.fetch(f"{base}/rtc/validate?access_token={server.token('only', 'third')}", raise_error=False)
        assert full.code == 429 and sorted(room.participants) == ["heygen", "user"]
        await second.room.disconnect()
    finally:
        await server.close()


@pytest.mark.gen_test(timeout=30)
async def test_avatar_speech_takes_time_per_word_and_can_be_interrupted():
    avatar = Avatar(seconds_per_word=0.05)
    words = []
    started = time.monotonic()
    assert await avatar.speak("one two three four", on_word=lambda i, w: words.append(w)) is True
    assert 0.2 <= time.monotonic() - started < 0.5 and words == ["one", "two", "three", "four"]
    assert not avatar.is_speaking and avatar.caption == "one two three four"
    long = asyncio.ensure_future(avatar.speak("a " * 100))
    after = asyncio.ensure_future(avatar.speak("after"))  # queued behind the long one
    await asyncio.sleep(0.12)
    assert avatar.is_speaking and avatar.mouth() >= 0
    avatar.interrupt()
    assert await long is False and await after is True and avatar.caption == "after"


@pytest.mark.gen_test(timeout=60)
async def test_python_sdk_rejoins_after_its_signal_socket_drops(server):
    """Resume is refused (told to reconnect): the Rust SDK restarts and joins as a new participant."""
    room = server.room("session-5")
    agent = await room.add_server_participant("heygen")
    client = await SdkRoom().connect(server, "session-5", "plugin")
    reconnected = []
    client.room.on("reconnected", lambda: reconnected.append(True))
    old_sid = room.participants["plugin"].sid
    room.participants["plugin"].handler.close()
    await until(lambda: reconnected, timeout=20, what="the SDK's reconnected event")
    assert room.participants["plugin"].sid != old_sid
    agent.publish_data(b"after the drop", topic="agent-response")
    await until(lambda: any(payload == b"after the drop" for _, _, payload, _ in client.data), what="data again")
    await client.room.disconnect()
