"""The whole plugin flow against the HeyGen emulator and the Petya reference, over real HTTP and WebSockets."""
import asyncio
import json

import pytest
from livekit import rtc
from tornado.websocket import websocket_connect

from conftest import eventually
from sandbox.heygen import split_into_chunks

WS_PARAMS = "silence_response=false&opening_text=&stt_language=en&enable_tts=true&enable_stt=false"


def ws_url(sandbox, session_id, token, prefix=""):
    base = sandbox.gateway_url.replace("http://", "ws://")
    return f"{base}{prefix}/v1/ws/streaming.chat?session_id={session_id}&session_token={token}&{WS_PARAMS}"


async def read_events(ws, until_type, count=1, timeout=5):
    """Read JSON text frames until `count` frames of type `until_type` arrived; return all read."""
    import asyncio
    events, seen = [], 0
    while seen < count:
        message = await asyncio.wait_for(ws.read_message(), timeout)
        assert message is not None, "socket closed early"
        if isinstance(message, str):
            event = json.loads(message)
            events.append(event)
            if (event.get("type") or event.get("event_type")) == until_type:
                seen += 1
    return events


async def avatar_done(sandbox, session_id, tasks=None, timeout=10):
    """Wait until HeyGen's avatar has said (or been cut off in) the session's first `tasks` tasks (default: all
    it was given so far); returns the events it published.

    Real HeyGen v2 sends the avatar's events as LiveKit data in the session's room, not on the socket the gateway
    relays (upstream-apis §0.1), so a test waits on the emulator, not on the socket."""
    session = sandbox.heygen.sessions[session_id]
    tasks = len(session.tasks) if tasks is None else tasks
    await eventually(lambda: len(session.tasks) >= tasks and all(
        t["status"] in ("done", "interrupted") for t in session.tasks[:tasks]), timeout=timeout)
    return session.events


def spoken_text(events, task_id=None):
    """The avatar_talking_message chunks of `events` (of one task, if given), joined."""
    return "".join(e["message"] for e in events if e["type"] == "avatar_talking_message"
                   and (task_id is None or e["task_id"] == task_id))


async def socket_says(sandbox, session_id, text, kind="avatar", task_id="t-injected"):
    """Writes HeyGen's v1-style transcript events for `text` on the session's upstream socket (the gateway's
    transcript observer still reads them there). Real HeyGen v2 sends these as LiveKit data, never on the socket
    (upstream-apis §0.1): this only exercises the gateway's handling of such frames."""
    message_type, end_type = ("avatar_talking_message", "avatar_end_message") if kind == "avatar" else (
        "user_talking_message", "user_end_message")
    if kind == "avatar":
        await sandbox.heygen.send_on_socket(session_id, {"type": "avatar_start_talking", "task_id": task_id})
    for chunk in split_into_chunks(text):
        await sandbox.heygen.send_on_socket(session_id, {"type": message_type, "task_id": task_id, "message": chunk})
    await sandbox.heygen.send_on_socket(session_id, {"type": end_type, "task_id": task_id})


async def open_session(client, prefix="", conversation_id="conv-1"):
    token = await client.call(prefix + "/v1/streaming.create_token")
    assert token.status == 200, token.json
    new = await client.call(prefix + "/v1/streaming.new",
                            {"quality": "medium", "version": "v2", "conversation_id": conversation_id})
    assert new.status == 200, new.json
    return token.data["token"], new.data


async def connected(sandbox, client, **kwargs):
    """A new, started session with the browser's socket open: (session_id, token, socket)."""
    token, session = await open_session(client)
    ws = await websocket_connect(ws_url(sandbox, session["session_id"], token), **kwargs)
    await client.call("/v1/streaming.start", {"session_id": session["session_id"]})
    return session["session_id"], token, ws


