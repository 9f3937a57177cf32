"""End of a session: the transcript reaches Petya exactly once, whatever fails or races on the way."""
import asyncio

import pytest
from pymongo import monitoring
from tornado.websocket import websocket_connect

from handlers.app import Gateway
from tests.helpers.client import GatewayClient, eventually
from tests.helpers.flows import avatar_done, connected, open_session, ws_url


async def talked_session(sandbox, client, conversation_id="conv-1", gateway_url=None):
    """A started session with one spoken repeat task and an open socket (on `gateway_url`'s gateway)."""
    token, session = await open_session(client, conversation_id=conversation_id)
    session_id = session["session_id"]
    base = gateway_url or sandbox.gateway_url
    ws = await websocket_connect(ws_url(sandbox, session_id, token).replace(
        sandbox.gateway_url.replace("http", "ws"), base.replace("http", "ws")))
    assert (await client.call("/v1/streaming.start", {"session_id": session_id})).status == 200
    assert (await client.call("/v1/streaming.task", {"session_id": session_id, "text": "Welcome back!",
                                                     "task_type": "repeat"})).status == 200
    await avatar_done(sandbox, session_id)
    return session_id, ws


async def stored(sandbox, session_id):
    return await sandbox.gateway.sessions.get(session_id)


@pytest.mark.gen_test(timeout=30)
async def test_petya_down_at_flush_time_delivers_once_when_it_returns(sandbox, client):
    session_id, ws = await talked_session(sandbox, client)
    await sandbox.served["petya"].stop()
    assert (await client.call("/v1/streaming.stop", {"session_id": session_id})).status == 200
    record = await eventually(lambda: _flush_state_is(sandbox, session_id, "pending", with_error=True))
    assert "unreachable" in record.flush_error
    await asyncio.sleep(0.5)  # several retries fail meanwhile
    assert (await stored(sandbox, session_id)).flush_attempts >= 2
    sandbox.served["petya"].start()  # same port
    await eventually(lambda: _flush_state_is(sandbox, session_id, "delivered"))
    await asyncio.sleep(0.3)
    deliveries = sandbox.petya.deliveries("conv-1")
    assert len(deliveries) == 1
    assert [t["transcript"] for t in deliveries[0]["transcript"]] == ["Welcome back!"]
    ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_pending_flush_survives_a_gateway_restart(sandbox, client):
    session_id, ws = await talked_session(sandbox, client)
    ws.close()
    await sandbox.served["petya"].stop()
    assert (await client.call("/v1/streaming.stop", {"session_id": session_id})).status == 200
    await eventually(lambda: _flush_state_is(sandbox, session_id, "pending", with_error=True))
    await sandbox.gateway.stop()  # the process goes away with the flush still pending
    sandbox.served["petya"].start()
    await asyncio.sleep(0.3)
    assert sandbox.petya.deliveries("conv-1") == []
    await sandbox.restart_gateway()  # a new process: it finds the pending flush in MongoDB
    await eventually(lambda: sandbox.petya.deliveries("conv-1"))
    await asyncio.sleep(0.3)
    assert len(sandbox.petya.deliveries("conv-1")) == 1
    assert (await stored(sandbox, session_id)).flush_state == "delivered"


