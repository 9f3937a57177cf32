"""Every query shape the gateway sends to MongoDB during the plugin's flows — both contracts, the socket, a report,
the hand-off, the sweeps — is planned on an index by the MongoDB-compatible server the tests and the sandbox run on
(SecantusDB plans differently from MongoDB: a query with predicates beside its indexed one can be scanned). The
commands are captured as pymongo sends them, then each distinct shape is explained."""
import asyncio
import json

import pymongo
import pytest
from pymongo import monitoring
from tornado.websocket import websocket_connect

from tests.helpers.flows import bearer, minted, open_session, ws_url

EXPLAINABLE = {"find": "filter", "findAndModify": "query", "update": None, "delete": None, "count": "query",
               "aggregate": None}
NOT_SENT = ("lsid", "$db", "$clusterTime", "txnNumber", "$readPreference", "writeConcern")


class Commands(monitoring.CommandListener):
    """Every command of every client made after it is registered, while `recording`."""

    def __init__(self):
        self.recording = False
        self.sent = []

    def started(self, event):
        if self.recording and event.command_name in EXPLAINABLE:
            self.sent.append((event.database_name, {k: v for k, v in event.command.items() if k not in NOT_SENT}))

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


COMMANDS = Commands()
monitoring.register(COMMANDS)  # before the test's sandbox makes its client


def stages(plan):
    out = [plan.get("stage")]
    for key in ("inputStage", "outerStage", "innerStage", "queryPlan"):
        if isinstance(plan.get(key), dict):
            out += stages(plan[key])
    for child in plan.get("inputStages", []):
        out += stages(child)
    return out


def shape(value):
    """A query's shape: its keys and operators, not its values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return "?"


# Shapes known to scan on SecantusDB that issue 18 has still to change (each: why it is still there).
KNOWN_SCANS = {
    ("gateway_processes", "delete"): "an expired lease is deleted only if its process did not come back meanwhile "
                                     "(two predicates); the collection holds one document per live process",
}


async def room_holder_and_forgetting(sessions):
    """Every query of the room agents' holder and of forgetting (models/sessions.py), on sessions of their own."""
    for i in range(3):
        await sessions.create(f"q-{i}", "liveavatar", "heygen", None, "customer", "t", 1.0, room_url="ws://room",
                              agent_token="a")
    await sessions.hold_room("q-1", "p1", ("dead",))
    await sessions.rooms_held_by("p1")
    await sessions.rooms_held_by("")
    await sessions.ended_among(["q-1", "q-2"])
    await sessions.rooms_moved(["q-1"], "p1", "p2")
    await sessions.note_room("q-1", "a note")
    await sessions.release_room("q-1", "p2")
    await sessions.give_up_room("q-2", "", "a note")
    await sessions.set_room("q-0", "ws://room", "a")
    await sessions.words_due(2.0)
    await sessions.words_deleted("q-0", 2.0)
    await sessions.of_conversation("q-0")
    await sessions.erase("q-0", 3.0, 4.0, upstream=True)
    await sessions.upstream_erasures_due(5.0)
    await sessions.upstream_erase_later("q-0", 6.0)
    await sessions.upstream_erased("q-0")


async def sweeps_and_hand_offs(gateway):
    """Every query of the sweep, the hand-off and the leases, on sessions of their own."""
    sessions, leases = gateway.sessions.repository, gateway.leases.repository
    for i in range(3):
        await sessions.create(f"w-{i}", "heygen", "heygen", None, "customer", None, 1.0)
    await sessions.socket_opened("w-0", "sock", "p1", 2.0)
    await sessions.sockets_closed({("w-0", "sock"): 3.0})
    await sessions.socket_opened("w-1", "sock", "p1", 2.0)
    await sessions.release_sockets("p1", 3.0)
    await sessions.touch_all({"w-2": 4.0})
    await sessions.quiet(idle_before=10.0, born_before=10.0)
    await sessions.abandoned(10.0)
    await sessions.claim_end("w-0", "socket_closed", 11.0, abandoned_before=10.0)
    await sessions.claim_end("w-1", "stopped", 11.0)
    await sessions.lease_flush(30.0, 12.0)
    await sessions.lease_flush(30.0, 12.0, "w-1")
    await sessions.flush_defer("w-0", 13.0)
    await sessions.flush_retry("w-1", 13.0, "error")
    await sessions.flush_done("w-1", 14.0, None, 20.0)
    await sessions.flush_rejected("w-0", "error", 20.0)
    await leases.renew("p-test", 5.0, 30.0, None)
    await leases.expired("p-test", 4.0)
    await leases.others_alive("p-test", 4.0)
    await leases.address("p-test", 4.0)
    await leases.remove("p-gone", 1.0)


ADMIN_TOKEN = "test-admin-token-0123456789"


