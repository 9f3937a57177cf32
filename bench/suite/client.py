"""The load client's plumbing, shared by the parts: REST calls, sessions made through the gateway or in the emulator
(made once, reused by every part), WebSocket connect (with the 503 retry), opening and closing many sockets, and the
bench-side MongoDB checks (turns stored, socket closes recorded). Every function takes the World first."""
import asyncio
import json
import time

import pymongo
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from sandbox.stack import with_database
from suite.common import CUSTOMER_KEY, GATEWAY_DB, NEW_SESSION_BODY, bounded_gather, log, wait_for

# --- HTTP and sessions ------------------------------------------------------------------------------------------

async def post(world, url, body, headers):
    request = HTTPRequest(url, method="POST", body=json.dumps(body),
                          headers={"Content-Type": "application/json", **headers})
    response = await world.http.fetch(request, raise_error=False)
    payload = json.loads(response.body) if response.body else None
    if response.code != 200:
        raise RuntimeError(f"POST {url.split('/', 3)[-1]} answered {response.code}: {payload}")
    return payload


async def gateway_session(world, start=False):
    """create_token, then streaming.new with that token (as HeyGen's SDK does), through the gateway."""
    gw = world.gateway_url
    token = (await post(world, gw + "/v1/streaming.create_token", {}, {"X-Api-Key": CUSTOMER_KEY}))["data"]["token"]
    new = await post(world, gw + "/v1/streaming.new", NEW_SESSION_BODY, {"Authorization": f"Bearer {token}"})
    session_id = new["data"]["session_id"]
    if start:
        await post(world, gw + "/v1/streaming.start", {"session_id": session_id}, {"X-Api-Key": CUSTOMER_KEY})
    return session_id, token


async def direct_session(world):
    """The same flow straight against the HeyGen emulator, with our HeyGen key."""
    hg = world.served["heygen"].url
    key = {"x-api-key": world.heygen.api_key}
    token = (await post(world, hg + "/v1/streaming.create_token", {}, key))["data"]["token"]
    new = await post(world, hg + "/v1/streaming.new", NEW_SESSION_BODY, {"Authorization": f"Bearer {token}"})
    session_id = new["data"]["session_id"]
    await post(world, hg + "/v1/streaming.start", {"session_id": session_id}, key)
    return session_id, token


async def gateway_pool(world, n):
    """n sessions made through the gateway (create_token + streaming.new), made once and reused by the parts."""
    missing = n - len(world.gateway_sessions)
    if missing > 0:
        log(f"creating {missing} sessions through the gateway ({world.args.setup_concurrency} at a time)")
        t0 = time.perf_counter()
        made = await bounded_gather([lambda: gateway_session(world) for _ in range(missing)],
                                    world.args.setup_concurrency)
        world.gateway_sessions.extend(made)
        world.results["meta"].setdefault("gateway_sessions_per_s", round(missing / (time.perf_counter() - t0), 1))
    return world.gateway_sessions[:n]


def direct_pool(world, n):
    """n sessions made in the emulator itself (as streaming.new with a token does), for sockets straight to the
    emulator or through an anchor: neither authenticates, so they present HeyGen's own session token."""
    while len(world.direct_sessions) < n:
        token = world.heygen.issue_token()
        session = world.heygen.create_session(dict(NEW_SESSION_BODY), token, world.heygen.known_avatars[0], 3600)
        session.status = "connected"
        world.direct_sessions.append((session.session_id, token))
    return world.direct_sessions[:n]


async def session_pairs(world, target, n):
    return await gateway_pool(world, n) if target in ("gateway", "relayed") else direct_pool(world, n)


# --- WebSocket clients ------------------------------------------------------------------------------------------

async def connect(world, url):
    """websocket_connect, retried as a client would when the gateway answers 503 (its MongoDB queue is full:
    store.run's "session database busy"); the retries are counted in meta.ws_open_503_retries."""
    for attempt in range(40):
        try:
            ws = await websocket_connect(url, max_message_size=16 << 20)
            if world.args.nodelay:
                ws.protocol.set_nodelay(True)  # as browsers do on their sockets
            return ws
        except HTTPClientError as exc:
            if exc.code != 503 or attempt == 39:
                raise
            meta = world.results["meta"]
            meta["ws_open_503_retries"] = meta.get("ws_open_503_retries", 0) + 1
            await asyncio.sleep(0.25)


async def open_sockets(world, target, pairs, reader_sink=None):
    """One socket per (session_id, token) through `target`, `--open-concurrency` at a time; returns the
    clients once the emulator holds every upstream leg."""
    sessions = [world.heygen.sessions[s] for s, _ in pairs]
    await wait_for(lambda: all(not s.sockets for s in sessions), 30, "earlier sockets to close")
    clients = [None] * len(pairs)

    async def open_one(i, session_id, token):
        clients[i] = await connect(world, world.ws_url(target, session_id, token))
    await bounded_gather([lambda i=i, s=s, t=t: open_one(i, s, t) for i, (s, t) in enumerate(pairs)],
                         world.args.open_concurrency)
    await wait_for(lambda: all(len(s.sockets) == 1 for s in sessions), 60,
                   f"{len(pairs)} {target} sockets to reach HeyGen")
    return clients, sessions


async def close_sockets(world, clients, sessions, target):
    for ws in clients:
        ws.close()
    await wait_for(lambda: all(not s.sockets for s in sessions), 60, "sockets to close")
    if target in ("gateway", "relayed"):
        await gateway_closes_recorded(world, [s.session_id for s in sessions])


# --- what the gateway stored in MongoDB -------------------------------------------------------------------------

def stored_turns(world, session_ids):
    """Mean number of turn reports the gateway holds in MongoDB for these sessions."""
    client = pymongo.MongoClient(with_database(world.mongo.uri, GATEWAY_DB))
    try:
        reports = client[GATEWAY_DB]["turn_reports"]
        counts = [reports.count_documents({"session_id": session_id}) for session_id in session_ids]
    finally:
        client.close()
    return round(sum(counts) / len(counts), 1) if counts else 0


async def gateway_closes_recorded(world, session_ids, timeout=120):
    """Wait until the gateway has recorded every close of these sessions' sockets in MongoDB (it retries each
    close record with backoff while its MongoDB queue is full, so thousands of closes take a while). Returns the
    seconds it took; the longest wait per part is kept in meta.close_records_settle_s."""
    t0 = time.perf_counter()
    collection = world.db[GATEWAY_DB]["avatar_sessions"]
    query = {"session_id": {"$in": session_ids}, "sockets.0": {"$exists": True}}
    while (left := collection.count_documents(query)) > 0:
        if time.perf_counter() - t0 > timeout:
            log(f"warning: {left} sessions still hold open-socket records after {timeout}s")
            break
        await asyncio.sleep(0.2)
    took = round(time.perf_counter() - t0, 2)
    settle = world.results["meta"].setdefault("close_records_settle_s", {})
    settle[world.part] = max(settle.get(world.part, 0), took)
    return took