@pytest.mark.gen_test(timeout=30)
async def test_petya_5xx_is_retried_until_it_lands(sandbox, client):
    session_id, ws = await talked_session(sandbox, client)
    sandbox.petya.fail_status = 503
    await client.call("/v1/streaming.stop", {"session_id": session_id})
    await eventually(lambda: len(sandbox.petya.recorder.calls("/conversations/conv-1/status")) >= 3)
    assert sandbox.petya.deliveries("conv-1") == []
    sandbox.petya.fail_status = None
    await eventually(lambda: sandbox.petya.deliveries("conv-1"))
    await asyncio.sleep(0.3)
    assert len(sandbox.petya.deliveries("conv-1")) == 1
    ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_petya_4xx_is_recorded_and_kept(sandbox, client):
    session_id, ws = await talked_session(sandbox, client)
    sandbox.petya.fail_status = 400
    await client.call("/v1/streaming.stop", {"session_id": session_id})
    record = await eventually(lambda: _flush_state_is(sandbox, session_id, "rejected"))
    assert "400" in record.flush_error
    kept = await sandbox.gateway.sessions.transcript(session_id)  # kept for a later look
    assert [t["transcript"] for t in kept] == ["Welcome back!"]
    await asyncio.sleep(0.4)
    assert len(sandbox.petya.recorder.calls("/conversations/conv-1/status")) == 1  # not retried
    ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_socket_closed_without_stop_is_stopped_upstream_and_flushed_after_grace(sandbox, client):
    session_id, ws = await talked_session(sandbox, client)
    ws.close()
    await asyncio.sleep(0.1)
    assert sandbox.heygen.sessions[session_id].status == "connected"  # still within the grace period
    await eventually(lambda: sandbox.petya.deliveries("conv-1"))
    assert sandbox.heygen.sessions[session_id].status == "closed"
    record = await stored(sandbox, session_id)
    assert record.end_reason == "socket_closed" and record.status == "ended"
    await asyncio.sleep(0.3)
    assert len(sandbox.petya.deliveries("conv-1")) == 1


@pytest.mark.gen_test(timeout=30)
async def test_reconnect_within_grace_keeps_the_session(make_sandbox):
    sandbox = await make_sandbox(SOCKET_GRACE_PERIOD="0.6")
    client = GatewayClient(sandbox.gateway_url)
    session_id, ws = await talked_session(sandbox, client)
    token = (await client.call("/v1/streaming.create_token")).data["token"]  # any token of this customer
    ws.close()
    await asyncio.sleep(0.1)
    ws2 = await websocket_connect(ws_url(sandbox, session_id, token))
    await asyncio.sleep(1.0)  # well past the grace period of the first socket
    assert sandbox.heygen.sessions[session_id].status == "connected"
    assert (await stored(sandbox, session_id)).status == "started"
    assert sandbox.petya.deliveries("conv-1") == []
    ws2.close()
    await eventually(lambda: sandbox.petya.deliveries("conv-1"))


@pytest.mark.gen_test(timeout=30)
async def test_racing_stop_and_close_on_two_processes_flush_once(make_sandbox):
    sandbox = await make_sandbox(SOCKET_GRACE_PERIOD="0")
    other = await Gateway.build(sandbox.settings).start()  # a second gateway process on the same MongoDB
    try:
        client = GatewayClient(sandbox.gateway_url)
        for round_ in range(3):
            conversation = f"race-{round_}"
            session_id, ws = await talked_session(sandbox, client, conversation,
                                                  gateway_url=f"http://127.0.0.1:{other.port}")
            ws.close()  # the socket lives on the other process
            await client.call("/v1/streaming.stop", {"session_id": session_id})
            await eventually(lambda: sandbox.petya.deliveries(conversation))
            await asyncio.sleep(0.4)
            assert len(sandbox.petya.deliveries(conversation)) == 1
            assert len(sandbox.petya.recorder.calls(f"/conversations/{conversation}/status")) == 1
    finally:
        await other.stop()


async def _flush_state_is(sandbox, session_id, state, with_error=False):
    record = await sandbox.gateway.sessions.get(session_id)
    if record and record.flush_state == state and (record.flush_error or not with_error):
        return record
    return None