async def admin_usage(client):
    """The admin usage query (services/usage.py), with and without an account and a window, over live and ended
    sessions."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for query in ("", "?from=0.5&to=1e12", "?accountId=acct-1&from=1"):
        reply = await client.call(f"/admin/usage{query}", method="GET", headers=admin, api_key=None)
        assert reply.status == 200, reply.json


def filter_of(command):
    name = next(iter(command))
    if name == "find":
        return command.get("filter", {})
    if name == "findAndModify":
        return command.get("query", {})
    if name in ("update", "delete"):
        return (command.get("updates") or command.get("deletes"))[0]["q"]
    if name == "count":
        return command.get("query", {})
    if name == "aggregate":
        return next((stage["$match"] for stage in command.get("pipeline", []) if "$match" in stage), {})
    return {}


@pytest.mark.gen_test(timeout=90)
async def test_every_query_shape_uses_an_index(make_sandbox):
    """The calls a plugin makes during a session (both contracts: tokens, new, start, tasks, keep-alives, a report,
    the socket's open and close, the transcript read), then every query of the room holder, forgetting, the sweep,
    the hand-off and the leases, called on records of their own, and the admin usage query. SecantusDB, measured
    (2026-12-07): a find or update by one indexed field uses its index; a filter with more predicates is scanned; a
    findAndModify is scanned whatever its filter (6.5 ms at 20,000 sessions, against 0.3 ms for the same
    update_one); and explaining an update reports a scan even when it uses the index. So an update's and a
    findAndModify's filter are explained as a find, and a findAndModify is a failure in itself unless KNOWN_SCANS
    names it."""
    from tests.helpers.client import GatewayClient

    sandbox = await make_sandbox(SWEEP_INTERVAL="600", LEASE_HEARTBEAT="600", LEASE_TTL="3600",
                                 ADMIN_TOKEN=ADMIN_TOKEN)
    client = GatewayClient(sandbox.gateway_url)
    await asyncio.sleep(0.3)  # the sweep every process runs at start, done
    COMMANDS.sent.clear()
    COMMANDS.recording = True
    try:
        token, session = await open_session(client, conversation_id="plans")
        sid = session["session_id"]
        ws = await websocket_connect(ws_url(sandbox, sid, token))
        assert (await client.call("/v1/streaming.start", {"session_id": sid})).status == 200
        await client.call("/v1/streaming.task", {"session_id": sid, "text": "Plans", "task_type": "repeat"})
        await client.call("/v1/streaming.keep_alive", {"session_id": sid})
        await client.call("/v1/streaming.avatar_message", {"session_id": sid, "text": "Plans"})
        await client.call(f"/v1/streaming.transcript?session_id={sid}", method="GET")
        ws.close()
        _, la_token = await minted(client, conversation_id="plans-la")
        await client.call("/v1/sessions/start", api_key=None, headers=bearer(la_token))
        await client.call("/v1/sessions/keep-alive", api_key=None, headers=bearer(la_token))
        await sandbox.gateway.flush_touches()
        await asyncio.sleep(0.3)  # the socket's close recorded
        await room_holder_and_forgetting(sandbox.gateway.sessions.repository)
        await sweeps_and_hand_offs(sandbox.gateway)
        before_usage = len(COMMANDS.sent)
        await admin_usage(client)
        usage_finds = [command for _, command in COMMANDS.sent[before_usage:]
                       if command.get("find") == "avatar_sessions"]
    finally:
        COMMANDS.recording = False
    assert usage_finds, "the usage query was not captured"
    gateway_db = sandbox.settings.mongodb_uri.rsplit("/", 1)[-1].split("?")[0]
    sent = [(db, command) for db, command in COMMANDS.sent if db == gateway_db]
    assert len(sent) > 10, "the gateway's commands were not captured"
    client_ = pymongo.MongoClient(sandbox.settings.mongodb_uri)
    scanned, seen = [], set()
    try:
        db = client_.get_default_database()
        for _, command in sent:
            name = next(iter(command))
            collection = command[name]
            query = filter_of(command)
            key = json.dumps([name, collection, shape(query)], sort_keys=True, default=str)
            if key in seen or (collection, name) in KNOWN_SCANS:
                continue
            seen.add(key)
            if name == "findAndModify":
                scanned.append((command, ["findAndModify"]))
                continue
            if name == "insert" or not query:
                continue
            explained = db.command("explain", {"find": collection, "filter": query})
            plan = stages(explained["queryPlanner"]["winningPlan"])
            if "COLLSCAN" in plan or "IXSCAN" not in plan:
                scanned.append((command, plan))
    finally:
        client_.close()
    assert not scanned, "\n".join(f"{plan}: {json.dumps(command, default=str)[:300]}" for command, plan in scanned)
