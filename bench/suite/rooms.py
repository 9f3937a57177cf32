"""5. Room agents: what it costs the gateway to sit in each session's LiveKit room as a data-only participant (issue
16), measured for the two candidate clients side by side:

    aiortc  clients/livekit.py DataParticipant (ours: one aiortc peer connection, data channels only)
    sdk     the official `livekit` Python rtc SDK (rtc.Room, Rust core over FFI), auto_subscribe off

Runs: `.venv/bin/python bench/run.py --parts rooms` (this part alone, no gateway started), `bench/run.py --rooms`
(the default parts, then this one), or `.venv/bin/python bench/suite/rooms.py [options]` (this part alone, same
options; `--help`).

Processes. The room server (sandbox/livekit RoomServer) runs in child process(es), not counted: `--rooms-servers`
(default auto: one up to 250 rooms, two above) each serving a share of the rooms. Every room has a server participant
`liveavatar-agent-<i>` playing LiveAvatar's agent. The client under test runs in a separate child process, the
measured one, which joins the N rooms (identity `gateway-agent-<i>`, `--rooms-join-concurrency` joins at a time)
and does nothing else. This process only starts, steers (one JSON line each way on the children's stdin/stdout) and
reads /proc. With 2+ CPUs (`--pin auto`) the measured child is pinned to `--relay-cpu` and the room servers to
`--load-cpu`, as the relays and the load are in the other parts.

Per run (client x mode x N):
- baseline: the measured child's VmRSS (/proc/<pid>/status) and utime+stime (/proc/<pid>/stat) once it has imported
  everything and, for the SDK, started its FFI runtime (its tokio threads): what a gateway process holds anyway;
- join: N rooms joined; CPU ms per join (the child's CPU over the join phase / N), the phase's wall time and each
  join's latency (p50/p99, at the join concurrency);
- `--rooms-settle` s, then (talking) the server participants start talking and the child starts sending commands,
  and `--rooms-warmup` s later the window: `--rooms-seconds` (default 15) s over which the child's CPU is read;
  RSS and threads are read at its end. RSS/room = (VmRSS - baseline) / N; CPU/room = the child's CPU over the
  window as % of one core / N.
- idle: nothing is said; what remains is each client's upkeep (signalling pings, ICE consent checks, SCTP
  heartbeats, its runtime's timers).
- talking: each room's agent publishes LiveAvatar's FULL-mode event stream on topic `agent-response` without pause:
  `avatar.speak_started`, one `avatar.transcription.chunk {text: word}` per word every 1/`--rooms-words-per-s` s,
  then `avatar.transcription {text}` and `avatar.speak_ended`, and again (rooms start at staggered offsets). Each
  event is `{"event_id", "event_type", "session_id", "source_event_id", ...}` as sandbox/liveavatar.py sends them.
  The measured child hands every packet to the room's consumer and publishes one command per utterance per room on
  `agent-control` (`avatar.speak_text`, as the gateway would for a task), spread evenly over time. The servers count
  what they published and the commands they heard; the report checks both against what the child counted.

The consumer (the per-room packet handler in the measured child) is pluggable. The default is the gateway's own
per-room work in a bridged session (bench/suite/room_consumer.py: translate into HeyGen's events and publish them back
in the room); `--rooms-consumer ''` uses `last_event`, which decodes the JSON and keeps the last event. Another
consumer is a factory

    def make(index, publish):   # index: the room's number; publish(payload: bytes, topic: str): a coroutine
        ...                     # (the client's publish, for a handler that answers in the room)
        return on_packet        # on_packet(sender: str, topic: str | None, payload: bytes) -> None, synchronous

in an importable module (the repository root is on sys.path) and pass `--rooms-consumer package.module:make`. The
factory is called once per room before joining (so what it allocates counts in RSS/room); on_packet runs on the
child's event loop for every data packet the room delivers.

Budget (issue 16): >= 500 idle rooms per process at <= 2 MiB and <= 0.05 % of a core each; 200 talking rooms within
one core (<= 100 %). A client measured at fewer rooms than the budget names is judged on its per-room figures,
and its total is extrapolated to the budget's count (marked "extrapolated").

The children end by os._exit after their last report (the measured child) or by SIGTERM (the servers), so no
asyncio teardown runs: nothing is printed at exit. Their stderr goes to bench/results/rooms-children.log; the
report says how many lines it holds.
"""
import argparse
import asyncio
import importlib
import json
import os
import subprocess
import sys
import time
import uuid

