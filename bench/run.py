"""Gateway benchmark: what the gateway costs compared with calling the HeyGen emulator directly.

`make bench` (= .venv/bin/python bench/run.py). One run measures, side by side:

1. REST overhead: the same HeyGen call (streaming.keep_alive, and streaming.task) made directly against the HeyGen
   emulator and through the gateway, at fixed concurrencies; p50/p95/p99, requests/s, added latency, CPU per request.
   Plus a breakdown reference: the gateway's own MongoDB work for one call, measured alone.
2. WebSocket relay: one-way latency and throughput of small binary and text frames, client -> HeyGen
   (timestamp in the payload, read where the emulator records received frames) and HeyGen -> client (sent by the
   emulator on its own socket), on a direct connection to the emulator and through the gateway's relay.
3. Memory: N relayed sockets held open; the gateway process's RSS before/after, KiB and file descriptors per socket.

Layout: the gateway runs as a child process (`python server.py`, configured by environment as in production) so its
RSS and CPU are its own. MongoDB (SecantusDB, a child process in a temp dir), the HeyGen emulator, the Petya
reference and the load client share this process and its event loop. Everything is on loopback. See bench/README.md.
"""
import argparse
import asyncio
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
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pycurl  # noqa: E402
import pymongo  # noqa: E402
import tornado  # noqa: E402
from tornado.curl_httpclient import CurlAsyncHTTPClient  # noqa: E402
from tornado.httpclient import HTTPClientError, HTTPRequest  # noqa: E402
from tornado.websocket import websocket_connect  # noqa: E402

from sandbox.heygen import HeyGenEmulator  # noqa: E402
from sandbox.mongo import MongoServer, free_port  # noqa: E402
from sandbox.petya import PetyaReference  # noqa: E402
from sandbox.stack import ServedApp, with_database  # noqa: E402

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


