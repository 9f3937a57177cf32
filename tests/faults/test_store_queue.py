"""The queue in front of the store's MongoDB workers (models/store.py Store.run) with MongoDB hanging: its process
frozen with SIGSTOP (connections accepted by the kernel, nothing answered), so the calls on the workers hang. A burst
beyond the count bound: the calls over it are refused at once, the ones waiting are refused once they have waited the
wait bound (DB_TIMEOUT x 0.5), then new calls are refused at once (the stall) and /readyz says the process is not
ready; the queue never holds more than its count bound. An essential call (the lease heartbeat's write) is not
refused: it waits, and succeeds once MongoDB answers again, ahead of the others. With a healthy MongoDB:
tests/gateway/test_store_queue.py."""
import asyncio
import os
import signal
import time

import pytest

from domain.errors import ServiceUnavailable
from sandbox.mongo import MongoServer
from tests.helpers.client import GatewayClient, eventually
from tests.helpers.store import timed

pytestmark = pytest.mark.faults

DB_TIMEOUT = 3.0  # pymongo's waits: connect and server selection 3 s, a sent command 12 s; the wait bound 1.5 s
BEYOND = 500  # calls of the burst over the count bound
SLACK = 0.5  # seconds a refusal may come after its bound on a loaded machine


@pytest.mark.gen_test(timeout=90)
async def test_with_mongodb_hanging_calls_are_refused_within_the_wait_bound_and_the_queue_stays_bounded(
        make_sandbox, tmp_path):
    mongo = MongoServer(tmp_path / "gateway-db").start()
    frozen = False
    sandbox = None
    try:
        sandbox = await make_sandbox(MONGODB_URI=mongo.uri.replace("/?", "/hanging?"), DB_TIMEOUT=str(DB_TIMEOUT),
                                     LEASE_HEARTBEAT="0.5")
        gateway = sandbox.gateway
        store, tokens, leases = gateway.store, gateway.sessions.token_records, gateway.leases
        assert store.max_wait == DB_TIMEOUT / 2
        client = GatewayClient(sandbox.gateway_url)
        assert (await client.call("/v1/streaming.create_token")).status == 200  # the customer's config cached

        most_waiting = [0]

        async def sample():  # the queue's length, all along
            while True:
                most_waiting[0] = max(most_waiting[0], store.waiting)
                await asyncio.sleep(0.005)
        sampler = asyncio.ensure_future(sample())

        os.kill(mongo.process.pid, signal.SIGSTOP)
        frozen = True
        hung_at = time.perf_counter()
        load = store.workers + store.max_queued + BEYOND
        calls = [asyncio.ensure_future(timed(tokens.find(f"hanging-{i}"))) for i in range(load)]
        await asyncio.sleep(0)  # each call has entered the store
        assert store.running == store.workers and store.waiting == store.max_queued  # the count bound
        at_once = [call.result() for call in calls if call.done()]
        assert len(at_once) >= BEYOND
        assert all(isinstance(outcome, ServiceUnavailable) and outcome.message == "session database busy"
                   for outcome, _ in at_once)

        # The waiting calls are refused at the wait bound, while the workers' calls still hang on MongoDB.
        await eventually(lambda: sum(call.done() for call in calls) >= load - store.workers, timeout=10)
        refused_waiting = time.perf_counter() - hung_at
        on_workers = [call for call in calls if not call.done()]
        assert len(on_workers) <= store.workers
        for outcome, seconds in (call.result() for call in calls if call.done()):
            assert isinstance(outcome, ServiceUnavailable) and outcome.message == "session database busy"
            assert seconds < store.max_wait + SLACK, seconds
        assert refused_waiting < DB_TIMEOUT, "the workers' calls ended first: the stall below is not seen"

        # Stalled: new calls are refused at once and never queue; a browser gets its 503 at once; /readyz says so.
        assert store.stalled and store.busy and store.waiting == 0
        more = [asyncio.ensure_future(timed(tokens.find(f"stalled-{i}"))) for i in range(1000)]
        await asyncio.sleep(0)
        assert all(call.done() and isinstance(call.result()[0], ServiceUnavailable) for call in more)
        assert store.waiting == 0
        started = time.perf_counter()
        reply = await client.call("/v1/streaming.create_token")
        assert reply.status == 503 and reply.headers["Retry-After"] and "busy" in reply.json["message"]
        assert time.perf_counter() - started < SLACK
        ready = await GatewayClient(sandbox.gateway_url, api_key=None).call("/readyz", method="GET")
        assert ready.status == 503 and ready.json["reason"] == "mongodb_unavailable"

        # An essential call is not refused: it waits for a worker, and gets the first one once MongoDB answers.
        now = leases.clock()
        renewed = asyncio.ensure_future(leases.repository.renew(leases.process_id, now, leases.ttl, None))
        await asyncio.sleep(0.2)
        assert not renewed.done()
        assert time.perf_counter() - hung_at < DB_TIMEOUT, "the workers' calls may have ended: too slow a machine"
        os.kill(mongo.process.pid, signal.SIGCONT)
        frozen = False
        await asyncio.wait_for(renewed, 10)  # not refused by the queue: it ran once MongoDB answered
        lease = await store.run(leases.repository.collection.find_one, {"process_id": leases.process_id})
        # Renewed; the process's own heartbeat, queued before it with an earlier time and run beside it, cannot
        # move the lease back.
        assert renewed.result() is True and lease["heartbeat_at"] >= now, (lease, now)
        for outcome, _ in await asyncio.gather(*on_workers):  # the hung calls, answered once MongoDB is back
            assert outcome is None or isinstance(outcome, ServiceUnavailable)

        # Back: the queue takes calls again.
        await eventually(lambda: not store.busy, timeout=10)
        outcome, seconds = await timed(tokens.find("after"))
        assert outcome is None
        await eventually(lambda: _status(client, 200), timeout=10, interval=0.1)
        sampler.cancel()
        assert most_waiting[0] == store.max_queued  # never more waited
        print(f"\n{load} calls on a hanging MongoDB: {len(at_once)} refused at once (count bound), the waiting ones "
              f"by {refused_waiting:.2f} s (wait bound {store.max_wait:g} s), {len(on_workers)} hung on the workers; "
              f"then 1000 more refused at once (stalled)")
    finally:
        if frozen:
            os.kill(mongo.process.pid, signal.SIGCONT)
        if sandbox is not None:
            await sandbox.gateway.stop()  # while its MongoDB is there (the fixture's stop is then a no-op for it)
        mongo.stop()


async def _status(client, status):
    return (await client.call("/v1/streaming.create_token")).status == status
