"""Gateway benchmark: what the gateway costs compared with calling the HeyGen emulator directly.

`make bench` (= .venv/bin/python bench/run.py). One run measures, side by side:

1. REST overhead: the same HeyGen call (streaming.keep_alive, and streaming.task) made directly against the HeyGen
   emulator and through the gateway, at fixed concurrencies; p50/p95/p99, requests/s, added latency, CPU per request.
   Plus a breakdown reference: the gateway's own MongoDB work for one call, measured alone.
2. WebSocket relay: one-way latency and throughput of small binary and text frames, client -> HeyGen
   (timestamp in the payload, read where the emulator records received frames) and HeyGen -> client (sent by the
   emulator on its own socket), on a direct connection to the emulator and through the gateway's relay.
2b. WebSocket echo at saturation: frames echoed per relay CPU-second.
2c. Open loop: S sessions x F binary frames/s (default 200 x 31, a talking user's microphone each): frames/s
   delivered, latency per 1-second window, frames per relay CPU-second.
3. Memory: N relayed sockets held open; the gateway process's RSS before/after, KiB and file descriptors per socket.
4. Side by side: the same figures for two anchor relays the bench starts in front of the same emulator, nginx and a
   Node `ws` + `http-proxy` relay (bench/anchors, bench/relays.py), and the ratios gateway / anchor.
6. A session's first call in a process: keep_alive over N sessions the gateway process has never met (it is
   restarted after minting them) against the same calls warm and direct; CPU per call, added latency, minting time.
7. Idle relayed sockets: 10,000 held through one gateway process; RSS per socket (gateway, MongoDB), /healthz.
8. Concurrent full sessions: 500 whole plugin flows at once; the avatar's events HeyGen -> browser latency.
5. Room agents (optional: `--rooms`, or `--parts rooms` alone): the gateway's data-only LiveKit participant per
   session room, our aiortc client against the official `livekit` SDK, idle and with talking avatars; RSS, CPU and
   threads per room against issue 16's budget (bench/suite/rooms.py). Runs after the others, with the gateway stopped.

Layout: the gateway runs as a child process (`python server.py`, configured by environment as in production) so its
RSS and CPU are its own; so do the anchors. MongoDB (SecantusDB, a child process in a temp dir), the HeyGen emulator,
the Petya reference and the load client share this process and its event loop. With 2 CPUs the relays are pinned to
CPU 1 and this process and MongoDB to CPU 0. Everything is on loopback. See bench/README.md.

Code: this file starts the run and parses the options; the world, the parts and the report are modules in
bench/suite/ (listed in bench/suite/__init__.py).
"""
import argparse
import asyncio
import json
import os
import platform
import sys
import time

import pycurl
import relays  # bench/relays.py: the anchor relays, pinning, /proc readings
import tornado
from suite.client import gateway_pool, gateway_session
from suite.common import RESULTS_DIR, bounded_gather, log
from suite.echo import echo
from suite.firstcall import firstcall
from suite.flows import flows
from suite.idle import idle
from suite.measure import proc_status
from suite.memory import memory
from suite.openloop import openloop
from suite.report import ratios, report
from suite.rest import rest_part
from suite.rooms import add_arguments as add_room_arguments
from suite.rooms import rooms_part
from suite.websocket import UTTERANCE_FRAMES, websocket
from suite.world import World

GATEWAY_PARTS = ("rest", "ws", "echo", "openloop", "memory", "firstcall", "idle", "flows")


async def run(args):
    """Start the world, make the REST runs' sessions and the gateway's session pool, run the chosen parts in order,
    stop; returns the results with the ratios."""
    world = World(args)
    started = time.time()
    meta = world.results["meta"]
    meta.update({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
                 "tornado": tornado.version, "pycurl": pycurl.version, "cpus": os.cpu_count(),
                 "kernel": platform.release(), "args": vars(args)})
    parts = set(args.parts.split(","))
    if parts - {"rooms"}:
        await gateway_parts(world, args, parts)
    if "rooms" in parts:  # its own processes only; the gateway and the emulators are stopped by now
        t0 = time.perf_counter()
        world.results["rooms"] = rooms_part(args)
        meta.setdefault("part_seconds", {})["rooms"] = round(time.perf_counter() - t0, 1)
    meta["duration_s"] = round(time.time() - started, 1)
    world.results["ratios"] = ratios(world.results)
    return world.results


