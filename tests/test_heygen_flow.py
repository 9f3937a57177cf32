"""The whole plugin flow against the HeyGen emulator and the Petya reference, over real HTTP and WebSockets."""
import json

import pytest
from tornado.websocket import websocket_connect

from conftest import eventually

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
    # HeyGen's body comes back unchanged, plus the customer's intro.
    assert session["url"].startswith("wss://") and session["access_token"]
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

    intro = session["intro"]
    for text, task_type in [(intro, "repeat"), ("What can you do?", "talk"), ("I can help with orders.", "repeat")]:
        task = await client.call(prefix + "/v1/streaming.task",
                                 {"session_id": session_id, "text": text, "task_type": task_type})
        assert task.status == 200, task.json
        assert task.data["task_id"]
        events = await read_events(ws, "avatar_end_message")
        spoken = "".join(e["message"] for e in events if e.get("type") == "avatar_talking_message")
        assert spoken.strip()

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
    await read_events(ws, "avatar_end_message")
    path = f"/v1/streaming.transcript?session_id={session_id}"
    reply = await eventually(lambda: _two_sources(client, path))
    assert reply.data["status"] == "started" and reply.data["flush_state"] == "none"
    assert [(t["role"], t["transcript"], t["sources"]) for t in reply.data["transcript"]] == [
        ("avatar", "Hi there.", ["socket", "task"])]
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
