"""The room agent's holder killed (services/rooms.py): two real gateway processes share one MongoDB and the sandbox's
emulators (LiveAvatar with its room server, the Petya reference: in this process); a customer on LiveAvatar is served
HeyGen's contract. A task reaching the process that does not hold the room is forwarded to the holder and spoken once;
the holder killed with SIGKILL, the other process takes the room over within LEASE_TTL + SWEEP_INTERVAL (+ its join);
meanwhile tasks are answered 503 + Retry-After or spoken, never twice; the hand-off is complete and single."""
import asyncio
import itertools
import time

import pymongo
import pytest

from sandbox.stack import DEMO_API_KEY, Sandbox
from tests.helpers.client import GatewayClient, eventually
from tests.helpers.processes import in_background

pytestmark = pytest.mark.faults

TTL, HEARTBEAT, SWEEP = 2.0, 0.3, 0.3
# The sweep that finds A's lease expired claims the room at most LEASE_TTL + SWEEP_INTERVAL after the kill (plus the
# sweep's own MongoDB round trips and this test's polling), then joins it (signalling + WebRTC to the room server).
CLAIM_ALLOWANCE, JOIN_ALLOWANCE = 0.2, 1.0
WORD = 0.02  # seconds per word of the LiveAvatar avatar


@pytest.fixture
def world(io_loop, mongodb_server_uri, db_name):
    """`world(**settings)`: the emulators (LiveAvatar in rooms) and the Petya reference in this process, the customer
    on LiveAvatar; (sandbox, the gateways' MongoDB database)."""
    made, clients = [], []

    def make(**settings):
        sandbox = Sandbox(mongodb_server_uri, database=db_name, petya_mongodb_uri=mongodb_server_uri,
                          **{**dict(LEASE_TTL=TTL, LEASE_HEARTBEAT=HEARTBEAT, SWEEP_INTERVAL=SWEEP,
                                    UPSTREAM_REQUEST_TIMEOUT=3, FLUSH_RETRY_INITIAL=0.1, FLUSH_RETRY_MAX=0.5),
                             **settings})
        sandbox.liveavatar.seconds_per_word = WORD
        sandbox.start_upstreams()
        made.append(sandbox)
        sandbox.petya.update_account_config(DEMO_API_KEY, provider="liveavatar")
        clients.append(pymongo.MongoClient(sandbox.env["MONGODB_URI"], serverSelectionTimeoutMS=5000))
        return sandbox, clients[-1].get_default_database()

    yield make
    for client in clients:
        client.close()
    for sandbox in made:
        io_loop.run_sync(sandbox.stop)


def process_id(db, gateway):
    """The lease id of a gateway process (its lease publishes its internal address)."""
    lease = db["gateway_processes"].find_one({"address": gateway.url}, {"process_id": 1})
    return lease and lease["process_id"]


def holder(db, session_id):
    return db["avatar_sessions"].find_one({"session_id": session_id}, {"room_holder": 1})["room_holder"]


def agent_sid(sandbox, session_id):
    """The room server's participant id of the gateway's agent in the session's room (None when it is not in)."""
    room = sandbox.rooms.rooms.get(session_id)
    agent = room.participants.get("agent") if room is not None else None
    return agent.sid if agent is not None and not agent.left else None


def spoken_commands(sandbox, session_id):
    return [c["text"] for c in sandbox.liveavatar.sessions[session_id].commands
            if c["event_type"] == "avatar.speak_text"]


async def repeat(client, session_id, text):
    return await client.call("/v1/streaming.task", {"session_id": session_id, "text": text, "task_type": "repeat"})


def assert_task_answer(reply):
    assert reply.status == 200, (reply.status, reply.json)
    assert reply.json["code"] == 100 and set(reply.data) == {"task_id", "duration_ms"}, reply.json
    assert reply.data["task_id"] and reply.data["duration_ms"] > 0