if __package__ in (None, ""):  # run as a script: bench/ and the repository root on sys.path, as `suite` expects
    sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]

import relays  # bench/relays.py: /proc/stat per CPU

from suite import ROOT
from suite.common import RESULTS_DIR, log
from suite.measure import latency_summary, proc_cpu_seconds, proc_status

CLIENTS = {"aiortc": "clients/livekit.py DataParticipant (aiortc)", "sdk": "livekit rtc SDK (Rust core)"}
RESPONSE_TOPIC = "agent-response"
COMMAND_TOPIC = "agent-control"
SENTENCE = ("Thanks for asking, the order left our warehouse this morning and should reach you by Thursday "
            "afternoon at the latest.")
JOIN_TIMEOUT = 30.0  # seconds per join
BUDGET_IDLE_ROOMS, BUDGET_RSS_KIB, BUDGET_CPU_PCT = 500, 2048, 0.05
BUDGET_TALKING_ROOMS, BUDGET_TALKING_TOTAL_PCT = 200, 100.0
LOG_PATH = os.path.join(RESULTS_DIR, "rooms-children.log")
ALLOWED_CPUS = os.sched_getaffinity(0)  # read at import: bench/run.py pins itself to --load-cpu later


def last_event(index, publish):
    """The default consumer: decode each agent-response event and keep the last one (a stand-in for the gateway's
    per-room handler)."""
    kept = {}

    def on_packet(sender, topic, payload):
        if topic == RESPONSE_TOPIC:
            kept["last"] = json.loads(payload)
    return on_packet


def load_consumer(spec):
    if not spec:
        return last_event
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name or "make")


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def stdin_lines():
    """This child's stdin as an asyncio stream (no reader thread: it would count in the measured threads)."""
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)  # the config line holds every token
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


# --- the room server child ----------------------------------------------------------------------------------------

class AgentScript:
    """One room's `liveavatar-agent-<i>`: LiveAvatar's FULL-mode agent, talking without pause once told to."""

    def __init__(self, index):
        self.index = index
        self.session_id = str(uuid.UUID(int=index))
        self.participant = None
        self.published = 0
        self.commands = 0

    def on_data(self, received):
        if received.topic == COMMAND_TOPIC:
            self.commands += 1

    def send(self, event_type, source_event_id, **fields):
        event = {"event_id": str(uuid.uuid4()), "event_type": event_type, "session_id": self.session_id,
                 "source_event_id": source_event_id, **fields}
        self.participant.publish_data(json.dumps(event), topic=RESPONSE_TOPIC)
        self.published += 1

    async def talk(self, offset, per_word):
        words = SENTENCE.split()
        await asyncio.sleep(offset)
        while True:
            source = str(uuid.uuid4())
            self.send("avatar.speak_started", source)
            for word in words:
                await asyncio.sleep(per_word)
                self.send("avatar.transcription.chunk", source, text=word)
            self.send("avatar.transcription", source, text=SENTENCE)
            self.send("avatar.speak_ended", source)


async def serve(first, count):
    """The child: a room server with rooms bench-<first>..; prints its URL and a token per room, then obeys its
    stdin: `talk <seconds per word>`, `stats`."""
    from sandbox.livekit import RoomServer

    server = RoomServer(max_rooms=max(count, 1)).listen()
    scripts, tokens = [], []
    for index in range(first, first + count):
        script = AgentScript(index)
        room = server.room(f"bench-{index}")
        script.participant = await room.add_server_participant(f"liveavatar-agent-{index}", on_data=script.on_data)
        scripts.append(script)
        tokens.append(server.token(room.name, f"gateway-agent-{index}"))
    say({"url": server.url, "tokens": tokens})
    talking = []  # the talk tasks, held while they run
    lines = await stdin_lines()
    while line := (await lines.readline()).decode().split():
        if line[0] == "talk":
            per_word = float(line[1])
            period = per_word * len(SENTENCE.split())
            talking = [asyncio.ensure_future(s.talk(period * i / len(scripts), per_word))
                       for i, s in enumerate(scripts)]
            say({"talking": len(talking)})
        elif line[0] == "stats":
            say({"published": sum(s.published for s in scripts), "commands": sum(s.commands for s in scripts),
                 "participants": sum(len(r.participants) for r in server.rooms.values())})
    os._exit(0)


