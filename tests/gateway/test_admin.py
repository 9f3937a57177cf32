"""The admin API (handlers/admin.py) and what it stands on: usage per account and provider (services/usage.py), words
kept only as long as allowed, and erasure on request (services/erasure.py). Words are looked for in every collection
of the gateway's database, as stored."""
import asyncio
import json
import logging
import time

import pymongo
import pytest
from tornado.websocket import websocket_connect

from domain.tokens import customer_id
from sandbox.stack import DEMO_API_KEY
from tests.helpers.client import GatewayClient, eventually
from tests.helpers.flows import assert_error, bearer, minted, open_session, ws_url

ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def admin_sandbox(make_sandbox, **settings):
    sandbox = await make_sandbox(ADMIN_TOKEN=ADMIN_TOKEN, **settings)
    return sandbox, GatewayClient(sandbox.gateway_url)


def stored_with(sandbox, phrase):
    """(collection, document) of every document of the gateway's database that holds `phrase`."""
    client = pymongo.MongoClient(sandbox.settings.mongodb_uri)
    try:
        db = client.get_default_database()
        return [(name, doc) for name in db.list_collection_names() for doc in db[name].find()
                if phrase.lower() in json.dumps(doc, default=str).lower()]
    finally:
        client.close()


async def heygen_session(client, conversation_id, text, stop=True, seconds=0.0):
    """A started HeyGen session that repeats `text` (and is stopped); its id."""
    _, session = await open_session(client, conversation_id=conversation_id)
    sid = session["session_id"]
    assert (await client.call("/v1/streaming.start", {"session_id": sid})).status == 200
    task = await client.call("/v1/streaming.task", {"session_id": sid, "text": text, "task_type": "repeat"})
    assert task.status == 200, task.json
    await asyncio.sleep(seconds)
    if stop:
        assert (await client.call("/v1/streaming.stop", {"session_id": sid})).status == 200
    return sid


# --- usage ------------------------------------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_usage_per_account_and_provider_matches_what_was_done(make_sandbox):
    sandbox, client = await admin_sandbox(make_sandbox)
    sandbox.petya.update_account_config(DEMO_API_KEY, accountId="acct-A")
    sandbox.petya.create_account("other-key")  # no accountId: counted under the gateway's customer id
    other = GatewayClient(sandbox.gateway_url, "other-key")
    began = time.time()
    await heygen_session(client, "usage-1", "One", seconds=1.0)
    la_id, la_token = await minted(client, conversation_id="usage-2")
    la_started = time.time()
    assert (await client.call("/v1/sessions/start", api_key=None, headers=bearer(la_token))).status == 201
    await heygen_session(other, "usage-3", "Two", seconds=0.5)
    await asyncio.sleep(0.5)
    reply = await client.call(f"/admin/usage?from={began - 1:.3f}&to={time.time() + 60:.3f}", method="GET",
                              headers=ADMIN, api_key=None)
    asked = time.time()
    assert reply.status == 200, reply.json
    accounts = {row["accountId"]: row for row in reply.json["accounts"]}
    other_id = customer_id(sandbox.settings.gateway_secret, "other-key")
    assert set(accounts) == {"acct-A", other_id}
    a = accounts["acct-A"]["providers"]
    assert a["heygen"]["sessions"] == 1 and a["heygen"]["seconds"] == pytest.approx(1.0, abs=0.5)
    assert a["heygen"]["estimatedCredits"] is None  # HeyGen's rate is not published
    assert a["liveavatar"]["sessions"] == 1  # still live: counted up to now
    assert a["liveavatar"]["seconds"] == pytest.approx(asked - la_started, abs=0.5)
    assert a["liveavatar"]["estimatedCredits"] == pytest.approx(2 * a["liveavatar"]["seconds"] / 60, abs=0.001)
    assert accounts[other_id]["providers"] == {"heygen": {"sessions": 1, "seconds": pytest.approx(0.5, abs=0.5),
                                                          "estimatedCredits": None}}
    only = await client.call("/admin/usage?accountId=acct-A", method="GET", headers=ADMIN, api_key=None)
    assert [row["accountId"] for row in only.json["accounts"]] == ["acct-A"]
    before = await client.call(f"/admin/usage?to={began - 10:.3f}", method="GET", headers=ADMIN, api_key=None)
    assert before.json["accounts"] == []
    assert la_id  # (the live one is stopped by the sandbox's teardown)


