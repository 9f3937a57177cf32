"""The operators' view: /metrics (Prometheus), /readyz and /healthz, on the public port or on ADMIN_ADDRESS; JSON
log lines (LOG_FORMAT=json) with the access fields and no secret."""
import asyncio
import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.websocket import websocket_connect

from sandbox.mongo import MongoServer, free_port
from sandbox.stack import Sandbox
from tests.helpers.client import FAST, GatewayClient, eventually
from tests.helpers.flows import WS_PARAMS, avatar_done, open_session, read_events, socket_says, ws_url
from tests.helpers.processes import GatewayProcess
from tests.helpers.store import HeldWorkers

P = "ilianaai_avatar_"


async def scrape(base_url):
    """{(sample name, ((label, value), ...)): value} from GET /metrics."""
    reply = await GatewayClient(base_url, api_key=None).call("/metrics", method="GET")
    assert reply.status == 200, reply.raw
    assert reply.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(reply.raw.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples, name, **labels):
    """The sum over the samples of `name` whose labels include `labels`."""
    return sum(v for (n, have), v in samples.items() if n == name and set(labels.items()) <= set(have))


async def get(base_url, path):
    return await GatewayClient(base_url, api_key=None).call(path, method="GET")


@pytest.mark.gen_test(timeout=30)
async def test_a_whole_session_shows_in_the_metrics(sandbox, client):
    before = await scrape(sandbox.gateway_url)
    token, session = await open_session(client)
    session_id = session["session_id"]
    ws = await websocket_connect(ws_url(sandbox, session_id, token))
    assert (await client.call("/v1/streaming.start", {"session_id": session_id})).status == 200
    task = await client.call("/v1/streaming.task", {"session_id": session_id, "text": "Hello there.",
                                                    "task_type": "repeat"})
    assert task.status == 200
    await avatar_done(sandbox, session_id)
    # Frames HeyGen -> browser: real HeyGen v2 sends the avatar's words as LiveKit data, so the test writes v1-style
    # events on the emulator's socket for the relay to count.
    await socket_says(sandbox, session_id, "Hello there.", task_id=task.data["task_id"])
    await read_events(ws, "avatar_end_message")
    ws.write_message(json.dumps({"type": "ping"}))  # a frame browser -> HeyGen
    sandbox.gateway.metrics._counted_at = None  # not the count cached at the first scrape
    during = await scrape(sandbox.gateway_url)
    assert value(during, P + "live_sessions", provider="heygen", status="started") >= 1
    assert value(during, P + "relayed_sockets") == 1
    await eventually(lambda: sandbox.gateway.metrics.relay.client.frames >= 1)
    assert (await client.call("/v1/streaming.stop", {"session_id": session_id})).status == 200
    await eventually(lambda: sandbox.petya.deliveries("conv-1"))
    ws.close()
    await eventually(lambda: sandbox.gateway.metrics.relay.sockets == 0)
    after = await scrape(sandbox.gateway_url)

    def grew(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew(P + "sessions_ended_total", provider="heygen", reason="stopped") == 1
    assert grew(P + "handoff_attempts_total", outcome="delivered") == 1
    assert grew(P + "handoff_attempts_per_session_count", outcome="delivered") == 1
    for call in ("POST /v1/streaming.create_token", "POST /v1/streaming.new", "POST /v1/streaming.start",
                 "POST /v1/streaming.task", "POST /v1/streaming.stop"):
        assert grew(P + "upstream_request_duration_seconds_count", upstream="heygen", call=call, status="2xx") == 1
    assert grew(P + "upstream_request_duration_seconds_count", upstream="petya",
                call="POST /api/v1/avatar/conversations/:id/status", status="2xx") == 1
    assert grew(P + "upstream_request_duration_seconds_count", upstream="petya") >= 1
    # No session id or conversation id became a label value.
    assert not [key for key in after if session_id in str(key) or "conv-1" in str(key)]
    # Frames both ways, counted by this gateway (its own registry: the counts start at 0).
    assert value(after, P + "relayed_frames_total", direction="upstream_to_client") >= 3
    assert value(after, P + "relayed_frames_total", direction="client_to_upstream") >= 1
    assert value(after, P + "relayed_bytes_total", direction="upstream_to_client") > 100
    assert value(after, P + "relayed_sockets") == 0
    assert value(after, P + "turn_queue_depth") == 0
    assert value(after, P + "turn_queue_capacity") == sandbox.settings.turn_queue_max
    # Defined for the rate limiter and quotas, at 0 until they refuse something.
    for upstream in ("heygen", "liveavatar", "petya"):
        assert (P + "rate_limited_total", (("upstream", upstream),)) in after
    assert (P + "quota_refused_total", ()) in after
    for name in ("reaper_actions_total", "mongodb_errors_total"):
        assert any(key[0] == P + name for key in after), name


@pytest.mark.gen_test(timeout=30)
async def test_the_reaper_and_its_ends_are_counted(make_sandbox):
    sandbox = await make_sandbox(SESSION_IDLE_TIMEOUT="1")
    client = GatewayClient(sandbox.gateway_url)
    before = await scrape(sandbox.gateway_url)
    await open_session(client, conversation_id="idle-1")
    await eventually(lambda: sandbox.petya.deliveries("idle-1"), timeout=10)
    after = await scrape(sandbox.gateway_url)
    assert total(after, P + "reaper_actions_total", kind="idle") - total(before, P + "reaper_actions_total",
                                                                         kind="idle") == 1
    assert total(after, P + "sessions_ended_total", reason="idle") - total(before, P + "sessions_ended_total",
                                                                            reason="idle") == 1


@pytest.mark.gen_test(timeout=30)
async def test_live_sessions_are_counted_at_most_once_per_ttl(sandbox, client):
    gateway_metrics = sandbox.gateway.metrics
    counted = []
    real = gateway_metrics.count_live

    def counting():
        counted.append(1)
        return real()
    gateway_metrics.count_live = counting
    try:
        gateway_metrics._counted_at = None
        await asyncio.gather(*[scrape(sandbox.gateway_url) for _ in range(10)])
        await open_session(client)
        samples = await scrape(sandbox.gateway_url)
    finally:
        gateway_metrics.count_live = real
    assert len(counted) == 1  # ten concurrent scrapes and one more: one aggregate
    assert value(samples, P + "live_sessions", provider="heygen", status="created") == 0  # the cached count


def test_call_labels_have_no_ids_and_are_bounded():
    from observability.metrics import MAX_CALLS_PER_UPSTREAM, call_label
    assert call_label("t1", "GET", "/v1/sessions/0b7c9a2e-5f1d-4c1a-9d7e-2b1f3c4d5e6f/transcript") == \
        "GET /v1/sessions/:id/transcript"
    assert call_label("t1", "POST", "/v1/streaming.new") == "POST /v1/streaming.new"
    assert call_label("t1", "GET", "/api/v1/avatar/conversations/conv%2F1/status") == \
        "GET /api/v1/avatar/conversations/:id/status"
    labels = {call_label("t2", "POST", f"/v1/streaming.{'x' * (n % 30 + 1)}{'y' * (n // 30)}") for n in range(200)}
    assert len(labels) == MAX_CALLS_PER_UPSTREAM + 1 and "other" in labels


# --- readiness and liveness ---------------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_readyz_and_healthz(sandbox):
    ready = await get(sandbox.gateway_url, "/readyz")
    assert ready.status == 200 and ready.json == {"status": "ready"}
    assert (await get(sandbox.gateway_url, "/healthz")).json == {"status": "ok"}
    # A full turn queue: not ready (tasks would be refused), yet alive.
    turns = sandbox.gateway.turns
    turns.capacity = 3  # as if TURN_QUEUE_MAX were 3, and three turns were waiting for MongoDB
    slots = [turns.take_slot() for _ in range(3)]
    full = await get(sandbox.gateway_url, "/readyz")
    assert full.status == 503 and full.json["reason"] == "turn_queue_full" and full.headers["Retry-After"]
    assert full.json["code"] == 503 and "turn queue" in full.json["message"]
    assert (await get(sandbox.gateway_url, "/healthz")).status == 200
    for slot in slots:
        slot.__exit__(None, None, None)
    assert (await get(sandbox.gateway_url, "/readyz")).status == 200


@pytest.mark.gen_test(timeout=30)
async def test_readyz_reads_the_probe_the_heartbeat_and_the_call_queue(sandbox):
    """/readyz's mongodb_unavailable (handlers/operations.py) from each of its sources, none of them asked at the
    request: the probe's last ping failed or is stale, the lease heartbeat late, the store's call queue full."""
    gateway = sandbox.gateway
    store, leases, probe = gateway.store, gateway.leases, gateway.store.probe

    async def reason():
        answer = await get(sandbox.gateway_url, "/readyz")
        return answer.status, (answer.json or {}).get("reason"), (answer.json or {}).get("message", "")

    assert (await reason())[:2] == (200, None)
    probe.failed_at, probe.error = probe.clock() + 60, "ServerSelectionTimeoutError"  # a failure after every answer
    status, why, message = await reason()
    assert (status, why) == (503, "mongodb_unavailable") and "last ping failed (ServerSelectionTimeoutError)" in message
    probe.failed_at = None
    stale, probe.stale = probe.stale, -1  # as if its last answer were older than PROBE_STALE (the probe stuck)
    status, why, message = await reason()
    assert (status, why) == (503, "mongodb_unavailable") and "no answer to a ping" in message
    probe.stale = stale
    # The heartbeat late (it beats every 0.1 s here: its age is set, not its time).
    leases.since_renewed = lambda: 3 * leases.heartbeat + 1.5
    try:
        status, why, message = await reason()
        assert (status, why) == (503, "mongodb_unavailable") and "lease heartbeat" in message
    finally:
        del leases.since_renewed
    held = HeldWorkers(store)  # every worker held, and the queue filled to its count bound behind them
    try:
        await held.hold(store.workers + store.max_queued)
        assert store.busy
        status, why, message = await reason()
        assert (status, why) == (503, "mongodb_unavailable") and "busy" in message and "full" in message
    finally:
        await held.release()
    await eventually(lambda: _ready(reason))


async def _ready(reason):
    return (await reason())[:2] == (200, None)


@pytest.mark.gen_test(timeout=60)
async def test_readyz_is_503_while_mongodb_is_unreachable_and_healthz_stays_200(make_sandbox, tmp_path):
    mongo = MongoServer(tmp_path / "gateway-db").start()
    try:
        sandbox = await make_sandbox(MONGODB_URI=mongo.uri.replace("/?", "/readyz?"), DB_TIMEOUT="1",
                                     ADMIN_ADDRESS=f"127.0.0.1:{free_port()}")
        admin = f"http://127.0.0.1:{sandbox.gateway.admin_port}"
        assert (await get(admin, "/readyz")).status == 200
        before = await scrape(admin)
        mongo.kill()
        # /readyz reads the store's probe, which pings every 0.5 s (bounded by 0.3 s): 503 within about 0.8 s.
        down = await eventually(lambda: _answer_if(admin, "/readyz", 503), timeout=5, interval=0.05)
        assert down.json["reason"] == "mongodb_unavailable", down.json
        assert down.headers["Retry-After"]
        assert (await get(admin, "/healthz")).status == 200  # alive: no reason to restart it
        sandbox.gateway.metrics._counted_at = None
        # Scrapes are answered within LIVE_SESSIONS_WAIT meanwhile; once the count failed, without its gauge.
        after = await eventually(lambda: _without_live_sessions(admin), timeout=10, interval=0.2)
        assert total(after, P + "mongodb_errors_total") > total(before, P + "mongodb_errors_total")
        await asyncio.get_running_loop().run_in_executor(None, mongo.start)  # same port and storage
        await eventually(lambda: _status(admin, "/readyz", 200), timeout=20, interval=0.2)
    finally:
        mongo.kill()


async def _without_live_sessions(base_url):
    samples = await scrape(base_url)
    return None if any(name == P + "live_sessions" for name, _ in samples) else samples


async def _answer_if(base_url, path, status):
    answer = await get(base_url, path)
    return answer if answer.status == status else None


async def _status(base_url, path, status):
    return (await get(base_url, path)).status == status


@pytest.mark.gen_test(timeout=30)
async def test_admin_address_serves_the_operators_routes_and_the_public_port_does_not(make_sandbox):
    port = free_port()
    sandbox = await make_sandbox(ADMIN_ADDRESS=f"127.0.0.1:{port}")
    assert sandbox.gateway.admin_port == port
    admin, public = f"http://127.0.0.1:{port}", sandbox.gateway_url
    for path in ("/metrics", "/readyz", "/healthz"):
        assert (await get(admin, path)).status == 200, path
        hidden = await get(public, path)
        assert hidden.status == 404 and hidden.json["code"] == 404, path
    assert (await get(admin, "/v1/streaming.create_token")).status == 404  # only the operators' routes there
    assert (await GatewayClient(public).call("/v1/streaming.create_token")).status == 200
    assert P + "turn_queue_depth" in (await get(admin, "/metrics")).raw.decode()


@pytest.mark.gen_test(timeout=30)
async def test_readyz_is_503_while_shutting_down(make_sandbox):
    """A stop waits for an in-flight hand-off; meanwhile the admin listener still answers, and /readyz says no."""
    port = free_port()
    sandbox = await make_sandbox(ADMIN_ADDRESS=f"127.0.0.1:{port}", SHUTDOWN_TIMEOUT="10")
    admin = f"http://127.0.0.1:{port}"
    client = GatewayClient(sandbox.gateway_url)
    release = asyncio.Event()
    taken = asyncio.Event()

    async def hold(conversation_id):
        taken.set()
        await release.wait()
    sandbox.petya.on_status = hold
    _, session = await open_session(client, conversation_id="draining")
    assert (await client.call("/v1/streaming.stop", {"session_id": session["session_id"]})).status == 200
    await asyncio.wait_for(taken.wait(), 10)
    stopping = asyncio.ensure_future(sandbox.gateway.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()
    answer = await get(admin, "/readyz")
    assert answer.status == 503 and answer.json["reason"] == "shutting_down"
    assert (await get(admin, "/healthz")).status == 200
    release.set()
    await stopping
    with pytest.raises(ConnectionError):
        await asyncio.open_connection("127.0.0.1", port)  # the admin listener went with the gateway


# --- JSON logs ----------------------------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_json_log_lines_parse_carry_the_access_fields_and_no_secret(mongodb_server_uri, db_name, tmp_path):
    sandbox = Sandbox(mongodb_server_uri, database=db_name, **{**FAST, "LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"})
    sandbox.heygen.seconds_per_word = 0.01
    sandbox.start_upstreams()
    gateway = GatewayProcess(sandbox.env, str(tmp_path / "gateway.log"))
    try:
        await asyncio.get_running_loop().run_in_executor(None, gateway.start)
        client = GatewayClient(gateway.url)
        token, session = await open_session(client)
        session_id = session["session_id"]
        ws = await websocket_connect(f"ws://127.0.0.1:{gateway.port}/v1/ws/streaming.chat?session_id={session_id}"
                                     f"&session_token={token}&{WS_PARAMS}")
        await client.call("/v1/streaming.start", {"session_id": session_id})
        await client.call("/v1/streaming.task", {"session_id": session_id, "text": "Hi", "task_type": "repeat"})
        await avatar_done(sandbox, session_id)
        await client.call("/v1/streaming.new", {}, api_key="wrong-key-123")
        await client.call(f"/v1/streaming.transcript?session_id={session_id}&session_token={token}", method="GET")
        assert (await client.call("/v1/streaming.stop", {"session_id": session_id})).status == 200
        await eventually(lambda: sandbox.petya.deliveries("conv-1"))
        ws.close()
        await asyncio.sleep(0.3)
    finally:
        await asyncio.get_running_loop().run_in_executor(None, gateway.terminate)
        await sandbox.stop()
    lines = [line for line in gateway.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    access = [entry for entry in entries if entry["logger"] == "gateway.access"]
    assert {"method", "path", "status", "duration_ms", "session"} <= set(access[0])
    task = next(entry for entry in access if entry["path"] == "/v1/streaming.task")
    assert task["method"] == "POST" and task["status"] == 200 and task["session"] == session_id
    assert isinstance(task["duration_ms"], float) and task["level"] == "INFO"
    assert task["message"] == f"POST /v1/streaming.task 200 {task['duration_ms']:.1f}ms session={session_id}"
    assert any(entry["path"] == "/v1/ws/streaming.chat" for entry in access)
    assert any(entry["status"] == 401 and entry["level"] == "WARNING" for entry in access)
    assert any(entry["logger"] == "gateway.lifecycle" for entry in entries)
    text = "\n".join(lines)
    for secret in [sandbox.heygen.api_key, sandbox.settings.petya_auth_token, sandbox.settings.gateway_secret,
                   client.api_key, "wrong-key-123", token] + list(sandbox.heygen.tokens):
        assert secret not in text, secret


def test_json_formatter_scrubs_and_keeps_tracebacks():
    from observability.logs import JsonFormatter, TextFormatter
    try:
        raise ValueError("bad url ?session_token=abc.def.ghi")
    except ValueError:
        import sys
        record = logging.LogRecord("gateway", logging.ERROR, __file__, 1, "failed for %s", ("/x?api_key=k3y",),
                                   sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "ERROR" and entry["logger"] == "gateway" and entry["time"].endswith("Z")
    assert entry["message"] == "failed for /x?api_key=***"
    assert "ValueError" in entry["exception"] and "abc.def.ghi" not in entry["exception"]
    text = TextFormatter().format(record)
    assert "k3y" not in text and "abc.def.ghi" not in text and "ValueError" in text
