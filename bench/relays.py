"""The bench's anchor relays and process plumbing: nginx and a Node `ws`/http-proxy relay, each started by the bench
in front of the same HeyGen emulator as the gateway, plus CPU pinning and per-process CPU/RSS readings from /proc.

An anchor is a process tree (nginx: master + worker) read as one: its CPU is the sum of utime+stime of every
process in the tree, its RSS the sum of their VmRSS.
"""
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ANCHORS_DIR = os.path.join(BENCH_DIR, "anchors")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- /proc readings -----------------------------------------------------------------------------------------------

def descendants(pid):
    """`pid` and every process below it (children first found through /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
            except FileNotFoundError:
                pass
    return out


def cpu_seconds(pids):
    """user+system CPU seconds of these processes (all their threads), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def cpu_times():
    """{"cpu0": (busy, steal, total) jiffies, ...} from /proc/stat: how busy each CPU was, whoever used it (busy
    includes steal: time the hypervisor gave to another guest)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                v = [int(x) for x in values[:8]]
                idle = v[3] + v[4]  # idle + iowait
                total = sum(v)
                out[name] = (total - idle, v[7], total)
    return out


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def pin(pid, cpus):
    """Puts every thread of `pid` on `cpus` (sched_setaffinity applies to one thread; threads started later inherit
    the affinity of the thread that starts them). Returns False where the kernel refuses."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return False
    ok = True
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except (ProcessLookupError, PermissionError, OSError):
            ok = False
    return ok


def pin_tree(pid, cpus):
    return all([pin(p, cpus) for p in descendants(pid)])


def affinity(pid):
    try:
        return sorted(os.sched_getaffinity(pid))
    except OSError:
        return None


def wait_port(port, process, timeout, what, log_path):
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            tail = ""
            if log_path and os.path.exists(log_path):
                with open(log_path, errors="replace") as f:
                    tail = f.read()[-3000:]
            raise RuntimeError(f"{what} did not start (exit {process.poll()}):\n{tail}")
        time.sleep(0.05)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Anchor:
    """A relay process tree on a loopback port, in front of the emulator at `upstream_port`."""
    name = "?"

    def __init__(self, directory, upstream_port, cpus=None):
        self.directory = directory
        self.upstream_port = upstream_port
        self.cpus = cpus  # set of CPUs for the whole tree, or None
        self.port = free_port()
        self.process = None
        self.version = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def pids(self):
        if self.process is None or self.process.poll() is not None:
            return []
        return descendants(self.process.pid)

    def _preexec(self):
        cpus = self.cpus

        def pin_self():
            if cpus:
                os.sched_setaffinity(0, cpus)
        return pin_self

    def collect_garbage(self):
        return False  # nothing to collect: nginx frees as it goes

    def stop(self):
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


# --- nginx ---------------------------------------------------------------------------------------------------------

NGINX_CONF = """{user}worker_processes 1;
worker_rlimit_nofile {nofile};
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;

events {{
    worker_connections {connections};
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}

    upstream heygen {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}

    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 1m;

        location / {{
            proxy_pass http://heygen;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_buffering off;
        }}
    }}
}}
"""


def find_nginx():
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def ensure_nginx(log):
    """nginx's path; installs Debian's package when it is missing and we are root (as `make test`'s browser target
    does). None when it cannot be had."""
    found = find_nginx()
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    log("nginx not installed: apt-get install -y nginx")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx"], env=env, stdin=subprocess.DEVNULL,
                   capture_output=True, timeout=600)
    return find_nginx()