@pytest.mark.gen_test(timeout=60)
async def test_usage_counts_live_ended_and_edge_spanning_sessions_once(make_sandbox):
    """Sessions recorded at chosen times around the window [100, 200): live, ended, spanning either edge, ended
    before it, created at its end, ended by a version that left the live-only fields, and recorded by a version that
    kept none (given them by the backfill at start); the whole report and per account."""
    sandbox, _ = await admin_sandbox(make_sandbox)
    sessions, usage = sandbox.gateway.sessions.repository, sandbox.gateway.usage

    async def record(sid, created, started=None, ended=None, account=None, customer="cust-X"):
        await sessions.create(sid, "liveavatar", "liveavatar", None, customer, None, created, account_id=account,
                              started_at=started)
        if ended is not None:
            assert await sessions.claim_end(sid, "stopped", ended, hand_off=False)

    await record("before", 50, 51, 99, account="acct-A")  # ended before the window: not counted
    await record("over-start", 90, 91, 120, account="acct-A")  # 20 s in the window
    await record("on-start", 95, 95, 100, account="acct-A")  # ended as it opens: counted, 0 s
    await record("inside", 110, 115, 125, account="acct-B")  # 10 s
    await record("over-end", 190, 195, 260, account="acct-A")  # 5 s
    await record("at-end", 200, 200, 210, account="acct-A")  # created as it closes: not counted
    await record("live", 150, 160)  # live, no accountId: counted under its customer, up to the window's end: 40 s
    await record("live-unstarted", 170, customer="cust-Y")  # live, never started: counted, 0 s
    await record("live-later", 250, 250)  # created after the window: not counted
    await record("old-end", 120, 130, 140, account="acct-B")  # 10 s
    await record("old-end-before", 60, 60, 90, account="acct-B")  # ended before the window: not counted
    raw = pymongo.MongoClient(sandbox.settings.mongodb_uri)
    try:
        collection = raw.get_default_database()["avatar_sessions"]
        # An older version's end left the live-only fields; a session of a version that kept none, live and ended.
        for sid, created in (("old-end", 120.0), ("old-end-before", 60.0)):
            collection.update_one({"session_id": sid}, {"$set": {"live_created_at": created}})
        for sid, created, ended in (("older-live", 105.0, None), ("older-ended", 80.0, 150.0)):
            document = {"session_id": sid, "provider": "heygen", "conversation_id": sid, "customer": "cust-Z",
                        "status": "started" if ended is None else "ended", "created_at": created,
                        "last_activity_at": created, "started_at": created, "ended_at": ended}
            collection.insert_one({k: v for k, v in document.items() if v is not None})
    finally:
        raw.close()
    await sessions.backfill()  # what every process does at start

    report = await usage.report(100.0, 200.0)
    got = {row["accountId"]: {p: (t["sessions"], t["seconds"]) for p, t in row["providers"].items()}
           for row in report["accounts"]}
    assert got == {"acct-A": {"liveavatar": (3, 25.0)}, "acct-B": {"liveavatar": (2, 20.0)},
                   "cust-X": {"liveavatar": (1, 40.0)}, "cust-Y": {"liveavatar": (1, 0.0)},
                   "cust-Z": {"heygen": (2, 145.0)}}  # older-live: 95 s, older-ended: 50 s
    for account in ("acct-A", "acct-B", "cust-X", "cust-Z", "nobody"):
        only = await usage.report(100.0, 200.0, account)
        assert {row["accountId"] for row in only["accounts"]} == ({account} & set(got))
        assert [row for row in report["accounts"] if row["accountId"] == account] == only["accounts"]


