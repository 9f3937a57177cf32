"""7. Many idle relayed sockets in one process (issue 18): `--idle-sockets` (default 10,000) browser sockets through
the gateway, each a session's streaming.chat, opened `--open-concurrency` at a time and held idle for `--idle-hold`
seconds. The browsers' side is a child process (bench/suite/holder.py; the emulator's side stays in this
process), so each holds one descriptor per socket. RSS per socket of the gateway and of its MongoDB apart, the
gateway's CPU while they idle, and whether it keeps answering: `GET /healthz` every 0.1 s throughout (before, while
opening, while holding, while closing), from a prober process of its own (bench/suite/prober.py).

If the machine cannot hold them, the part says what failed and at which count (the first errors are kept) and goes
on with the sockets it has."""
import asyncio
import json
import os
import sys
import time

from suite.client import gateway_closes_recorded
from suite.common import RESULTS_DIR, log, wait_for
from suite.firstcall import mint
from suite.measure import latency_summary, proc_fds, proc_nofile_limit, proc_status

HEALTH_EVERY = 0.1  # seconds between /healthz probes
PAUSES = {"gc2": ("ilianaai_avatar_gc_pause_seconds", {"generation": "2"}),
          "stalls": ("ilianaai_avatar_event_loop_stalls_seconds", {})}


async def pause_totals(world):
    """From the gateway's /metrics: {name: (count, seconds)} of its full garbage collections (generation 2) and of
    its event loop's stalls over 1 s (observability/stalls.py), since it started."""
    from prometheus_client.parser import text_string_to_metric_families
    response = await world.http.fetch(world.gateway_url + "/metrics", raise_error=False, request_timeout=30)
    totals = {}
    for family in text_string_to_metric_families(response.body.decode()) if response.code == 200 else ():
        for name, (metric, labels) in PAUSES.items():
            if family.name != metric:
                continue
            samples = {s.name: s.value for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())}
            totals[name] = (samples.get(metric + "_count", 0), samples.get(metric + "_sum", 0.0))
    return totals


class PhasePauses:
    """The gateway's full collections and loop stalls per phase of the part: /metrics read at each phase's start."""

    def __init__(self):
        self.phases = {}
        self._last = None  # (phase, totals at its start)

    async def enter(self, world, phase):
        totals = await pause_totals(world)
        if self._last is not None:
            previous, start = self._last
            self.phases[previous] = {name: {"count": int(totals.get(name, (0, 0))[0] - start.get(name, (0, 0))[0]),
                                            "seconds": round(totals.get(name, (0, 0))[1]
                                                             - start.get(name, (0, 0))[1], 3)}
                                     for name in PAUSES}
        self._last = (phase, totals)


class HealthProbe:
    """GET /healthz every HEALTH_EVERY s from a child process of its own (bench/suite/prober.py: blocking sockets, a
    new connection per probe, nothing else to do), so the latencies are the gateway's and not this process's busy
    event loop's (it also serves the upstream side of every socket); kept per phase (`set_phase`)."""

    def __init__(self, process):
        self.process = process

    @classmethod
    async def start(cls, world):
        process = await asyncio.create_subprocess_exec(
            sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "prober.py"),
            world.gateway_url + "/healthz", str(HEALTH_EVERY), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, limit=1 << 24)
        return cls(process)

    def set_phase(self, phase):
        self.process.stdin.write(f"{phase}\n".encode())

    async def stop(self):
        self.set_phase("end")
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        await self.process.wait()
        found = json.loads(line)
        latencies, failures = found["latencies"], found["failures"]
        return {phase: {**latency_summary(lat), "failures": failures.get(phase, 0)}
                for phase, lat in latencies.items()} | {
            phase: {"n": 0, "failures": count} for phase, count in failures.items() if phase not in latencies}


