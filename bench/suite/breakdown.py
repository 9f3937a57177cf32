"""1. REST, breakdown references: what one gateway call spends outside HeyGen, measured piece by piece.

Every import of the gateway's own modules (conf, domain, models) is in this module, inside the functions that use
them, so that a change in the gateway's layout is adapted here and nowhere else. gateway_setting_names() is used by
World.gateway_environment, not by the breakdown."""
import time

import pymongo

from sandbox.stack import with_database
from suite.common import CUSTOMER_KEY, GATEWAY_DB
from suite.measure import latency_summary, proc_cpu_seconds


def gateway_setting_names():
    """The name of every gateway setting (conf.SETTINGS)."""
    from conf import SETTINGS
    return {setting.name for setting in SETTINGS}


async def breakdown(world, session_id):
    """What one gateway call spends outside HeyGen, measured piece by piece at concurrency 1."""
    n = world.args.breakdown_iterations
    rows = []

    # GET /readyz through the gateway: HTTP in and out of the gateway (answered from the process's own state).
    lat = []
    for i in range(n + 20):
        if i == 20:
            cpu0 = proc_cpu_seconds(world.gateway.pid)
        t0 = time.perf_counter()
        response = await world.http.fetch(world.gateway_url + "/readyz", raise_error=False)
        if i >= 20:
            lat.append(time.perf_counter() - t0)
        assert response.code == 200, response.code
    rows.append({"what": "gateway GET /readyz (an HTTP round trip; answered from the process's state)",
                 **latency_summary(lat), "cpu_ms_per_iter": round(1000 * (proc_cpu_seconds(world.gateway.pid)
                                                                           - cpu0) / n, 3),
                 "cpu_of": "gateway"})

    # The raw driver round trips a keep_alive makes: find the session, update last_activity_at.
    client = pymongo.MongoClient(with_database(world.mongo.uri, GATEWAY_DB))
    collection = client[GATEWAY_DB]["avatar_sessions"]
    lat = []
    for i in range(n + 20):
        if i == 20:
            cpu0 = time.process_time()
        t0 = time.perf_counter()
        collection.find_one({"session_id": session_id})
        collection.update_one({"session_id": session_id}, {"$set": {"last_activity_at": time.time()}})
        if i >= 20:
            lat.append(time.perf_counter() - t0)
    client.close()
    rows.append({"what": "pymongo find_one + update_one, called inline (raw MongoDB round trips)",
                 **latency_summary(lat), "cpu_ms_per_iter": round(1000 * (time.process_time() - cpu0) / n, 3),
                 "cpu_of": "bench"})

    # The gateway's own code for that: SessionRepository.owned, one find by the unique key (pymongo's asyncio client,
    # on this loop); the activity touch is coalesced and written in bulk in the background.
    from domain.tokens import customer_id
    from models.sessions import SessionRepository
    from models.store import Store
    store = Store(with_database(world.mongo.uri, GATEWAY_DB), 8)
    store.connect()
    try:
        sessions = SessionRepository(store)
        customer = customer_id(world.gateway_secret, CUSTOMER_KEY)
        lat = []
        for i in range(n + 20):
            if i == 20:
                cpu0 = time.process_time()
            t0 = time.perf_counter()
            await sessions.owned(session_id, customer, time.time())
            if i >= 20:
                lat.append(time.perf_counter() - t0)
    finally:
        cpu = round(1000 * (time.process_time() - cpu0) / n, 3)
        await store.close_reads()
        store.close()
    rows.append({"what": "gateway's SessionRepository.owned (one find; pymongo's asyncio client), "
                         "in this process", **latency_summary(lat), "cpu_ms_per_iter": cpu, "cpu_of": "bench"})
    world.results["breakdown"] = rows
