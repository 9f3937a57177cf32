"""LiveAvatar sessions through the gateway, against the LiveAvatar emulator and the Petya reference."""
import asyncio

import pytest

from handlers.app import Gateway
from sandbox.liveavatar import DEFAULT_AVATAR_ID, sandbox_reply
from tests.helpers.client import GatewayClient, eventually
from tests.helpers.flows import assert_error, bearer, minted, open_session
from tests.helpers.rooms import LiveAvatarRoom


@pytest.mark.parametrize("prefix", ["", "/api/v1/avatar"])
@pytest.mark.gen_test(timeout=30)
async def test_whole_liveavatar_flow_delivers_the_merged_transcript_once(sandbox, client, prefix):
    sandbox.liveavatar.seconds_per_word = 0.05  # quick speeches in the room
    sandbox.petya.update_account_config(client.api_key, knowledgeBaseId="3f1c2a9e-7c1b-4b8e-9d2a-0a1b2c3d4e5f",
                                        voiceId="6a1c2a9e-7c1b-4b8e-9d2a-0a1b2c3d4e5f")
    session_id, token = await minted(client, prefix=prefix)
    emulated = sandbox.liveavatar.sessions[session_id]
    # The customer's config went to LiveAvatar with our key; the browser got our token, not LiveAvatar's.
    assert emulated.body == {"mode": "FULL", "avatar_id": DEFAULT_AVATAR_ID, "avatar_persona": {
        "voice_id": "6a1c2a9e-7c1b-4b8e-9d2a-0a1b2c3d4e5f", "context_id": "3f1c2a9e-7c1b-4b8e-9d2a-0a1b2c3d4e5f",
        "language": "en"}}
    assert token.count(".") == 2 and token != emulated.token and emulated.token not in token
    upstream = sandbox.liveavatar.recorder.calls("/v1/sessions/token")[-1]
    assert upstream.headers["x-api-key"] == sandbox.liveavatar.api_key

    # As LiveAvatar's web SDK does it: Bearer token, no body.
    start = await client.call(prefix + "/v1/sessions/start", api_key=None, headers=bearer(token))
    assert start.status == 201, start.json
    assert start.json["code"] == 1000
    assert start.data["session_id"] == session_id and start.data["livekit_client_token"]
    assert start.data["livekit_url"] == sandbox.rooms.url  # the sandbox's room server, ws://127.0.0.1:<port>
    assert start.data["intro"] == "Hello and welcome. How can I help you today?"
    assert "livekit_agent_token" not in start.data
    assert sandbox.liveavatar.recorder.calls("/v1/sessions/start")[-1].headers["authorization"] == \
        f"Bearer {emulated.token}"

    # In the room, as the plugin does it (spec §3): the avatar speaks the intro (LiveAvatar records it) and the client
    # also reports it: counted once. Then the user's message and the avatar's reply, in the room.
    room = await LiveAvatarRoom().connect(start.data["livekit_url"], start.data["livekit_client_token"])
    try:
        intro = start.data["intro"]
        await room.command("avatar.speak_text", text=intro)
        await eventually(lambda: ("avatar.transcription", intro) in room.types(), timeout=10)
        assert (await client.call(prefix + "/v1/streaming.avatar_message",
                                  {"session_id": session_id, "text": intro})).status == 200
        await room.command("avatar.speak_response", text="Do you ship to Spain?")
        reply = sandbox_reply("Do you ship to Spain?")
        await eventually(lambda: ("avatar.speak_ended", None) in room.types()[-1:] and len(
            room.types("avatar.transcription")) == 2, timeout=10)
        assert room.types("user.transcription", "avatar.transcription") == [
            ("avatar.transcription", intro), ("user.transcription", "Do you ship to Spain?"),
            ("avatar.transcription", reply)]
        # A turn only the client saw (LiveAvatar missed it) is kept too.
        assert (await client.call(prefix + "/v1/streaming.user_message",
                                  {"session_id": session_id, "text": "Great, thanks!"})).status == 200
        keep = await client.call(prefix + "/v1/sessions/keep-alive", api_key=None, headers=bearer(token))
        assert keep.status == 200 and keep.json["code"] == 1000

        stop = await client.call(prefix + "/v1/sessions/stop", {"session_id": session_id})
        assert stop.status == 200 and stop.json["code"] == 1000
        await eventually(lambda: room.types("session.stopped"))
        assert room.events[-1][1]["stop_reason"] == "USER_CLOSED"
    finally:
        await room.room.disconnect()
    assert emulated.status == "stopped" and emulated.stop_reason == "USER_CLOSED"
    await eventually(lambda: sandbox.petya.deliveries("la-conv-1"))
    conversation = sandbox.petya.get_conversation("la-conv-1")
    assert conversation["sessionId"] == session_id
    assert [(t["role"], t["transcript"]) for t in conversation["transcript"]] == [
        ("avatar", intro), ("user", "Do you ship to Spain?"), ("avatar", reply), ("user", "Great, thanks!")]
    await sandbox.gateway.lifecycle.sweep()
    assert len(sandbox.petya.deliveries("la-conv-1")) == 1


