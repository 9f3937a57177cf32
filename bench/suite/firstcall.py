"""6. A session's first call in a process (issue 18): keep_alive rotating over N sessions the measured gateway process
has never met, against the same calls once it knows them (warm) and straight to the emulator (direct), in one run.

The N sessions (`--first-sessions`, default 2000) are minted through the gateway (create_token + streaming.new,
`--setup-concurrency` at a time; timed: the issue saw streaming.new slow to 0.8 s on 10,000 sessions of one customer),
then the gateway child is restarted (SIGTERM, a new `python server.py` on the same MongoDB), so every session is new
to the measured process: its first call looks the session up in MongoDB (models/sessions.py `owned`, one find by
the unique key), later ones are answered from the process's cache of session facts.

Each pass calls `POST /v1/streaming.keep_alive` once per session, `--first-concurrency` (16) clients taking the next
session in turn: cold (the first call per session in the process), warm (the same sessions again) and direct (the
emulator with HeyGen's key); first ONE_AT_A_TIME (300) of the sessions the same three passes on one connection,
where nothing queues: what a first call adds by itself. Before the cold pass, `--warmup` s of keep_alive on 16 other
sessions opens the connections and loads the customer's config, so the cold pass measures the sessions' first calls
only."""
import asyncio
import json
import time

from tornado.httpclient import HTTPClientError, HTTPRequest

from suite.client import post
from suite.common import CUSTOMER_KEY, GATEWAY_DB, NEW_SESSION_BODY, bounded_gather, log
from suite.measure import BenchGcPaused, latency_summary

ONE_AT_A_TIME = 300  # of the sessions: their first call is measured on one connection