async def gateway_parts(world, args, parts):
    """Parts 1-4: the world started, the REST runs' sessions and the gateway's pool made, the parts, the world
    stopped."""
    meta = world.results["meta"]
    try:
        await world.start()
        meta.update({"gateway_pid": world.gateway.pid, "mongo_pid": world.mongo.process.pid,
                     "bench_pid": os.getpid(), "pinned": world.pinned,
                     "affinity": {"bench": relays.affinity(os.getpid()),
                                  "mongo": relays.affinity(world.mongo.process.pid),
                                  "gateway": relays.affinity(world.gateway.pid),
                                  **{name: relays.affinity(a.process.pid) for name, a in world.anchors.items()}}})
        log(f"creating {2 * world.max_concurrency} started sessions for the REST runs")
        made = await bounded_gather([lambda: gateway_session(world, start=True)] * (2 * world.max_concurrency),
                                    world.max_concurrency)
        ids = [s for s, _ in made]
        sessions_by_call = {"keep_alive": ids[:world.max_concurrency], "task": ids[world.max_concurrency:]}
        pool = max([args.sockets if "memory" in parts else 0, args.sessions if "openloop" in parts else 0,
                    args.echo_sockets if "echo" in parts else 0])
        if pool:
            t0 = time.perf_counter()
            await gateway_pool(world, pool)
            meta["gateway_pool"] = {"sessions": pool, "seconds": round(time.perf_counter() - t0, 2)}
        timings = meta["part_seconds"] = {}
        loads = meta["loadavg"] = {"start": loadavg()}
        for part, method in (("rest", rest_part), ("ws", websocket), ("echo", echo), ("openloop", openloop),
                             ("memory", memory), ("firstcall", firstcall), ("idle", idle), ("flows", flows)):
            if part in parts and not (part == "memory" and args.sockets <= 0):
                world.part = part
                t0 = time.perf_counter()
                await method(world, *([sessions_by_call, ids] if part == "rest" else []))
                timings[part] = round(time.perf_counter() - t0, 1)
                loads[part] = loadavg()
        meta["gateway_rss_end_kib"] = proc_status(world.gateway.pid)["VmRSS"]
    finally:
        await world.stop()


