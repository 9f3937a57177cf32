"""Faults production will meet, with real processes: a gateway killed with sockets open, MongoDB killed for ~20 s,
Petya's acknowledgement lost with MongoDB. Each checks the promises: no turn lost, no hand-off applied twice, no
upstream session left running past its bound, no 500."""
import asyncio
import time

import pymongo
import pytest
from tornado.websocket import websocket_connect

from sandbox.mongo import MongoServer
from sandbox.stack import with_database
from tests.helpers.client import GatewayClient, eventually
from tests.helpers.flows import WS_PARAMS, avatar_done, read_events, socket_says
from tests.helpers.processes import in_background

pytestmark = pytest.mark.faults


def socket_url(gateway_url, session_id, token):
    return f"{gateway_url.replace('http', 'ws')}/v1/ws/streaming.chat?session_id={session_id}&session_token={token}" \
           f"&{WS_PARAMS}"


async def heygen_session(client, socket_gateway_url, conversation_id):
    """A started HeyGen session whose socket is open on `socket_gateway_url`'s gateway: (session_id, socket)."""
    token = (await client.call("/v1/streaming.create_token")).data["token"]
    new = await client.call("/v1/streaming.new", {"version": "v2", "conversation_id": conversation_id})
    assert new.status == 200, new.json
    session_id = new.data["session_id"]
    ws = await websocket_connect(socket_url(socket_gateway_url, session_id, token))
    assert (await client.call("/v1/streaming.start", {"session_id": session_id})).status == 200
    return session_id, ws


async def say(client, session_id, text, sandbox=None):
    """A repeat task; with `sandbox`, waits until its avatar has said it (in the room, not on the socket)."""
    reply = await client.call("/v1/streaming.task", {"session_id": session_id, "text": text, "task_type": "repeat"})
    assert reply.status == 200, reply.json
    if sandbox is not None:
        await avatar_done(sandbox, session_id)


def spoken(delivery):
    return [turn["transcript"] for turn in delivery["transcript"]]


@pytest.mark.gen_test(timeout=90)
async def test_killed_gateway_holding_sockets_its_sessions_are_stopped_and_flushed_once_within_the_bound(
        world, processes):
    grace, ttl, sweep = 1.0, 1.5, 0.25
    sandbox = world(SOCKET_GRACE_PERIOD=grace, LEASE_HEARTBEAT=0.25, LEASE_TTL=ttl, SWEEP_INTERVAL=sweep)
    doomed = await processes(sandbox.env, "doomed")
    survivor = await processes(sandbox.env, "survivor")
    client = GatewayClient(survivor.url)
    sessions = {}
    for n in range(3):  # HeyGen's emulator allows 3 concurrent sessions, as our account would
        session_id, ws = await heygen_session(client, doomed.url, f"killed-{n}")
        await say(client, session_id, f"Said on socket {n}.", sandbox)
        sessions[session_id] = (f"killed-{n}", ws)

    doomed.kill()
    killed_at = time.monotonic()
    stopped_after = {}

    async def all_stopped():
        for session_id in sessions:
            if session_id not in stopped_after and sandbox.heygen.sessions[session_id].status == "closed":
                stopped_after[session_id] = time.monotonic() - killed_at
        return len(stopped_after) == len(sessions)

    await eventually(all_stopped, timeout=30, interval=0.05)
    for conversation, _ in sessions.values():
        await eventually(lambda: sandbox.petya.deliveries(conversation), timeout=10)
    await asyncio.sleep(1.0)  # any second delivery would have arrived by now

    bound = grace + ttl + sweep
    print(f"\nkilled gateway: sessions stopped upstream after {sorted(round(t, 2) for t in stopped_after.values())} s "
          f"(bound {bound:.2f} s + one heartbeat)")
    assert max(stopped_after.values()) <= bound + 0.25 + 0.5  # + a heartbeat + the stop call's own time
    assert not sandbox.heygen.active_sessions()
    for n, (conversation, ws) in enumerate(sessions.values()):
        deliveries = sandbox.petya.deliveries(conversation)
        assert len(deliveries) == 1
        assert spoken(deliveries[0]) == [f"Said on socket {n}."]
        assert len(sandbox.petya.recorder.calls(f"/conversations/{conversation}/status")) == 1
        ws.close()


