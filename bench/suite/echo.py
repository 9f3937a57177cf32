"""2b. WebSocket echo at saturation: frames echoed per relay CPU-second, for direct, the gateway and each anchor."""
import asyncio
import time

from suite.client import close_sockets, open_sockets, session_pairs
from suite.common import log
from suite.measure import BenchGcPaused, CpuMeter, latency_summary
from suite.probes import EchoList, binary_probe, decode_probe


async def echo_run(world, target):
    """`--echo-sockets` sockets, each keeping `--echo-window` binary frames in flight: a frame goes client ->
    relay -> emulator, which writes it straight back (EchoList) -> relay -> client, and the client sends the next
    one. Counted over `--echo-seconds` after a warm-up; CPU of every process over the same interval."""
    args = world.args
    pairs = await session_pairs(world, target, args.echo_sockets)
    clients, sessions = await open_sockets(world, target, pairs)
    for session in sessions:
        session.ws_received = EchoList(session)
    state = {"sending": True, "recording": False, "count": 0, "latencies": [], "inflight": 0}
    size = args.binary_size

    async def client(ws):
        def send():
            state["inflight"] += 1
            ws.write_message(binary_probe(world.next_seq(), size), binary=True)
        for _ in range(args.echo_window):
            send()
        while state["sending"] or state["inflight"] > 0:
            message = await ws.read_message()
            if message is None:
                return
            probe = decode_probe(message)
            if probe is None:
                continue  # the emulator's user_start/user_stop
            state["inflight"] -= 1
            if state["recording"]:
                state["count"] += 1
                state["latencies"].append(time.perf_counter() - probe[1])
            if state["sending"]:
                send()

    await world.gateway_idle()
    log(f"WebSocket echo {target}: {args.echo_sockets} sockets x {args.echo_window} frames in flight, "
        f"{args.echo_seconds}s")
    with BenchGcPaused():
        runners = [asyncio.ensure_future(client(ws)) for ws in clients]
        await asyncio.sleep(args.warmup)
        meter = world.meter()
        before = meter.snapshot()
        state["recording"] = True
        await asyncio.sleep(args.echo_seconds)
        state["recording"] = False
        count = state["count"]
        cpu = CpuMeter.diff(before, meter.snapshot())
    state["sending"] = False
    try:
        await asyncio.wait_for(asyncio.gather(*runners), 15)
    except TimeoutError:
        log(f"warning: echo {target}: {state['inflight']} frames still in flight after 15s")
        for runner in runners:
            runner.cancel()
    for session in sessions:
        session.ws_received = []
    await close_sockets(world, clients, sessions, target)
    row = {"target": target, "sockets": args.echo_sockets, "window": args.echo_window, "frame_bytes": size,
           "echoes": count, "seconds": cpu["wall_s"], "echoes_per_s": round(count / cpu["wall_s"]),
           **latency_summary(state["latencies"]), "cpu": cpu}
    if target != "direct":
        relay_cpu = cpu[f"{target}_cpu_s"]
        row.update(relay_cpu_s=relay_cpu, relay_cpu_pct=cpu[f"{target}_cpu_pct"],
                   echoes_per_relay_cpu_s=round(count / relay_cpu) if relay_cpu > 0 else None,
                   relay_cpu_us_per_echo=round(1e6 * relay_cpu / count, 2) if count else None)
    return row


async def echo(world):
    for target in ["direct", "gateway"] + list(world.anchors):
        world.results["echo"].append(await echo_run(world, target))