# --- the measured child -------------------------------------------------------------------------------------------

class OursRoom:
    """clients/livekit.py's DataParticipant."""

    def __init__(self, url, token, on_packet):
        from clients.livekit import DataParticipant

        self.lost = None
        self.participant = DataParticipant(url, token, lambda d: on_packet(d.sender, d.topic, d.payload), self.gone)

    reconnects = 0  # it does not reconnect: a room it loses stays lost

    def gone(self, reason):
        self.lost = reason

    async def join(self):
        await self.participant.join(JOIN_TIMEOUT)

    async def publish(self, payload, topic):
        return self.participant.publish(payload, topic)

    @property
    def connected(self):
        return self.participant.connected


class SdkRoom:
    """The official SDK's rtc.Room, data only."""

    def __init__(self, url, token, on_packet):
        from livekit import rtc

        self.url, self.token, self.lost = url, token, None
        self.room = rtc.Room()
        self.room.on("data_received", lambda p: on_packet(p.participant.identity if p.participant else "", p.topic,
                                                          p.data))
        self.room.on("disconnected", self.gone)
        self.room.on("reconnecting", self.reconnecting)
        self.reconnects = 0
        self.options = rtc.RoomOptions(auto_subscribe=False)

    def gone(self, reason=None):
        self.lost = str(reason)

    def reconnecting(self, *_):
        self.reconnects += 1

    async def join(self):
        await asyncio.wait_for(self.room.connect(self.url, self.token, self.options), JOIN_TIMEOUT)

    async def publish(self, payload, topic):
        await self.room.local_participant.publish_data(payload, topic=topic, reliable=True)
        return True

    @property
    def connected(self):
        return self.room.isconnected()


def preload(client):
    """Everything a gateway process holds before its first room: imports, and the SDK's FFI runtime."""
    if client == "aiortc":
        import aiortc  # noqa: F401

        import clients.livekit  # noqa: F401
    else:
        from livekit.rtc._ffi_client import FfiClient

        FfiClient.instance  # noqa: B018 -- loads the native library and starts its runtime


async def agent():
    """The measured child: joins the rooms it is given with one client, hands their packets to the consumer and, when
    told, publishes commands. Steered by its stdin: a config line, then `join`, `commands <period s>`, `stats`,
    `quit` (after which it os._exits)."""
    lines = await stdin_lines()
    config = json.loads(await lines.readline())
    preload(config["client"])
    factory = load_consumer(config.get("consumer"))
    room_class = OursRoom if config["client"] == "aiortc" else SdkRoom
    counts = {"packets": 0, "consumer_errors": 0, "commands": 0, "publish_failed": 0}
    rooms = []
    say({"ready": True})

    def counted(on_packet):
        def on(sender, topic, payload):
            counts["packets"] += 1
            try:
                on_packet(sender, topic, payload)
            except Exception:
                counts["consumer_errors"] += 1
        return on

    async def join_all():
        semaphore = asyncio.Semaphore(config["concurrency"])
        latencies, failures = [], []

        async def join(room):
            async with semaphore:
                t0 = time.perf_counter()
                try:
                    await room.join()
                    latencies.append(time.perf_counter() - t0)
                except Exception as exc:
                    failures.append(f"{type(exc).__name__}: {exc}"[:200])
        for i, target in enumerate(config["rooms"]):
            async def publish(payload, topic, i=i):
                return await rooms[i].publish(payload, topic)
            rooms.append(room_class(target["url"], target["token"], counted(factory(i, publish))))
        t0 = time.perf_counter()
        await asyncio.gather(*(join(room) for room in rooms))
        return {"joined": len(latencies), "failed": len(failures), "failures": failures[:5],
                "seconds": round(time.perf_counter() - t0, 3), "latency": latency_summary(latencies)}

    async def command_loop(period):
        """One avatar.speak_text per room every `period` s, spread evenly over the rooms."""
        live = [r for r in rooms if r.connected]
        if not live:
            return
        gap, n, t0 = period / len(live), 0, time.monotonic()
        while True:
            room = live[n % len(live)]
            command = {"event_id": str(uuid.uuid4()), "event_type": "avatar.speak_text", "text": SENTENCE}
            try:
                ok = await room.publish(json.dumps(command).encode(), COMMAND_TOPIC)
            except Exception:
                ok = False
            counts["commands" if ok else "publish_failed"] += 1
            n += 1
            await asyncio.sleep(max(0.0, t0 + n * gap - time.monotonic()))

    running = []  # the command loop's task, held while it runs
    while line := (await lines.readline()).decode().split():
        if line[0] == "join":
            say(await join_all())
        elif line[0] == "commands":
            running.append(asyncio.ensure_future(command_loop(float(line[1]))))
        elif line[0] == "stats":
            say({**counts, "connected": sum(1 for r in rooms if r.connected),
                 "lost": sum(1 for r in rooms if r.lost is not None),
                 "reconnects": sum(r.reconnects for r in rooms)})
        elif line[0] == "quit":
            break
    os._exit(0)


