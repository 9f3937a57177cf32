"""LiveAvatar's rate limit and per-customer session quotas under a burst of concurrent starts from several customers,
over two gateway processes sharing MongoDB."""
import asyncio
import json
import pathlib
import subprocess
import sys
import time

import pytest

from domain.errors import TooManyRequests
from handlers.app import Gateway
from handlers.errors import status_of
from sandbox.liveavatar import DEFAULT_AVATAR_ID
from services.ratelimit import RateLimiter
from tests.gateway.test_query_plans import COMMANDS
from tests.helpers.client import GatewayClient, eventually
from tests.helpers.flows import open_session

ROOT = pathlib.Path(__file__).resolve().parents[2]

QUOTAS = {"quota-a": 2, "quota-b": 2, "quota-c": 1, "quota-d": None}  # None: MAX_CONCURRENT_SESSIONS (2)


async def burst(sandbox, clients_by_key, per_customer=6):
    """Every customer asks for `per_customer` LiveAvatar sessions at once, alternating the two gateways."""
    async def mint(key, n):
        """As a well-behaved page does: a rate-limit 429 is tried again after its Retry-After (twice at most)."""
        client = clients_by_key[key][n % 2]
        for _ in range(3):
            reply = await client.call("/v1/sessions/token", {"conversation_id": f"{key}-{n}"})
            answers.append((key, reply))
            if reply.status != 429 or reply.json["code"] != 429:
                return
            await asyncio.sleep(int(reply.headers["Retry-After"]))
    answers = []
    await asyncio.gather(*[mint(key, n) for key in QUOTAS for n in range(per_customer)])
    return answers


async def two_gateways(make_sandbox, **settings):
    sandbox = await make_sandbox(MAX_CONCURRENT_SESSIONS="2", **settings)
    other = await Gateway.build(sandbox.settings).start()
    clients = {}
    for key, quota in QUOTAS.items():
        sandbox.petya.create_account(key, liveAvatar={"avatarId": DEFAULT_AVATAR_ID},
                                     **({"maxConcurrentSessions": quota} if quota else {}))
        clients[key] = (GatewayClient(sandbox.gateway_url, key), GatewayClient(f"http://127.0.0.1:{other.port}", key))
    # Each process has seen the other's lease, so each takes half of the limit.
    await eventually(lambda: sandbox.gateway.leases.live_processes == other.leases.live_processes == 2)
    return sandbox, other, clients


def check(answers):
    """Every answer is a session, or a clean 429: concurrency_limit_exceeded, or a rate limit with Retry-After."""
    minted, refused = dict.fromkeys(QUOTAS, 0), {"quota": 0, "rate": 0}
    for key, reply in answers:
        if reply.status == 200:
            minted[key] += 1
            continue
        assert reply.status == 429, (reply.status, reply.json)
        if reply.json["code"] == "concurrency_limit_exceeded":
            limit = QUOTAS[key] or 2
            assert reply.json["limit"] == limit and reply.json["running"] >= limit
            refused["quota"] += 1
        else:
            assert reply.json["code"] == 429 and int(reply.headers["Retry-After"]) >= 1
            refused["rate"] += 1
    return minted, refused


@pytest.mark.gen_test(timeout=60)
async def test_burst_with_a_limiter_below_liveavatars_limit_no_upstream_429_and_quotas_hold(make_sandbox):
    sandbox, other, clients = await two_gateways(make_sandbox, LIVEAVATAR_RATE_LIMIT="4", RATE_LIMIT_WAIT="3")
    sandbox.liveavatar.rate_limit = 4  # per second, for our one key
    try:
        started = time.monotonic()
        minted, refused = check(await burst(sandbox, clients))
        took = time.monotonic() - started
        print(f"\nburst (limiter 4/s = LiveAvatar's 4/s, 2 processes): minted {minted}, refused {refused}, "
              f"{sandbox.liveavatar.rate_limited} upstream 429s, {took:.2f}s")
        assert sandbox.liveavatar.rate_limited == 0  # the limiter kept every call within LiveAvatar's budget
        for key, quota in QUOTAS.items():
            assert 1 <= minted[key] <= (quota or 2), (key, minted)  # served, and never over its quota
        assert refused["quota"] > 0
        live = [s for s in sandbox.liveavatar.sessions.values() if s.status != "stopped"]
        assert len(live) == sum(minted.values())
    finally:
        await other.stop()


@pytest.mark.gen_test(timeout=60)
async def test_liveavatars_own_429_reaches_the_browser_only_as_a_clean_429(make_sandbox):
    # Our limiter lets more through than LiveAvatar takes (a wrong setting, or another user of our key).
    sandbox, other, clients = await two_gateways(make_sandbox, LIVEAVATAR_RATE_LIMIT="50", RATE_LIMIT_WAIT="0.2")
    sandbox.liveavatar.rate_limit = 2
    try:
        minted, refused = check(await burst(sandbox, clients))
        upstream_429s = sandbox.liveavatar.rate_limited
        print(f"\nburst (limiter 50/s, LiveAvatar 2/s): minted {minted}, refused {refused}, "
              f"{upstream_429s} upstream 429s")
        assert upstream_429s >= 1 and refused["rate"] >= 1
        # The 429 is honoured: for its Retry-After this process sends nothing more there (no retry storm).
        sandbox.petya.create_account("honour", liveAvatar={"avatarId": DEFAULT_AVATAR_ID}, maxConcurrentSessions=50)
        client = GatewayClient(sandbox.gateway_url, "honour")
        await asyncio.sleep(1.1)  # a fresh window upstream
        sandbox.liveavatar.rate_limit = 1
        first, refused_upstream = [await client.call("/v1/sessions/token", {}) for _ in range(2)]
        assert first.status == 200 and refused_upstream.status == 429
        assert refused_upstream.json["code"] == 429 and int(refused_upstream.headers["Retry-After"]) >= 1
        calls = len(sandbox.liveavatar.recorder.calls("/v1/sessions/token"))
        held_back = await client.call("/v1/sessions/token", {})
        assert held_back.status == 429 and int(held_back.headers["Retry-After"]) >= 1
        assert len(sandbox.liveavatar.recorder.calls("/v1/sessions/token")) == calls
        await asyncio.sleep(1.1)
        assert (await client.call("/v1/sessions/token", {})).status == 200
    finally:
        await other.stop()