class NginxAnchor(Anchor):
    """Debian's nginx, one worker, as a reverse proxy for REST (keep-alive upstream connections) and WebSocket
    (Upgrade passed through; after the handshake nginx copies bytes both ways and does not parse frames)."""
    name = "nginx"
    stop_signal = signal.SIGQUIT

    def __init__(self, binary, directory, upstream_port, connections, cpus=None):
        super().__init__(directory, upstream_port, cpus)
        self.binary = binary
        self.connections = connections

    def start(self):
        os.makedirs(self.directory, exist_ok=True)
        conf = os.path.join(self.directory, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(
                user="user root;\n" if os.geteuid() == 0 else "", dir=self.directory,
                nofile=2 * self.connections + 1024, connections=self.connections + 512,
                upstream_port=self.upstream_port, port=self.port))
        command = [self.binary, "-p", self.directory, "-e", os.path.join(self.directory, "error.log"), "-c", conf,
                   "-g", "daemon off;"]
        check = subprocess.run(command + ["-t"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{check.stderr}")
        version = subprocess.run([self.binary, "-v"], capture_output=True, text=True, timeout=10)
        self.version = (version.stderr or version.stdout).strip().split("/")[-1]
        log_path = os.path.join(self.directory, "stderr.log")
        with open(log_path, "wb") as out:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                            preexec_fn=self._preexec())
        wait_port(self.port, self.process, 10, "nginx", os.path.join(self.directory, "error.log"))
        deadline = time.monotonic() + 5
        while len(self.pids()) < 2 and time.monotonic() < deadline:  # master + its worker
            time.sleep(0.02)
        return self


# --- Node: ws + http-proxy ------------------------------------------------------------------------------------------

def npm_ci(log):
    """`npm ci` into bench/anchors/node_modules unless it already holds exactly what package-lock.json pins."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not installed (apt-get install nodejs npm)")
    with open(os.path.join(ANCHORS_DIR, "package-lock.json"), "rb") as f:
        lock = f.read()
    with open(os.path.join(ANCHORS_DIR, "package.json"), "rb") as f:
        digest = hashlib.sha256(lock + f.read()).hexdigest()
    stamp = os.path.join(ANCHORS_DIR, "node_modules", ".installed-lock")
    with open(os.path.join(ANCHORS_DIR, ".npm-ci.lock"), "w") as guard:  # one install at a time
        fcntl.flock(guard, fcntl.LOCK_EX)
        if os.path.exists(stamp) and open(stamp).read() == digest:
            return False
        log("npm ci in bench/anchors (pinned ws and http-proxy)")
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ANCHORS_DIR,
                                capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"npm ci failed in {ANCHORS_DIR}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        with open(stamp, "w") as f:
            f.write(digest)
        return True


class NodeAnchor(Anchor):
    """bench/anchors/relay.js under Node: http-proxy for REST, a `ws` server + one `ws` client per connection
    forwarding message by message (parse and re-frame) for WebSocket."""
    name = "node"
    stop_signal = signal.SIGTERM

    def start(self):
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node not installed (apt-get install nodejs)")
        os.makedirs(self.directory, exist_ok=True)
        self.version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        packages = {}
        for name in ("ws", "http-proxy"):
            with open(os.path.join(ANCHORS_DIR, "node_modules", name, "package.json")) as f:
                packages[name] = json.load(f)["version"]
        self.version += " " + " ".join(f"{k} {v}" for k, v in packages.items())
        log_path = os.path.join(self.directory, "node.log")
        with open(log_path, "wb") as out:
            self.process = subprocess.Popen(
                [node, "--expose-gc", os.path.join(ANCHORS_DIR, "relay.js"), str(self.port),
                 f"http://127.0.0.1:{self.upstream_port}"],
                cwd=ANCHORS_DIR, stdin=subprocess.DEVNULL, stdout=out, stderr=out, preexec_fn=self._preexec())
        wait_port(self.port, self.process, 15, "the Node relay", log_path)
        return self

    def collect_garbage(self):
        """A full V8 collection (relay.js runs global.gc() on SIGUSR2)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR2)
            return True
        return False


# --- the design card's layers alone (REST references) ---------------------------------------------------------------

class LayerAnchor(Anchor):
    """bench/anchors/layers.py in `mode` (tornado, tornado+curl, tornado+gwcurl) under the venv's Python: what the
    gateway's stack costs per REST call before any of the gateway's own code. REST keep_alive only."""
    stop_signal = signal.SIGTERM

    def __init__(self, mode, directory, upstream_port, cpus=None):
        super().__init__(directory, upstream_port, cpus)
        self.name = mode

    def start(self):
        os.makedirs(self.directory, exist_ok=True)
        import pycurl
        import tornado
        self.version = f"tornado {tornado.version}, {pycurl.version.split()[0]}"
        log_path = os.path.join(self.directory, "layers.log")
        with open(log_path, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, os.path.join(ANCHORS_DIR, "layers.py"), self.name, str(self.port),
                 f"http://127.0.0.1:{self.upstream_port}"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, preexec_fn=self._preexec())
        wait_port(self.port, self.process, 15, f"the {self.name} layer reference", log_path)
        return self
