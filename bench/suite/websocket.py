"""2. WebSocket relay: one-way latency and throughput of binary and text frames, client -> HeyGen (timed where the
emulator records received frames) and HeyGen -> client (sent by the emulator on its own socket), on a direct socket
and a relayed one; then the socket set-up time."""
import asyncio
import time

from suite.client import connect, direct_session, gateway_session, stored_turns
from suite.common import log, wait_for
from suite.measure import BenchGcPaused, CpuMeter, latency_summary
from suite.probes import ClientPeer, ProbeList, ProbeSink, binary_probe, text_event_down, text_probe_up

UTTERANCE_FRAMES = 20  # downstream text frames per utterance (then an untimed avatar_end_message)


async def end_utterance(world, session, utterance, path):
    """avatar_end_message for the current utterance (the relay then records it as a turn); starts a new one."""
    if utterance["frames"] == utterance["start"]:
        return  # nothing said since the last end
    await world.heygen._broadcast(session, {"type": "avatar_end_message", "task_id": utterance["task_id"]})
    utterance["ended"] += 1
    utterance["start"] = utterance["frames"]
    utterance["task_id"] = f"bench-{path}-{utterance['frames']}"


async def ws_latency(world, send, sink, frames, warmup):
    loop = asyncio.get_running_loop()
    sink.latencies = []
    for i in range(warmup + frames):
        sink.recording = i >= warmup
        seq = world.next_seq()
        waiter = loop.create_future()
        sink.waiters[seq] = waiter
        await send(seq)
        await asyncio.wait_for(waiter, 10)
    sink.recording = False
    return latency_summary(sink.latencies)


async def ws_throughput(world, send, sink, frames):
    loop = asyncio.get_running_loop()
    sink.count, sink.target, sink.done = 0, frames, loop.create_future()
    meter = world.meter()
    before = meter.snapshot()
    start = time.perf_counter()
    for _ in range(frames):
        await send(world.next_seq())
    last = await asyncio.wait_for(sink.done, 60)
    cpu = CpuMeter.diff(before, meter.snapshot())
    sink.target, sink.done = None, None
    return {"frames": frames, "seconds": round(last - start, 4), "frames_per_s": round(frames / (last - start)),
            "gateway_cpu_us_per_frame": round(1e6 * cpu["gateway_cpu_s"] / frames, 1),
            "bench_cpu_us_per_frame": round(1e6 * cpu["bench_cpu_s"] / frames, 1), "cpu": cpu}