async def idle(world):
    args = world.args
    n = args.idle_sockets
    gw, mongo = world.gateway.pid, world.mongo.process.pid
    minting = None
    if len(world.gateway_sessions) < n:  # topped up through the gateway, every call timed (as part 6's)
        minting = (await mint(world, n - len(world.gateway_sessions), "idle sockets"))[1]
    pairs = world.gateway_sessions[:n]
    sessions = [world.heygen.sessions[s] for s, _ in pairs]
    upstream_open = lambda: sum(len(s.sockets) for s in sessions)  # noqa: E731
    await wait_for(lambda: upstream_open() == 0, 60, "earlier sockets to close")

    async def reading(label):
        await world.gateway_idle(timeout=60)
        await asyncio.sleep(args.settle)
        state = {"state": label, "gateway": {**proc_status(gw), "fds": proc_fds(gw)},
                 "mongo": {**proc_status(mongo), "fds": proc_fds(mongo)}, "relays_open": upstream_open()}
        log(f"idle sockets: {label}: gateway RSS {state['gateway']['VmRSS'] / 1024:.1f} MiB, "
            f"{state['gateway']['fds']} fds; MongoDB RSS {state['mongo']['VmRSS'] / 1024:.1f} MiB")
        return state

    probe = await HealthProbe.start(world)
    pauses = PhasePauses()
    await pauses.enter(world, "before")
    await asyncio.sleep(3)  # /healthz with nothing open
    readings = [await reading("no sockets")]
    holder = await Holder.start(world)
    log(f"idle sockets: opening {n} relayed sockets ({args.open_concurrency} at a time, from holder child pid "
        f"{holder.process.pid})")
    probe.set_phase("opening")
    await pauses.enter(world, "opening")
    t0 = time.perf_counter()
    opened_report = await holder.open([world.ws_url("gateway", s, t) for s, t in pairs], args.open_concurrency,
                                      args.nodelay)
    count, handshakes = opened_report["opened"], opened_report["handshakes"]
    errors, opened_at_first_error = opened_report["errors"], opened_report["opened_at_first_error"]
    try:
        await wait_for(lambda: upstream_open() >= count, 120, f"{count} relays to reach HeyGen")
    except RuntimeError as exc:
        errors.append(f"{exc} (HeyGen saw {upstream_open()})")
    open_s = time.perf_counter() - t0
    if errors:
        log(f"idle sockets: {len(errors)} failed; the first with {opened_at_first_error} open: {errors[0]}")
    probe.set_phase("held idle")
    await pauses.enter(world, "held idle")
    opened = await reading(f"{count} relays open")
    meter = world.meter()
    before = meter.snapshot()
    await asyncio.sleep(args.idle_hold)
    hold_cpu = meter.diff(before, meter.snapshot())
    held = await reading(f"after {args.idle_hold:.0f} s idle")
    probe.set_phase("closing")
    await pauses.enter(world, "closing")
    t0 = time.perf_counter()
    await holder.close()
    closed_ok = True
    try:
        await wait_for(lambda: upstream_open() == 0, 120, "relays to close")
    except RuntimeError:
        closed_ok = False
    close_s = time.perf_counter() - t0
    settle_s = await gateway_closes_recorded(world, [s for s, _ in pairs], timeout=300)
    probe.set_phase("after")
    await pauses.enter(world, "after")
    closed = await reading("all closed")
    health = await probe.stop()
    await pauses.enter(world, "end")
    await holder.exit()

    k = max(1, count)
    base = readings[0]
    world.results["idle"] = {
        "sockets": n, "opened": count, "holder_pid": holder.process.pid, "open_s": round(open_s, 1),
        "handshake": latency_summary(handshakes),
        "errors": len(errors), "first_errors": sorted(set(errors))[:5], "opened_at_first_error": opened_at_first_error,
        "minting": minting,
        "readings": [base, opened, held, closed], "hold_s": args.idle_hold, "hold_cpu": hold_cpu,
        "gateway_kib_per_socket": round((opened["gateway"]["VmRSS"] - base["gateway"]["VmRSS"]) / k, 2),
        "gateway_anon_kib_per_socket": round((opened["gateway"]["RssAnon"] - base["gateway"]["RssAnon"]) / k, 2),
        "mongo_kib_per_socket": round((opened["mongo"]["VmRSS"] - base["mongo"]["VmRSS"]) / k, 2),
        "gateway_fds_per_socket": round((opened["gateway"]["fds"] - base["gateway"]["fds"]) / k, 3),
        "close_s": round(close_s, 1), "closed_ok": closed_ok, "close_records_settle_s": settle_s,
        "health": health, "pauses": pauses.phases, "gateway_nofile_limit": proc_nofile_limit(gw),
        "bench_fd_limit": world.results["meta"].get("fd_limit")}


class Holder:
    """The browsers' side of part 7's sockets, in a child process (bench/suite/holder.py), pinned with the load."""

    def __init__(self, process):
        self.process = process

    @classmethod
    async def start(cls, world):
        load_cpus = world.load_cpus

        def pin():
            if load_cpus:
                os.sched_setaffinity(0, load_cpus)
        with open(os.path.join(RESULTS_DIR, "holder.log"), "wb") as errors:  # its stderr, should it fail
            process = await asyncio.create_subprocess_exec(
                sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "holder.py"),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=errors, preexec_fn=pin,
                limit=1 << 26)
        return cls(process)

    async def send(self, command):
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()

    async def answer(self, key):
        while True:
            line = await self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the socket holder (pid {self.process.pid}) exited with "
                                   f"{await self.process.wait()}; see bench/results/holder.log")
            message = json.loads(line)
            if "progress" in message:
                log(f"idle sockets: {message['progress']} open")
            if key in message:
                return message

    async def open(self, urls, concurrency, nodelay):
        await self.send({"open": urls, "concurrency": concurrency, "nodelay": nodelay})
        return await self.answer("opened")

    async def close(self):
        await self.send({"close": True})
        return await self.answer("closed")

    async def exit(self):
        await self.send({"exit": True})
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