async def started_session(client, sandbox, conversation_id):
    new = await client.call("/v1/streaming.new",
                            {"version": "v2", "quality": "low", "conversation_id": conversation_id})
    assert new.status == 200, new.json
    session_id = new.data["session_id"]
    assert session_id in sandbox.liveavatar.sessions
    started = await client.call("/v1/streaming.start", {"session_id": session_id})
    assert started.status == 200, started.json
    return session_id


async def stopped_and_handed_off_once(client, sandbox, session_id, conversation_id, said):
    """streaming.stop; the hand-off to Petya holds every text said, once, in order; one delivery."""
    stopped = await client.call("/v1/streaming.stop", {"session_id": session_id})
    assert stopped.status == 200, stopped.json
    assert sandbox.liveavatar.sessions[session_id].status == "stopped"
    await eventually(lambda: sandbox.petya.deliveries(conversation_id), timeout=15)
    await asyncio.sleep(1.0)  # any second delivery would have arrived by now
    assert spoken_commands(sandbox, session_id) == said  # each published once, in order
    deliveries = sandbox.petya.deliveries(conversation_id)
    assert len(deliveries) == 1
    assert [(t["role"], t["transcript"]) for t in deliveries[0]["transcript"]] == [("avatar", t) for t in said]
    assert len(sandbox.petya.recorder.calls(f"/conversations/{conversation_id}/status")) == 1
    await eventually(lambda: agent_sid(sandbox, session_id) is None, timeout=5)  # the agent left with the session


async def said_once(sandbox, session_id, text):
    """Wait until LiveAvatar's avatar has said `text` (its transcript has it); it was commanded exactly once."""
    la = sandbox.liveavatar.sessions[session_id]
    await eventually(lambda: any(e["transcript"] == text for e in la.transcript), timeout=10)
    assert spoken_commands(sandbox, session_id).count(text) == 1