@pytest.mark.gen_test(timeout=60)
async def test_admin_api_needs_its_token_and_is_off_without_one(make_sandbox):
    _, client = await admin_sandbox(make_sandbox)
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": ADMIN_TOKEN}):
        assert_error(await client.call("/admin/usage", method="GET", headers=headers, api_key=None), 401, "ADMIN")
        assert_error(await client.call("/admin/conversations/x", method="DELETE", headers=headers, api_key=None),
                     401)
    assert_error(await client.call("/admin/usage?from=abc", method="GET", headers=ADMIN, api_key=None), 400, "from")
    off = GatewayClient((await make_sandbox()).gateway_url)
    assert_error(await off.call("/admin/usage", method="GET", headers=ADMIN, api_key=None), 404)
    assert_error(await off.call("/admin/conversations/x", method="DELETE", headers=ADMIN, api_key=None), 404)


# --- retention --------------------------------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_retention_deletes_a_delivered_sessions_words_and_keeps_a_waiting_ones(make_sandbox):
    sandbox, client = await admin_sandbox(make_sandbox, TRANSCRIPT_RETENTION_DAYS=str(2 / 86400))  # 2 seconds
    delivered = await heygen_session(client, "kept-2s", "Purple elephants dance at dawn")
    await eventually(lambda: sandbox.petya.get_conversation("kept-2s"), timeout=10)
    sandbox.petya.fail_status = 503  # Petya down: the next hand-off waits
    waiting = await heygen_session(client, "waiting", "Orange giraffes sing at dusk")
    assert stored_with(sandbox, "Purple elephants") and stored_with(sandbox, "Orange giraffes")
    await asyncio.sleep(2.5)
    await eventually(lambda: not stored_with(sandbox, "Purple elephants"), timeout=5)
    assert stored_with(sandbox, "Orange giraffes")  # its hand-off still waits on Petya: kept
    record = await sandbox.gateway.sessions.get(delivered)
    assert record.words_deleted_at and record.provider == "heygen" and record.end_reason == "stopped"
    assert record.started_at and record.ended_at  # what usage needs stays
    usage = await client.call("/admin/usage", method="GET", headers=ADMIN, api_key=None)
    assert sum(row["sessions"] for row in usage.json["accounts"]) == 2
    assert (await sandbox.gateway.sessions.get(waiting)).words_deleted_at is None


# --- erasure ----------------------------------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_erasure_of_a_finished_and_a_live_conversation(make_sandbox, caplog):
    sandbox, client = await admin_sandbox(make_sandbox)
    caplog.set_level(logging.INFO)
    finished = await heygen_session(client, "erase-me", "Silver turtles whisper secrets")
    await eventually(lambda: sandbox.petya.get_conversation("erase-me"), timeout=10)
    token, session = await open_session(client, conversation_id="erase-me")  # the same conversation, live
    live = session["session_id"]
    ws = await websocket_connect(ws_url(sandbox, live, token))
    assert (await client.call("/v1/streaming.start", {"session_id": live})).status == 200
    await client.call("/v1/streaming.task", {"session_id": live, "text": "Golden owls keep secrets",
                                             "task_type": "repeat"})
    la_id, la_token = await minted(client, conversation_id="erase-me")  # and a LiveAvatar one
    assert (await client.call("/v1/sessions/start", api_key=None, headers=bearer(la_token))).status == 201
    sandbox.liveavatar.user_says(la_id, "Crimson foxes hide secrets")
    deliveries = len(sandbox.petya.deliveries("erase-me"))
    assert stored_with(sandbox, "Golden owls") and stored_with(sandbox, "Silver turtles")

    reply = await client.call("/admin/conversations/erase-me", method="DELETE", headers=ADMIN, api_key=None)
    assert reply.status == 200, reply.json
    assert reply.json == {"conversationId": "erase-me", "sessions": 3, "turns": reply.json["turns"],
                          "upstreamDeletions": 1}
    assert reply.json["turns"] >= 2
    assert sandbox.heygen.sessions[live].status == "closed"  # stopped upstream
    assert sandbox.liveavatar.sessions[la_id].status == "stopped"
    assert sandbox.liveavatar.sessions[la_id].events_deleted  # LiveAvatar got its delete
    while await asyncio.wait_for(ws.read_message(), 5) is not None:  # the live socket ends
        pass
    ws.close()
    await asyncio.sleep(1)  # sweeps and the erasure's second pass run meanwhile
    for phrase in ("Silver turtles", "Golden owls", "Crimson foxes"):
        assert not stored_with(sandbox, phrase), phrase
    assert len(sandbox.petya.deliveries("erase-me")) == deliveries  # nothing handed off for it afterwards
    assert not any(p in caplog.text for p in ("Silver turtles", "Golden owls", "Crimson foxes"))
    assert "conversation erase-me erased: 3 sessions" in caplog.text
    repeat = await client.call("/admin/conversations/erase-me", method="DELETE", headers=ADMIN, api_key=None)
    assert repeat.json == {"conversationId": "erase-me", "sessions": 0, "turns": 0, "upstreamDeletions": 0}
    assert (await sandbox.gateway.sessions.get(finished)).erased_at


