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

Layout: the gateway runs as a child process (`python server.py`, configured by environment as in production) so its
RSS and CPU are its own; so do the anchors. MongoDB (SecantusDB, a child process in a temp dir), the HeyGen emulator,
the Petya reference and the load client share this process and its event loop. With 2 CPUs the relays are pinned to
CPU 1 and this process and MongoDB to CPU 0. Everything is on loopback. See bench/README.md.
"""
import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import secrets
import signal
import struct
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlencode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, "bench")
for _path in (ROOT, BENCH_DIR):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import pycurl  # noqa: E402
import pymongo  # noqa: E402
import tornado  # noqa: E402
from tornado.curl_httpclient import CurlAsyncHTTPClient  # noqa: E402
from tornado.httpclient import HTTPClientError, HTTPRequest  # noqa: E402
from tornado.websocket import WebSocketClosedError, websocket_connect  # noqa: E402

from sandbox.heygen import HeyGenEmulator, StreamingChatSocket  # noqa: E402
from sandbox.mongo import MongoServer, free_port  # noqa: E402
from sandbox.petya import PetyaReference  # noqa: E402
from sandbox.stack import ServedApp, with_database  # noqa: E402

import relays  # noqa: E402  (bench/relays.py: the anchor relays, pinning, /proc readings)

RESULTS_DIR = os.path.join(ROOT, "bench", "results")
CUSTOMER_KEY = "bench-customer-key"
GATEWAY_DB = "bench_gateway"
PETYA_DB = "bench_petya"
# The query the HeyGen SDK puts on the streaming.chat socket (as in tests/test_heygen_flow.py).
WS_PARAMS = [("silence_response", "false"), ("opening_text", ""), ("stt_language", "en"), ("enable_tts", "true"),
             ("enable_stt", "false")]
NEW_SESSION_BODY = {"quality": "low", "version": "v2", "activity_idle_timeout": 3600}
TASK_TEXT = "Thanks for waiting, your order is on its way."
UTTERANCE_FRAMES = 20  # downstream text frames per utterance (then an untimed avatar_end_message)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- statistics and process readings ----------------------------------------------------------------------------

def percentile(sorted_values, p):
    """Linear-interpolated percentile (p in 0..100) of an already sorted list."""
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def latency_summary(seconds):
    """p50/p95/p99/mean/max in milliseconds of a list of durations in seconds."""
    values = sorted(seconds)
    ms = lambda v: None if v is None else round(v * 1000.0, 3)  # noqa: E731
    return {"n": len(values), "p50_ms": ms(percentile(values, 50)), "p95_ms": ms(percentile(values, 95)),
            "p99_ms": ms(percentile(values, 99)), "mean_ms": ms(sum(values) / len(values) if values else None),
            "max_ms": ms(values[-1] if values else None)}


def proc_cpu_seconds(pid):
    """user+system CPU seconds of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid):
    """VmRSS, RssAnon, VmHWM (KiB) and Threads of a process, from /proc/<pid>/status."""
    wanted = {"VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"}
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in wanted:
                out[name] = int(value.split()[0])
    return out


def proc_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_nofile_limit(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                parts = line.split()
                return {"soft": parts[3], "hard": parts[4]}
    return None


class BenchGcPaused:
    """This process's garbage collector, off for one measurement and run right after. A full collection walks the
    emulators' whole heap (thousands of sessions) and stalls the event loop that sends, receives and timestamps for
    tens of ms: that would show up as relay latency. The relays' own collectors are not touched."""

    def __enter__(self):
        self.was_enabled = gc.isenabled()
        gc.disable()
        return self

    def __exit__(self, *exc):
        if self.was_enabled:
            gc.enable()
            gc.collect()


class CpuMeter:
    """CPU seconds used by the gateway, MongoDB server, each anchor relay (its whole process tree) and this process
    between two snapshots."""

    def __init__(self, pids):
        self.pids = pids  # name -> pid, or name -> callable returning the pids of a process tree

    def snapshot(self):
        snap = {}
        for name, pid in self.pids.items():
            snap[name] = relays.cpu_seconds(pid()) if callable(pid) else proc_cpu_seconds(pid)
        snap["bench"] = time.process_time()
        snap["cpus"] = relays.cpu_times()
        snap["wall"] = time.perf_counter()
        return snap

    @staticmethod
    def diff(before, after):
        wall = after["wall"] - before["wall"]
        out = {"wall_s": round(wall, 3)}
        for cpu, (busy, steal, total) in before["cpus"].items():
            b2, s2, t2 = after["cpus"][cpu]
            if t2 > total:
                out[f"{cpu}_busy_pct"] = round(100.0 * (b2 - busy) / (t2 - total), 1)
                out[f"{cpu}_steal_pct"] = round(100.0 * (s2 - steal) / (t2 - total), 1)
        for name in before:
            if name not in ("wall", "cpus"):
                used = after[name] - before[name]
                out[f"{name}_cpu_s"] = round(used, 3)
                out[f"{name}_cpu_pct"] = round(100.0 * used / wall, 1) if wall > 0 else None
        return out


def raise_fd_limit(needed):
    """Raise this process's soft RLIMIT_NOFILE to `needed` (children inherit it); returns (before, after, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = soft
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard


# --- WebSocket probes: frames carrying a sequence number and a perf_counter() send time ----------------------

MAGIC = b"BNCH"
HEADER = struct.Struct("<4sId")


def binary_probe(seq, size):
    frame = HEADER.pack(MAGIC, seq, time.perf_counter())
    return frame + bytes(max(0, size - len(frame)))


def text_probe_up(seq, pad):
    return json.dumps({"type": "bench_probe", "bench_seq": seq, "bench_t": time.perf_counter(), "pad": pad})


def text_event_down(seq, task_id):
    """A HeyGen avatar_talking_message event (what the relay parses for the transcript) carrying the probe."""
    return {"type": "avatar_talking_message", "task_id": task_id, "message": " w",
            "bench_seq": seq, "bench_t": time.perf_counter()}


def decode_probe(message):
    """(seq, sent_at) of a probe frame, or None for any other frame."""
    if isinstance(message, (bytes, bytearray)):
        if message[:4] == MAGIC and len(message) >= HEADER.size:
            _, seq, sent = HEADER.unpack_from(message)
            return seq, sent
        return None
    if "bench_seq" in message:
        event = json.loads(message)
        return event["bench_seq"], event["bench_t"]
    return None


class ProbeSink:
    """Where probes arrive (the emulator's record of received frames, or the client's reader)."""

    def __init__(self):
        self.waiters = {}
        self.latencies = []
        self.recording = False
        self.count = 0
        self.target = None
        self.done = None
        self.other = 0  # frames that were not probes (e.g. the emulator's user_start/user_stop)

    def arrive(self, seq, sent, now):
        if self.recording:
            self.latencies.append(now - sent)
        self.count += 1
        waiter = self.waiters.pop(seq, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)
        if self.done is not None and self.count >= self.target and not self.done.done():
            self.done.set_result(now)


class ProbeList(list):
    """Replaces an emulated session's `ws_received` list: the emulator's StreamingChatSocket.on_message appends
    (is_binary, payload) for every frame it receives; probes are timed here and not stored (bounded memory)."""

    def __init__(self, sink):
        super().__init__()
        self.sink = sink

    def append(self, item):
        now = time.perf_counter()
        probe = decode_probe(item[1])
        if probe is None:
            super().append(item)
        else:
            self.sink.arrive(probe[0], probe[1], now)


class EchoList(list):
    """Replaces an emulated session's `ws_received` list for the echo row: every frame the emulator receives is
    written straight back on the session's socket (HeyGen itself does not echo) and not kept."""

    def __init__(self, session):
        super().__init__()
        self.session = session

    def append(self, item):
        is_binary, payload = item
        for sock in self.session.sockets:
            try:
                sock.write_message(payload, binary=is_binary)
            except WebSocketClosedError:
                pass


class ClientPeer:
    """A client WebSocket whose incoming frames are read continuously; probes go to `sink`."""

    def __init__(self, ws, sink):
        self.ws = ws
        self.sink = sink
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self):
        while True:
            message = await self.ws.read_message()
            if message is None:
                return
            now = time.perf_counter()
            probe = decode_probe(message)
            if probe is None:
                self.sink.other += 1
            else:
                self.sink.arrive(probe[0], probe[1], now)

    async def close(self):
        self.ws.close()
        try:
            await asyncio.wait_for(self.reader, 5)
        except asyncio.TimeoutError:
            self.reader.cancel()


