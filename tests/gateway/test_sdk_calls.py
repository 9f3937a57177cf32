"""What the official SDKs call beyond the plugin's routes, and CORS on every answer a browser can get."""
import asyncio

import pytest

from tests.helpers.client import GatewayClient, eventually
from tests.helpers.flows import assert_error, bearer, minted, open_session

ALLOWED = "https://shop.example.com"


async def started(client):
    token, session = await open_session(client)
    session_id = session["session_id"]
    assert (await client.call("/v1/streaming.start", {"session_id": session_id})).status == 200
    return token, session_id


@pytest.mark.parametrize("call", ["start_listening", "stop_listening"])
@pytest.mark.gen_test(timeout=30)
async def test_listening_calls_are_forwarded_for_the_sessions_owner_only(sandbox, client, call):
    token, session_id = await started(client)
    # As HeyGen's SDK sends them: its session token as Bearer, {session_id}.
    reply = await client.call(f"/api/v1/avatar/v1/streaming.{call}", {"session_id": session_id}, api_key=None,
                              headers={**bearer(token), "Origin": ALLOWED})
    assert reply.status == 200 and reply.json["code"] == 100
    assert reply.headers["Access-Control-Allow-Origin"] == ALLOWED
    upstream = sandbox.heygen.recorder.calls(f"/v1/streaming.{call}")
    assert len(upstream) == 1 and upstream[0].json() == {"session_id": session_id}
    assert upstream[0].headers["x-api-key"] == sandbox.heygen.api_key
    sandbox.petya.create_account("someone-else")
    other = await GatewayClient(sandbox.gateway_url, "someone-else").call(f"/v1/streaming.{call}",
                                                                          {"session_id": session_id})
    assert_error(other, 404)
    assert len(sandbox.heygen.recorder.calls(f"/v1/streaming.{call}")) == 1


@pytest.mark.gen_test(timeout=30)
async def test_an_unlisted_heygen_session_call_is_forwarded_after_the_ownership_check(sandbox, client):
    _, session_id = await started(client)
    reply = await client.call("/v1/streaming.future_call", {"session_id": session_id, "flag": True})
    # HeyGen's own answer for a call it does not know passes through; it was asked with our key, for this session.
    forwarded = sandbox.heygen.recorder.calls("/v1/streaming.future_call")
    assert len(forwarded) == 1 and forwarded[0].json() == {"session_id": session_id, "flag": True}
    assert_error(reply, 404)
    assert_error(await client.call("/v1/streaming.future_call", {"session_id": "not-mine"}), 404)
    assert_error(await client.call("/v1/streaming.future_call", {}), 400, "session_id")
    assert len(sandbox.heygen.recorder.calls("/v1/streaming.future_call")) == 1
    # streaming.list is account-wide: never forwarded.
    assert_error(await client.call("/v1/streaming.list", {"session_id": session_id}), 404)
    assert sandbox.heygen.recorder.calls("/v1/streaming.list") == []


@pytest.mark.gen_test(timeout=30)
async def test_every_answer_carries_cors_headers_for_an_allowed_origin(make_sandbox):
    sandbox = await make_sandbox(MAX_BODY_SIZE="1024")
    client = GatewayClient(sandbox.gateway_url)
    origin = {"Origin": ALLOWED}
    preflight = await client.call("/v1/no.such.route", method="OPTIONS", api_key=None, headers={
        **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status == 204  # so the browser goes on and shows the real 404 below
    answers = [preflight,
               await client.call("/v1/no.such.route", {}, headers=origin),  # 404
               await client.call("/v1/streaming.task", method="GET", headers=origin),  # 405
               await client.call("/v1/streaming.task", raw=b"x" * 4096, headers=origin),  # 413
               await client.call("/v1/streaming.task", raw=b"{", headers=origin)]  # 400
    await sandbox.served["heygen"].stop()
    answers.append(await client.call("/v1/streaming.create_token", headers=origin))  # 502
    assert [a.status for a in answers] == [204, 404, 405, 413, 400, 502]
    for answer in answers:
        assert answer.headers.get("Access-Control-Allow-Origin") == ALLOWED, answer.status
        if answer.status >= 400:
            assert answer.json["code"] == answer.status


@pytest.mark.gen_test(timeout=30)
async def test_deprecated_heygen_avatar_error_passes_through(sandbox, client):
    sandbox.petya.update_account_config(client.api_key, avatarId="Tyler-incasualsuit-20220721")
    await client.call("/v1/streaming.create_token")
    reply = await client.call("/v1/streaming.new", {"version": "v2"})
    assert reply.status == 400
    assert reply.json == {"code": 10003, "message": "avatar version is deprecated, please update to v3+",
                          "details": "invalid avatar"}


@pytest.mark.gen_test(timeout=30)
async def test_sdk_stops_twice_at_once_after_a_failed_start_both_sane_one_hand_off(sandbox, client):
    session_id, token = await minted(client, "double-stop")
    # The web SDK's start failed (no room), so every clean-up path sends stop: Bearer token, no body, twice.
    first, second = await asyncio.gather(
        client.call("/v1/sessions/stop", api_key=None, headers=bearer(token)),
        client.call("/v1/sessions/stop", api_key=None, headers=bearer(token)))
    assert {first.status, second.status} == {200}
    assert first.json["code"] == second.json["code"] == 1000
    emulated = sandbox.liveavatar.sessions[session_id]
    assert emulated.status == "stopped" and emulated.stop_reason == "USER_CLOSED"
    assert [(e["session_id"], e["stop_reason"]) for e in emulated.events if e["event_type"] == "session.stopped"] == [
        (session_id, "USER_CLOSED")]
    await eventually(lambda: sandbox.petya.deliveries("double-stop"))
    await asyncio.sleep(0.3)
    assert len(sandbox.petya.deliveries("double-stop")) == 1
