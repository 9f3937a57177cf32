"""1. REST: the same HeyGen call (streaming.keep_alive, streaming.task) directly against the emulator, through the
gateway and (keep_alive) through each anchor, at each --concurrency; then keep_alive and task again on the sessions
the task rows filled with turns. The breakdown references (suite.breakdown) run first."""
import asyncio
import json
import time

from tornado.httpclient import HTTPClientError, HTTPRequest

from suite.breakdown import breakdown
from suite.client import stored_turns
from suite.common import CUSTOMER_KEY, log
from suite.measure import BenchGcPaused, CpuMeter, latency_summary

TASK_TEXT = "Thanks for waiting, your order is on its way."


async def rest_run(world, call, target, concurrency, session_ids, seconds, label=None):
    url = f"{world.base_url(target)}/v1/streaming.{call}"
    if target == "gateway":
        headers = {"X-Api-Key": CUSTOMER_KEY, "Content-Type": "application/json"}
    else:  # the emulator itself, or an anchor relay in front of it: HeyGen's own key
        headers = {"x-api-key": world.heygen.api_key, "Content-Type": "application/json"}
    bodies = []
    for i in range(concurrency):
        body = {"session_id": session_ids[i]}
        if call == "task":
            body.update(text=TASK_TEXT, task_type="repeat")
        bodies.append(json.dumps(body).encode())

    async def run(duration, lat, errors):
        deadline = time.perf_counter() + duration

        async def worker(i):
            while time.perf_counter() < deadline:
                request = HTTPRequest(url, method="POST", headers=headers, body=bodies[i])
                t0 = time.perf_counter()
                try:
                    response = await world.http.fetch(request, raise_error=False)
                    code = response.code
                except HTTPClientError as exc:
                    code = exc.code
                lat.append(time.perf_counter() - t0)
                if code != 200:
                    errors[code] = errors.get(code, 0) + 1
        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return time.perf_counter() - start

    await world.gateway_idle()
    with BenchGcPaused():
        await run(world.args.warmup, [], {})
        meter = world.meter()
        before = meter.snapshot()
        lat, errors = [], {}
        elapsed = await run(seconds, lat, errors)
        cpu = CpuMeter.diff(before, meter.snapshot())
    n = len(lat)
    row = {"call": label or f"streaming.{call}", "target": target, "concurrency": concurrency,
           "seconds": round(elapsed, 2),
           "requests": n, "rps": round(n / elapsed, 1), **latency_summary(lat),
           "errors": {str(k): v for k, v in errors.items()},
           "gateway_cpu_ms_per_req": round(1000 * cpu["gateway_cpu_s"] / n, 3) if n else None,
           "mongo_cpu_ms_per_req": round(1000 * cpu["mongo_cpu_s"] / n, 3) if n else None,
           "bench_cpu_ms_per_req": round(1000 * cpu["bench_cpu_s"] / n, 3) if n else None,
           "cpu": cpu}
    if target != "direct":
        relay_cpu = cpu[f"{target}_cpu_s"]
        row.update(relay_cpu_s=relay_cpu, relay_cpu_pct=cpu[f"{target}_cpu_pct"],
                   relay_cpu_ms_per_req=round(1000 * relay_cpu / n, 4) if n else None,
                   req_per_relay_cpu_s=round(n / relay_cpu) if relay_cpu > 0 else None)
    tenth = max(1, n // 10)
    row["p50_first_10pct_ms"] = latency_summary(lat[:tenth])["p50_ms"]
    row["p50_last_10pct_ms"] = latency_summary(lat[-tenth:])["p50_ms"]
    if call == "task":
        # The emulator queues every task to be "spoken" in the background (20 ms or so each); drop the backlog
        # as streaming.interrupt would, so it does not eat this process's CPU during the next measurement.
        for session_id in session_ids:
            world.heygen._cancel_speech(world.heygen.sessions[session_id])
    row["turns_per_session_after"] = stored_turns(world, session_ids[:concurrency])
    return row


async def rest(world, sessions_by_call):
    calls = world.args.calls.split(",")
    for call in calls:
        for concurrency in world.concurrencies:
            rows = {}
            # The anchors relay keep_alive (a pure proxy call) only: they have no transcript to record.
            targets = ["direct", "gateway"] + (list(world.relays()) if call == "keep_alive" else [])
            for target in targets:
                log(f"REST streaming.{call} {target} c={concurrency} for {world.args.rest_seconds}s")
                rows[target] = await rest_run(world, call, target, concurrency, sessions_by_call[call],
                                              world.args.rest_seconds)
                world.results["rest"].append(rows[target])
            d = rows["direct"]
            for target in targets[1:]:
                g = rows[target]
                world.results["rest_overhead"].append({
                    "call": f"streaming.{call}", "target": target, "concurrency": concurrency,
                    "added_p50_ms": round(g["p50_ms"] - d["p50_ms"], 3),
                    "added_p95_ms": round(g["p95_ms"] - d["p95_ms"], 3),
                    "added_p99_ms": round(g["p99_ms"] - d["p99_ms"], 3),
                    "p50_ratio": round(g["p50_ms"] / d["p50_ms"], 2),
                    "p99_ratio": round(g["p99_ms"] / d["p99_ms"], 2),
                    "rps_ratio": round(g["rps"] / d["rps"], 3),
                })
    if "task" not in calls:
        return
    # The same calls on the sessions the task rows filled with turns: does a long transcript slow them?
    turns = stored_turns(world, sessions_by_call["task"][:1])
    log(f"REST streaming.keep_alive and streaming.task gateway c=1 on a session holding {turns} turns")
    world.results["rest"].append(await rest_run(
        world, "keep_alive", "gateway", 1, sessions_by_call["task"], world.args.rest_seconds,
        label="keep_alive (long transcript)"))
    world.results["rest"].append(await rest_run(
        world, "task", "gateway", 1, sessions_by_call["task"], world.args.rest_seconds,
        label="task (long transcript)"))


async def rest_part(world, sessions_by_call, ids):
    log("breakdown references")
    await breakdown(world, ids[0])
    await rest(world, sessions_by_call)