# --- the bench ------------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.concurrencies = sorted({int(c) for c in args.concurrency.split(",")})
        self.max_concurrency = max(self.concurrencies)
        self.results = {"meta": {}, "rest": [], "rest_overhead": [], "breakdown": [], "ws": [], "ws_overhead": [],
                        "ws_handshake": [], "memory": None, "echo": [], "openloop": [], "anchor_memory": [],
                        "ratios": []}
        self.anchor_names = [a for a in args.anchors.split(",") if a]
        self.anchors = {}  # name -> relays.Anchor (started)
        self.pinned = args.pin == "on" or (args.pin == "auto" and len(os.sched_getaffinity(0)) >= 2
                                           and (os.cpu_count() or 1) >= 2)
        self.relay_cpus = {args.relay_cpu} if self.pinned else None
        self.load_cpus = {args.load_cpu} if self.pinned else None
        self._part = "setup"
        self.db = None  # pymongo client on the gateway's database (bench-side checks only)
        self._gateway_pool = []  # (session_id, ilgt_ token) made through the gateway, reused across parts
        self._direct_pool = []  # (session_id, HeyGen token) made in the emulator, for direct and anchor sockets
        self.tmp = None
        self.mongo = None
        self.heygen = None
        self.petya = None
        self.served = {}
        self.gateway = None  # subprocess.Popen
        self.gateway_log = None
        self.gateway_url = None
        self.gateway_secret = secrets.token_hex(16)
        self.http = None
        self._seq = 0

    def next_seq(self):
        self._seq += 1
        return self._seq

    # --- setup / teardown ---------------------------------------------------------------------------------------

    async def start(self):
        args = self.args
        # fds: this process holds a client and an emulator-side socket per relayed socket; the gateway holds two.
        needed = 2 * max(args.sockets, args.sessions) + 1024
        before, after, hard = raise_fd_limit(needed)
        self.results["meta"]["fd_limit"] = {"soft_before": before, "soft_after": after, "hard": hard,
                                            "needed": needed}
        log(f"RLIMIT_NOFILE soft {before} -> {after} (hard {hard}); needed ~{needed} for {args.sockets} sockets")
        if after != resource.RLIM_INFINITY and after < needed:
            raise SystemExit(f"bench: the open-files limit (hard {hard}) is too low for --sockets {args.sockets}; "
                             f"(and --sessions {args.sessions}); lower them or raise `ulimit -Hn`")

        if self.pinned:
            # The load client and every emulator share this process: all of it (every thread) on the load CPU.
            relays.pin(os.getpid(), self.load_cpus)
            log(f"pinning: bench (load + HeyGen emulator + Petya) and MongoDB on CPU {args.load_cpu}; gateway and "
                f"anchor relays on CPU {args.relay_cpu}")
        self.tmp = tempfile.TemporaryDirectory(prefix="ilianaai-bench-")
        self.mongo = MongoServer(os.path.join(self.tmp.name, "mongodb")).start()
        if self.pinned:
            relays.pin_tree(self.mongo.process.pid, self.load_cpus)
        log(f"MongoDB (SecantusDB) pid {self.mongo.process.pid} at {self.mongo.uri}")

        # Emulated sessions: REST (keep_alive + task) and the two WebSocket sessions, the gateway's pool (memory,
        # open loop, echo) and as many made in the emulator itself for direct and anchor sockets.
        extra = 2 * self.max_concurrency + 2
        pool = max(args.sockets, args.sessions, args.echo_sockets)
        self.heygen = HeyGenEmulator(max_sessions=2 * pool + extra + 10, idle_timeout=3600)
        self.petya = PetyaReference(with_database(self.mongo.uri, PETYA_DB), PETYA_DB)
        self.db = pymongo.MongoClient(with_database(self.mongo.uri, GATEWAY_DB))
        self.petya.create_account(CUSTOMER_KEY, name="Bench customer")
        if args.nodelay:
            # The emulator's server-side sockets send without Nagle's delay, as most servers (and nginx and Node's
            # `ws`) do; tornado leaves TCP_NODELAY off unless a handler sets it. Patched in this process only.
            plain_open = StreamingChatSocket.open

            def open_nodelay(handler, *a, **kw):
                handler.set_nodelay(True)
                return plain_open(handler, *a, **kw)
            StreamingChatSocket.open = open_nodelay
        self.served["heygen"] = ServedApp(self.heygen.make_app()).start()
        self.served["petya"] = ServedApp(self.petya.make_app()).start()
        self.http = CurlAsyncHTTPClient(force_instance=True, max_clients=max(self.max_concurrency,
                                                                              args.setup_concurrency) + 4,
                                        defaults=dict(connect_timeout=5, request_timeout=30))
        await self.start_gateway()
        await self.start_anchors()

    async def start_anchors(self):
        upstream_port = self.served["heygen"].port
        for name in self.anchor_names:
            directory = os.path.join(self.tmp.name, name)
            if name == "nginx":
                binary = relays.ensure_nginx(log)
                if binary is None:
                    log("warning: nginx is not installed and cannot be (not root?): the nginx anchor is skipped")
                    continue
                anchor = relays.NginxAnchor(binary, directory, upstream_port,
                                            2 * max(self.args.sockets, self.args.sessions) + 256, self.relay_cpus)
            elif name == "node":
                try:
                    relays.npm_ci(log)
                except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                    log(f"warning: the node anchor is skipped: {exc}")
                    continue
                anchor = relays.NodeAnchor(directory, upstream_port, self.relay_cpus)
            else:
                raise SystemExit(f"bench: unknown anchor {name!r} (nginx, node)")
            anchor.start()
            self.anchors[name] = anchor
            log(f"anchor {name} ({anchor.version}) pids {anchor.pids()} at {anchor.url}")
        self.results["meta"]["anchors"] = {name: {"version": a.version, "pids": a.pids(), "url": a.url}
                                           for name, a in self.anchors.items()}

    def gateway_environment(self, port):
        """Production-style settings pointed at the emulators; every other setting at its default (settings in
        this shell's environment are dropped, so a stray DB_WORKERS or MONGODB_URI cannot skew a run)."""
        from conf import SETTINGS
        names = {setting.name for setting in SETTINGS}
        env = {name: value for name, value in os.environ.items() if name not in names}
        env.update({
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "GATEWAY_SECRET": self.gateway_secret,
            "HEYGEN_API_KEY": self.heygen.api_key,
            "HEYGEN_BASE_URL": self.served["heygen"].url,
            "PETYA_BASE_URL": self.served["petya"].url,
            "PETYA_AUTH_TOKEN": self.petya.service_token,
            "MONGODB_URI": with_database(self.mongo.uri, GATEWAY_DB),
            "CORS_ORIGINS": "*",
            "LOG_LEVEL": self.args.gateway_log_level,
            # Sockets closed by the bench must not end their sessions (stop upstream + Petya flush) mid-run, nor may
            # the reaper stop the memory part's sessions (never started, idle between rounds) on a long run.
            "SOCKET_GRACE_PERIOD": "600",
            "SESSION_IDLE_TIMEOUT": "3600",
            "MAX_CONCURRENT_SESSIONS": "100000",  # one bench customer holds every session
            "SHUTDOWN_TIMEOUT": "3",
        })
        for item in self.args.gateway_env:
            name, _, value = item.partition("=")
            env[name.strip().upper()] = value
        return env

    async def start_gateway(self):
        port = free_port()
        python = os.path.join(ROOT, ".venv", "bin", "python")
        if not os.path.exists(python):
            python = sys.executable
        os.makedirs(RESULTS_DIR, exist_ok=True)
        log_path = os.path.join(RESULTS_DIR, "gateway.log")
        self.gateway_log = open(log_path, "wb")
        command = [python, "server.py", "--env-file", ""]
        if self.args.profile_gateway:
            command = [python, os.path.join(ROOT, "bench", "profiled_gateway.py"),
                       os.path.abspath(self.args.profile_gateway), "--env-file", ""]
        relay_cpus = self.relay_cpus

        def pin_gateway():
            if relay_cpus:
                os.sched_setaffinity(0, relay_cpus)
        self.gateway = subprocess.Popen(command, cwd=ROOT,
                                        env=self.gateway_environment(port), stdin=subprocess.DEVNULL,
                                        stdout=self.gateway_log, stderr=subprocess.STDOUT, preexec_fn=pin_gateway)
        self.gateway_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if self.gateway.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.gateway.returncode}; see {log_path}")
            try:
                response = await self.http.fetch(self.gateway_url + "/readyz", raise_error=False,
                                                 request_timeout=2)
                if response.code == 200:
                    break
            except HTTPClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not answer /readyz within 30s; see {log_path}")
            await asyncio.sleep(0.1)
        log(f"gateway pid {self.gateway.pid} at {self.gateway_url} (log: {os.path.relpath(log_path, ROOT)})")

    async def stop(self):
        for anchor in self.anchors.values():
            try:
                anchor.stop()
            except Exception as exc:  # noqa: BLE001 - the rest must still stop
                log(f"warning: stopping {anchor.name}: {exc}")
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.send_signal(signal.SIGTERM)
            for _ in range(100):
                if self.gateway.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            if self.gateway.poll() is None:
                self.gateway.kill()
                self.gateway.wait()
        if self.gateway_log:
            self.gateway_log.close()
        for served in self.served.values():
            await served.stop()
        if self.heygen:
            self.heygen.stop()
        if self.http:
            self.http.close()
        if self.petya:
            self.petya.close()
        if self.db:
            self.db.close()
        if self.mongo:
            self.mongo.stop()
        if self.tmp:
            self.tmp.cleanup()

    # --- HTTP helpers -------------------------------------------------------------------------------------------

    async def post(self, url, body, headers):
        request = HTTPRequest(url, method="POST", body=json.dumps(body),
                              headers={"Content-Type": "application/json", **headers})
        response = await self.http.fetch(request, raise_error=False)
        payload = json.loads(response.body) if response.body else None
        if response.code != 200:
            raise RuntimeError(f"POST {url.split('/', 3)[-1]} answered {response.code}: {payload}")
        return payload

    async def gateway_session(self, start=False):
        """create_token, then streaming.new with that token (as HeyGen's SDK does), through the gateway."""
        gw = self.gateway_url
        token = (await self.post(gw + "/v1/streaming.create_token", {}, {"X-Api-Key": CUSTOMER_KEY}))["data"]["token"]
        new = await self.post(gw + "/v1/streaming.new", NEW_SESSION_BODY, {"Authorization": f"Bearer {token}"})
        session_id = new["data"]["session_id"]
        if start:
            await self.post(gw + "/v1/streaming.start", {"session_id": session_id}, {"X-Api-Key": CUSTOMER_KEY})
        return session_id, token

    async def direct_session(self):
        """The same flow straight against the HeyGen emulator, with our HeyGen key."""
        hg = self.served["heygen"].url
        key = {"x-api-key": self.heygen.api_key}
        token = (await self.post(hg + "/v1/streaming.create_token", {}, key))["data"]["token"]
        new = await self.post(hg + "/v1/streaming.new", NEW_SESSION_BODY, {"Authorization": f"Bearer {token}"})
        session_id = new["data"]["session_id"]
        await self.post(hg + "/v1/streaming.start", {"session_id": session_id}, key)
        return session_id, token

    async def bounded_gather(self, factories, concurrency):
        semaphore = asyncio.Semaphore(concurrency)

        async def run(factory):
            async with semaphore:
                return await factory()
        return await asyncio.gather(*(run(f) for f in factories))

    async def gateway_idle(self, threshold=0.10, window=0.3, timeout=30):
        """Wait until the gateway and every anchor relay each use under `threshold` of a core over `window` s, so
        work left over from one measurement (background transcript writes, closing sockets) does not leak into the
        next."""
        deadline = time.monotonic() + timeout
        trees = [lambda: [self.gateway.pid]] + [anchor.pids for anchor in self.anchors.values()]
        while time.monotonic() < deadline:
            used = [relays.cpu_seconds(tree()) for tree in trees]
            await asyncio.sleep(window)
            if all((relays.cpu_seconds(tree()) - u) / window < threshold for tree, u in zip(trees, used)):
                return True
        log(f"warning: the relays were still busy after {timeout}s; measuring anyway")
        return False

    def meter(self):
        pids = {"gateway": self.gateway.pid, "mongo": self.mongo.process.pid}
        pids.update({name: anchor.pids for name, anchor in self.anchors.items()})
        return CpuMeter(pids)

    def relay_pids(self, target):
        """The process tree that relays for `target` ("direct": none)."""
        if target in ("gateway", "relayed"):
            return [self.gateway.pid]
        if target in self.anchors:
            return self.anchors[target].pids()
        return []

    def base_url(self, target):
        if target == "direct":
            return self.served["heygen"].url
        if target in ("gateway", "relayed"):
            return self.gateway_url
        return self.anchors[target].url

    async def gateway_pool(self, n):
        """n sessions made through the gateway (create_token + streaming.new), made once and reused by the parts."""
        missing = n - len(self._gateway_pool)
        if missing > 0:
            log(f"creating {missing} sessions through the gateway ({self.args.setup_concurrency} at a time)")
            t0 = time.perf_counter()
            made = await self.bounded_gather([self.gateway_session for _ in range(missing)],
                                             self.args.setup_concurrency)
            self._gateway_pool.extend(made)
            self.results["meta"].setdefault("gateway_sessions_per_s", round(missing / (time.perf_counter() - t0), 1))
        return self._gateway_pool[:n]

    def direct_pool(self, n):
        """n sessions made in the emulator itself (as streaming.new with a token does), for sockets straight to the
        emulator or through an anchor: neither authenticates, so they present HeyGen's own session token."""
        while len(self._direct_pool) < n:
            token = self.heygen.issue_token()
            session = self.heygen.create_session(dict(NEW_SESSION_BODY), token, self.heygen.known_avatars[0], 3600)
            session.status = "connected"
            self._direct_pool.append((session.session_id, token))
        return self._direct_pool[:n]

    async def session_pairs(self, target, n):
        return await self.gateway_pool(n) if target in ("gateway", "relayed") else self.direct_pool(n)

    # --- 0. breakdown references --------------------------------------------------------------------------------

    async def breakdown(self, session_id):
        """What one gateway call spends outside HeyGen, measured piece by piece at concurrency 1."""
        n = self.args.breakdown_iterations
        rows = []

        # GET /readyz through the gateway: HTTP in and out of the gateway plus one MongoDB ping on its executor.
        lat = []
        for i in range(n + 20):
            if i == 20:
                cpu0 = proc_cpu_seconds(self.gateway.pid)
            t0 = time.perf_counter()
            response = await self.http.fetch(self.gateway_url + "/readyz", raise_error=False)
            if i >= 20:
                lat.append(time.perf_counter() - t0)
            assert response.code == 200, response.code
        rows.append({"what": "gateway GET /readyz (HTTP hop + 1 MongoDB ping on the gateway's executor)",
                     **latency_summary(lat), "cpu_ms_per_iter": round(1000 * (proc_cpu_seconds(self.gateway.pid)
                                                                               - cpu0) / n, 3),
                     "cpu_of": "gateway"})

        # The raw driver round trips a keep_alive makes: find the session, update last_activity_at.
        client = pymongo.MongoClient(with_database(self.mongo.uri, GATEWAY_DB))
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

        # The gateway's own code for that: SessionStore.owned(touch=True), one findAndModify (mongoengine, on a
        # thread pool).
        from models.sessions import SessionStore, customer_id
        from models.store import Store
        store = Store(with_database(self.mongo.uri, GATEWAY_DB), 8)
        store.connect()
        try:
            sessions = SessionStore(store)
            customer = customer_id(self.gateway_secret, CUSTOMER_KEY)
            lat = []
            for i in range(n + 20):
                if i == 20:
                    cpu0 = time.process_time()
                t0 = time.perf_counter()
                await sessions.owned(session_id, customer, touch=True)
                if i >= 20:
                    lat.append(time.perf_counter() - t0)
        finally:
            store.close()
            cpu = round(1000 * (time.process_time() - cpu0) / n, 3)
        rows.append({"what": "gateway's SessionStore.owned(touch=True) (mongoengine on its executor), "
                             "in this process", **latency_summary(lat), "cpu_ms_per_iter": cpu, "cpu_of": "bench"})
        self.results["breakdown"] = rows

    # --- 1. REST ------------------------------------------------------------------------------------------------

    async def rest_run(self, call, target, concurrency, session_ids, seconds, label=None):
        url = f"{self.base_url(target)}/v1/streaming.{call}"
        if target == "gateway":
            headers = {"X-Api-Key": CUSTOMER_KEY, "Content-Type": "application/json"}
        else:  # the emulator itself, or an anchor relay in front of it: HeyGen's own key
            headers = {"x-api-key": self.heygen.api_key, "Content-Type": "application/json"}
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
                        response = await self.http.fetch(request, raise_error=False)
                        code = response.code
                    except HTTPClientError as exc:
                        code = exc.code
                    lat.append(time.perf_counter() - t0)
                    if code != 200:
                        errors[code] = errors.get(code, 0) + 1
            start = time.perf_counter()
            await asyncio.gather(*(worker(i) for i in range(concurrency)))
            return time.perf_counter() - start

        await self.gateway_idle()
        with BenchGcPaused():
            await run(self.args.warmup, [], {})
            meter = self.meter()
            before = meter.snapshot()
            lat, errors = [], {}
            elapsed = await run(seconds, lat, errors)
            cpu = CpuMeter.diff(before, meter.snapshot())
        n = len(lat)
        row = {"call": label or f"streaming.{call}", "target": target, "concurrency": concurrency, "seconds": round(elapsed, 2),
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
                self.heygen._cancel_speech(self.heygen.sessions[session_id])
        row["turns_per_session_after"] = self.stored_turns(session_ids[:concurrency])
        return row

    def stored_turns(self, session_ids):
        """Mean number of turn reports the gateway holds in MongoDB for these sessions."""
        client = pymongo.MongoClient(with_database(self.mongo.uri, GATEWAY_DB))
        try:
            reports = client[GATEWAY_DB]["turn_reports"]
            counts = [reports.count_documents({"session_id": session_id}) for session_id in session_ids]
        finally:
            client.close()
        return round(sum(counts) / len(counts), 1) if counts else 0

    async def rest(self, sessions_by_call):
        calls = self.args.calls.split(",")
        for call in calls:
            for concurrency in self.concurrencies:
                rows = {}
                # The anchors relay keep_alive (a pure proxy call) only: they have no transcript to record.
                targets = ["direct", "gateway"] + (list(self.anchors) if call == "keep_alive" else [])
                for target in targets:
                    log(f"REST streaming.{call} {target} c={concurrency} for {self.args.rest_seconds}s")
                    rows[target] = await self.rest_run(call, target, concurrency, sessions_by_call[call],
                                                       self.args.rest_seconds)
                    self.results["rest"].append(rows[target])
                d = rows["direct"]
                for target in targets[1:]:
                    g = rows[target]
                    self.results["rest_overhead"].append({
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
        turns = self.stored_turns(sessions_by_call["task"][:1])
        log(f"REST streaming.keep_alive and streaming.task gateway c=1 on a session holding {turns} turns")
        self.results["rest"].append(await self.rest_run(
            "keep_alive", "gateway", 1, sessions_by_call["task"], self.args.rest_seconds,
            label="keep_alive (long transcript)"))
        self.results["rest"].append(await self.rest_run(
            "task", "gateway", 1, sessions_by_call["task"], self.args.rest_seconds,
            label="task (long transcript)"))

    async def rest_part(self, sessions_by_call, ids):
        log("breakdown references")
        await self.breakdown(ids[0])
        await self.rest(sessions_by_call)

    # --- 2. WebSocket relay -------------------------------------------------------------------------------------

    def ws_url(self, path, session_id, token):
        base = self.base_url(path)
        query = urlencode([("session_id", session_id), ("session_token", token)] + WS_PARAMS)
        return base.replace("http://", "ws://") + "/v1/ws/streaming.chat?" + query

    async def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)

    async def end_utterance(self, session, utterance, path):
        """avatar_end_message for the current utterance (the relay then records it as a turn); starts a new one."""
        if utterance["frames"] == utterance["start"]:
            return  # nothing said since the last end
        await self.heygen._broadcast(session, {"type": "avatar_end_message", "task_id": utterance["task_id"]})
        utterance["ended"] += 1
        utterance["start"] = utterance["frames"]
        utterance["task_id"] = f"bench-{path}-{utterance['frames']}"

    async def ws_latency(self, send, sink, frames, warmup):
        loop = asyncio.get_running_loop()
        sink.latencies = []
        for i in range(warmup + frames):
            sink.recording = i >= warmup
            seq = self.next_seq()
            waiter = loop.create_future()
            sink.waiters[seq] = waiter
            await send(seq)
            await asyncio.wait_for(waiter, 10)
        sink.recording = False
        return latency_summary(sink.latencies)

    async def ws_throughput(self, send, sink, frames):
        loop = asyncio.get_running_loop()
        sink.count, sink.target, sink.done = 0, frames, loop.create_future()
        meter = self.meter()
        before = meter.snapshot()
        start = time.perf_counter()
        for _ in range(frames):
            await send(self.next_seq())
        last = await asyncio.wait_for(sink.done, 60)
        cpu = CpuMeter.diff(before, meter.snapshot())
        sink.target, sink.done = None, None
        return {"frames": frames, "seconds": round(last - start, 4), "frames_per_s": round(frames / (last - start)),
                "gateway_cpu_us_per_frame": round(1e6 * cpu["gateway_cpu_s"] / frames, 1),
                "bench_cpu_us_per_frame": round(1e6 * cpu["bench_cpu_s"] / frames, 1), "cpu": cpu}

    async def websocket(self):
        args = self.args
        text_pad = "x" * max(0, args.text_size - 60)  # the JSON wrapper is ~60 bytes
        legs = {}
        for path in ("direct", "relayed"):
            if path == "direct":
                session_id, token = await self.direct_session()
            else:
                session_id, token = await self.gateway_session(start=True)
            session = self.heygen.sessions[session_id]
            up_sink, down_sink = ProbeSink(), ProbeSink()
            session.ws_received = ProbeList(up_sink)
            ws = await self.connect(self.ws_url(path, session_id, token))
            peer = ClientPeer(ws, down_sink)
            await self.wait_for(lambda: len(session.sockets) == 1, 10, f"the {path} socket to reach HeyGen")
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
                await self.heygen._broadcast(session, text_event_down(seq, utterance["task_id"]))
                utterance["frames"] += 1
                if kind == "text+turns" and utterance["frames"] - utterance["start"] >= UTTERANCE_FRAMES:
                    await self.end_utterance(session, utterance, path)
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
                await self.gateway_idle()
                log(f"WebSocket {direction} {kind} {path}: {args.ws_frames} frames one at a time, "
                    f"then {burst} back to back")
                with BenchGcPaused():
                    latency = await self.ws_latency(send, sink, args.ws_frames, args.ws_warmup)
                    throughput = await self.ws_throughput(send, sink, burst)
                if direction == "down" and kind != "binary":
                    await self.end_utterance(legs[path]["session"], legs[path]["utterance"], path)
                size = args.binary_size if kind == "binary" else None
                rows[path] = {"direction": "client->HeyGen" if direction == "up" else "HeyGen->client",
                              "frame": kind, "path": path, "frame_bytes": size, **latency, **throughput}
                self.results["ws"].append(rows[path])
                await asyncio.sleep(0.4)  # let the emulator's user_stop (0.3 s after mic frames) pass
            d, r = rows["direct"], rows["relayed"]
            self.results["ws_overhead"].append({
                "direction": d["direction"], "frame": kind,
                "added_p50_ms": round(r["p50_ms"] - d["p50_ms"], 3),
                "added_p99_ms": round(r["p99_ms"] - d["p99_ms"], 3),
                "p50_ratio": round(r["p50_ms"] / d["p50_ms"], 2),
                "throughput_ratio": round(r["frames_per_s"] / d["frames_per_s"], 3),
            })

        relayed = legs["relayed"]["session_id"]
        self.results["ws_meta"] = {"relayed_session_turns": self.stored_turns([relayed]),
                                   "turns_sent": legs["relayed"]["utterance"]["ended"]}

        # Socket set-up: connect, then one text frame delivered to HeyGen (the relay reads client frames only once
        # its upstream socket is open, so this is the time until the relay is usable).
        for path in ("direct", "relayed"):
            leg = legs[path]
            url = self.ws_url(path, leg["session_id"], leg["token"])
            loop = asyncio.get_running_loop()
            times = []
            await self.gateway_idle()
            log(f"WebSocket set-up {path}: {args.handshakes} sockets, one at a time")
            for i in range(args.handshakes + 5):
                seq = self.next_seq()
                waiter = loop.create_future()
                leg["up"].waiters[seq] = waiter
                t0 = time.perf_counter()
                ws = await self.connect(url)
                await ws.write_message(text_probe_up(seq, ""))
                arrived = await asyncio.wait_for(waiter, 10)
                if i >= 5:
                    times.append(arrived - t0)
                ws.close()
            self.results["ws_handshake"].append({"path": path, **latency_summary(times)})
            await self.wait_for(lambda: len(leg["session"].sockets) == 1, 10, "set-up sockets to close")

        for leg in legs.values():
            await leg["peer"].close()

    # --- 2b. WebSocket echo at saturation: frames per relay CPU-second ---------------------------------------------

    async def open_sockets(self, target, pairs, reader_sink=None):
        """One socket per (session_id, token) through `target`, `--open-concurrency` at a time; returns the
        clients once the emulator holds every upstream leg."""
        sessions = [self.heygen.sessions[s] for s, _ in pairs]
        await self.wait_for(lambda: all(not s.sockets for s in sessions), 30, "earlier sockets to close")
        clients = [None] * len(pairs)

        async def open_one(i, session_id, token):
            clients[i] = await self.connect(self.ws_url(target, session_id, token))
        await self.bounded_gather([lambda i=i, s=s, t=t: open_one(i, s, t) for i, (s, t) in enumerate(pairs)],
                                  self.args.open_concurrency)
        await self.wait_for(lambda: all(len(s.sockets) == 1 for s in sessions), 60,
                            f"{len(pairs)} {target} sockets to reach HeyGen")
        return clients, sessions

    async def close_sockets(self, clients, sessions, target):
        for ws in clients:
            ws.close()
        await self.wait_for(lambda: all(not s.sockets for s in sessions), 60, "sockets to close")
        if target in ("gateway", "relayed"):
            await self.gateway_closes_recorded([s.session_id for s in sessions])

    async def connect(self, url):
        """websocket_connect, retried as a client would when the gateway answers 503 (its MongoDB queue is full:
        store.run's "session database busy"); the retries are counted in meta.ws_open_503_retries."""
        for attempt in range(40):
            try:
                ws = await websocket_connect(url, max_message_size=16 << 20)
                if self.args.nodelay:
                    ws.protocol.set_nodelay(True)  # as browsers do on their sockets
                return ws
            except HTTPClientError as exc:
                if exc.code != 503 or attempt == 39:
                    raise
                meta = self.results["meta"]
                meta["ws_open_503_retries"] = meta.get("ws_open_503_retries", 0) + 1
                await asyncio.sleep(0.25)

    async def gateway_closes_recorded(self, session_ids, timeout=120):
        """Wait until the gateway has recorded every close of these sessions' sockets in MongoDB (it retries each
        close record with backoff while its MongoDB queue is full, so thousands of closes take a while). Returns the
        seconds it took; the longest wait per part is kept in meta.close_records_settle_s."""
        t0 = time.perf_counter()
        collection = self.db[GATEWAY_DB]["avatar_sessions"]
        query = {"session_id": {"$in": session_ids}, "sockets.0": {"$exists": True}}
        while (left := collection.count_documents(query)) > 0:
            if time.perf_counter() - t0 > timeout:
                log(f"warning: {left} sessions still hold open-socket records after {timeout}s")
                break
            await asyncio.sleep(0.2)
        took = round(time.perf_counter() - t0, 2)
        settle = self.results["meta"].setdefault("close_records_settle_s", {})
        settle[self._part] = max(settle.get(self._part, 0), took)
        return took

    async def echo_run(self, target):
        """`--echo-sockets` sockets, each keeping `--echo-window` binary frames in flight: a frame goes client ->
        relay -> emulator, which writes it straight back (EchoList) -> relay -> client, and the client sends the next
        one. Counted over `--echo-seconds` after a warm-up; CPU of every process over the same interval."""
        args = self.args
        pairs = await self.session_pairs(target, args.echo_sockets)
        clients, sessions = await self.open_sockets(target, pairs)
        for session in sessions:
            session.ws_received = EchoList(session)
        state = {"sending": True, "recording": False, "count": 0, "latencies": [], "inflight": 0}
        size = args.binary_size

        async def client(ws):
            def send():
                state["inflight"] += 1
                ws.write_message(binary_probe(self.next_seq(), size), binary=True)
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

        await self.gateway_idle()
        log(f"WebSocket echo {target}: {args.echo_sockets} sockets x {args.echo_window} frames in flight, "
            f"{args.echo_seconds}s")
        with BenchGcPaused():
            runners = [asyncio.ensure_future(client(ws)) for ws in clients]
            await asyncio.sleep(args.warmup)
            meter = self.meter()
            before = meter.snapshot()
            state["recording"] = True
            await asyncio.sleep(args.echo_seconds)
            state["recording"] = False
            count = state["count"]
            cpu = CpuMeter.diff(before, meter.snapshot())
        state["sending"] = False
        try:
            await asyncio.wait_for(asyncio.gather(*runners), 15)
        except asyncio.TimeoutError:
            log(f"warning: echo {target}: {state['inflight']} frames still in flight after 15s")
            for runner in runners:
                runner.cancel()
        for session in sessions:
            session.ws_received = []
        await self.close_sockets(clients, sessions, target)
        row = {"target": target, "sockets": args.echo_sockets, "window": args.echo_window, "frame_bytes": size,
               "echoes": count, "seconds": cpu["wall_s"], "echoes_per_s": round(count / cpu["wall_s"]),
               **latency_summary(state["latencies"]), "cpu": cpu}
        if target != "direct":
            relay_cpu = cpu[f"{target}_cpu_s"]
            row.update(relay_cpu_s=relay_cpu, relay_cpu_pct=cpu[f"{target}_cpu_pct"],
                       echoes_per_relay_cpu_s=round(count / relay_cpu) if relay_cpu > 0 else None,
                       relay_cpu_us_per_echo=round(1e6 * relay_cpu / count, 2) if count else None)
        return row

    async def echo(self):
        for target in ["direct", "gateway"] + list(self.anchors):
            self.results["echo"].append(await self.echo_run(target))

    # --- 2c. open loop: S sessions x F frames/s of microphone audio ------------------------------------------------

    async def openloop_run(self, target):
        """`--sessions` sockets, each sent one `--binary-size` binary frame every 1/`--fps` s on a fixed schedule
        (the sockets' phases spread evenly), whatever the relay does: open loop. Each frame carries its scheduled
        send time; latency is arrival at the emulator minus that time, so a stalled sender or relay shows up as
        latency instead of as fewer frames (no coordinated omission). Statistics per 1-second window."""
        args = self.args
        n_sessions, fps = args.sessions, args.fps
        pairs = await self.session_pairs(target, n_sessions)
        arrivals = []  # (seq, scheduled, arrived)

        class Sink:
            @staticmethod
            def arrive(seq, sent, now):
                arrivals.append((seq, sent, now))
        sessions = [self.heygen.sessions[s] for s, _ in pairs]
        for session in sessions:
            session.ws_received = ProbeList(Sink)
        clients, _ = await self.open_sockets(target, pairs)
        peers = [ClientPeer(ws, ProbeSink()) for ws in clients]  # reads the emulator's user_start/user_stop
        await self.gateway_idle()
        rate = n_sessions * fps
        interval = 1.0 / rate
        warm_n = int(round(args.openloop_warmup * rate))
        total = warm_n + int(round(args.openloop_seconds * rate))
        pad = bytes(max(0, args.binary_size - HEADER.size))
        log(f"open loop {target}: {n_sessions} sockets x {fps} frames/s ({rate} frames/s) for "
            f"{args.openloop_warmup}+{args.openloop_seconds}s")
        meter = self.meter()
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
        await self.wait_for(lambda: all(not s.sockets for s in sessions), 60, "open-loop sockets to close")
        if target == "gateway":
            await self.gateway_closes_recorded([s.session_id for s in sessions])

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

    async def openloop(self):
        rows = {}
        for target in ["direct", "gateway"] + list(self.anchors):
            rows[target] = await self.openloop_run(target)
            self.results["openloop"].append(rows[target])
        d = rows["direct"]
        for target, r in rows.items():
            if target != "direct":
                r["added_p50_ms"] = round(r["p50_ms"] - d["p50_ms"], 3)
                r["added_window_p99_ms_median"] = round(r["window_p99_ms_median"] - d["window_p99_ms_median"], 3)
                r["added_window_p99_ms_min"] = round(r["window_p99_ms_min"] - d["window_p99_ms_min"], 3)
                r["added_window_p99_ms_max"] = round(r["window_p99_ms_max"] - d["window_p99_ms_max"], 3)

    # --- 3. memory per open relayed socket ----------------------------------------------------------------------

    async def memory(self):
        args = self.args
        n = args.sockets
        pid = self.gateway.pid
        log(f"memory: {n} sessions through the gateway (create_token + streaming.new, "
            f"{args.setup_concurrency} at a time)")
        t0 = time.perf_counter()
        made = await self.gateway_pool(n)
        create_s = time.perf_counter() - t0
        sessions = [self.heygen.sessions[s] for s, _ in made]
        upstream_open = lambda: sum(len(s.sockets) for s in sessions)  # noqa: E731

        async def reading(label):
            await self.gateway_idle()
            await asyncio.sleep(args.settle)
            state = {"state": label, **proc_status(pid), "fds": proc_fds(pid), "relays_open": upstream_open()}
            log(f"memory: {label}: gateway RSS {state['VmRSS'] / 1024:.1f} MiB, {state['fds']} fds")
            return state

        readings = [await reading("sessions created, no sockets")]
        rounds = []
        for number in range(1, args.rounds + 1):
            log(f"memory: round {number}: opening {n} relayed sockets ({args.open_concurrency} at a time)")
            peers, handshakes = [], []

            async def open_one(session_id, token):
                t = time.perf_counter()
                ws = await self.connect(self.ws_url("relayed", session_id, token))
                handshakes.append(time.perf_counter() - t)
                peers.append(ws)

            t0 = time.perf_counter()
            await self.bounded_gather([lambda s=s, t=t: open_one(s, t) for s, t in made], args.open_concurrency)
            await self.wait_for(lambda: upstream_open() == n, 60, f"all {n} relays to reach HeyGen")
            open_s = time.perf_counter() - t0
            readings.append(await reading(f"round {number}: {n} relays open"))
            for ws in peers:
                ws.close()
            await self.wait_for(lambda: upstream_open() == 0, 60, "relays to close")
            settle_s = await self.gateway_closes_recorded([s for s, _ in made])
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
            "sessions_per_s": self.results["meta"].get("gateway_sessions_per_s") or round(n / create_s, 1),
            "rss_delta_kib": delta, "kib_per_socket": round(delta / n, 2),
            "rss_anon_kib_per_socket": round((opened["RssAnon"] - before["RssAnon"]) / n, 2),
            "fds_per_socket": round((opened["fds"] - before["fds"]) / n, 3),
            "rss_released_after_close_kib": opened["VmRSS"] - closed["VmRSS"],
            "gateway_nofile_limit": proc_nofile_limit(pid),
        }
        if len(readings) >= 5:
            # Round 2 against round 1: memory kept after round 1 and reused shows as ~0 growth; a leak as growth.
            result["round2_open_minus_round1_open_kib"] = readings[3]["VmRSS"] - readings[1]["VmRSS"]
            result["round2_closed_minus_round1_closed_kib"] = readings[4]["VmRSS"] - readings[2]["VmRSS"]
        self.results["memory"] = result
        for name in self.anchors:
            self.results["anchor_memory"].append(await self.anchor_memory(name, n))

    async def anchor_memory(self, name, n):
        """The same N idle sockets through an anchor relay, to N sessions made in the emulator; RSS of the anchor's
        whole process tree (nginx: master + worker) before, with all open, and after closing."""
        args = self.args
        anchor = self.anchors[name]
        made = self.direct_pool(n)
        sessions = [self.heygen.sessions[s] for s, _ in made]
        upstream_open = lambda: sum(len(s.sockets) for s in sessions)  # noqa: E731

        async def reading(label):
            await self.gateway_idle()
            anchor.collect_garbage()
            await asyncio.sleep(args.settle)
            pids = anchor.pids()
            state = {"state": label, "rss_kib": relays.rss_kib(pids), "processes": len(pids),
                     "fds": sum(proc_fds(pid) for pid in pids), "relays_open": upstream_open()}
            log(f"memory {name}: {label}: RSS {state['rss_kib'] / 1024:.1f} MiB, {state['fds']} fds")
            return state

        readings = [await reading("no sockets")]
        log(f"memory {name}: opening {n} relayed sockets ({args.open_concurrency} at a time)")
        peers, handshakes = [], []

        async def open_one(session_id, token):
            t = time.perf_counter()
            ws = await self.connect(self.ws_url(name, session_id, token))
            handshakes.append(time.perf_counter() - t)
            peers.append(ws)

        t0 = time.perf_counter()
        await self.bounded_gather([lambda s=s, t=t: open_one(s, t) for s, t in made], args.open_concurrency)
        await self.wait_for(lambda: upstream_open() == n, 60, f"all {n} {name} relays to reach HeyGen")
        open_s = time.perf_counter() - t0
        readings.append(await reading(f"{n} relays open"))
        for ws in peers:
            ws.close()
        await self.wait_for(lambda: upstream_open() == 0, 60, f"{name} relays to close")
        readings.append(await reading("all closed"))
        before, opened = readings[0], readings[1]
        return {"anchor": name, "sockets": n, "readings": readings, "open_s": round(open_s, 2),
                "handshake": latency_summary(handshakes), "rss_delta_kib": opened["rss_kib"] - before["rss_kib"],
                "kib_per_socket": round((opened["rss_kib"] - before["rss_kib"]) / n, 2),
                "fds_per_socket": round((opened["fds"] - before["fds"]) / n, 3)}

    # --- run ----------------------------------------------------------------------------------------------------

    async def run(self):
        args = self.args
        started = time.time()
        meta = self.results["meta"]
        meta.update({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
                     "tornado": tornado.version, "pycurl": pycurl.version, "cpus": os.cpu_count(),
                     "kernel": platform.release(), "args": vars(args)})
        try:
            await self.start()
            meta.update({"gateway_pid": self.gateway.pid, "mongo_pid": self.mongo.process.pid,
                         "bench_pid": os.getpid(), "pinned": self.pinned,
                         "affinity": {"bench": relays.affinity(os.getpid()),
                                      "mongo": relays.affinity(self.mongo.process.pid),
                                      "gateway": relays.affinity(self.gateway.pid),
                                      **{name: relays.affinity(a.process.pid) for name, a in self.anchors.items()}}})
            log(f"creating {2 * self.max_concurrency} started sessions for the REST runs")
            made = await self.bounded_gather([lambda: self.gateway_session(start=True)] * (2 * self.max_concurrency),
                                             self.max_concurrency)
            ids = [s for s, _ in made]
            sessions_by_call = {"keep_alive": ids[:self.max_concurrency], "task": ids[self.max_concurrency:]}
            parts = set(args.parts.split(","))
            pool = max([args.sockets if "memory" in parts else 0, args.sessions if "openloop" in parts else 0,
                        args.echo_sockets if "echo" in parts else 0])
            if pool:
                t0 = time.perf_counter()
                await self.gateway_pool(pool)
                meta["gateway_pool"] = {"sessions": pool, "seconds": round(time.perf_counter() - t0, 2)}
            timings = meta["part_seconds"] = {}
            for part, method in (("rest", self.rest_part), ("ws", self.websocket), ("echo", self.echo),
                                 ("openloop", self.openloop), ("memory", self.memory)):
                if part in parts and not (part == "memory" and args.sockets <= 0):
                    self._part = part
                    t0 = time.perf_counter()
                    await method(*([sessions_by_call, ids] if part == "rest" else []))
                    timings[part] = round(time.perf_counter() - t0, 1)
            meta["gateway_rss_end_kib"] = proc_status(self.gateway.pid)["VmRSS"]
        finally:
            await self.stop()
        meta["duration_s"] = round(time.time() - started, 1)
        self.results["ratios"] = ratios(self.results)
        return self.results


# --- ratios -----------------------------------------------------------------------------------------------------

def ratios(results):
    """The headline figures per target in one list, with gateway / anchor ratios."""
    anchors = list((results["meta"].get("anchors") or {}).keys())
    rows = []

    def add(metric, better, values):
        row = {"metric": metric, "better": better, **values}
        for name in anchors:
            g, a = values.get("gateway"), values.get(name)
            row[f"gateway/{name}"] = round(g / a, 3) if isinstance(g, (int, float)) and isinstance(a, (int, float)) \
                and g > 0 and a > 0 else None
        rows.append(row)

    rest = [r for r in results["rest"] if r["call"] == "streaming.keep_alive"]
    for c in sorted({r["concurrency"] for r in rest}, reverse=True):
        by = {r["target"]: r for r in rest if r["concurrency"] == c}
        if "gateway" not in by or "direct" not in by:
            continue
        if c > 1:
            add(f"REST keep_alive c={c}: requests per relay CPU-second", "higher",
                {t: r.get("req_per_relay_cpu_s") for t, r in by.items()})
            add(f"REST keep_alive c={c}: requests/s", "higher", {t: r["rps"] for t, r in by.items()})
        d = by["direct"]
        add(f"REST keep_alive c={c}: added p50 ms", "lower",
            {t: round(r["p50_ms"] - d["p50_ms"], 3) for t, r in by.items() if t != "direct"})
        add(f"REST keep_alive c={c}: added p99 ms", "lower",
            {t: round(r["p99_ms"] - d["p99_ms"], 3) for t, r in by.items() if t != "direct"})
    if results.get("echo"):
        by = {e["target"]: e for e in results["echo"]}
        add("WS echo saturation: frames echoed per relay CPU-second", "higher",
            {t: e.get("echoes_per_relay_cpu_s") for t, e in by.items()})
        add("WS echo saturation: frames echoed/s", "higher", {t: e["echoes_per_s"] for t, e in by.items()})
        add("WS echo saturation: relay %CPU", "-", {t: e.get("relay_cpu_pct") for t, e in by.items()})
    if results.get("openloop"):
        by = {o["target"]: o for o in results["openloop"]}
        o0 = results["openloop"][0]
        label = f"open loop {o0['sessions']}x{o0['fps']} fps"
        add(f"{label}: delivered frames/s", "higher", {t: o["delivered_frames_per_s_mean"] for t, o in by.items()})
        add(f"{label}: p50 ms", "lower", {t: o["p50_ms"] for t, o in by.items()})
        add(f"{label}: p99 ms (best 1 s window)", "lower", {t: o["window_p99_ms_min"] for t, o in by.items()})
        add(f"{label}: p99 ms (median 1 s window)", "lower", {t: o["window_p99_ms_median"] for t, o in by.items()})
        add(f"{label}: added p50 ms", "lower", {t: o.get("added_p50_ms") for t, o in by.items() if t != "direct"})
        add(f"{label}: added p99 ms (best 1 s window)", "lower",
            {t: o.get("added_window_p99_ms_min") for t, o in by.items() if t != "direct"})
        add(f"{label}: added p99 ms (median 1 s window)", "lower",
            {t: o.get("added_window_p99_ms_median") for t, o in by.items() if t != "direct"})
        add(f"{label}: added p99 ms (worst 1 s window)", "lower",
            {t: o.get("added_window_p99_ms_max") for t, o in by.items() if t != "direct"})
        add(f"{label}: frames per relay CPU-second", "higher",
            {t: o.get("frames_per_relay_cpu_s") for t, o in by.items() if t != "direct"})
    m = results.get("memory")
    if m:
        values = {"gateway": m["kib_per_socket"]}
        values.update({a["anchor"]: a["kib_per_socket"] for a in results.get("anchor_memory") or []})
        add(f"KiB RSS per idle relayed socket at {m['sockets']}", "lower", values)
    return rows


# --- report -----------------------------------------------------------------------------------------------------

def fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers, rows):
    widths = [max([len(str(h))] + [len(str(r[i])) for r in rows]) for i, h in enumerate(headers)]
    line = "  ".join(str(h).rjust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
    return "\n".join(out)


def report(results):
    meta, args = results["meta"], results["meta"]["args"]
    out = []
    out.append(f"ilianaai-avatar gateway bench  {meta['started']}  ({meta['cpus']} CPUs, Python {meta['python']}, "
               f"tornado {meta['tornado']}; took {meta.get('duration_s')} s)")
    out.append("gateway = `python server.py` child process; HeyGen emulator, Petya reference, load client = this "
               "process; MongoDB = SecantusDB child process. Loopback only.")
    if meta.get("part_seconds"):
        out.append("parts (s): " + ", ".join(f"{k} {v}" for k, v in meta["part_seconds"].items())
                   + (f"; {meta['gateway_pool']['sessions']} gateway sessions made in "
                      f"{meta['gateway_pool']['seconds']} s" if meta.get("gateway_pool") else ""))
    anchors = meta.get("anchors") or {}
    if anchors:
        out.append("anchors, started by the bench in front of the same HeyGen emulator: "
                   + "; ".join(f"{name} {a['version']}" for name, a in anchors.items())
                   + " (nginx: 1 worker, access log off; node: bench/anchors/relay.js)")
    aff = meta.get("affinity") or {}
    if meta.get("pinned"):
        out.append("pinned (sched_setaffinity, every thread): "
                   + ", ".join(f"{name} CPU {','.join(map(str, cpus or []))}" for name, cpus in aff.items())
                   + ". The relay under test has its CPU to itself (other relays idle); load + upstream share the "
                     "other. Other work on the machine is not pinned away.")
    else:
        out.append("not pinned: every process may run on any CPU")

    def cpu_pcts(r, target):
        relay = r["cpu"].get(f"{target}_cpu_pct") if target != "direct" else None
        return f"{fmt(relay, 0) if relay is not None else '-'}/{r['cpu']['mongo_cpu_pct']:.0f}/" \
               f"{r['cpu']['bench_cpu_pct']:.0f}"

    def other(r):
        """CPU time the machine's other work took on the load CPU / the relay CPU (busy minus our processes)."""
        cpu = r["cpu"]
        if not meta.get("pinned") or f"cpu{args['load_cpu']}_busy_pct" not in cpu:
            return "-"
        ours_load = cpu["bench_cpu_pct"] + cpu["mongo_cpu_pct"]
        ours_relay = cpu["gateway_cpu_pct"] + sum(cpu.get(f"{name}_cpu_pct", 0) for name in anchors)
        o_load = max(0.0, cpu[f"cpu{args['load_cpu']}_busy_pct"] - ours_load)
        o_relay = max(0.0, cpu[f"cpu{args['relay_cpu']}_busy_pct"] - ours_relay)
        return f"{o_load:.0f}/{o_relay:.0f}"

    out.append("")
    out.append(f"1. REST: same call direct to the HeyGen emulator, through the gateway and (keep_alive) through each "
               f"anchor ({args['rest_seconds']} s per row after {args['warmup']} s warm-up; one session per client; "
               f"latencies in ms). relay = the process tree of the row's target.")
    rows = []
    for r in results["rest"]:
        errors = sum(r["errors"].values())
        rows.append([r["call"], r["target"], r["concurrency"], r["requests"], fmt(r["rps"], 0), fmt(r["p50_ms"], 3),
                     fmt(r["p95_ms"], 3), fmt(r["p99_ms"], 3),
                     f"{fmt(r['p50_first_10pct_ms'], 2)}->{fmt(r['p50_last_10pct_ms'], 2)}",
                     fmt(r.get("turns_per_session_after"), 0) if r["target"] in ("direct", "gateway") else "-",
                     errors, fmt(r.get("relay_cpu_ms_per_req"), 3), fmt(r.get("req_per_relay_cpu_s"), 0),
                     fmt(r["mongo_cpu_ms_per_req"], 3), cpu_pcts(r, r["target"]), other(r)])
    out.append(table(["call", "target", "conc", "reqs", "req/s", "p50", "p95", "p99", "p50 first->last 10%",
                      "turns", "err", "relay cpu ms/req", "req/relay cpu-s",
                      "db cpu ms/req", "%cpu relay/db/bench", "other %cpu L/R"], rows))
    out.append("   other %cpu L/R: what the machine's other work took of the load CPU and of the relay CPU during the "
               "row (from /proc/stat: busy minus our processes)")
    out.append("")
    out.append("   relay overhead (relayed minus direct; ratios relayed / direct)")
    rows = [[o["call"], o.get("target", "gateway"), o["concurrency"], fmt(o["added_p50_ms"], 3),
             fmt(o["added_p95_ms"], 3), fmt(o["added_p99_ms"], 3), f"{o['p50_ratio']:.2f}x", f"{o['p99_ratio']:.2f}x",
             f"{o['rps_ratio']:.2f}x"] for o in results["rest_overhead"]]
    out.append(table(["call", "target", "conc", "+p50 ms", "+p95 ms", "+p99 ms", "p50 ratio", "p99 ratio",
                      "req/s ratio"], rows))
    out.append("")
    out.append(f"   breakdown references, concurrency 1, {args['breakdown_iterations']} iterations each (ms)")
    rows = [[b["what"], fmt(b["p50_ms"], 3), fmt(b["p99_ms"], 3), f"{fmt(b['cpu_ms_per_iter'], 3)} ({b['cpu_of']})"]
            for b in results["breakdown"]]
    out.append(table(["what", "p50", "p99", "cpu ms/iter"], rows))

    out.append("")
    out.append(f"2. WebSocket: one-way latency ({args['ws_frames']} frames, one in flight) and throughput "
               f"({args['ws_burst']} frames back to back), direct to the emulator vs relayed; binary "
               f"{args['binary_size']} B, text ~{args['text_size']} B JSON")
    rows = [[w["direction"], w["frame"], w["path"], fmt(w["p50_ms"], 3), fmt(w["p99_ms"], 3), fmt(w["max_ms"], 3),
             w["frames_per_s"], fmt(w["gateway_cpu_us_per_frame"], 1), fmt(w["bench_cpu_us_per_frame"], 1),
             f"{w['cpu']['gateway_cpu_pct']:.0f}/{w['cpu']['bench_cpu_pct']:.0f}"] for w in results["ws"]]
    out.append(table(["direction", "frame", "path", "p50 ms", "p99 ms", "max ms", "frames/s", "gw cpu us/frame",
                      "bench cpu us/frame", "%cpu gw/bench"], rows))
    out.append("")
    rows = [[o["direction"], o["frame"], fmt(o["added_p50_ms"], 3), fmt(o["added_p99_ms"], 3),
             f"{o['p50_ratio']:.2f}x", f"{o['throughput_ratio']:.2f}x"] for o in results["ws_overhead"]]
    out.append(table(["relay overhead", "frame", "+p50 ms", "+p99 ms", "p50 ratio", "frames/s ratio"], rows))
    out.append("")
    wm = results.get("ws_meta")
    if wm:
        out.append(f"   transcript turns HeyGen completed on the relayed socket: {wm['turns_sent']}; recorded by the "
                   f"gateway in MongoDB: {wm['relayed_session_turns']}")
        out.append("")
    rows = [[h["path"], h["n"], fmt(h["p50_ms"], 3), fmt(h["p99_ms"], 3)] for h in results["ws_handshake"]]
    out.append("   socket set-up: connect + first client frame delivered to HeyGen, one at a time (ms)")
    out.append(table(["path", "sockets", "p50", "p99"], rows))

    if results.get("echo"):
        e0 = results["echo"][0]
        out.append("")
        out.append(f"2b. WebSocket echo at saturation: {e0['sockets']} sockets x {e0['window']} binary frames "
                   f"({e0['frame_bytes']} B) in flight; client -> relay -> emulator, written straight back -> relay "
                   f"-> client. One echo = 2 relayed frames. RTT in ms.")
        rows = [[e["target"], e["echoes"], e["echoes_per_s"], fmt(e["p50_ms"], 3), fmt(e["p99_ms"], 3),
                 fmt(e.get("relay_cpu_us_per_echo"), 1), fmt(e.get("echoes_per_relay_cpu_s"), 0),
                 cpu_pcts(e, e["target"]), other(e)] for e in results["echo"]]
        out.append(table(["target", "echoes", "echoes/s", "p50 rtt", "p99 rtt", "relay cpu us/echo",
                          "echoes/relay cpu-s", "%cpu relay/db/bench", "other %cpu L/R"], rows))
        out.append("   the relay saturates when its %cpu is ~100; when bench is ~100 instead, the load + emulator side "
                   "is the limit and echoes/relay cpu-s is a lower bound for that relay (less batching per wake-up)")

    if results.get("openloop"):
        o0 = results["openloop"][0]
        out.append("")
        out.append(f"2c. Open loop: {o0['sessions']} sockets x {o0['fps']} binary frames/s ({o0['frame_bytes']} B, one "
                   f"talking user's microphone each) = {o0['offered_frames_per_s']} frames/s offered, client -> "
                   f"HeyGen, {o0['seconds']} s measured after {args['openloop_warmup']} s warm-up. Latency = arrival "
                   f"at the emulator minus the frame's scheduled send time, in ms; p99 per 1-second window.")
        rows = [[o["target"], f"{fmt(o['delivered_frames_per_s_mean'], 0)} ({o['delivered_frames_per_s_min']})",
                 o["lost_or_late"], fmt(o["p50_ms"], 3), fmt(o["p99_ms"], 3),
                 f"{fmt(o['window_p99_ms_min'], 2)}/{fmt(o['window_p99_ms_median'], 2)}/"
                 f"{fmt(o['window_p99_ms_max'], 2)}", o["windows_p99_over_10ms"],
                 fmt(o.get("added_p50_ms"), 3),
                 f"{fmt(o.get('added_window_p99_ms_min'), 2)}/{fmt(o.get('added_window_p99_ms_median'), 2)}/"
                 f"{fmt(o.get('added_window_p99_ms_max'), 2)}",
                 fmt(o.get("frames_per_relay_cpu_s"), 0), cpu_pcts(o, o["target"]), other(o),
                 fmt(o["sender_lateness"]["p99_ms"], 2)] for o in results["openloop"]]
        out.append(table(["target", "delivered/s (min)", "lost", "p50", "p99", "window p99 min/med/max",
                          "windows >10ms", "+p50", "+window p99 min/med/max", "frames/relay cpu-s", "%cpu relay/db/bench", "other %cpu L/R",
                          "send lag p99"], rows))

    m = results.get("memory")
    if m:
        out.append("")
        out.append(f"3. Memory: {m['sockets']} relayed sockets open at once (each = 1 client socket + 1 upstream "
                   f"socket in the gateway); gateway process only")
        rows = [[r["state"], f"{r['VmRSS'] / 1024:.1f}", f"{r['RssAnon'] / 1024:.1f}", r["fds"], r["Threads"],
                 r["relays_open"]] for r in m["readings"]]
        out.append(table(["gateway", "RSS MiB", "anon MiB", "fds", "threads", "relays open"], rows))
        out.append(f"   => {m['kib_per_socket']:.1f} KiB RSS per open relayed socket "
                   f"(+{m['rss_delta_kib'] / 1024:.1f} MiB for {m['sockets']}; anonymous memory "
                   f"{m['rss_anon_kib_per_socket']:.1f} KiB/socket), {m['fds_per_socket']:.2f} fds per socket; "
                   f"{m['rss_released_after_close_kib'] / 1024:.1f} MiB given back after closing")
        if "round2_open_minus_round1_open_kib" in m:
            out.append(f"   round 2 vs round 1: open {m['round2_open_minus_round1_open_kib'] / 1024:+.1f} MiB, closed "
                       f"{m['round2_closed_minus_round1_closed_kib'] / 1024:+.1f} MiB")
        for number, r in enumerate(m["rounds"], 1):
            h = r["handshake"]
            out.append(f"   round {number}: {m['sockets']} sockets opened in {r['open_s']} s "
                       f"({m['open_concurrency']} at a time; handshake p50 {fmt(h['p50_ms'], 1)} ms, "
                       f"p99 {fmt(h['p99_ms'], 1)} ms); after closing them, the gateway took "
                       f"{fmt(r.get('close_records_settle_s'), 1)} s to record every close in MongoDB")
        out.append(f"   sessions created through the gateway at {m['sessions_per_s']}/s; open-files limit "
                   f"{meta['fd_limit']['soft_after']} (gateway: {m['gateway_nofile_limit']['soft']})")
    for a in results.get("anchor_memory") or []:
        r0, r1, r2 = a["readings"]
        out.append(f"   {a['anchor']}: {a['sockets']} relayed sockets to sessions made in the emulator: RSS "
                   f"{r0['rss_kib'] / 1024:.1f} -> {r1['rss_kib'] / 1024:.1f} MiB open -> {r2['rss_kib'] / 1024:.1f} "
                   f"MiB closed ({r0['processes']} processes) => {a['kib_per_socket']:.1f} KiB per socket, "
                   f"{a['fds_per_socket']:.2f} fds per socket; opened in {a['open_s']} s")

    if meta.get("ws_open_503_retries"):
        out.append(f"   sockets the gateway refused with 503 (MongoDB queue full) and the bench opened again: "
                   f"{meta['ws_open_503_retries']}")

    if results.get("ratios"):
        out.append("")
        names = [n for n in anchors]
        out.append("4. Gateway vs anchors, side by side (ratio = gateway / anchor; 'better' says which way is good)")
        rows = []
        for r in results["ratios"]:
            rows.append([r["metric"], r["better"], fmt(r.get("direct"), 2), fmt(r.get("gateway"), 2)]
                        + [fmt(r.get(n), 2) for n in names]
                        + [fmt(r.get(f"gateway/{n}"), 3) for n in names])
        out.append(table(["metric", "better", "direct", "gateway"] + names + [f"gw/{n}" for n in names], rows))
    return "\n".join(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=2000, help="relayed sockets held open for the memory "
                        "figure, per relay (default 2000; 0 skips that part)")
    parser.add_argument("--concurrency", default="1,16", help="REST client concurrencies (default 1,16)")
    parser.add_argument("--anchors", default="nginx,node", help="anchor relays to start and measure beside the "
                        "gateway (default nginx,node; '' for none)")
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
    parser.add_argument("--parts", default="rest,ws,echo,openloop,memory", help="which parts to run (default "
                        "rest,ws,echo,openloop,memory)")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra gateway setting for experiments, e.g. DB_WORKERS=16 (repeatable)")
    parser.add_argument("--calls", default="keep_alive,task", help="REST calls to measure (default keep_alive,task)")
    parser.add_argument("--profile-gateway", metavar="OUT.prof", help="run the gateway under cProfile (all threads; "
                        "slower, so not for the table) and write its stats there")
    parser.add_argument("--json", default=os.path.join(RESULTS_DIR, "latest.json"), help="where to write results")
    args = parser.parse_args(argv)
    if args.sockets < 0 or args.rest_seconds <= 0 or args.ws_frames < 1 or args.ws_burst < 1:
        parser.error("counts and durations must be positive")
    if args.sessions < 1 or args.fps < 1 or args.openloop_seconds < 1 or args.echo_sockets < 1 or \
            args.echo_window < 1:
        parser.error("--sessions, --fps, --openloop-seconds, --echo-sockets and --echo-window must be positive")
    unknown = set(args.parts.split(",")) - {"rest", "ws", "echo", "openloop", "memory"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    return args


def main(argv=None):
    args = parse_args(argv)
    results = asyncio.run(Bench(args).run())
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
