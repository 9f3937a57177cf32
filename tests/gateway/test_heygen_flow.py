"""The whole plugin flow against the HeyGen emulator and the Petya reference, over real HTTP and WebSockets."""
import asyncio
import json

import pytest
from livekit import rtc
from tornado.websocket import websocket_connect

from tests.helpers.client import GatewayClient, eventually
from tests.helpers.flows import avatar_done, connected, open_session, spoken_text, ws_url


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
        for text, task_type in [(intro, "repeat"), ("What can you do?", "talk"), ("I can help with orders.", "repeat")]:
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
    session_id, _, ws = await connected(sandbox, client)
    await client.call("/v1/streaming.task", {"session_id": session_id, "text": "Hi there.", "task_type": "repeat"})
    # The plugin saw the avatar say it in the room (LiveKit data, not the socket) and reports it.
    assert spoken_text(await avatar_done(sandbox, session_id)) == "Hi there."
    await client.call("/v1/streaming.avatar_message", {"session_id": session_id, "text": "Hi there."})
    path = f"/v1/streaming.transcript?session_id={session_id}"
    reply = await eventually(lambda: _two_sources(client, path))
    assert reply.data["status"] == "started" and reply.data["flush_state"] == "none"
    # the gateway's room agent heard it in HeyGen's room too: one utterance, three paths
    assert [(t["role"], t["transcript"], t["sources"]) for t in reply.data["transcript"]] == [
        ("avatar", "Hi there.", ["reported", "room", "task"])]
    sandbox.petya.create_account("other-key")
    other = GatewayClient(sandbox.gateway_url, "other-key")
    assert (await other.call(path, method="GET")).status == 404
    assert (await client.call("/v1/streaming.transcript", method="GET")).status == 400
    assert (await client.call(path, method="GET", api_key=None)).status == 401
    ws.close()


async def _two_sources(client, path):
    reply = await client.call(path, method="GET")
    turns = (reply.data or {}).get("transcript") or []
    return reply if turns and len(turns[0]["sources"]) == 3 else None