async def mint(world, n, what):
    """n sessions through the gateway (create_token with the customer's key, then streaming.new with that token, as
    HeyGen's SDK does), `--setup-concurrency` at a time; every call timed. Returns the (session_id, token) pairs
    (also added to the gateway's pool, world.gateway_sessions) and the timings."""
    gw, concurrency = world.gateway_url, world.args.setup_concurrency
    token_s, new_s = [], []  # new_s: (finished at, seconds) to see whether it slows as the customer's count grows
    log(f"{what}: minting {n} sessions through the gateway ({concurrency} at a time)")
    meter = world.meter()
    before = meter.snapshot()
    t0 = time.perf_counter()

    async def one():
        a = time.perf_counter()
        token = (await post(world, gw + "/v1/streaming.create_token", {}, {"X-Api-Key": CUSTOMER_KEY}))["data"]["token"]
        b = time.perf_counter()
        new = await post(world, gw + "/v1/streaming.new", NEW_SESSION_BODY, {"Authorization": f"Bearer {token}"})
        c = time.perf_counter()
        token_s.append(b - a)
        new_s.append((c, c - b))
        return new["data"]["session_id"], token
    made = await bounded_gather([one] * n, concurrency)
    elapsed = time.perf_counter() - t0
    cpu = meter.diff(before, meter.snapshot())
    world.gateway_sessions.extend(made)
    new_s.sort()
    tenth = max(1, n // 10)
    live = world.db[GATEWAY_DB]["avatar_sessions"].count_documents({"status": {"$in": ["created", "started"]}})
    timings = {"sessions": n, "concurrency": concurrency, "seconds": round(elapsed, 1),
               "per_s": round(n / elapsed, 1), "create_token": latency_summary(token_s),
               "new": latency_summary([s for _, s in new_s]),
               "new_p50_first_10pct_ms": latency_summary([s for _, s in new_s[:tenth]])["p50_ms"],
               "new_p50_last_10pct_ms": latency_summary([s for _, s in new_s[-tenth:]])["p50_ms"],
               "live_sessions_after": live, "cpu": cpu}
    log(f"{what}: {n} sessions in {elapsed:.1f} s ({timings['per_s']}/s); streaming.new p50 "
        f"{timings['new']['p50_ms']} ms, p99 {timings['new']['p99_ms']} ms; the customer now holds {live} live "
        f"sessions")
    return made, timings


async def rotation(world, target, session_ids, concurrency, label):
    """keep_alive once per session, `concurrency` clients each taking the next session; timed, CPU metered."""
    url = f"{world.base_url(target)}/v1/streaming.keep_alive"
    key = {"X-Api-Key": CUSTOMER_KEY} if target == "gateway" else {"x-api-key": world.heygen.api_key}
    headers = {**key, "Content-Type": "application/json"}
    bodies = iter([json.dumps({"session_id": s}).encode() for s in session_ids])
    lat, errors = [], {}

    async def worker():
        for body in bodies:  # one iterator shared by the workers: each session is called once
            t0 = time.perf_counter()
            try:
                code = (await world.http.fetch(HTTPRequest(url, method="POST", headers=headers, body=body),
                                               raise_error=False)).code
            except HTTPClientError as exc:
                code = exc.code
            lat.append(time.perf_counter() - t0)
            if code != 200:
                errors[code] = errors.get(code, 0) + 1

    await world.gateway_idle()
    with BenchGcPaused():
        meter = world.meter()
        before = meter.snapshot()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        cpu = meter.diff(before, meter.snapshot())
    n = len(lat)
    gw_db = cpu["gateway_cpu_s"] + cpu["mongo_cpu_s"]
    row = {"pass": label, "target": target, "concurrency": concurrency, "requests": n, "seconds": round(elapsed, 2),
           "rps": round(n / elapsed, 1), **latency_summary(lat), "errors": {str(k): v for k, v in errors.items()},
           "cpu": cpu}
    if target == "gateway":
        row.update(gateway_cpu_ms_per_req=round(1000 * cpu["gateway_cpu_s"] / n, 3),
                   mongo_cpu_ms_per_req=round(1000 * cpu["mongo_cpu_s"] / n, 3),
                   gw_db_cpu_ms_per_req=round(1000 * gw_db / n, 3),
                   req_per_gw_db_cpu_s=round(n / gw_db) if gw_db > 0 else None)
    log(f"first call: {label}: {n} keep_alives in {elapsed:.2f} s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms"
        + (f", {row['gw_db_cpu_ms_per_req']} ms gateway+MongoDB CPU per call" if target == "gateway" else ""))
    return row


async def firstcall(world):
    args = world.args
    n, c = args.first_sessions, args.first_concurrency
    made, minting = await mint(world, n + c, "first call")
    warm_ids = [s for s, _ in made[:c]]  # warm-up only: these become known to the new process
    ids = [s for s, _ in made[c:]]
    log("first call: restarting the gateway child, so every session is new to the process")
    t0 = time.perf_counter()
    await world.restart_gateway()
    restart_s = time.perf_counter() - t0
    # Warm-up on other sessions: connections (bench -> gateway -> emulator) open, the customer's config cached.
    await rotation(world, "gateway", (warm_ids * 1000)[:max(c, int(200 * args.warmup) * c)], c, "warm-up")
    # One connection on a few of the sessions (no queueing: what a first call adds by itself), then `c` on the rest.
    alone, ids = ids[:ONE_AT_A_TIME], ids[ONE_AT_A_TIME:]
    rows_alone = [await rotation(world, "gateway", alone, 1, "cold, 1 connection"),
                  await rotation(world, "gateway", alone, 1, "warm, 1 connection"),
                  await rotation(world, "direct", alone, 1, "direct, 1 connection")]
    rows = [await rotation(world, "gateway", ids, c, "cold: first call in the process"),
            await rotation(world, "gateway", ids, c, "warm: the same sessions again"),
            await rotation(world, "direct", ids, c, "direct to the emulator")]
    cold, warm, direct = rows
    cold1, warm1, direct1 = rows_alone
    summary = {"cold_over_warm_cpu": round(cold["gw_db_cpu_ms_per_req"] / warm["gw_db_cpu_ms_per_req"], 2)
               if warm["gw_db_cpu_ms_per_req"] else None,
               "cold_added_p50_ms": round(cold["p50_ms"] - direct["p50_ms"], 3),
               "cold_added_p99_ms": round(cold["p99_ms"] - direct["p99_ms"], 3),
               "warm_added_p50_ms": round(warm["p50_ms"] - direct["p50_ms"], 3),
               "warm_added_p99_ms": round(warm["p99_ms"] - direct["p99_ms"], 3),
               "cold_minus_warm_p50_ms": round(cold["p50_ms"] - warm["p50_ms"], 3),
               "alone_cold_added_p50_ms": round(cold1["p50_ms"] - direct1["p50_ms"], 3),
               "alone_warm_added_p50_ms": round(warm1["p50_ms"] - direct1["p50_ms"], 3),
               "alone_cold_added_p99_ms": round(cold1["p99_ms"] - direct1["p99_ms"], 3)}
    summary["meets_cpu_goal"] = bool(summary["cold_over_warm_cpu"] is not None and summary["cold_over_warm_cpu"] <= 3)
    summary["meets_latency_goal"] = summary["cold_added_p50_ms"] <= 2
    world.results["firstcall"] = {"sessions": n, "concurrency": c, "minting": minting,
                                  "restart_s": round(restart_s, 1), "rows": rows + rows_alone, **summary}


def report_lines(results, fmt, table, cpu_pcts, other):
    """Section 6 of the report."""
    f = results.get("firstcall")
    if not f:
        return []
    m = f["minting"]
    out = ["", f"6. A session's first call in a process (issue 18): keep_alive once per session over {f['sessions']} "
               f"sessions, {f['concurrency']} connections. The sessions were minted through the gateway, then the "
               f"gateway child was restarted (a new process, same MongoDB), so 'cold' is each session's first call "
               f"in the measured process (one MongoDB lookup); 'warm' the same calls again (from its cache). "
               f"Latencies in ms; CPU = gateway + its MongoDB."]
    rows = []
    for r in f["rows"]:
        gw = r["target"] == "gateway"
        direct = next(d for d in f["rows"] if d["target"] == "direct" and d["concurrency"] == r["concurrency"])
        rows.append([r["pass"], r["requests"], fmt(r["rps"], 0), fmt(r["p50_ms"], 3), fmt(r["p99_ms"], 3),
                     fmt(r["max_ms"], 1), fmt(r["p50_ms"] - direct["p50_ms"], 3) if gw else "-",
                     fmt(r["p99_ms"] - direct["p99_ms"], 3) if gw else "-", sum(r["errors"].values()),
                     fmt(r.get("gateway_cpu_ms_per_req"), 3), fmt(r.get("mongo_cpu_ms_per_req"), 3),
                     fmt(r.get("req_per_gw_db_cpu_s"), 0), cpu_pcts(r, "gateway" if gw else "direct"), other(r)])
    out.append(table(["pass", "reqs", "req/s", "p50", "p99", "max", "+p50", "+p99", "err", "gw cpu ms/req",
                      "db cpu ms/req", "req/(gw+db) cpu-s", "%cpu gw/db/bench", "other %cpu L/R"], rows))
    verdict = lambda ok: "meets" if ok else "MISSES"  # noqa: E731
    out.append(f"   => first call costs {fmt(f['cold_over_warm_cpu'], 2)}x the gateway+MongoDB CPU of a warm one (goal "
               f"<= 3x: {verdict(f['meets_cpu_goal'])}) and adds {fmt(f['cold_added_p50_ms'], 3)} ms at p50 "
               f"({fmt(f['cold_added_p99_ms'], 3)} at p99) over direct (goal <= 2 ms: "
               f"{verdict(f['meets_latency_goal'])}); warm adds {fmt(f['warm_added_p50_ms'], 3)} / "
               f"{fmt(f['warm_added_p99_ms'], 3)}, so the first call's own extra at p50 is cold - warm = "
               f"{fmt(f.get('cold_minus_warm_p50_ms'), 3)} ms (at 16 connections the added p50 is mostly queueing "
               f"in the gateway, warm or cold)")
    if "alone_cold_added_p50_ms" in f:
        out.append(f"   one connection (no queueing; {ONE_AT_A_TIME} other sessions): a first call adds "
                   f"{fmt(f['alone_cold_added_p50_ms'], 3)} ms at p50 ({fmt(f['alone_cold_added_p99_ms'], 3)} at p99) "
                   f"over direct, a warm one {fmt(f['alone_warm_added_p50_ms'], 3)} ms")
    out.append(f"   minting: {m['sessions']} sessions (create_token + streaming.new, {m['concurrency']} at a time) in "
               f"{m['seconds']} s = {m['per_s']}/s; streaming.new p50 {fmt(m['new']['p50_ms'], 1)} ms, p99 "
               f"{fmt(m['new']['p99_ms'], 1)} ms, max {fmt(m['new']['max_ms'], 1)} ms (p50 first 10% -> last 10%: "
               f"{fmt(m['new_p50_first_10pct_ms'], 1)} -> {fmt(m['new_p50_last_10pct_ms'], 1)}); create_token p50 "
               f"{fmt(m['create_token']['p50_ms'], 1)} ms; gateway {m['cpu']['gateway_cpu_pct']:.0f} % / MongoDB "
               f"{m['cpu']['mongo_cpu_pct']:.0f} % CPU meanwhile; the customer then held {m['live_sessions_after']} "
               f"live sessions (the other parts' too). Gateway restart took {f['restart_s']} s.")
    return out
