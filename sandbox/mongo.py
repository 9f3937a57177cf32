"""A MongoDB wire-protocol server (SecantusDB) run as a child process, for tests and sandbox runs.

Production points MONGODB_URI at a real MongoDB; this exists only because no real mongod installs here.
"""
import os
import shutil
import socket
import subprocess
import sys
import time

BINARY = "secantusd-rs"


def free_port(host="127.0.0.1"):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def find_binary():
    """The server binary: next to this interpreter (a venv's bin) or on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), BINARY)
    if os.path.exists(beside):
        return beside
    found = shutil.which(BINARY)
    if not found:
        raise RuntimeError(f"{BINARY} not found: pip install -e '.[sandbox]' installs it (SecantusDB)")
    return found


class MongoServer:
    """Starts `secantusd-rs` on a loopback port with its data in `data_dir`; stop() ends it."""

    def __init__(self, data_dir, host="127.0.0.1", port=None, cache_size="128M"):
        """Writes acknowledged as journaled (j=true, DB_WRITE_CONCERN) are synced before the acknowledgement
        (--sync-on-commit), so they survive a kill -9 as they would on a real MongoDB."""
        self.data_dir = os.path.abspath(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.cache_size = cache_size
        self.process = None

    @property
    def uri(self):
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    def start(self, timeout=15.0):
        os.makedirs(self.data_dir, exist_ok=True)
        log = open(os.path.join(self.data_dir, "server.log"), "ab")
        self.process = subprocess.Popen(
            [find_binary(), "--host", self.host, "--port", str(self.port),
             "--storage-path", self.data_dir, "--log-file-max", "16MB", "--cache-size", self.cache_size,
             "--sync-on-commit"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{BINARY} exited with {self.process.returncode}; see {self.data_dir}/server.log")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{BINARY} did not accept connections within {timeout}s")

    def kill(self):
        """SIGKILL, as a crash or an OOM kill would end it; start() brings it back on the same port and storage."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self, timeout=10.0):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