# --- this process: the runs and their figures ---------------------------------------------------------------------

class Child:
    """A child process of this module, steered by one JSON line each way."""

    def __init__(self, role, args, cpus, log_file):
        def pin():
            if cpus:
                os.sched_setaffinity(0, cpus)
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), role, *map(str, args)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, text=True,
                                        cwd=ROOT, preexec_fn=pin)
        self.pid = self.process.pid

    def ask(self, *words, obj=None):
        self.process.stdin.write((json.dumps(obj) if obj is not None else " ".join(map(str, words))) + "\n")
        self.process.stdin.flush()
        return self.read()

    def tell(self, *words):
        self.process.stdin.write(" ".join(map(str, words)) + "\n")
        self.process.stdin.flush()

    def read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"child {self.pid} exited ({self.process.wait()}); see {LOG_PATH}")
        return json.loads(line)

    def stop(self):
        if self.process.poll() is None:
            try:
                self.tell("quit")
                self.process.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.terminate()
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()


def cpu_pct(seconds, wall):
    return 100.0 * seconds / wall if wall > 0 else None


def measure_run(args, client, mode, n, log_file):
    """One run: N rooms joined by `client`, idle or talking; its figures."""
    pinned = args.pin == "on" or (args.pin == "auto" and len(ALLOWED_CPUS) >= 2)
    agent_cpus = {args.relay_cpu} if pinned else ALLOWED_CPUS  # (unpinned: not the bench's own pinning either)
    server_cpus = {args.load_cpu} if pinned else ALLOWED_CPUS
    nservers = args.rooms_servers if args.rooms_servers > 0 else (1 if n <= 250 else 2)
    shares = [n // nservers + (1 if i < n % nservers else 0) for i in range(nservers)]
    servers, agent, targets, first = [], None, [], 0
    result = {"client": client, "mode": mode, "rooms": n, "servers": nservers, "pinned": pinned}
    log(f"rooms: {client} {mode} x{n}: starting {nservers} room server(s)")
    try:
        for share in shares:
            server = Child("serve", [first, share], server_cpus, log_file)
            servers.append(server)
            first += share
        for server in servers:
            started = server.read()
            targets += [{"url": started["url"], "token": token} for token in started["tokens"]]
        agent = Child("agent", [], agent_cpus, log_file)
        agent.ask(obj={"client": client, "rooms": targets, "concurrency": args.rooms_join_concurrency,
                       "consumer": args.rooms_consumer})
        time.sleep(1.0)
        base = proc_status(agent.pid)
        cpu0, t0 = proc_cpu_seconds(agent.pid), time.perf_counter()
        log(f"rooms: {client} {mode}: joining {n} rooms ({args.rooms_join_concurrency} at a time)")
        joined = agent.ask("join")
        join_cpu = proc_cpu_seconds(agent.pid) - cpu0
        result.update(baseline_rss_kib=base["VmRSS"], baseline_threads=base["Threads"], joined=joined["joined"],
                      join_failed=joined["failed"], join_failures=joined["failures"], join_seconds=joined["seconds"],
                      join_wall_s=round(time.perf_counter() - t0, 3), join_latency=joined["latency"],
                      join_cpu_ms=round(1000 * join_cpu / max(joined["joined"], 1), 2))
        if joined["failed"]:
            log(f"rooms: {joined['failed']} joins failed, e.g. {joined['failures'][:1]}")
        time.sleep(args.rooms_settle)
        period = len(SENTENCE.split()) / args.rooms_words_per_s
        if mode == "talking":
            for server in servers:
                server.ask("talk", 1.0 / args.rooms_words_per_s)
            agent.tell("commands", period)
            time.sleep(args.rooms_warmup if args.rooms_warmup > 0 else period + 1.0)  # every room talking
        log(f"rooms: {client} {mode}: measuring {args.rooms_seconds:g} s")
        a0, s0 = agent.ask("stats"), [s.ask("stats") for s in servers]
        c0, sc0, w0 = proc_cpu_seconds(agent.pid), [proc_cpu_seconds(s.pid) for s in servers], \
            time.perf_counter()
        cpus0 = relays.cpu_times()
        time.sleep(args.rooms_seconds)
        c1, sc1, w1 = proc_cpu_seconds(agent.pid), [proc_cpu_seconds(s.pid) for s in servers], \
            time.perf_counter()
        cpus1 = relays.cpu_times()
        end = proc_status(agent.pid)
        a1, s1 = agent.ask("stats"), [s.ask("stats") for s in servers]
        wall, rooms = w1 - w0, max(joined["joined"], 1)
        total = cpu_pct(c1 - c0, wall)
        published = sum(s["published"] for s in s1) - sum(s["published"] for s in s0)
        heard = sum(s["commands"] for s in s1) - sum(s["commands"] for s in s0)
        other = None  # what else ran on the measured child's CPU (busy minus the child), % of that CPU
        if pinned and f"cpu{args.relay_cpu}" in cpus0:
            (b0, _, t0_), (b1, _, t1_) = cpus0[f"cpu{args.relay_cpu}"], cpus1[f"cpu{args.relay_cpu}"]
            if t1_ > t0_:
                other = round(max(0.0, 100.0 * (b1 - b0) / (t1_ - t0_) - total), 1)
        result.update(
            window_s=round(wall, 2), other_cpu_pct=other, rss_kib=end["VmRSS"], rss_anon_kib=end["RssAnon"],
            threads=end["Threads"],
            rss_kib_per_room=round((end["VmRSS"] - base["VmRSS"]) / rooms, 1),
            threads_per_room=round((end["Threads"] - base["Threads"]) / rooms, 2),
            cpu_total_pct=round(total, 2), cpu_pct_per_room=round(total / rooms, 4),
            server_cpu_pct=[round(cpu_pct(b - a, wall), 1) for a, b in zip(sc0, sc1)],
            connected_end=a1["connected"], lost=a1["lost"], consumer_errors=a1["consumer_errors"],
            packets_received_per_s=round((a1["packets"] - a0["packets"]) / wall, 1),
            packets_published_per_s=round(published / wall, 1),
            commands_sent_per_s=round((a1["commands"] - a0["commands"]) / wall, 2),
            commands_heard_per_s=round(heard / wall, 2), publish_failed=a1["publish_failed"],
            reconnects=a1["reconnects"], reconnects_in_window=a1["reconnects"] - a0["reconnects"],
            utterance_s=round(period, 2))
        result["verdict"] = verdict(result)
        return result
    finally:  # the measured child first (it quits), then the servers
        if agent is not None:
            agent.stop()
        for server in servers:
            server.process.terminate()
            server.process.wait(10)


def verdict(r):
    """The run against issue 16's budget."""
    if r["mode"] == "idle":
        ok_rss, ok_cpu = r["rss_kib_per_room"] <= BUDGET_RSS_KIB, r["cpu_pct_per_room"] <= BUDGET_CPU_PCT
        notes = [] if r["joined"] >= BUDGET_IDLE_ROOMS else [f"measured at {r['joined']} < {BUDGET_IDLE_ROOMS}"]
        if not ok_rss:
            notes.append(f"RSS/room > {BUDGET_RSS_KIB} KiB")
        if not ok_cpu:
            notes.append(f"CPU/room > {BUDGET_CPU_PCT} %")
        ok = ok_rss and ok_cpu
    else:
        at_budget = r["cpu_pct_per_room"] * BUDGET_TALKING_ROOMS
        ok = at_budget <= BUDGET_TALKING_TOTAL_PCT
        notes = [] if r["joined"] >= BUDGET_TALKING_ROOMS else \
            [f"extrapolated to {BUDGET_TALKING_ROOMS}: {at_budget:.0f} % of a core"]
        if not ok:
            notes.append(f"> {BUDGET_TALKING_TOTAL_PCT:.0f} % at {BUDGET_TALKING_ROOMS}")
    if r["reconnects"]:
        notes.append(f"{r['reconnects']} reconnects, {r['reconnects_in_window']} in the window")
    if r["cpu_total_pct"] >= 90:
        notes.append("the child was saturated: its CPU/room is a lower bound")
    if r["joined"] < r["rooms"] or r["connected_end"] < r["joined"]:
        ok = False
        notes.append(f"only {r['connected_end']}/{r['rooms']} rooms connected")
    if r["mode"] == "talking" and r["packets_published_per_s"] and \
            abs(r["packets_received_per_s"] / r["packets_published_per_s"] - 1) > 0.05:
        notes.append("packets received != published")
    return ("PASS" if ok else "FAIL") + (f" ({'; '.join(notes)})" if notes else "")


def plan(args):
    """(client, mode, rooms) of every run, in order."""
    runs = []
    for mode, counts in (("idle", {"aiortc": args.rooms_idle, "sdk": args.rooms_idle_sdk}),
                         ("talking", {"aiortc": args.rooms_talking, "sdk": args.rooms_talking_sdk})):
        for client in args.rooms_clients.split(","):
            if client and counts.get(client, 0) > 0:
                runs.append((client, mode, counts[client]))
    return runs


def rooms_part(args):
    """Every run of this part, one after another (never two at once): {"runs": [...], "children_log": ...}."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    runs = []
    with open(LOG_PATH, "w") as log_file:
        for client, mode, n in plan(args):
            runs.append(measure_run(args, client, mode, n, log_file))
    with open(LOG_PATH) as f:
        lines = sum(1 for _ in f)
    return {"runs": runs, "children_log": os.path.relpath(LOG_PATH, ROOT), "children_log_lines": lines}


def report_lines(results):
    """Section 5 of the report."""
    part = results.get("rooms") or {}
    rows = part.get("runs") or []
    if not rows:
        return []
    from suite.report import fmt, table

    r0 = rows[0]
    out = ["", f"5. Room agents (issue 16): the gateway's data-only participant per session room, one measured child "
               f"process per run; room servers in their own processes (not counted). Window {r0['window_s']:.0f} s; "
               f"RSS/room = (VmRSS at the window's end - before joining) / rooms; CPU = utime+stime over the window, "
               f"% of one core. talking: {len(SENTENCE.split())}-word utterances at "
               f"{len(SENTENCE.split()) / r0['utterance_s']:.1f} words/s without pause, one agent-control command per "
               f"utterance back."]
    out.append(table(
        ["client", "mode", "rooms", "RSS/room KiB", "CPU/room %", "total CPU %", "threads", "join cpu ms",
         "join wall s", "join p50/p99 ms", "pkts in/s (sent)", "cmds/s out (heard)", "server %cpu", "other %cpu",
         "verdict"],
        [[r["client"], r["mode"],
          f"{r['joined']}/{r['rooms']}", fmt(r["rss_kib_per_room"], 1), fmt(r["cpu_pct_per_room"], 4),
          fmt(r["cpu_total_pct"], 1), f"{r['threads']} ({r['threads_per_room']:+.2f}/room)", fmt(r["join_cpu_ms"], 1),
          fmt(r["join_seconds"], 1),
          f"{fmt(r['join_latency']['p50_ms'], 0)}/{fmt(r['join_latency']['p99_ms'], 0)}",
          f"{r['packets_received_per_s']:.0f} ({r['packets_published_per_s']:.0f})",
          f"{r['commands_sent_per_s']:.1f} ({r['commands_heard_per_s']:.1f})",
          "/".join(f"{c:.0f}" for c in r["server_cpu_pct"]), fmt(r.get("other_cpu_pct"), 0), r["verdict"]]
         for r in rows]))
    out.append(f"   budget: idle <= {BUDGET_RSS_KIB} KiB and <= {BUDGET_CPU_PCT} % of a core per room at "
               f">= {BUDGET_IDLE_ROOMS} rooms; {BUDGET_TALKING_ROOMS} talking rooms <= "
               f"{BUDGET_TALKING_TOTAL_PCT:.0f} % of a core. aiortc = {CLIENTS['aiortc']}; sdk = {CLIENTS['sdk']}. "
               f"other %cpu: what the machine's other work took of the measured child's CPU during the window "
               f"(pinned runs; a few % or more means a disturbed row).")
    base = ", ".join(f"{r['client']} {r['mode']} {r['baseline_rss_kib'] / 1024:.0f} MiB/{r['baseline_threads']} threads"
                     for r in rows)
    out.append(f"   before joining (imports, SDK runtime started): {base}")
    if any(r["lost"] or r["consumer_errors"] or r["publish_failed"] or r["join_failed"] or r["reconnects"]
           for r in rows):
        out.append("   trouble: " + "; ".join(
            f"{r['client']} {r['mode']}: {r['join_failed']} joins failed, {r['lost']} rooms lost, "
            f"{r['reconnects']} reconnects ({r['reconnects_in_window']} in the window), {r['consumer_errors']} "
            f"consumer errors, {r['publish_failed']} publishes refused" for r in rows))
    if part.get("children_log_lines"):
        out.append(f"   the children's stderr: {part['children_log']} ({part['children_log_lines']} lines)")
    return out


def add_arguments(parser):
    group = parser.add_argument_group("room agents (part 'rooms'; bench/suite/rooms.py)")
    group.add_argument("--rooms-clients", default="aiortc,sdk", help="clients to measure (default aiortc,sdk)")
    group.add_argument("--rooms-idle", type=int, default=500, help="idle rooms for aiortc (default 500; 0 skips)")
    group.add_argument("--rooms-idle-sdk", type=int, default=50, help="idle rooms for the SDK (default 50: "
                       "at 100 its process already used a whole core)")
    group.add_argument("--rooms-talking", type=int, default=200, help="talking rooms for aiortc (default 200)")
    group.add_argument("--rooms-talking-sdk", type=int, default=50, help="talking rooms for the SDK (default 50)")
    group.add_argument("--rooms-seconds", type=float, default=15.0, help="measured window per run (default 15)")
    group.add_argument("--rooms-settle", type=float, default=3.0, help="seconds after joining before the window")
    group.add_argument("--rooms-warmup", type=float, default=0.0, help="talking seconds before the window (0, "
                       "the default: one utterance + 1 s, so that every room is talking)")
    group.add_argument("--rooms-words-per-s", type=float, default=3.0, help="the talking avatars' pace")
    group.add_argument("--rooms-join-concurrency", type=int, default=10, help="joins under way at once")
    group.add_argument("--rooms-servers", type=int, default=0, help="room server processes (0: auto, one per "
                       "250 rooms, at most 2)")
    group.add_argument("--rooms-consumer", default="bench.suite.room_consumer:make", metavar="MODULE:FACTORY",
                       help="the per-room packet consumer's factory (default: the gateway's own per-room work, "
                       "bench/suite/room_consumer.py; '' decodes JSON and keeps the last event); see this module's "
                       "docstring")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pin", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--relay-cpu", type=int, default=1, help="the measured child's CPU when pinned")
    parser.add_argument("--load-cpu", type=int, default=0, help="the room servers' CPU when pinned")
    parser.add_argument("--json", default=os.path.join(RESULTS_DIR, "rooms.json"))
    add_arguments(parser)
    args = parser.parse_args(argv)
    results = {"meta": {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(),
                        "args": vars(args)}, "rooms": rooms_part(args)}
    text = "\n".join(report_lines(results)[1:])
    print(text)
    with open(args.json, "w") as f:
        json.dump({**results, "table": text}, f, indent=2)
    print(f"\nresults: {os.path.relpath(os.path.abspath(args.json), os.getcwd())}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3])))
    elif sys.argv[1:2] == ["agent"]:
        asyncio.run(agent())
    else:
        main()
