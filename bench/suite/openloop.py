"""2c. Open loop: S sessions x F binary frames/s of microphone audio (default 200 x 31), sent on a fixed schedule
whatever the relay does; frames delivered, latency per 1-second window, frames per relay CPU-second."""
import asyncio
import time

from suite.client import gateway_closes_recorded, open_sockets, session_pairs
from suite.common import log, wait_for
from suite.measure import BenchGcPaused, CpuMeter, latency_summary, percentile
from suite.probes import HEADER, MAGIC, ClientPeer, ProbeList, ProbeSink


async def openloop_run(world, target):
    """`--sessions` sockets, each sent one `--binary-size` binary frame every 1/`--fps` s on a fixed schedule
    (the sockets' phases spread evenly), whatever the relay does: open loop. Each frame carries its scheduled
    send time; latency is arrival at the emulator minus that time, so a stalled sender or relay shows up as
    latency instead of as fewer frames (no coordinated omission). Statistics per 1-second window."""
    args = world.args
    n_sessions, fps = args.sessions, args.fps
    pairs = await session_pairs(world, target, n_sessions)
    arrivals = []  # (seq, scheduled, arrived)

    class Sink:
        @staticmethod
        def arrive(seq, sent, now):
            arrivals.append((seq, sent, now))
    sessions = [world.heygen.sessions[s] for s, _ in pairs]
    for session in sessions:
        session.ws_received = ProbeList(Sink)
    clients, _ = await open_sockets(world, target, pairs)
    peers = [ClientPeer(ws, ProbeSink()) for ws in clients]  # reads the emulator's user_start/user_stop
    await world.gateway_idle()
    rate = n_sessions * fps
    interval = 1.0 / rate
    warm_n = int(round(args.openloop_warmup * rate))
    total = warm_n + int(round(args.openloop_seconds * rate))
    pad = bytes(max(0, args.binary_size - HEADER.size))
    log(f"open loop {target}: {n_sessions} sockets x {fps} frames/s ({rate} frames/s) for "
        f"{args.openloop_warmup}+{args.openloop_seconds}s")
    meter = world.meter()
    before = None
    lateness = []
    paused = BenchGcPaused().__enter__()
    t0 = time.perf_counter() + 0.01
    n = 0
    while n < total:
        now = time.perf_counter()
        if before is None and n >= warm_n:
            before = meter.snapshot()
        first = n
        while n < total:
            due = t0 + n * interval
            if due > now:
                break
            clients[n % n_sessions].write_message(HEADER.pack(MAGIC, n, due) + pad, binary=True)
            n += 1
        if n > first and first >= warm_n:
            lateness.append(now - (t0 + first * interval))
        if n < total:
            await asyncio.sleep(max(0.0, t0 + n * interval - time.perf_counter()))
    sent_until = time.perf_counter()
    deadline = time.monotonic() + 10
    while len(arrivals) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    cpu = CpuMeter.diff(before, meter.snapshot())
    paused.__exit__(None, None, None)
    for session in sessions:
        session.ws_received = []
    await asyncio.gather(*(peer.close() for peer in peers))
    await wait_for(lambda: all(not s.sockets for s in sessions), 60, "open-loop sockets to close")
    if target == "gateway":
        await gateway_closes_recorded(world, [s.session_id for s in sessions])

    start = t0 + warm_n * interval
    windows = int(args.openloop_seconds)
    per_window = [[] for _ in range(windows)]
    delivered = [0] * windows
    measured = []
    for seq, due, arrived in arrivals:
        if seq < warm_n:
            continue
        measured.append(arrived - due)
        k = int(due - start)
        if 0 <= k < windows:
            per_window[k].append(arrived - due)
        k = int(arrived - start)
        if 0 <= k < windows:
            delivered[k] += 1
    window_rows = [latency_summary(w) for w in per_window]
    p50s = sorted(w["p50_ms"] for w in window_rows if w["n"])
    p99s = sorted(w["p99_ms"] for w in window_rows if w["n"])
    sent = total - warm_n
    got = len(measured)
    row = {"target": target, "sessions": n_sessions, "fps": fps, "offered_frames_per_s": rate,
           "frame_bytes": args.binary_size, "seconds": args.openloop_seconds, "sent": sent, "delivered": got,
           "lost_or_late": sent - got, "send_s": round(sent_until - t0, 3),
           "delivered_frames_per_s_mean": round(sum(delivered) / windows, 1) if windows else None,
           "delivered_frames_per_s_min": min(delivered) if delivered else None,
           **latency_summary(measured),
           "window_p50_ms_median": percentile(p50s, 50), "window_p99_ms_median": percentile(p99s, 50),
           "window_p99_ms_min": p99s[0] if p99s else None, "window_p99_ms_max": p99s[-1] if p99s else None,
           "windows_p99_over_10ms": sum(1 for v in p99s if v > 10),
           "windows": [{"delivered": d, "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"]}
                       for d, w in zip(delivered, window_rows)],
           "sender_lateness": latency_summary(lateness), "cpu": cpu}
    if target != "direct":
        relay_cpu = cpu[f"{target}_cpu_s"]
        row.update(relay_cpu_s=relay_cpu, relay_cpu_pct=round(100.0 * relay_cpu / args.openloop_seconds, 1),
                   frames_per_relay_cpu_s=round(got / relay_cpu) if relay_cpu > 0 else None)
    return row


async def openloop(world):
    rows = {}
    for target in ["direct", "gateway"] + list(world.anchors):
        rows[target] = await openloop_run(world, target)
        world.results["openloop"].append(rows[target])
    d = rows["direct"]
    for target, r in rows.items():
        if target != "direct":
            r["added_p50_ms"] = round(r["p50_ms"] - d["p50_ms"], 3)
            r["added_window_p99_ms_median"] = round(r["window_p99_ms_median"] - d["window_p99_ms_median"], 3)
            r["added_window_p99_ms_min"] = round(r["window_p99_ms_min"] - d["window_p99_ms_min"], 3)
            r["added_window_p99_ms_max"] = round(r["window_p99_ms_max"] - d["window_p99_ms_max"], 3)
