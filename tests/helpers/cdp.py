"""A deliberately small Chrome DevTools Protocol driver for the browser tests: tornado's websocket_connect, one
command at a time, events kept as they arrive."""
import asyncio
import json
import os
import re
import signal
import subprocess
import time
from urllib.parse import urlsplit

CHROMIUM = "/usr/bin/chromium"
# Headless, as root, and quiet: without the background-networking flags Chromium keeps calling Google's hosts.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
         "--remote-debugging-port=0")


def start_chromium(directory, *extra_flags):
    """Headless Chromium with its profile and log in `directory`, in a process group of its own (its helpers go down
    with it: stop_process_group); returns (process, DevTools HTTP base)."""
    log_path = directory / "stderr.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={directory / 'profile'}", *extra_flags, "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        match = re.search(r"DevTools listening on (ws://[^\s]+)", log_path.read_text(errors="replace"))
        if match:
            return process, f"http://{urlsplit(match.group(1)).netloc}"
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process_group(process)
            raise RuntimeError("Chromium did not start:\n" + log_path.read_text(errors="replace")[-3000:])
        time.sleep(0.05)


def stop_process_group(process):
    """SIGTERM to the group Chromium leads (its helpers included), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue


class CDPError(AssertionError):
    pass


class Tab:
    """One browser tab over CDP: commands run one at a time; events are kept in `events`."""

    default_timeout = 20

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.events = []  # (method, params), oldest first

    async def send(self, method, timeout=None, **params):
        self.next_id += 1
        command_id = self.next_id
        await self.ws.write_message(json.dumps({"id": command_id, "method": method, "params": params}))
        while True:
            message = await asyncio.wait_for(self.ws.read_message(), timeout or self.default_timeout)
            if message is None:
                raise CDPError(f"DevTools socket closed during {method}")
            data = json.loads(message)
            if "method" in data:
                self.events.append((data["method"], data.get("params", {})))
            elif data.get("id") == command_id:
                if "error" in data:
                    raise CDPError(f"{method}: {data['error']}")
                return data.get("result", {})

    async def js(self, expression, timeout=None):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError(f"{expression!r} threw: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")
