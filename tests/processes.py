"""Real processes for fault tests: gateways started as `python server.py`, killed with SIGKILL or stopped with
SIGTERM, as supervisor, the OOM killer or a lost host would."""
import os
import signal
import subprocess
import sys
import time
import urllib.request

from sandbox.mongo import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as answer:
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