@pytest.mark.gen_test(timeout=120)
async def test_holder_killed_the_other_process_takes_the_room_over_every_task_spoken_once(world, processes):
    sandbox, db = world()
    first = await processes(sandbox.env, "first")
    second = await processes(sandbox.env, "second")
    a, b = GatewayClient(first.url), GatewayClient(second.url)
    a_id, b_id = process_id(db, first), process_id(db, second)
    assert a_id and b_id and a_id != b_id

    # 1. The session opened and started on A: A's agent holds the room; a task sent to B is forwarded and spoken once.
    session_id = await started_session(a, sandbox, "holder-killed")
    assert holder(db, session_id) == a_id
    a_agent = await eventually(lambda: agent_sid(sandbox, session_id))

    said = []  # the texts answered 200, in the order they were sent
    text = "Forwarded to the holder."
    reply = await repeat(b, session_id, text)
    assert_task_answer(reply)
    said.append(text)
    await said_once(sandbox, session_id, text)
    assert sandbox.liveavatar.sessions[session_id].commands[-1]["from"] == "agent"
    assert f"POST /internal/rooms/{session_id}/command 200" in first.log()  # B forwarded it; A published it

    # 2. A killed mid-session: B takes the room over; tasks sent meanwhile are answered 503 + Retry-After, or spoken.
    first.kill()
    killed_at = time.monotonic()
    seen = {}  # what the watcher saw, seconds after the kill: "claimed" (room_holder is B), "joined" (B's agent in)

    async def watch():
        while len(seen) < 2:
            if "claimed" not in seen and await in_background(holder, db, session_id) == b_id:
                seen["claimed"] = time.monotonic() - killed_at
            if "joined" not in seen and agent_sid(sandbox, session_id) not in (None, a_agent):
                seen["joined"] = time.monotonic() - killed_at
            assert time.monotonic() - killed_at < 30, f"no take-over within 30 s: {seen}"
            await asyncio.sleep(0.01)

    watcher = asyncio.ensure_future(watch())
    answers = []  # (text, reply, sent after the take-over)
    while len(answers) < 3 or not answers[-3][2]:  # until three tasks were sent after it
        joined = watcher.done()
        text = f"During the hand-over {len(answers) + 1}."
        reply = await repeat(b, session_id, text)
        answers.append((text, reply, joined))
        if reply.status == 200:
            said.append(text)
            await said_once(sandbox, session_id, text)
        await asyncio.sleep(0.1)
    await watcher

    statuses = [reply.status for _, reply, _ in answers]
    print(f"\nholder killed: room claimed by B after {seen['claimed']:.2f} s, B's agent in the room after "
          f"{seen['joined']:.2f} s (LEASE_TTL + SWEEP_INTERVAL = {TTL + SWEEP:.2f} s); tasks sent meanwhile answered "
          f"{', '.join(f'{len(list(run))} x {status}' for status, run in itertools.groupby(statuses))}")
    assert seen["claimed"] <= TTL + SWEEP + CLAIM_ALLOWANCE
    assert seen["joined"] <= TTL + SWEEP + JOIN_ALLOWANCE
    for text, reply, _ in answers:
        if reply.status == 200:
            assert_task_answer(reply)
        else:
            assert reply.status == 503, (reply.status, reply.json)
            assert reply.headers.get("Retry-After") and int(reply.headers["Retry-After"]) > 0
            assert reply.headers["Content-Type"].startswith("application/json")
            assert reply.json["code"] == 503 and reply.json["message"], reply.json
            assert text not in spoken_commands(sandbox, session_id)  # refused, so never published
    assert 503 in statuses  # the hand-over was seen (A's lease outlives it by up to LEASE_TTL)
    assert all(reply.status == 200 for _, reply, after in answers if after)  # once B holds the room, it serves
    assert holder(db, session_id) == b_id

    # After the take-over, a task to B is spoken once; the stop via B hands the whole transcript to Petya, once.
    text = "After the take-over."
    reply = await repeat(b, session_id, text)
    assert_task_answer(reply)
    said.append(text)
    await said_once(sandbox, session_id, text)
    await stopped_and_handed_off_once(b, sandbox, session_id, "holder-killed", said)
    log = second.log()
    assert "Traceback" not in log and " 500 " not in log


@pytest.mark.gen_test(timeout=60)
async def test_holder_stopped_gracefully_the_next_task_to_the_other_process_holds_the_room_at_once(world, processes):
    """A SIGTERM'd holder gives its rooms back (room_holder ""): the next command reaching another process has that
    process hold the room then and there, not 503 until its next sweep adopts the orphan (SWEEP_INTERVAL, long here)."""
    sandbox, db = world(SWEEP_INTERVAL=5)
    first = await processes(sandbox.env, "first")
    second = await processes(sandbox.env, "second")
    a, b = GatewayClient(first.url), GatewayClient(second.url)
    session_id = await started_session(a, sandbox, "holder-stopped")
    a_agent = await eventually(lambda: agent_sid(sandbox, session_id))
    said = ["Said while A held the room."]
    assert_task_answer(await repeat(b, session_id, said[0]))
    await said_once(sandbox, session_id, said[0])

    await in_background(first.terminate)
    assert first.process.returncode == 0
    assert holder(db, session_id) == ""  # given back
    stopped_at = time.monotonic()
    said.append("Said once B held the room.")
    reply = await repeat(b, session_id, said[1])
    took = time.monotonic() - stopped_at
    assert_task_answer(reply)
    print(f"\nholder stopped: the next task to B answered {reply.status} after {took:.2f} s (B joined on demand)")
    assert holder(db, session_id) == process_id(db, second)
    assert agent_sid(sandbox, session_id) not in (None, a_agent)
    await said_once(sandbox, session_id, said[1])
    await stopped_and_handed_off_once(b, sandbox, session_id, "holder-stopped", said)
    log = second.log()
    assert "Traceback" not in log and " 500 " not in log
