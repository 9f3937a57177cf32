"""3. Memory per idle relayed socket: N sockets held open through the gateway (RSS, anonymous memory, fds before,
open and after closing, over --rounds rounds; and its MongoDB's RSS), then the same N through each anchor."""
import asyncio
import time

import relays  # bench/relays.py: the anchor relays, pinning, /proc readings

from suite.client import connect, direct_pool, gateway_closes_recorded, gateway_pool
from suite.common import bounded_gather, log, wait_for
from suite.measure import latency_summary, proc_fds, proc_nofile_limit, proc_status


async def open_timed(world, target, made, upstream_open, what):
    """One socket per (session_id, token) through `target`, `--open-concurrency` at a time, each handshake timed.
    Returns the sockets, the handshake times and the seconds until the emulator held every upstream leg."""
    peers, handshakes = [], []

    async def open_one(session_id, token):
        t = time.perf_counter()
        ws = await connect(world, world.ws_url(target, session_id, token))
        handshakes.append(time.perf_counter() - t)
        peers.append(ws)

    t0 = time.perf_counter()
    await bounded_gather([lambda s=s, t=t: open_one(s, t) for s, t in made], world.args.open_concurrency)
    await wait_for(lambda: upstream_open() == len(made), 60, f"all {len(made)} {what} to reach HeyGen")
    return peers, handshakes, time.perf_counter() - t0


async def memory(world):
    args = world.args
    n = args.sockets
    pid, mongo = world.gateway.pid, world.mongo.process.pid
    log(f"memory: {n} sessions through the gateway (create_token + streaming.new, "
        f"{args.setup_concurrency} at a time)")
    t0 = time.perf_counter()
    made = await gateway_pool(world, n)
    create_s = time.perf_counter() - t0
    sessions = [world.heygen.sessions[s] for s, _ in made]
    upstream_open = lambda: sum(len(s.sockets) for s in sessions)  # noqa: E731

    async def reading(label):
        await world.gateway_idle()
        await asyncio.sleep(args.settle)
        state = {"state": label, **proc_status(pid), "fds": proc_fds(pid), "relays_open": upstream_open(),
                 "mongo_rss_kib": proc_status(mongo)["VmRSS"]}
        log(f"memory: {label}: gateway RSS {state['VmRSS'] / 1024:.1f} MiB, {state['fds']} fds; MongoDB RSS "
            f"{state['mongo_rss_kib'] / 1024:.1f} MiB")
        return state

    readings = [await reading("sessions created, no sockets")]
    rounds = []
    for number in range(1, args.rounds + 1):
        log(f"memory: round {number}: opening {n} relayed sockets ({args.open_concurrency} at a time)")
        peers, handshakes, open_s = await open_timed(world, "relayed", made, upstream_open, "relays")
        readings.append(await reading(f"round {number}: {n} relays open"))
        for ws in peers:
            ws.close()
        await wait_for(lambda: upstream_open() == 0, 60, "relays to close")
        settle_s = await gateway_closes_recorded(world, [s for s, _ in made])
        log(f"memory: round {number}: the gateway recorded all {n} closes in MongoDB {settle_s}s after they "
            f"reached HeyGen")
        readings.append(await reading(f"round {number}: all closed"))
        rounds.append({"open_s": round(open_s, 2), "handshake": latency_summary(handshakes),
                       "close_records_settle_s": settle_s})

    before, opened, closed = readings[0], readings[1], readings[2]
    delta = opened["VmRSS"] - before["VmRSS"]
    result = {
        "sockets": n, "rounds": rounds, "readings": readings, "open_concurrency": args.open_concurrency,
        "relays_confirmed_open_upstream": opened["relays_open"],
        "sessions_created_s": round(create_s, 2),
        "sessions_per_s": world.results["meta"].get("gateway_sessions_per_s") or round(n / create_s, 1),
        "rss_delta_kib": delta, "kib_per_socket": round(delta / n, 2),
        "rss_anon_kib_per_socket": round((opened["RssAnon"] - before["RssAnon"]) / n, 2),
        "fds_per_socket": round((opened["fds"] - before["fds"]) / n, 3),
        # The gateway's MongoDB: what N sockets recorded on their sessions hold there (part 7 measures it too).
        "mongo_kib_per_socket": round((opened["mongo_rss_kib"] - before["mongo_rss_kib"]) / n, 2),
        "rss_released_after_close_kib": opened["VmRSS"] - closed["VmRSS"],
        "gateway_nofile_limit": proc_nofile_limit(pid),
    }
    if len(readings) >= 5:
        # Round 2 against round 1: memory kept after round 1 and reused shows as ~0 growth; a leak as growth.
        result["round2_open_minus_round1_open_kib"] = readings[3]["VmRSS"] - readings[1]["VmRSS"]
        result["round2_closed_minus_round1_closed_kib"] = readings[4]["VmRSS"] - readings[2]["VmRSS"]
    world.results["memory"] = result
    for name in world.anchors:
        world.results["anchor_memory"].append(await anchor_memory(world, name, n))


async def anchor_memory(world, name, n):
    """The same N idle sockets through an anchor relay, to N sessions made in the emulator; RSS of the anchor's
    whole process tree (nginx: master + worker) before, with all open, and after closing."""
    args = world.args
    anchor = world.anchors[name]
    made = direct_pool(world, n)
    sessions = [world.heygen.sessions[s] for s, _ in made]
    upstream_open = lambda: sum(len(s.sockets) for s in sessions)  # noqa: E731

    async def reading(label):
        await world.gateway_idle()
        anchor.collect_garbage()
        await asyncio.sleep(args.settle)
        pids = anchor.pids()
        state = {"state": label, "rss_kib": relays.rss_kib(pids), "processes": len(pids),
                 "fds": sum(proc_fds(pid) for pid in pids), "relays_open": upstream_open()}
        log(f"memory {name}: {label}: RSS {state['rss_kib'] / 1024:.1f} MiB, {state['fds']} fds")
        return state

    readings = [await reading("no sockets")]
    log(f"memory {name}: opening {n} relayed sockets ({args.open_concurrency} at a time)")
    peers, handshakes, open_s = await open_timed(world, name, made, upstream_open, f"{name} relays")
    readings.append(await reading(f"{n} relays open"))
    for ws in peers:
        ws.close()
    await wait_for(lambda: upstream_open() == 0, 60, f"{name} relays to close")
    readings.append(await reading("all closed"))
    before, opened = readings[0], readings[1]
    return {"anchor": name, "sockets": n, "readings": readings, "open_s": round(open_s, 2),
            "handshake": latency_summary(handshakes), "rss_delta_kib": opened["rss_kib"] - before["rss_kib"],
            "kib_per_socket": round((opened["rss_kib"] - before["rss_kib"]) / n, 2),
            "fds_per_socket": round((opened["fds"] - before["fds"]) / n, 3)}