class CpuMeter:
    """CPU seconds used by the gateway, MongoDB server and this process between start() and stop()."""

    def __init__(self, pids):
        self.pids = pids  # name -> pid

    def snapshot(self):
        snap = {name: proc_cpu_seconds(pid) for name, pid in self.pids.items()}
        snap["bench"] = time.process_time()
        snap["wall"] = time.perf_counter()
        return snap

    @staticmethod
    def diff(before, after):
        wall = after["wall"] - before["wall"]
        out = {"wall_s": round(wall, 3)}
        for name in before:
            if name != "wall":
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
                        "ws_handshake": [], "memory": None}
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
        needed = 2 * args.sockets + 1024
        before, after, hard = raise_fd_limit(needed)
        self.results["meta"]["fd_limit"] = {"soft_before": before, "soft_after": after, "hard": hard,
                                            "needed": needed}
        log(f"RLIMIT_NOFILE soft {before} -> {after} (hard {hard}); needed ~{needed} for {args.sockets} sockets")
        if after != resource.RLIM_INFINITY and after < needed:
            raise SystemExit(f"bench: the open-files limit (hard {hard}) is too low for --sockets {args.sockets}; "
                             f"lower --sockets or raise `ulimit -Hn`")

        self.tmp = tempfile.TemporaryDirectory(prefix="ilianaai-bench-")
        self.mongo = MongoServer(os.path.join(self.tmp.name, "mongodb")).start()
        log(f"MongoDB (SecantusDB) pid {self.mongo.process.pid} at {self.mongo.uri}")

        extra = 2 * self.max_concurrency + 2  # REST sessions (keep_alive + task) and the two WebSocket sessions
        self.heygen = HeyGenEmulator(max_sessions=args.sockets + extra + 10, idle_timeout=3600)
        self.petya = PetyaReference(with_database(self.mongo.uri, PETYA_DB), PETYA_DB)
        self.petya.create_account(CUSTOMER_KEY, name="Bench customer")
        self.served["heygen"] = ServedApp(self.heygen.make_app()).start()
        self.served["petya"] = ServedApp(self.petya.make_app()).start()
        self.http = CurlAsyncHTTPClient(force_instance=True, max_clients=max(self.max_concurrency,
                                                                              args.setup_concurrency) + 4,
                                        defaults=dict(connect_timeout=5, request_timeout=30))
        await self.start_gateway()

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
        self.gateway = subprocess.Popen(command, cwd=ROOT,
                                        env=self.gateway_environment(port), stdin=subprocess.DEVNULL,
                                        stdout=self.gateway_log, stderr=subprocess.STDOUT)
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
        """Wait until the gateway uses under `threshold` of a core over `window` s, so work left over from one
        measurement (background transcript writes, closing sockets) does not leak into the next."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            used = proc_cpu_seconds(self.gateway.pid)
            await asyncio.sleep(window)
            if (proc_cpu_seconds(self.gateway.pid) - used) / window < threshold:
                return True
        log(f"warning: the gateway was still busy after {timeout}s; measuring anyway")
        return False

    def meter(self):
        return CpuMeter({"gateway": self.gateway.pid, "mongo": self.mongo.process.pid})

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
        if target == "direct":
            url = f"{self.served['heygen'].url}/v1/streaming.{call}"
            headers = {"x-api-key": self.heygen.api_key, "Content-Type": "application/json"}
        else:
            url = f"{self.gateway_url}/v1/streaming.{call}"
            headers = {"X-Api-Key": CUSTOMER_KEY, "Content-Type": "application/json"}
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
                for target in ("direct", "gateway"):
                    log(f"REST streaming.{call} {target} c={concurrency} for {self.args.rest_seconds}s")
                    rows[target] = await self.rest_run(call, target, concurrency, sessions_by_call[call],
                                                       self.args.rest_seconds)
                    self.results["rest"].append(rows[target])
                d, g = rows["direct"], rows["gateway"]
                self.results["rest_overhead"].append({
                    "call": f"streaming.{call}", "concurrency": concurrency,
                    "added_p50_ms": round(g["p50_ms"] - d["p50_ms"], 3),
                    "added_p95_ms": round(g["p95_ms"] - d["p95_ms"], 3),
                    "added_p99_ms": round(g["p99_ms"] - d["p99_ms"], 3),
                    "p50_ratio": round(g["p50_ms"] / d["p50_ms"], 2),
                    "p99_ratio": round(g["p99_ms"] / d["p99_ms"], 2),
                    "rps_ratio": round(g["rps"] / d["rps"], 3),
                })
        if "task" not in calls:
            return
        # The same keep_alive on the sessions the task rows filled with turns: the gateway reads the whole session
        # document (transcript included) for every call.
        turns = self.stored_turns(sessions_by_call["task"][:1])
        log(f"REST streaming.keep_alive gateway c=1 on a session holding {turns} turns")
        self.results["rest"].append(await self.rest_run(
            "keep_alive", "gateway", 1, sessions_by_call["task"], self.args.rest_seconds,
            label="keep_alive (long transcript)"))

    # --- 2. WebSocket relay -------------------------------------------------------------------------------------

    def ws_url(self, path, session_id, token):
        if path == "direct":
            base = self.served["heygen"].url
        else:
            base = self.gateway_url
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
            ws = await websocket_connect(self.ws_url(path, session_id, token), max_message_size=16 << 20)
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
                ws = await websocket_connect(url)
                await ws.write_message(text_probe_up(seq, ""))
                arrived = await asyncio.wait_for(waiter, 10)
                if i >= 5:
                    times.append(arrived - t0)
                ws.close()
            self.results["ws_handshake"].append({"path": path, **latency_summary(times)})
            await self.wait_for(lambda: len(leg["session"].sockets) == 1, 10, "set-up sockets to close")

        for leg in legs.values():
            await leg["peer"].close()

    # --- 3. memory per open relayed socket ----------------------------------------------------------------------

    async def memory(self):
        args = self.args
        n = args.sockets
        pid = self.gateway.pid
        log(f"memory: creating {n} sessions through the gateway (create_token + streaming.new, "
            f"{args.setup_concurrency} at a time)")
        t0 = time.perf_counter()
        made = await self.bounded_gather([self.gateway_session for _ in range(n)], args.setup_concurrency)
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
                ws = await websocket_connect(self.ws_url("relayed", session_id, token), max_message_size=16 << 20)
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
            readings.append(await reading(f"round {number}: all closed"))
            rounds.append({"open_s": round(open_s, 2), "handshake": latency_summary(handshakes)})

        before, opened, closed = readings[0], readings[1], readings[2]
        delta = opened["VmRSS"] - before["VmRSS"]
        result = {
            "sockets": n, "rounds": rounds, "readings": readings, "open_concurrency": args.open_concurrency,
            "relays_confirmed_open_upstream": opened["relays_open"],
            "sessions_created_s": round(create_s, 2), "sessions_per_s": round(n / create_s, 1),
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
                         "bench_pid": os.getpid()})
            log(f"creating {2 * self.max_concurrency} started sessions for the REST runs")
            made = await self.bounded_gather([lambda: self.gateway_session(start=True)] * (2 * self.max_concurrency),
                                             self.max_concurrency)
            ids = [s for s, _ in made]
            sessions_by_call = {"keep_alive": ids[:self.max_concurrency], "task": ids[self.max_concurrency:]}
            parts = set(args.parts.split(","))
            if "rest" in parts:
                log("breakdown references")
                await self.breakdown(ids[0])
                await self.rest(sessions_by_call)
            if "ws" in parts:
                await self.websocket()
            if "memory" in parts and args.sockets > 0:
                await self.memory()
            meta["gateway_rss_end_kib"] = proc_status(self.gateway.pid)["VmRSS"]
        finally:
            await self.stop()
        meta["duration_s"] = round(time.time() - started, 1)
        return self.results


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

    out.append("")
    out.append(f"1. REST: same call direct to the HeyGen emulator vs through the gateway ({args['rest_seconds']} s "
               f"per row after {args['warmup']} s warm-up; one session per client; latencies in ms)")
    rows = []
    for r in results["rest"]:
        errors = sum(r["errors"].values())
        rows.append([r["call"], r["target"], r["concurrency"], r["requests"], fmt(r["rps"], 0), fmt(r["p50_ms"], 3),
                     fmt(r["p95_ms"], 3), fmt(r["p99_ms"], 3),
                     f"{fmt(r['p50_first_10pct_ms'], 2)}->{fmt(r['p50_last_10pct_ms'], 2)}",
                     fmt(r.get("turns_per_session_after"), 0), errors, fmt(r["gateway_cpu_ms_per_req"], 3),
                     fmt(r["mongo_cpu_ms_per_req"], 3), f"{r['cpu']['gateway_cpu_pct']:.0f}/"
                     f"{r['cpu']['mongo_cpu_pct']:.0f}/{r['cpu']['bench_cpu_pct']:.0f}"])
    out.append(table(["call", "target", "conc", "reqs", "req/s", "p50", "p95", "p99", "p50 first->last 10%",
                      "turns", "err", "gw cpu ms/req",
                      "db cpu ms/req", "%cpu gw/db/bench"], rows))
    out.append("")
    out.append("   gateway overhead (gateway minus direct; ratios gateway / direct)")
    rows = [[o["call"], o["concurrency"], fmt(o["added_p50_ms"], 3), fmt(o["added_p95_ms"], 3),
             fmt(o["added_p99_ms"], 3), f"{o['p50_ratio']:.2f}x", f"{o['p99_ratio']:.2f}x", f"{o['rps_ratio']:.2f}x"]
            for o in results["rest_overhead"]]
    out.append(table(["call", "conc", "+p50 ms", "+p95 ms", "+p99 ms", "p50 ratio", "p99 ratio", "req/s ratio"],
                     rows))
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
                       f"p99 {fmt(h['p99_ms'], 1)} ms)")
        out.append(f"   sessions created through the gateway at {m['sessions_per_s']}/s; open-files limit "
                   f"{meta['fd_limit']['soft_after']} (gateway: {m['gateway_nofile_limit']['soft']})")
    return "\n".join(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1000, help="relayed sockets held open for the memory "
                        "figure (default 1000; 0 skips that part)")
    parser.add_argument("--concurrency", default="1,20", help="REST client concurrencies (default 1,20)")
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
    parser.add_argument("--parts", default="rest,ws,memory", help="which parts to run (default rest,ws,memory)")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra gateway setting for experiments, e.g. DB_WORKERS=16 (repeatable)")
    parser.add_argument("--calls", default="keep_alive,task", help="REST calls to measure (default keep_alive,task)")
    parser.add_argument("--profile-gateway", metavar="OUT.prof", help="run the gateway under cProfile (all threads; "
                        "slower, so not for the table) and write its stats there")
    parser.add_argument("--json", default=os.path.join(RESULTS_DIR, "latest.json"), help="where to write results")
    args = parser.parse_args(argv)
    if args.sockets < 0 or args.rest_seconds <= 0 or args.ws_frames < 1 or args.ws_burst < 1:
        parser.error("counts and durations must be positive")
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