def report_lines(results, fmt, table):
    """Section 7 of the report."""
    r = results.get("idle")
    if not r:
        return []
    out = ["", f"7. Idle relayed sockets in one process (issue 18): {r['opened']} of {r['sockets']} opened through the "
               f"gateway (each a session's streaming.chat, 1 browser + 1 upstream socket in the gateway), held idle "
               f"{r['hold_s']:.0f} s; RSS of the gateway and of its MongoDB apart; GET /healthz every "
               f"{HEALTH_EVERY} s throughout."]
    rows = [[s["state"], f"{s['gateway']['VmRSS'] / 1024:.1f}", f"{s['gateway']['RssAnon'] / 1024:.1f}",
             s["gateway"]["fds"], s["gateway"]["Threads"], f"{s['mongo']['VmRSS'] / 1024:.1f}", s["relays_open"]]
            for s in r["readings"]]
    out.append(table(["state", "gateway RSS MiB", "gateway anon MiB", "gateway fds", "threads", "MongoDB RSS MiB",
                      "relays open"], rows))
    h = r["handshake"]
    cpu = r["hold_cpu"]
    out.append(f"   => gateway {r['gateway_kib_per_socket']:.1f} KiB RSS per socket (anonymous "
               f"{r['gateway_anon_kib_per_socket']:.1f}), {r['gateway_fds_per_socket']:.2f} fds per socket; MongoDB "
               f"{r['mongo_kib_per_socket']:.1f} KiB per socket. While idle: gateway {cpu['gateway_cpu_pct']:.1f} % "
               f"of a core, MongoDB {cpu['mongo_cpu_pct']:.1f} %.")
    out.append(f"   opened in {r['open_s']} s (handshake p50 {fmt(h['p50_ms'], 1)} ms, p99 {fmt(h['p99_ms'], 1)} ms, "
               f"max {fmt(h['max_ms'], 1)} ms); closed in {r['close_s']} s, every close recorded in MongoDB "
               f"{r['close_records_settle_s']} s later. Open-files limit: gateway "
               f"{r['gateway_nofile_limit']['soft']}, bench {r['bench_fd_limit']['soft_after']} (hard "
               f"{r['bench_fd_limit']['hard_before']} -> "
               f"{r['bench_fd_limit']['hard']})")
    m = r.get("minting")
    if m:
        out.append(f"   {m['sessions']} more sessions minted for it first, {m['concurrency']} at a time: "
                   f"{m['seconds']} s = {m['per_s']}/s; streaming.new p50 {fmt(m['new']['p50_ms'], 1)} ms, p99 "
                   f"{fmt(m['new']['p99_ms'], 1)} ms, max {fmt(m['new']['max_ms'], 1)} ms (p50 first 10% -> last 10%: "
                   f"{fmt(m['new_p50_first_10pct_ms'], 1)} -> {fmt(m['new_p50_last_10pct_ms'], 1)}); gateway "
                   f"{m['cpu']['gateway_cpu_pct']:.0f} % / MongoDB {m['cpu']['mongo_cpu_pct']:.0f} % CPU; the customer "
                   f"then held {m['live_sessions_after']} live sessions")
    if r["errors"]:
        out.append(f"   FAILED: {r['errors']} sockets did not open (the first with {r['opened_at_first_error']} "
                   f"open): " + " | ".join(r["first_errors"]))
    pauses = r.get("pauses") or {}

    def paused(phase, name):
        p = pauses.get(phase, {}).get(name)
        return f"{p['count']} / {p['seconds']:.2f}" if p else "-"

    rows = [[phase, v["n"], fmt(v.get("p50_ms"), 2), fmt(v.get("p99_ms"), 2), fmt(v.get("max_ms"), 1),
             v["failures"], paused(phase, "gc2"), paused(phase, "stalls")] for phase, v in r["health"].items()]
    out.append("   GET /healthz while:")
    out.append(table(["phase", "probes", "p50 ms", "p99 ms", "max ms", "failed", "full GCs / s",
                      "loop stalls >1 s / s"], rows))
    out.append("   full GCs: the gateway's generation-2 garbage collections in the phase, and the seconds they paused "
               "it (its /metrics); loop stalls: its event loop standing still over 1 s (observability/stalls.py)")
    return out