@pytest.mark.gen_test(timeout=30)
async def test_gateway_restart_mid_session_the_browser_reconnects_and_carries_on(make_sandbox):
    sandbox = await make_sandbox(SOCKET_GRACE_PERIOD="3")
    client = GatewayClient(sandbox.gateway_url)
    session_id, token, ws = await connected(sandbox, client)
    await client.call("/v1/streaming.task", {"session_id": session_id, "text": "Before.", "task_type": "repeat"})
    await avatar_done(sandbox, session_id)

    await sandbox.restart_gateway()  # a deploy: the process goes away and a new one takes the port
    while await ws.read_message() is not None:  # frames already on their way, then the close
        pass
    ws.close()
    assert ws.close_code == 1001  # going away, so the plugin reconnects
    assert sandbox.heygen.sessions[session_id].status == "connected"  # the session outlives the process

    ws = await websocket_connect(ws_url(sandbox, session_id, token))  # the plugin's reconnect, same token
    assert (await client.call("/v1/streaming.task", {"session_id": session_id, "text": "After.",
                                                     "task_type": "repeat"})).status == 200
    await avatar_done(sandbox, session_id)
    assert (await client.call("/v1/streaming.stop", {"session_id": session_id})).status == 200
    await eventually(lambda: sandbox.petya.deliveries("conv-1"))
    await asyncio.sleep(0.3)
    deliveries = sandbox.petya.deliveries("conv-1")
    assert len(deliveries) == 1
    assert [t["transcript"] for t in deliveries[0]["transcript"]] == ["Before.", "After."]
    ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_gateway_restart_mid_liveavatar_session_keeps_its_token_and_transcript(sandbox, client):
    reply = await client.call("/v1/sessions/token", {"conversation_id": "la-restart"})
    session_id, token = reply.data["session_id"], reply.data["session_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await client.call("/v1/sessions/start", api_key=None, headers=bearer)).status == 201
    await client.call("/v1/streaming.avatar_message", {"session_id": session_id, "text": "Said before."})

    await sandbox.restart_gateway()

    # LiveAvatar's SDK carries on with the same Bearer token against the new process.
    assert (await client.call("/v1/sessions/keep-alive", api_key=None, headers=bearer)).status == 200
    await client.call("/v1/streaming.user_message", {"session_id": session_id, "text": "Said after."})
    assert (await client.call("/v1/sessions/stop", api_key=None, headers=bearer)).status == 200
    await eventually(lambda: sandbox.petya.deliveries("la-restart"))
    await asyncio.sleep(0.3)
    deliveries = sandbox.petya.deliveries("la-restart")
    assert len(deliveries) == 1
    assert [(t["role"], t["transcript"]) for t in deliveries[0]["transcript"]] == [
        ("avatar", "Said before."), ("user", "Said after.")]


class SocketCloseWrites(monitoring.CommandListener):
    """Counts, on the wire (pymongo's command monitoring), the update commands that record socket closes. pymongo
    cannot unregister a listener: it stops counting when `active` is cleared."""

    def __init__(self):
        self.commands = []
        self.active = True

    def started(self, event):
        if self.active and event.command_name == "update":
            updates = event.command.get("updates", [])
            if any(isinstance(u.get("u"), list) and "socket_closed_at" in u["u"][0].get("$set", {})
                   for u in updates):  # the close's update pipeline (models/sessions.py: closed)
                self.commands.append(len(updates))

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


@pytest.mark.gen_test(timeout=60)
async def test_sockets_closing_at_once_are_recorded_in_a_few_bulk_writes(make_sandbox):
    writes = SocketCloseWrites()
    monitoring.register(writes)  # before the gateway's MongoClient exists: it applies to clients made afterwards
    try:
        await _close_many_sockets_at_once(make_sandbox, writes)
    finally:
        writes.active = False


async def _close_many_sockets_at_once(make_sandbox, writes):
    sandbox = await make_sandbox(SOCKET_GRACE_PERIOD="30")
    sandbox.heygen.max_sessions = 100
    client = GatewayClient(sandbox.gateway_url)
    sockets = []
    for i in range(30):
        token, session = await open_session(client, conversation_id=f"conv-{i}")
        sockets.append((session["session_id"], await websocket_connect(ws_url(sandbox, session["session_id"], token))))
    for _, ws in sockets:
        ws.close()

    async def all_recorded():
        records = [await stored(sandbox, session_id) for session_id, _ in sockets]
        return all(r.socket_closed_at and not r.sockets for r in records)

    await eventually(all_recorded, timeout=20)
    assert sum(writes.commands) >= 30  # every close was written
    assert len(writes.commands) <= 10, writes.commands  # coalesced: not one round trip per socket
