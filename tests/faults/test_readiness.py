"""The probes against a real MongoDB gone, in both ways it goes: refusing connections (its process stopped) and
hanging (its process frozen with SIGSTOP: connections accepted by the kernel, nothing answered). A gateway process
(DB_TIMEOUT left at its 5 s default) must answer /readyz 503 mongodb_unavailable and /healthz 200 within 100 ms,
measured over 20 requests each on a new connection, as a kubelet makes them — while the hanging MongoDB also holds
every worker of the store's executor and a queue of calls behind them — and /readyz 200 again within a heartbeat or
two of MongoDB's return after a 4 s outage (handlers/operations.py states the rule)."""
import asyncio
import http.client
import json
import os
import signal
import statistics
import time

import pytest

from sandbox.mongo import MongoServer
from sandbox.stack import with_database
from tests.helpers.client import GatewayClient, eventually
from tests.helpers.processes import in_background

pytestmark = pytest.mark.faults

HEARTBEAT = 0.5
REQUESTS = 20
BOUND = 0.1  # seconds: well under Kubernetes' default probe timeout (1 s)
OUTAGE = 4.0  # seconds MongoDB is away
LOAD = 40  # calls on MongoDB sent while it hangs: DB_WORKERS (8) hang, the rest queue behind them


def probe(port, path, count=REQUESTS):
    """`count` GETs of `path`, one after another, each on a new connection: [(seconds, status, body)]."""
    answers = []
    for _ in range(count):
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        answers.append((time.perf_counter() - started, response.status, json.loads(body) if body else None))
    return answers


def summary(answers):
    times = sorted(seconds * 1000 for seconds, _, _ in answers)
    return (f"max {times[-1]:.1f} ms, median {statistics.median(times):.1f} ms, min {times[0]:.1f} ms "
            f"over {len(times)}")


async def ready_status(gateway):
    _, status, body = (await in_background(probe, gateway.port, "/readyz", 1))[0]
    return status, (body or {}).get("reason")


@pytest.mark.parametrize("outage", ["refused", "hanging"])
@pytest.mark.gen_test(timeout=120)
async def test_probes_answer_within_100ms_whatever_mongodb_does(world, processes, tmp_path, outage):
    mongo = MongoServer(tmp_path / "gateway-db").start()
    sandbox = world(mongo.uri, LEASE_HEARTBEAT=str(HEARTBEAT))
    sandbox.env["MONGODB_URI"] = with_database(mongo.uri, "probes")
    gateway = await processes(sandbox.env, "gateway")
    client = GatewayClient(gateway.url)
    frozen = False
    load = []
    report = [f"\n{outage}:"]
    try:
        assert (await client.call("/v1/streaming.create_token")).status == 200  # the customer's config cached
        healthy = await in_background(probe, gateway.port, "/readyz")
        assert {(status, json.dumps(body)) for _, status, body in healthy} == {(200, '{"status": "ready"}')}
        report.append(f"  /readyz healthy: {summary(healthy)}")

        if outage == "refused":
            await in_background(mongo.stop)
        else:
            os.kill(mongo.process.pid, signal.SIGSTOP)
            frozen = True
            # Calls that need MongoDB: the first DB_WORKERS hang in the executor, the others wait behind them.
            load = [asyncio.ensure_future(client.call("/v1/streaming.create_token")) for _ in range(LOAD)]
        gone = time.monotonic()
        await eventually(lambda: _is(gateway, 503), timeout=5, interval=0.05)
        report.append(f"  /readyz 503 {time.monotonic() - gone:.2f} s after MongoDB went")
        if load:
            assert not any(call.done() for call in load)  # the executor is held and queued on

        unready = await in_background(probe, gateway.port, "/readyz")
        alive = await in_background(probe, gateway.port, "/healthz")
        report.append(f"  /readyz down: {summary(unready)}")
        report.append(f"  /healthz down: {summary(alive)}")
        if load:
            report.append(f"  meanwhile {sum(not call.done() for call in load)} of {LOAD} calls on MongoDB waiting")
        for _, status, body in unready:
            assert status == 503, body
            assert body["reason"] == "mongodb_unavailable" and body["status"] == "unavailable"
            assert body["code"] == 503 and body["message"].startswith("not ready: MongoDB")
        assert {(status, json.dumps(body)) for _, status, body in alive} == {(200, '{"status": "ok"}')}
        for name, answers in (("/readyz", unready), ("/healthz", alive)):
            assert max(seconds for seconds, _, _ in answers) < BOUND, (name, summary(answers))

        # An outage longer than 3 x LEASE_HEARTBEAT + 1 s: the heartbeat is late too, and must succeed again before
        # the process is ready.
        await asyncio.sleep(max(0.0, gone + OUTAGE - time.monotonic()))
        if outage == "refused":
            await in_background(mongo.start)  # same port and storage
        else:
            os.kill(mongo.process.pid, signal.SIGCONT)
            frozen = False
        back = time.monotonic()
        await eventually(lambda: _is(gateway, 200), timeout=10, interval=0.05)
        recovered = time.monotonic() - back
        report.append(f"  /readyz 200 {recovered:.2f} s after MongoDB came back (LEASE_HEARTBEAT {HEARTBEAT} s)")
        assert recovered < 2 * HEARTBEAT + 1.0
        if load:
            answers = await asyncio.gather(*load)
            report.append(f"  the {LOAD} calls answered {sorted({reply.status for reply in answers})}")
            assert all(reply.status in (200, 503) for reply in answers)
        assert (await client.call("/v1/streaming.create_token")).status == 200
        print("\n".join(report))
        assert "Traceback" not in gateway.log()
    finally:
        if frozen:
            os.kill(mongo.process.pid, signal.SIGCONT)
        gateway.kill()
        mongo.stop()


async def _is(gateway, status):
    return (await ready_status(gateway))[0] == status