def loadavg():
    """The machine's load averages (1, 5, 15 min) from /proc/loadavg: how busy the shared machine was."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=2000, help="relayed sockets held open for the memory "
                        "figure, per relay (default 2000; 0 skips that part)")
    parser.add_argument("--concurrency", default="1,16", help="REST client concurrencies (default 1,16)")
    parser.add_argument("--anchors", default="nginx,node", help="anchor relays to start and measure beside the "
                        "gateway (default nginx,node; '' for none)")
    parser.add_argument("--layers", default="tornado,tornado+curl,tornado+gwcurl",
                        help="the gateway's stack alone, as REST keep_alive references (bench/anchors/layers.py): a "
                             "bare tornado handler, plus tornado's stock curl client, plus the gateway's curl client "
                             "(empty: none)")
    parser.add_argument("--pin", choices=("auto", "on", "off"), default="auto", help="pin the relays to "
                        "--relay-cpu and the bench + MongoDB to --load-cpu (auto: when 2+ CPUs are allowed)")
    parser.add_argument("--relay-cpu", type=int, default=1)
    parser.add_argument("--load-cpu", type=int, default=0)
    parser.add_argument("--nodelay", type=int, choices=(0, 1), default=1, help="1 (default): the bench's client "
                        "sockets and the emulator's server sockets set TCP_NODELAY, as browsers and most servers do; "
                        "0: tornado's default (Nagle on). The relays decide for their own sockets")
    parser.add_argument("--echo-sockets", type=int, default=16, help="sockets in the echo saturation row")
    parser.add_argument("--echo-window", type=int, default=8, help="frames in flight per echo socket")
    parser.add_argument("--echo-seconds", type=float, default=4.0, help="measured seconds per echo row")
    parser.add_argument("--sessions", type=int, default=200, help="sockets in the open-loop row (default 200)")
    parser.add_argument("--fps", type=int, default=31, help="binary frames per second per open-loop socket "
                        "(default 31)")
    parser.add_argument("--openloop-seconds", type=int, default=10, help="measured seconds per open-loop row")
    parser.add_argument("--openloop-warmup", type=float, default=1.0)
    parser.add_argument("--rest-seconds", type=float, default=5.0, help="measured seconds per REST row (default 5)")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds before each REST row")
    parser.add_argument("--breakdown-iterations", type=int, default=300)
    parser.add_argument("--ws-frames", type=int, default=1000, help="frames timed one at a time per WS row")
    parser.add_argument("--ws-warmup", type=int, default=50)
    parser.add_argument("--ws-burst", type=int, default=5000, help="frames sent back to back for throughput")
    parser.add_argument("--turn-burst", type=int, default=1000, help="frames back to back in the text+turns row "
                        "(a transcript turn every %d frames; 0 skips the row)" % UTTERANCE_FRAMES)
    parser.add_argument("--binary-size", type=int, default=640, help="binary frame bytes (640 = 20 ms of 16 kHz "
                        "16-bit mono audio)")
    parser.add_argument("--text-size", type=int, default=120, help="approximate text frame bytes")
    parser.add_argument("--handshakes", type=int, default=100, help="sockets set up one at a time per path")
    parser.add_argument("--setup-concurrency", type=int, default=20)
    parser.add_argument("--open-concurrency", type=int, default=50, help="relayed sockets opening at once")
    parser.add_argument("--rounds", type=int, default=2, help="open/close rounds of the N sockets (default 2: "
                        "the second shows whether memory kept after the first is reused or grows)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait before each RSS reading")
    parser.add_argument("--gateway-log-level", default="INFO", help="the gateway's LOG_LEVEL (default INFO, as "
                        "deployed: one access line per request)")
    parser.add_argument("--parts", default=",".join(GATEWAY_PARTS), help="which parts to run (default "
                        f"{','.join(GATEWAY_PARTS)}; 'rooms' is part 5, not run by default)")
    parser.add_argument("--first-sessions", type=int, default=2000, help="part 6 (firstcall): sessions minted, "
                        "then met for the first time by a restarted gateway (default 2000; the issue's 10000)")
    parser.add_argument("--first-concurrency", type=int, default=16, help="part 6: keep_alive clients at once")
    parser.add_argument("--idle-sockets", type=int, default=10000, help="part 7 (idle): relayed sockets held "
                        "idle in one gateway process (default 10000; above it the gateway's MAX_SOCKETS is raised)")
    parser.add_argument("--idle-hold", type=float, default=10.0, help="part 7: seconds the sockets are held idle")
    parser.add_argument("--flows", type=int, default=500, help="part 8 (flows): full sessions run at once "
                        "(default 500)")
    parser.add_argument("--flow-timeout", type=float, default=30.0, help="part 8: seconds a client waits for its "
                        "avatar's events")
    parser.add_argument("--rooms", action="store_true", help="also run part 5, room agents (about 2 minutes; "
                        "bench/suite/rooms.py), after the others")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra gateway setting for experiments, e.g. DB_WORKERS=16 (repeatable)")
    parser.add_argument("--calls", default="keep_alive,task", help="REST calls to measure (default keep_alive,task)")
    parser.add_argument("--profile-gateway", metavar="OUT.prof", help="run the gateway under cProfile (all threads; "
                        "slower, so not for the table) and write its stats there")
    parser.add_argument("--json", default=os.path.join(RESULTS_DIR, "latest.json"), help="where to write results")
    add_room_arguments(parser)
    args = parser.parse_args(argv)
    if args.rooms and "rooms" not in args.parts.split(","):
        args.parts += ",rooms"
    if args.sockets < 0 or args.rest_seconds <= 0 or args.ws_frames < 1 or args.ws_burst < 1:
        parser.error("counts and durations must be positive")
    if args.sessions < 1 or args.fps < 1 or args.openloop_seconds < 1 or args.echo_sockets < 1 or \
            args.echo_window < 1:
        parser.error("--sessions, --fps, --openloop-seconds, --echo-sockets and --echo-window must be positive")
    if args.first_sessions < 1 or args.first_concurrency < 1 or args.idle_sockets < 1 or args.flows < 1:
        parser.error("--first-sessions, --first-concurrency, --idle-sockets and --flows must be positive")
    unknown = set(args.parts.split(",")) - {*GATEWAY_PARTS, "rooms"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    return args


def main(argv=None):
    args = parse_args(argv)
    results = asyncio.run(run(args))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:  # written before the report, so a report bug never loses a run
        json.dump(results, f, indent=2)
    text = report(results)
    print(text)
    with open(args.json, "w") as f:
        json.dump({**results, "table": text}, f, indent=2)
    print(f"\nresults: {os.path.relpath(os.path.abspath(args.json), os.getcwd())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