@pytest.mark.gen_test(timeout=60)
async def test_liveavatars_delete_is_retried_until_it_succeeds(make_sandbox):
    from services import erasure

    sandbox, client = await admin_sandbox(make_sandbox)
    erasure.UPSTREAM_RETRY_INITIAL = 0.1
    try:
        la_id, la_token = await minted(client, conversation_id="erase-retry")
        assert (await client.call("/v1/sessions/start", api_key=None, headers=bearer(la_token))).status == 201
        sandbox.liveavatar.events_delete_fail_status = 500
        reply = await client.call("/admin/conversations/erase-retry", method="DELETE", headers=ADMIN, api_key=None)
        assert reply.json["upstreamDeletions"] == 1
        await eventually(lambda: len(sandbox.liveavatar.recorder.calls(f"/v1/sessions/{la_id}/events")) >= 3)
        assert not sandbox.liveavatar.sessions[la_id].events_deleted
        sandbox.liveavatar.events_delete_fail_status = None
        await eventually(lambda: sandbox.liveavatar.sessions[la_id].events_deleted, timeout=5)
        async def asked_no_more():  # (an ask under way when it succeeded may plan one more: it finds it done)
            return (await sandbox.gateway.sessions.get(la_id)).upstream_erase_at is None
        await eventually(asked_no_more, timeout=5)
    finally:
        erasure.UPSTREAM_RETRY_INITIAL = 5.0


@pytest.mark.gen_test(timeout=60)
async def test_the_databases_ttl_index_backs_the_sweep_up(make_sandbox):
    """At the hand-off the session's turn reports get its expiry under a TTL index: the database deletes them even
    with no gateway running (the sweep, on time, is tested above)."""
    sandbox, client = await admin_sandbox(make_sandbox, TRANSCRIPT_RETENTION_DAYS="1.5")
    sid = await heygen_session(client, "ttl", "Indigo whales hum softly")
    await eventually(lambda: sandbox.petya.get_conversation("ttl"), timeout=10)
    await eventually(lambda: stored_with(sandbox, "Indigo whales")[0][1].get("expire_at"), timeout=5)
    record = await sandbox.gateway.sessions.get(sid)
    assert record.words_expire_at == pytest.approx(record.flushed_at + 1.5 * 86400, abs=1)
    client_ = pymongo.MongoClient(sandbox.settings.mongodb_uri)
    try:
        turns = client_.get_default_database()["turn_reports"]
        [report] = turns.find({"session_id": sid})
        assert report["expire_at"].timestamp() == pytest.approx(record.words_expire_at, abs=1)
        ttl = [(i["key"], i["expireAfterSeconds"]) for i in turns.index_information().values()
               if "expireAfterSeconds" in i]
        assert ttl == [([("expire_at", 1)], 0)]
    finally:
        client_.close()
