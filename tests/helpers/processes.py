"""Real processes for fault tests: gateways started as `python server.py`, killed with SIGKILL or stopped with
SIGTERM, as supervisor, the OOM killer or a lost host would."""
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from sandbox.mongo import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


class GatewayProcess:
    """`python server.py` with the given settings (environment variables), its output in `log_path`."""

    def __init__(self, env, log_path, port=None):
        self.env = dict(env)
        self.port = port or free_port()
        self.env["PORT"] = str(self.port)
        self.log_path = log_path
        self.process = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout=20.0):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "server.py"), "--env-file", os.devnull], cwd=ROOT,
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"gateway did not answer within {timeout}s: {self.log()[-2000:]}")

    def kill(self):
        """SIGKILL: no goodbye, no socket closes recorded, no lease released."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def terminate(self, timeout=20.0):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            return log.read()


def free_ports(count, host="127.0.0.1"):
    """`count` distinct free ports."""
    ports = set()
    while len(ports) < count:
        ports.add(free_port(host))
    return sorted(ports)


def make_certificate(directory, host):
    """A self-signed certificate for `host`, made for this run: (cert path, key path)."""
    cert, key = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "1", "-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host}",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60,
                   stdin=subprocess.DEVNULL)
    return cert, key


class Nginx:
    """Debian's nginx running `http_conf` (the inside of an http block), with its pid, logs and temp files in
    `directory`; stopped by its pid."""

    def __init__(self, directory, http_conf):
        self.directory = directory
        self.conf = os.path.join(directory, "nginx.conf")
        with open(self.conf, "w") as out:
            out.write(f"{'user root;' if os.geteuid() == 0 else ''}\nworker_processes 1;\n"
                      f"error_log {directory}/error.log info;\npid {directory}/nginx.pid;\n"
                      f"events {{ worker_connections 512; }}\nhttp {{\n"
                      f"    access_log {directory}/access.log;\n" + "".join(
                          f"    {kind}_temp_path {directory}/{kind};\n"
                          for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
                      + http_conf + "\n}\n")
        self.command = ["nginx", "-p", directory, "-e", os.path.join(directory, "error.log"), "-c", self.conf,
                        "-g", "daemon off;"]
        self.process = None

    def check(self):
        """`nginx -t`: (ok, what nginx said)."""
        result = subprocess.run(self.command + ["-t"], capture_output=True, text=True, timeout=30)
        return result.returncode == 0, result.stderr

    def start(self, port=443, timeout=10.0):
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {open(os.path.join(self.directory, 'error.log')).read()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not listen in time")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def in_background(fn, *args):
    """Run a blocking call (a process's start or stop, a pymongo read) off the IOLoop."""
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)