@pytest.mark.gen_test(timeout=120)
async def test_mongodb_killed_for_20s_no_500_no_turn_lost_recovery_without_restart(world, processes, tmp_path):
    mongo = MongoServer(tmp_path / "gateway-db").start()
    database = "outage"
    # The outage outlasts the lease: the process takes a new lease and keeps its sockets.
    sandbox = world(gateway_mongodb_uri=mongo.uri, DB_TIMEOUT="1", SOCKET_GRACE_PERIOD="2", SWEEP_INTERVAL="0.5",
                    LEASE_HEARTBEAT="0.5", LEASE_TTL="10")
    sandbox.env["MONGODB_URI"] = with_database(mongo.uri, database)
    gateway = await processes(sandbox.env, "gateway")
    client = GatewayClient(gateway.url)
    try:
        session_id, ws = await heygen_session(client, gateway.url, "outage-stopped")
        await say(client, session_id, "Before the outage.", sandbox)
        dropped_id, dropped_ws = await heygen_session(client, gateway.url, "outage-dropped")
        await say(client, dropped_id, "Then the tab closed.", sandbox)

        # MongoDB dies while HeyGen performs a task: HeyGen's answer stands, the turn waits in the gateway.
        sandbox.heygen.on_task = lambda session, body: mongo.kill()
        assert (await client.call("/v1/streaming.task", {"session_id": session_id, "text": "Said as it died.",
                                                         "task_type": "repeat"})).status == 200
        sandbox.heygen.on_task = None
        outage_started = time.monotonic()
        await avatar_done(sandbox, session_id)

        # The avatar keeps talking (in the room); one tab closes its socket; every REST call meets the outage.
        emulated = sandbox.heygen.sessions[session_id]
        answers = []
        n = 0
        dropped_ws.close()
        calls = [("/v1/streaming.task", {"session_id": session_id, "text": "A task during the outage.",
                                          "task_type": "repeat"}),
                 ("/v1/streaming.keep_alive", {"session_id": session_id}),
                 ("/v1/streaming.avatar_message", {"session_id": session_id, "text": "Heard."}),
                 ("/v1/streaming.create_token", {}), ("/v1/sessions/token", {}), ("/readyz", None)]
        while time.monotonic() - outage_started < 20:
            n += 1
            if n <= 3:  # words the gateway only hears on the socket (no task of its own)
                task = sandbox.heygen.enqueue_task(emulated, f"Spoken during the outage {n}.", "repeat", "async")
                await avatar_done(sandbox, session_id)
                # Real HeyGen v2 sends them as LiveKit data; this exercises the gateway's socket observer, so the
                # test writes them on the emulator's socket.
                await socket_says(sandbox, session_id, task["spoken"], task_id=task["task_id"])
                await read_events(ws, "avatar_end_message")
            path, body = calls[n % len(calls)]
            answers.append((path, await client.call(path, body, method="GET" if body is None else "POST")))
            await asyncio.sleep(0.2)
        statuses = sorted({(path, reply.status) for path, reply in answers})
        print(f"\nduring the outage: {len(answers)} calls, statuses {statuses}")
        assert all(reply.status < 500 or reply.status == 503 for _, reply in answers), statuses
        assert [path for path, reply in answers if reply.status == 503 and not reply.headers.get("Retry-After")] == []
        assert all(reply.json and reply.json.get("code") for _, reply in answers if reply.status >= 400)

        await in_background(mongo.start)  # same port, same storage
        await eventually(lambda: _healthy(client), timeout=30, interval=0.2)
        await say(client, session_id, "After the outage.", sandbox)
        assert (await client.call("/v1/streaming.stop", {"session_id": session_id})).status == 200
        await eventually(lambda: sandbox.petya.deliveries("outage-stopped"), timeout=15)
        await eventually(lambda: sandbox.petya.deliveries("outage-dropped"), timeout=15)  # its close was recorded
        await asyncio.sleep(1.0)
        delivered = sandbox.petya.deliveries("outage-stopped")
        assert len(delivered) == 1
        # A session this process knows keeps working through the outage (its facts are cached): every task HeyGen
        # performed meanwhile was answered 200, and its turn waited in the gateway until MongoDB came back.
        performed = sum(1 for path, reply in answers if path == "/v1/streaming.task" and reply.status == 200)
        said = spoken(delivered[0])
        assert said[:2] == ["Before the outage.", "Said as it died."] and said[-1] == "After the outage."
        assert sorted(said[2:-1]) == sorted([f"Spoken during the outage {n}." for n in (1, 2, 3)]
                                            + ["A task during the outage."] * performed)
        assert [t for t in said if t.startswith("Spoken")] == [f"Spoken during the outage {n}." for n in (1, 2, 3)]
        print(f"tasks performed by HeyGen during the outage: {performed}; turns delivered: {len(said)}")
        assert [spoken(d) for d in sandbox.petya.deliveries("outage-dropped")] == [["Then the tab closed."]]
        assert not sandbox.heygen.active_sessions()
        log = gateway.log()
        assert "Traceback" not in log and " 500 " not in log
        ws.close()
    finally:
        gateway.kill()
        mongo.stop()


