"""What the hand-off says about a session besides its words (domain/usage.py): who served it, through which contract,
when the provider started and ended it, for how long, why it ended, and the customer's account. The bodies are read as
the Petya reference received them; durations are checked against the times the test itself took."""
import asyncio
import json
import time

import pytest
from tornado.websocket import websocket_connect

from sandbox.stack import DEMO_API_KEY
from tests.helpers.client import eventually
from tests.helpers.flows import bearer, minted, open_session, ws_url


def handoffs(sandbox, conversation_id):
    return [json.loads(r.body) for r in sandbox.petya.recorder.calls(f"/conversations/{conversation_id}/status",
                                                                       "POST")]


async def handoff(sandbox, conversation_id):
    [body] = await eventually(lambda: handoffs(sandbox, conversation_id), timeout=10)
    return body


def assert_times(body, started, ended):
    assert abs(body["startedAt"] - started) < 1 and abs(body["endedAt"] - ended) < 1
    assert abs(body["durationSeconds"] - (ended - started)) < 1
    assert body["durationSeconds"] == pytest.approx(body["endedAt"] - body["startedAt"], abs=0.01)


@pytest.mark.gen_test(timeout=60)
async def test_a_stopped_heygen_session(sandbox, client):
    sandbox.petya.update_account_config(DEMO_API_KEY, accountId="acct-42")
    _, session = await open_session(client, conversation_id="fields-stopped")
    sid = session["session_id"]
    started = time.time()
    assert (await client.call("/v1/streaming.start", {"session_id": sid})).status == 200
    await asyncio.sleep(1.2)
    ended = time.time()
    assert (await client.call("/v1/streaming.stop", {"session_id": sid})).status == 200
    body = await handoff(sandbox, "fields-stopped")
    assert {k: body[k] for k in ("sessionId", "provider", "contract", "endReason", "accountId")} == {
        "sessionId": sid, "provider": "heygen", "contract": "heygen", "endReason": "stopped",
        "accountId": "acct-42"}
    assert_times(body, started, ended)
    assert body["durationSeconds"] >= 1.0


@pytest.mark.gen_test(timeout=60)
async def test_a_session_whose_socket_closed(sandbox, client):
    token, session = await open_session(client, conversation_id="fields-socket")
    sid = session["session_id"]
    ws = await websocket_connect(ws_url(sandbox, sid, token))
    started = time.time()
    assert (await client.call("/v1/streaming.start", {"session_id": sid})).status == 200
    await asyncio.sleep(0.5)
    ended = time.time()
    ws.close()
    body = await handoff(sandbox, "fields-socket")
    assert body["endReason"] == "socket_closed" and "accountId" not in body
    # ended by the sweep after SOCKET_GRACE_PERIOD (0.3 s in tests): the end is the sweep's, within a second
    assert_times(body, started, ended)


@pytest.mark.gen_test(timeout=60)
async def test_an_idle_session_and_one_never_started(make_sandbox):
    from tests.helpers.client import GatewayClient

    sandbox = await make_sandbox(SESSION_IDLE_TIMEOUT="1")
    client = GatewayClient(sandbox.gateway_url)
    _, idle = await open_session(client, conversation_id="fields-idle")
    started = time.time()
    assert (await client.call("/v1/streaming.start", {"session_id": idle["session_id"]})).status == 200
    await open_session(client, conversation_id="fields-never")
    body = await handoff(sandbox, "fields-idle")
    assert body["endReason"] == "idle"
    assert_times(body, started, started + 1)  # reaped once idle for SESSION_IDLE_TIMEOUT
    unstarted = await handoff(sandbox, "fields-never")
    assert unstarted["endReason"] == "idle" and unstarted["startedAt"] is None and unstarted["durationSeconds"] == 0


@pytest.mark.gen_test(timeout=60)
async def test_a_liveavatar_session_and_one_liveavatar_ended_itself(sandbox, client):
    session_id, token = await minted(client, conversation_id="fields-la")
    started = time.time()
    assert (await client.call("/v1/sessions/start", api_key=None, headers=bearer(token))).status == 201
    await asyncio.sleep(0.8)
    ended = time.time()
    assert (await client.call("/v1/sessions/stop", api_key=None, headers=bearer(token))).status == 200
    body = await handoff(sandbox, "fields-la")
    assert (body["provider"], body["contract"], body["endReason"]) == ("liveavatar", "liveavatar", "stopped")
    assert_times(body, started, ended)

    session_id, token = await minted(client, conversation_id="fields-la-credits")
    assert (await client.call("/v1/sessions/start", api_key=None, headers=bearer(token))).status == 201
    await eventually(lambda: session_id in sandbox.gateway.rooms.agents)  # the agent hears session.stopped
    sandbox.liveavatar.end(sandbox.liveavatar.sessions[session_id], "NO_CREDITS", "NO_CREDITS")
    body = await handoff(sandbox, "fields-la-credits")
    assert body["endReason"] == "no_credits"