async def websocket(world):
    args = world.args
    text_pad = "x" * max(0, args.text_size - 60)  # the JSON wrapper is ~60 bytes
    legs = {}
    for path in ("direct", "relayed"):
        if path == "direct":
            session_id, token = await direct_session(world)
        else:
            session_id, token = await gateway_session(world, start=True)
        session = world.heygen.sessions[session_id]
        up_sink, down_sink = ProbeSink(), ProbeSink()
        session.ws_received = ProbeList(up_sink)
        ws = await connect(world, world.ws_url(path, session_id, token))
        peer = ClientPeer(ws, down_sink)
        await wait_for(lambda session=session: len(session.sockets) == 1, 10, f"the {path} socket to reach HeyGen")
        legs[path] = dict(session_id=session_id, token=token, session=session, peer=peer, up=up_sink,
                          down=down_sink, utterance={"frames": 0, "start": 0, "ended": 0,
                                                     "task_id": f"bench-{path}-0"})

    def sender(path, direction, kind):
        leg = legs[path]
        session, ws = leg["session"], leg["peer"].ws
        if direction == "up" and kind == "binary":
            return lambda seq: ws.write_message(binary_probe(seq, args.binary_size), binary=True)
        if direction == "up":
            return lambda seq: ws.write_message(text_probe_up(seq, text_pad))
        if kind == "binary":
            async def send_binary_down(seq):
                for sock in list(session.sockets):
                    await sock.write_message(binary_probe(seq, args.binary_size), binary=True)
            return send_binary_down

        utterance = leg["utterance"]

        async def send_text_down(seq):
            # HeyGen's transcript stream: avatar_talking_message chunks. With kind "text+turns", every
            # UTTERANCE_FRAMES-th chunk is followed by an (untimed) avatar_end_message, so the relay also
            # records a transcript turn in MongoDB, as it does for real speech.
            await world.heygen._broadcast(session, text_event_down(seq, utterance["task_id"]))
            utterance["frames"] += 1
            if kind == "text+turns" and utterance["frames"] - utterance["start"] >= UTTERANCE_FRAMES:
                await end_utterance(world, session, utterance, path)
        return send_text_down

    plan = [("up", "binary"), ("up", "text"), ("down", "binary"), ("down", "text")]
    if args.turn_burst > 0:
        plan.append(("down", "text+turns"))
    for direction, kind in plan:
        rows = {}
        burst = args.turn_burst if kind == "text+turns" else args.ws_burst
        for path in ("direct", "relayed"):
            sink = legs[path][direction]
            send = sender(path, direction, kind)
            await world.gateway_idle()
            log(f"WebSocket {direction} {kind} {path}: {args.ws_frames} frames one at a time, "
                f"then {burst} back to back")
            with BenchGcPaused():
                latency = await ws_latency(world, send, sink, args.ws_frames, args.ws_warmup)
                throughput = await ws_throughput(world, send, sink, burst)
            if direction == "down" and kind != "binary":
                await end_utterance(world, legs[path]["session"], legs[path]["utterance"], path)
            size = args.binary_size if kind == "binary" else None
            rows[path] = {"direction": "client->HeyGen" if direction == "up" else "HeyGen->client",
                          "frame": kind, "path": path, "frame_bytes": size, **latency, **throughput}
            world.results["ws"].append(rows[path])
            await asyncio.sleep(0.4)  # let the emulator's user_stop (0.3 s after mic frames) pass
        d, r = rows["direct"], rows["relayed"]
        world.results["ws_overhead"].append({
            "direction": d["direction"], "frame": kind,
            "added_p50_ms": round(r["p50_ms"] - d["p50_ms"], 3),
            "added_p99_ms": round(r["p99_ms"] - d["p99_ms"], 3),
            "p50_ratio": round(r["p50_ms"] / d["p50_ms"], 2),
            "throughput_ratio": round(r["frames_per_s"] / d["frames_per_s"], 3),
        })

    relayed = legs["relayed"]["session_id"]
    world.results["ws_meta"] = {"relayed_session_turns": stored_turns(world, [relayed]),
                                "turns_sent": legs["relayed"]["utterance"]["ended"]}

    # Socket set-up: connect, then one text frame delivered to HeyGen (the relay reads client frames only once
    # its upstream socket is open, so this is the time until the relay is usable).
    for path in ("direct", "relayed"):
        leg = legs[path]
        url = world.ws_url(path, leg["session_id"], leg["token"])
        loop = asyncio.get_running_loop()
        times = []
        await world.gateway_idle()
        log(f"WebSocket set-up {path}: {args.handshakes} sockets, one at a time")
        for i in range(args.handshakes + 5):
            seq = world.next_seq()
            waiter = loop.create_future()
            leg["up"].waiters[seq] = waiter
            t0 = time.perf_counter()
            ws = await connect(world, url)
            await ws.write_message(text_probe_up(seq, ""))
            arrived = await asyncio.wait_for(waiter, 10)
            if i >= 5:
                times.append(arrived - t0)
            ws.close()
        world.results["ws_handshake"].append({"path": path, **latency_summary(times)})
        await wait_for(lambda leg=leg: len(leg["session"].sockets) == 1, 10, "set-up sockets to close")

    for leg in legs.values():
        await leg["peer"].close()