@pytest.mark.parametrize("prefix", ["", "/api/v1/avatar"])
@pytest.mark.gen_test(timeout=30)
async def test_whole_plugin_flow_delivers_transcript_once(sandbox, client, prefix):
    token, session = await open_session(client, prefix)
    session_id = session["session_id"]
    # HeyGen's body comes back unchanged (the room server's url, a LiveKit token), plus the customer's intro.
    assert session["url"] == sandbox.rooms.url and sandbox.rooms.verify(session["access_token"]).video.room == \
        session_id
    assert session["intro"] == "Hello and welcome. How can I help you today?"
    # The token the browser holds is not HeyGen's, and HeyGen got the customer's avatar, not the key.
    assert token not in sandbox.heygen.tokens
    upstream_new = sandbox.heygen.recorder.calls("/v1/streaming.new")[-1]
    assert upstream_new.json()["avatar_id"] == "Katya_Chair_Sitting_public"
    assert "conversation_id" not in upstream_new.json()

    ws = await websocket_connect(ws_url(sandbox, session_id, token, prefix))
    start = await client.call(prefix + "/v1/streaming.start", {"session_id": session_id},
                              api_key=None, headers={"X-api-key": client.api_key})
    assert start.status == 200, start.json
    # The plugin joins the session's room with what streaming.new answered (the official Python SDK here).
    room, heard = rtc.Room(), []
    room.on("data_received", lambda p: heard.append((p.participant.identity, p.topic, json.loads(p.data))))
    await room.connect(session["url"], session["access_token"])

    intro = session["intro"]
    reply = "You said \"What can you do?\". I am the sandbox avatar."
    try:
        for number, (text, task_type) in enumerate(
                [(intro, "repeat"), ("What can you do?", "talk"), ("I can help with orders.", "repeat")], 1):
            task = await client.call(prefix + "/v1/streaming.task",
                                     {"session_id": session_id, "text": text, "task_type": task_type})
            assert task.status == 200, task.json
            task_id = task.data["task_id"]
            assert task_id
            await eventually(lambda: any(e["type"] == "avatar_stop_talking" and e["task_id"] == task_id
                                         for _, _, e in heard))
            said = spoken_text([e for _, _, e in heard], task_id)
            assert said == (text if task_type == "repeat" else reply)
            if task_type == "talk":
                # The avatar's answer travels in the room (LiveKit data): the gateway sees it only when the plugin,
                # which is in the room, reports it.
                report = await client.call(prefix + "/v1/streaming.avatar_message", {"session_id": session_id,
                                                                                     "text": said})
                assert report.status == 200, report.json
        assert {(sender, topic) for sender, topic, _ in heard} == {("heygen", "")}
        assert [e for _, _, e in heard] == sandbox.heygen.sessions[session_id].events
        # None of it came on the socket the gateway relays (HeyGen v2 sends only voice activity there).
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.read_message(), 0.1)
    finally:
        await room.disconnect()

    stop = await client.call(prefix + "/v1/streaming.stop", {"session_id": session_id})
    assert stop.status == 200, stop.json
    assert sandbox.heygen.sessions[session_id].status == "closed"

    deliveries = await eventually(lambda: sandbox.petya.deliveries("conv-1"))
    conversation = sandbox.petya.get_conversation("conv-1")
    assert conversation["sessionId"] == session_id and conversation["status"] == "completed"
    turns = [(t["role"], t["transcript"]) for t in conversation["transcript"]]
    assert turns == [
        ("avatar", intro),
        ("user", "What can you do?"),
        ("avatar", "You said \"What can you do?\". I am the sandbox avatar."),
        ("avatar", "I can help with orders."),
    ], turns
    for turn in conversation["transcript"]:
        assert turn["absolute_timestamp"] == turn["timestamp"] > 1.7e9
    times = [t["absolute_timestamp"] for t in conversation["transcript"]]
    assert times == sorted(times)
    ws.close()
    await sandbox.gateway.lifecycle.sweep()
    assert len(sandbox.petya.deliveries("conv-1")) == 1
    assert len(deliveries) == 1


@pytest.mark.gen_test(timeout=30)
async def test_transcript_route_shows_the_owner_the_merged_record(sandbox, client):
    from conftest import GatewayClient
    session_id, _, ws = await connected(sandbox, client)
    await client.call("/v1/streaming.task", {"session_id": session_id, "text": "Hi there.", "task_type": "repeat"})
    # The plugin saw the avatar say it in the room (LiveKit data, not the socket) and reports it.
    assert spoken_text(await avatar_done(sandbox, session_id)) == "Hi there."
    await client.call("/v1/streaming.avatar_message", {"session_id": session_id, "text": "Hi there."})
    path = f"/v1/streaming.transcript?session_id={session_id}"
    reply = await eventually(lambda: _two_sources(client, path))
    assert reply.data["status"] == "started" and reply.data["flush_state"] == "none"
    assert [(t["role"], t["transcript"], t["sources"]) for t in reply.data["transcript"]] == [
        ("avatar", "Hi there.", ["reported", "task"])]
    sandbox.petya.create_account("other-key")
    other = GatewayClient(sandbox.gateway_url, "other-key")
    assert (await other.call(path, method="GET")).status == 404
    assert (await client.call("/v1/streaming.transcript", method="GET")).status == 400
    assert (await client.call(path, method="GET", api_key=None)).status == 401
    ws.close()


async def _two_sources(client, path):
    reply = await client.call(path, method="GET")
    turns = (reply.data or {}).get("transcript") or []
    return reply if turns and len(turns[0]["sources"]) == 2 else None