@pytest.mark.gen_test(timeout=30)
async def test_transcript_pages_are_all_read(make_sandbox):
    sandbox = await make_sandbox()
    sandbox.liveavatar.transcript_page_size = 2
    client = GatewayClient(sandbox.gateway_url)
    session_id, token = await minted(client)
    await client.call("/v1/sessions/start", api_key=None, headers=bearer(token))
    for i in range(7):
        sandbox.liveavatar.avatar_says(session_id, f"sentence {i}", at=1_800_000_000 + i // 2)
    await client.call("/v1/sessions/stop", api_key=None, headers=bearer(token))  # SDK style: no body
    await eventually(lambda: sandbox.petya.deliveries("la-conv-1"))
    transcript = sandbox.petya.get_conversation("la-conv-1")["transcript"]
    assert [t["transcript"] for t in transcript] == [f"sentence {i}" for i in range(7)]
    assert len(sandbox.liveavatar.recorder.calls("/transcript")) >= 4


@pytest.mark.gen_test(timeout=30)
async def test_transcript_endpoint_failing_flushes_what_was_reported_and_records_why(sandbox, client):
    session_id, token = await minted(client)
    await client.call("/v1/sessions/start", api_key=None, headers=bearer(token))
    await client.call("/v1/streaming.avatar_message", {"session_id": session_id, "text": "Hello from the client"})
    sandbox.liveavatar.transcript_fail_status = 503
    await client.call("/v1/sessions/stop", {"session_id": session_id})
    await eventually(lambda: sandbox.petya.deliveries("la-conv-1"))
    assert [t["transcript"] for t in sandbox.petya.get_conversation("la-conv-1")["transcript"]] == \
        ["Hello from the client"]
    record = await sandbox.gateway.sessions.get(session_id)
    assert "transcript unavailable" in record.transcript_note and "503" in record.transcript_note


@pytest.mark.gen_test
async def test_foreign_customer_stop_is_404_and_upstream_untouched(sandbox, client):
    session_id, _ = await minted(client)
    sandbox.petya.create_account("other-key", liveAvatar={"avatarId": DEFAULT_AVATAR_ID})
    other = GatewayClient(sandbox.gateway_url, "other-key")
    before = len(sandbox.liveavatar.recorder.requests)
    assert_error(await other.call("/v1/sessions/stop", {"session_id": session_id}), 404, "session")
    assert_error(await other.call("/v1/sessions/keep-alive", {"session_id": session_id}), 404, "session")
    assert_error(await other.call("/v1/streaming.avatar_message", {"session_id": session_id, "text": "x"}), 404)
    other_token = (await other.call("/v1/sessions/token", {})).data["session_token"]
    assert_error(await other.call("/v1/sessions/stop", {"session_id": session_id}, api_key=None,
                                  headers=bearer(other_token)), 404)
    assert len(sandbox.liveavatar.recorder.requests) == before + 1  # only the other customer's own token call
    assert sandbox.liveavatar.sessions[session_id].status == "minted"


@pytest.mark.gen_test
async def test_start_needs_a_token_the_gateway_issued(sandbox, client):
    session_id, _ = await minted(client)
    upstream_token = sandbox.liveavatar.sessions[session_id].token
    assert_error(await client.call("/v1/sessions/start", api_key=None, headers=bearer("ilgt_forged")), 401)
    # LiveAvatar's own token is no key to the gateway, and neither is the API key (start is Bearer-only).
    assert_error(await client.call("/v1/sessions/start", api_key=None, headers=bearer(upstream_token)), 401)
    assert_error(await client.call("/v1/sessions/start"), 401, "Bearer")
    assert not sandbox.liveavatar.recorder.calls("/v1/sessions/start")


@pytest.mark.gen_test
async def test_liveavatar_errors_pass_through(sandbox, client):
    sandbox.liveavatar.known_contexts = {"11111111-1111-4111-8111-111111111111"}
    sandbox.petya.update_account_config(client.api_key, knowledgeBaseId="22222222-2222-4222-8222-222222222222")
    sandbox.gateway.petya.cache = type(sandbox.gateway.petya.cache)(0)
    reply = await client.call("/v1/sessions/token", {"conversation_id": "c"})
    assert reply.status == 400 and reply.json["code"] == 4000
    assert reply.json["data"][0]["message"] == "Context not found"
    sandbox.petya.update_account_config(client.api_key, knowledgeBaseId="not-a-uuid")
    reply = await client.call("/v1/sessions/token", {})
    assert reply.status == 422 and reply.json["detail"][0]["loc"][-1] == "context_id"
    sandbox.petya.update_account_config(client.api_key, knowledgeBaseId=None)
    _, token = await minted(client)
    assert (await client.call("/v1/sessions/start", api_key=None, headers=bearer(token))).status == 201
    double = await client.call("/v1/sessions/start", api_key=None, headers=bearer(token))
    assert double.status == 400 and double.json["message"] == "Session already started"
    assert_error(await client.call("/v1/sessions/token", raw=b"{nope"), 400, "JSON")
    assert_error(await client.call("/v1/sessions/stop", {}), 400, "session_id")


@pytest.mark.gen_test
async def test_liveavatar_unreachable_is_502_and_unconfigured_is_503(make_sandbox):
    sandbox = await make_sandbox()
    client = GatewayClient(sandbox.gateway_url)
    await sandbox.served["liveavatar"].stop()
    assert_error(await client.call("/v1/sessions/token", {}), 502, "LiveAvatar")
    await sandbox.restart_gateway(liveavatar_api_key="")
    assert_error(await client.call("/v1/sessions/token", {}), 503, "not configured")


@pytest.mark.gen_test
async def test_cors_for_the_credentialed_sdk(client):
    reply = await client.call("/v1/sessions/start", method="OPTIONS", api_key=None, headers={
        "Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert reply.status == 204
    assert reply.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
    assert reply.headers["Access-Control-Allow-Credentials"] == "true"


# --- the reaper -------------------------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_minted_but_never_started_session_is_reaped(make_sandbox):
    sandbox = await make_sandbox(SESSION_IDLE_TIMEOUT="1")
    client = GatewayClient(sandbox.gateway_url)
    session_id, _ = await minted(client)
    await asyncio.sleep(0.3)
    assert sandbox.liveavatar.sessions[session_id].status == "minted"
    await eventually(lambda: sandbox.liveavatar.sessions[session_id].status == "stopped", timeout=5)
    assert sandbox.liveavatar.sessions[session_id].stop_reason == "ZOMBIE_SESSION_REAP"
    await eventually(lambda: sandbox.petya.deliveries("la-conv-1"))

    async def delivered():  # Petya stores it before the gateway records that it did
        record = await sandbox.gateway.sessions.get(session_id)
        return record if record.flush_state == "delivered" else None
    record = await eventually(delivered)
    assert record.end_reason == "idle"


@pytest.mark.gen_test(timeout=30)
async def test_started_then_abandoned_liveavatar_session_is_reaped_keep_alive_keeps_it(make_sandbox):
    sandbox = await make_sandbox(SESSION_IDLE_TIMEOUT="1")
    client = GatewayClient(sandbox.gateway_url)
    kept, kept_token = await minted(client, "kept")
    abandoned, abandoned_token = await minted(client, "abandoned")
    for token in (kept_token, abandoned_token):
        assert (await client.call("/v1/sessions/start", api_key=None, headers=bearer(token))).status == 201
    for _ in range(8):  # the kept session's tab sends keep-alives; the other tab was closed
        await asyncio.sleep(0.25)
        await client.call("/v1/sessions/keep-alive", api_key=None, headers=bearer(kept_token))
    assert sandbox.liveavatar.sessions[abandoned].status == "stopped"
    assert sandbox.liveavatar.sessions[abandoned].stop_reason == "IDLE_TIMEOUT"
    assert sandbox.liveavatar.sessions[kept].status == "started"


@pytest.mark.gen_test(timeout=30)
async def test_abandoned_heygen_session_is_reaped(make_sandbox):
    sandbox = await make_sandbox(SESSION_IDLE_TIMEOUT="1")
    client = GatewayClient(sandbox.gateway_url)
    _, session = await open_session(client, conversation_id="hg-abandoned")
    session_id = session["session_id"]
    await client.call("/v1/streaming.start", {"session_id": session_id})  # then the tab closed: no socket, no calls
    await eventually(lambda: sandbox.heygen.sessions[session_id].status == "closed", timeout=5)
    await eventually(lambda: sandbox.petya.deliveries("hg-abandoned"))
    assert (await sandbox.gateway.sessions.get(session_id)).end_reason == "idle"


@pytest.mark.gen_test(timeout=30)
async def test_sessions_older_than_the_maximum_are_reaped(make_sandbox):
    sandbox = await make_sandbox(SESSION_MAX_AGE="1")
    client = GatewayClient(sandbox.gateway_url)
    session_id, token = await minted(client)
    await client.call("/v1/sessions/start", api_key=None, headers=bearer(token))
    for _ in range(8):
        await asyncio.sleep(0.25)
        await client.call("/v1/sessions/keep-alive", api_key=None, headers=bearer(token))
    assert sandbox.liveavatar.sessions[session_id].stop_reason == "MAX_DURATION_REACHED"


@pytest.mark.gen_test(timeout=30)
async def test_two_reapers_racing_over_one_session_stop_and_flush_once(make_sandbox):
    # Sweeps only when called: the periodic ones are made rare so the race is the two explicit sweeps below.
    sandbox = await make_sandbox(SESSION_IDLE_TIMEOUT="1", SWEEP_INTERVAL="3600")
    other = await Gateway.build(sandbox.settings).start()
    try:
        client = GatewayClient(sandbox.gateway_url)
        sessions = [await minted(client, f"race-{i}") for i in range(5)]
        await asyncio.sleep(1.2)
        await asyncio.gather(sandbox.gateway.lifecycle.sweep(), other.lifecycle.sweep(),
                             sandbox.gateway.lifecycle.sweep())
        for i in range(len(sessions)):
            await eventually(lambda: sandbox.petya.deliveries(f"race-{i}"))
        await asyncio.sleep(0.3)
        stops = sandbox.liveavatar.recorder.calls("/v1/sessions/stop")
        assert sorted(s.json()["session_id"] for s in stops) == sorted(s for s, _ in sessions)
        for i in range(5):
            assert len(sandbox.petya.deliveries(f"race-{i}")) == 1
    finally:
        await other.stop()
