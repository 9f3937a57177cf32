"""The world every part of the bench measures in: the gateway child process, MongoDB, the HeyGen emulator, the Petya
reference, the anchor relays, the load client's HTTP client, and the results they fill in. World.start() brings
them up (pinned, when there are 2+ CPUs), World.stop() takes them down."""
import asyncio
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlencode

import pymongo
import relays  # bench/relays.py: the anchor relays, pinning, /proc readings
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import HTTPClientError

from sandbox.heygen import HeyGenEmulator, StreamingChatSocket
from sandbox.mongo import MongoServer, free_port
from sandbox.petya import PetyaReference
from sandbox.stack import ServedApp, with_database
from suite import ROOT
from suite.breakdown import gateway_setting_names
from suite.common import CUSTOMER_KEY, GATEWAY_DB, PETYA_DB, RESULTS_DIR, WS_PARAMS, log
from suite.measure import CpuMeter, raise_fd_limit


class World:
    """The processes and clients every part shares, the options and the results. Each part is a function in its own
    module that takes the World."""

    def __init__(self, args):
        self.args = args
        self.concurrencies = sorted({int(c) for c in args.concurrency.split(",")})
        self.max_concurrency = max(self.concurrencies)
        self.results = {"meta": {}, "rest": [], "rest_overhead": [], "breakdown": [], "ws": [], "ws_overhead": [],
                        "ws_handshake": [], "memory": None, "echo": [], "openloop": [], "anchor_memory": [],
                        "firstcall": None, "idle": None, "flows": None, "ratios": []}
        self.anchor_names = [a for a in args.anchors.split(",") if a]
        self.anchors = {}  # name -> relays.Anchor (started)
        self.layer_names = [name for name in args.layers.split(",") if name]
        self.layers = {}  # name -> relays.LayerAnchor (started): REST references only
        self.pinned = args.pin == "on" or (args.pin == "auto" and len(os.sched_getaffinity(0)) >= 2
                                           and (os.cpu_count() or 1) >= 2)
        self.relay_cpus = {args.relay_cpu} if self.pinned else None
        self.load_cpus = {args.load_cpu} if self.pinned else None
        self.part = "setup"  # the part being run (meta.close_records_settle_s is kept per part)
        self.db = None  # pymongo client on the gateway's database (bench-side checks only)
        self.gateway_sessions = []  # (session_id, ilgt_ token) made through the gateway, reused across parts
        self.direct_sessions = []  # (session_id, HeyGen token) made in the emulator, for direct and anchor sockets
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
        # fds: this process holds a client and an emulator-side socket per relayed socket (part 7: the emulator's
        # side only, its browsers are a child process); the gateway holds two (it raises its own soft limit up to
        # the hard one it inherits from here: server.py raise_open_files).
        parts = set(args.parts.split(","))
        held = max(args.sockets, args.sessions, (args.idle_sockets + 1) // 2 if "idle" in parts else 0)
        needed = 2 * held + (3 * args.flows if "flows" in parts else 0) + 1024
        before, after, hard_before, hard = raise_fd_limit(needed)
        self.results["meta"]["fd_limit"] = {"soft_before": before, "soft_after": after, "hard_before": hard_before,
                                            "hard": hard, "needed": needed}
        log(f"RLIMIT_NOFILE soft {before} -> {after} (hard {hard_before} -> {hard}); this process needs ~{needed}")
        if after != resource.RLIM_INFINITY and after < needed:
            raise SystemExit(f"bench: the open-files limit (hard {hard}) is too low for the sockets this process holds "
                             f"(--sockets, --sessions, --idle-sockets, --flows); lower them or raise `ulimit -Hn`")

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
        pool = max(args.sockets, args.sessions, args.echo_sockets, args.idle_sockets)
        scale = args.first_sessions + args.first_concurrency + args.flows  # parts 6 and 8 make their own
        self.heygen = HeyGenEmulator(max_sessions=2 * pool + extra + scale + 10, idle_timeout=3600)
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
        for name in self.layer_names:
            layer = relays.LayerAnchor(name, os.path.join(self.tmp.name, "layer-" + name.replace("+", "-")),
                                       upstream_port, self.relay_cpus).start()
            self.layers[name] = layer
            log(f"layer reference {name} ({layer.version}) pids {layer.pids()} at {layer.url}")
        self.results["meta"]["layers"] = {name: {"version": a.version, "pids": a.pids(), "url": a.url}
                                          for name, a in self.layers.items()}

    def relays(self):
        """Every relay process the bench started beside the gateway: the anchors, then the layer references."""
        return {**self.anchors, **self.layers}

    def gateway_environment(self, port):
        """Production-style settings pointed at the emulators; every other setting at its default (settings in
        this shell's environment are dropped, so a stray DB_WORKERS or MONGODB_URI cannot skew a run)."""
        names = gateway_setting_names()
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
        if self.args.idle_sockets > 10000:  # MAX_SOCKETS keeps its default (10000) unless part 7 needs more
            env["MAX_SOCKETS"] = str(self.args.idle_sockets)
        for item in self.args.gateway_env:
            name, _, value = item.partition("=")
            env[name.strip().upper()] = value
        return env

    async def start_gateway(self, append_log=False):
        port = free_port()
        python = os.path.join(ROOT, ".venv", "bin", "python")
        if not os.path.exists(python):
            python = sys.executable
        os.makedirs(RESULTS_DIR, exist_ok=True)
        log_path = os.path.join(RESULTS_DIR, "gateway.log")
        self.gateway_log = open(log_path, "ab" if append_log else "wb")
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

    async def restart_gateway(self):
        """Stop the gateway child (SIGTERM: its graceful stop) and start a new one on the same MongoDB: every session
        made so far is then new to the process (part 6). Its log goes on in the same file."""
        old = self.gateway.pid
        await self.stop_gateway()
        await self.start_gateway(append_log=True)
        if self.pinned:
            self.results["meta"].setdefault("affinity", {})["gateway"] = relays.affinity(self.gateway.pid)
        self.results["meta"].setdefault("gateway_restarts", []).append(
            {"part": self.part, "old_pid": old, "new_pid": self.gateway.pid})
        self.results["meta"]["gateway_pid"] = self.gateway.pid

    async def stop_gateway(self):
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
            self.gateway_log = None

    async def stop(self):
        for anchor in self.relays().values():
            try:
                anchor.stop()
            except Exception as exc:
                log(f"warning: stopping {anchor.name}: {exc}")
        await self.stop_gateway()
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

    # --- shared by the parts -------------------------------------------------------------------------------------

    async def gateway_idle(self, threshold=0.10, window=0.3, timeout=30):
        """Wait until the gateway and every anchor relay each use under `threshold` of a core over `window` s, so
        work left over from one measurement (background transcript writes, closing sockets) does not leak into the
        next."""
        deadline = time.monotonic() + timeout
        trees = [lambda: [self.gateway.pid]] + [anchor.pids for anchor in self.relays().values()]
        while time.monotonic() < deadline:
            used = [relays.cpu_seconds(tree()) for tree in trees]
            await asyncio.sleep(window)
            if all((relays.cpu_seconds(tree()) - u) / window < threshold for tree, u in zip(trees, used)):
                return True
        log(f"warning: the relays were still busy after {timeout}s; measuring anyway")
        return False

    def meter(self):
        pids = {"gateway": self.gateway.pid, "mongo": self.mongo.process.pid}
        pids.update({name: anchor.pids for name, anchor in self.relays().items()})
        return CpuMeter(pids)

    def relay_pids(self, target):
        """The process tree that relays for `target` ("direct": none)."""
        if target in ("gateway", "relayed"):
            return [self.gateway.pid]
        if target in self.relays():
            return self.relays()[target].pids()
        return []

    def base_url(self, target):
        if target == "direct":
            return self.served["heygen"].url
        if target in ("gateway", "relayed"):
            return self.gateway_url
        return self.relays()[target].url

    def ws_url(self, path, session_id, token):
        base = self.base_url(path)
        query = urlencode([("session_id", session_id), ("session_token", token)] + WS_PARAMS)
        return base.replace("http://", "ws://") + "/v1/ws/streaming.chat?" + query