async def _healthy(client):
    return (await client.call("/readyz", method="GET")).status == 200


@pytest.mark.gen_test(timeout=90)
async def test_petya_took_it_but_mongodb_died_before_it_was_recorded_the_retry_is_applied_once(
        world, processes, tmp_path):
    mongo = MongoServer(tmp_path / "gateway-db").start()
    sandbox = world(gateway_mongodb_uri=mongo.uri, UPSTREAM_REQUEST_TIMEOUT="1", DB_TIMEOUT="1",
                    SWEEP_INTERVAL="0.25")
    sandbox.env["MONGODB_URI"] = with_database(mongo.uri, "handoff")
    gateway = await processes(sandbox.env, "gateway")
    client = GatewayClient(gateway.url)
    restarting = []  # the task that starts MongoDB again, held while it runs

    async def lose_the_acknowledgement(conversation_id):
        sandbox.petya.on_status = None
        mongo.kill()  # Petya has stored it; the gateway will not be able to record that

        async def back_later():
            await asyncio.sleep(2)
            await in_background(mongo.start)
        restarting.append(asyncio.ensure_future(back_later()))

    try:
        session_id, ws = await heygen_session(client, gateway.url, "lost-ack")
        await say(client, session_id, "Remember me once.", sandbox)
        sandbox.petya.on_status = lose_the_acknowledgement
        assert (await client.call("/v1/streaming.stop", {"session_id": session_id})).status == 200
        posts = await eventually(lambda: len(sandbox.petya.recorder.calls("/conversations/lost-ack/status")) >= 2
                                 and sandbox.petya.recorder.calls("/conversations/lost-ack/status"), timeout=40)
        await eventually(lambda: _flush_state(mongo, "handoff", session_id) == "delivered", timeout=10)
        await asyncio.sleep(1.0)
        keys = {post.headers["idempotency-key"] for post in posts}
        assert len(keys) == 1 and all(post.json()["deliveryId"] in keys for post in posts)
        deliveries = sandbox.petya.deliveries("lost-ack")
        assert len(deliveries) == 1 and spoken(deliveries[0]) == ["Remember me once."]
        print(f"\nlost acknowledgement: {len(posts)} POSTs with one Idempotency-Key, {len(deliveries)} delivery")
        ws.close()
    finally:
        gateway.kill()
        mongo.stop()


def _flush_state(mongo, database, session_id):
    with pymongo.MongoClient(mongo.uri, serverSelectionTimeoutMS=1000) as db:
        record = db[database]["avatar_sessions"].find_one({"session_id": session_id}, {"flush_state": 1})
    return (record or {}).get("flush_state")