@pytest.mark.gen_test(timeout=60)
async def test_starts_far_below_the_quota_are_not_counted_each_time_and_the_quota_holds_across_processes(
        make_sandbox):
    """Each process bounds a customer's live sessions by its last count plus the sessions opened since (the
    customer's `opened`, which every process adds to): under the quota it admits without counting; at it, it counts,
    and refuses exactly at the limit, whichever process opened the sessions."""
    sandbox, other, _ = await two_gateways(make_sandbox)
    sandbox.petya.create_account("counted", liveAvatar={"avatarId": DEFAULT_AVATAR_ID}, maxConcurrentSessions=8)
    gateways = (GatewayClient(sandbox.gateway_url, "counted"), GatewayClient(f"http://127.0.0.1:{other.port}",
                                                                             "counted"))
    try:
        COMMANDS.sent.clear()
        COMMANDS.recording = True
        replies = [await gateways[n % 2].call("/v1/sessions/token", {"conversation_id": f"c-{n}"}) for n in range(9)]
        COMMANDS.recording = False
        assert [r.status for r in replies] == [200] * 8 + [429], [(r.status, r.json) for r in replies]
        assert replies[8].json["running"] == 8  # counted at the limit: exact, sessions of both processes included
        counts = [command for _, command in COMMANDS.sent if command.get("aggregate") == "avatar_sessions"
                  and "customer_live" in str(command.get("pipeline"))]
        assert 2 <= len(counts) < 9, len(counts)  # a first count in each process, and at the limit; not every start
    finally:
        COMMANDS.recording = False
        await other.stop()


@pytest.mark.gen_test(timeout=30)
async def test_heygen_quota_is_checked_before_heygen_is_called(make_sandbox):
    sandbox = await make_sandbox(MAX_CONCURRENT_SESSIONS="1")
    client = GatewayClient(sandbox.gateway_url)
    _, session = await open_session(client)
    calls = len(sandbox.heygen.recorder.calls("/v1/streaming.new"))
    reply = await client.call("/v1/streaming.new", {"version": "v2"})
    assert reply.status == 429 and reply.json == {
        "code": "concurrency_limit_exceeded", "message": reply.json["message"], "limit": 1, "running": 1}
    assert len(sandbox.heygen.recorder.calls("/v1/streaming.new")) == calls
    assert (await client.call("/v1/streaming.stop", {"session_id": session["session_id"]})).status == 200
    assert (await client.call("/v1/streaming.new", {"version": "v2"})).status == 200  # ended: the slot is free


@pytest.mark.gen_test
async def test_limiter_keeps_any_one_second_within_its_share_and_refuses_past_its_wait():
    clock = [100.0]
    limiter = RateLimiter(6, processes=lambda: 2, clock=lambda: clock[0])  # 3 per second for this process
    for _ in range(3):
        await limiter.acquire("sessions/token", max_wait=0)
    with pytest.raises(Exception) as refused:
        await limiter.acquire("sessions/token", max_wait=0.5)
    assert status_of(refused.value) == 429 and refused.value.retry_after >= 1
    await limiter.acquire("sessions/stop", max_wait=0)  # endpoints are counted apart
    clock[0] += 1.01
    await limiter.acquire("sessions/token", max_wait=0)
    limiter.upstream_refused("sessions/token", 5)
    clock[0] += 2
    with pytest.raises(TooManyRequests):
        await limiter.acquire("sessions/token", max_wait=1)


@pytest.mark.gen_test(timeout=60)
async def test_max_sockets_is_the_relays_bound_and_the_next_handshake_is_told_to_retry(make_sandbox):
    from tornado.httpclient import HTTPClientError
    from tornado.websocket import websocket_connect

    from tests.helpers.client import GatewayClient
    from tests.helpers.flows import open_session, ws_url

    sandbox = await make_sandbox(MAX_SOCKETS="2")
    client = GatewayClient(sandbox.gateway_url)
    held = []
    for i in range(2):
        token, session = await open_session(client, conversation_id=f"bound-{i}")
        held.append(await websocket_connect(ws_url(sandbox, session["session_id"], token)))
    token, session = await open_session(client, conversation_id="bound-2")
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(ws_url(sandbox, session["session_id"], token))
    assert refused.value.code == 503
    assert refused.value.response.headers["Retry-After"]
    assert "MAX_SOCKETS" in json.loads(refused.value.response.body)["message"]
    held.pop().close()
    await asyncio.sleep(0.2)
    third = await websocket_connect(ws_url(sandbox, session["session_id"], token))  # room again
    third.close()
    for ws in held:
        ws.close()


def test_the_process_raises_its_open_files_limit_for_max_sockets():
    """At start (server.py): the soft limit raised to what MAX_SOCKETS needs, as far as the hard limit allows."""
    script = ("import json, resource; soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
              "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); import server; "
              "print(json.dumps([*server.raise_open_files(5000), hard]))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    needed, now, hard = json.loads(result.stdout)
    assert needed == 2 * 5000 + 1024
    assert now == (needed if hard == -1 or hard >= needed else hard) and now > 256
