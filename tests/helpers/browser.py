"""What the browser tests (tests/browser/) and bench/livekit_rooms.py share: the pinned SDKs of tests/sdk
(install_sdks, bundle, PINNED), the tools and the TLS set-up of the SDK pages (find_tools, make_certificate, Nginx
serving the customer's page at https://shop.sandbox.test and proxying the gateway as https://avatar.sandbox.test),
Chromium's WebRTC flags, and the tabs over CDP (tests/helpers/cdp.py): open_sdk_tab/SDKTab, load_page, api_call and
close_tab for the SDK page; open_livekit_tab and the JOIN script for livekit-client's page."""
import asyncio
import fcntl
import hashlib
import inspect
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from urllib.parse import urlsplit

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from sandbox.stack import DEMO_API_KEY
from tests.helpers.cdp import CHROMIUM, Tab

SDK_DIR = pathlib.Path(__file__).parent.parent / "sdk"  # tests/sdk
PINNED = {"@heygen/streaming-avatar": "2.1.0", "@heygen/liveavatar-web-sdk": "0.0.18", "esbuild": "0.28.2",
          "livekit-client": "2.15.7", "livekit-client-2.11": "2.11.3"}  # the last two: test_livekit_browser.py

GATEWAY_HOST = "avatar.sandbox.test"  # the gateway as the SDKs see it: nginx, TLS, port 443
SHOP_HOST = "shop.sandbox.test"  # the customer's website, where the page (the plugin) is served from
GATEWAY = f"https://{GATEWAY_HOST}"
PAGE_ORIGIN = f"https://{SHOP_HOST}"
# Loopback ICE candidates and plain IP candidates (not mDNS names), as upstream-apis.md §8 used them. (Without them
# this server connects too, checked once by hand: aiortc offers its non-loopback host candidates, and learns
# Chromium's mDNS-named ones as peer-reflexive from Chromium's checks.)
WEBRTC_FLAGS = ("--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--autoplay-policy=no-user-gesture-required")


# --- tools: node and npm with the pinned SDKs, openssl, nginx, Chromium -----------------------------------------------

def find_tools():
    """The tools the run needs, or a skip naming what is missing."""
    tools = {"node": shutil.which("node"), "npm": shutil.which("npm"), "openssl": shutil.which("openssl"),
             "nginx": shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None),
             "chromium": CHROMIUM if os.access(CHROMIUM, os.X_OK) else None}
    missing = [name for name, path in tools.items() if not path]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (`make browser` installs them from Debian)")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 443))
        except PermissionError:
            pytest.skip("nginx must listen on 127.0.0.1:443 (HeyGen's SDK opens its socket on port 443): run as root")
        except OSError as exc:
            pytest.skip(f"127.0.0.1:443 is taken ({exc.strerror}); nginx needs it for HeyGen's SDK socket")
    return tools


def install_sdks(tools):
    """`npm ci` into tests/sdk/node_modules unless it already holds exactly what package-lock.json pins."""
    lock = (SDK_DIR / "package-lock.json").read_bytes()
    digest = hashlib.sha256(lock + (SDK_DIR / "package.json").read_bytes()).hexdigest()
    stamp = SDK_DIR / "node_modules" / ".installed-lock"
    with open(SDK_DIR / ".npm-ci.lock", "w") as guard:  # one install at a time, also across pytest processes
        fcntl.flock(guard, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == digest:
            return False
        result = subprocess.run([tools["npm"], "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=SDK_DIR,
                                capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            pytest.fail(f"npm ci failed in {SDK_DIR}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        stamp.write_text(digest)
        return True


def bundle(tools, outdir):
    result = subprocess.run([tools["node"], "build.mjs", str(outdir)], cwd=SDK_DIR, capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        pytest.fail(f"bundling the SDKs failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    for name, version in PINNED.items():
        installed = json.loads((SDK_DIR / "node_modules" / name / "package.json").read_text())["version"]
        assert installed == version, (name, installed)


def make_certificate(tools, directory):
    """A self-signed certificate for both made-up host names, made for this run."""
    cert, key = directory / "sandbox.crt", directory / "sandbox.key"
    subprocess.run([tools["openssl"], "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", f"/CN={GATEWAY_HOST}",
                    "-addext", f"subjectAltName=DNS:{GATEWAY_HOST},DNS:{SHOP_HOST}",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    return cert, key


NGINX_CONF = """\
{user}worker_processes 1;
error_log {dir}/error.log info;

events {{
    worker_connections 256;
}}

http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    types {{
        text/html html;
        application/javascript js;
        application/json map;
    }}
    ssl_certificate {cert};
    ssl_certificate_key {key};

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    # The gateway, as in conf/nginx.conf.example.
    server {{
        listen 127.0.0.1:443 ssl;
        server_name {gateway_host};
        client_max_body_size 1m;

        location / {{
            proxy_pass http://127.0.0.1:{gateway_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 120s;
            proxy_send_timeout 120s;
            proxy_buffering off;
        }}
    }}

    # The customer's website: the test page and the SDK bundle.
    server {{
        listen 127.0.0.1:443 ssl;
        server_name {shop_host};
        root {site};
        location / {{
            try_files $uri =404;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, binary, directory, cert, key, site, gateway_port):
        self.directory = directory
        self.conf = directory / "nginx.conf"
        self.pid_file = directory / "nginx.pid"
        self.conf.write_text(NGINX_CONF.format(
            user="user root;\n" if os.geteuid() == 0 else "",  # workers must read the page under the test's tmp dir
            dir=directory, cert=cert, key=key, site=site, gateway_port=gateway_port, gateway_host=GATEWAY_HOST,
            shop_host=SHOP_HOST))
        self.command = [binary, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(self.conf),
                        "-g", f"daemon off; pid {self.pid_file};"]
        self.process = None

    def start(self):
        check = subprocess.run(self.command + ["-t"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{check.stderr}")
        self.log = open(self.directory / "stderr.log", "wb")
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", 443), timeout=1).close()
                if self.pid_file.exists():
                    return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("nginx did not start:\n" + (self.directory / "error.log").read_text()[-3000:])
            time.sleep(0.05)

    def stop(self):
        """SIGQUIT (graceful) to the master by its pid file, SIGKILL if it lingers."""
        if self.process is None:
            return
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = self.process.pid
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(10)
                break
            except subprocess.TimeoutExpired:
                continue
        self.log.close()
        self.process = None


# --- the SDK page's tab (CDP: tests/helpers/cdp.py) -------------------------------------------------------------------

async def settled(value):
    """`value`, awaited when it is awaitable (a check may ask the page)."""
    return await value if inspect.isawaitable(value) else value


class SDKTab(Tab):
    """The test page's tab, driving one SDK."""

    default_timeout = 60

    def __init__(self, ws, sdk):
        super().__init__(ws)
        self.sdk = sdk

    async def until(self, check, timeout=15, what=""):
        """Wait until check(self) is truthy, collecting events meanwhile."""
        deadline = time.monotonic() + timeout
        while not (value := await settled(check(self))):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.sdk}: not seen within {timeout}s: {what}")
            await asyncio.sleep(0.05)
            await self.js("1")
        return value

    def all_answered(self):
        started = {p["requestId"] for m, p in self.events if m == "Network.requestWillBeSent"}
        ended = {p["requestId"] for m, p in self.events if m in ("Network.loadingFinished", "Network.loadingFailed")}
        return started <= ended

    def answered(self, path_end, method="POST"):
        """Whether a request to a URL whose path ends with `path_end` got an answer (or failed) yet."""
        ids = {p["requestId"] for m, p in self.events if m == "Network.requestWillBeSent"
               and p["request"]["method"] == method and urlsplit(p["request"]["url"]).path.endswith(path_end)}
        return any(m in ("Network.loadingFinished", "Network.loadingFailed") and p["requestId"] in ids
                   for m, p in self.events)


async def open_sdk_tab(devtools, sdk):
    http = AsyncHTTPClient()
    response = await http.fetch(f"{devtools}/json/new?about:blank", method="PUT", body=b"")
    target = json.loads(response.body)
    ws = await websocket_connect(target["webSocketDebuggerUrl"], max_message_size=64 * 1024 * 1024)
    tab = SDKTab(ws, sdk)
    for domain in ("Page.enable", "Runtime.enable", "Network.enable", "Log.enable"):
        await tab.send(domain)
    tab.target_id = target["id"]
    return tab


async def close_tab(devtools, tab):
    tab.ws.close()
    await AsyncHTTPClient().fetch(f"{devtools}/json/close/{tab.target_id}", raise_error=False)


async def load_page(tab):
    await tab.send("Page.navigate", url=f"{PAGE_ORIGIN}/index.html")
    await tab.until(lambda t: any(m == "Page.loadEventFired" for m, _ in t.events), what="the page's load event")
    assert await tab.js("typeof HeyGenSDK.StreamingAvatar === 'function' && "
                        "typeof LiveAvatarSDK.LiveAvatarSession === 'function'"), "the SDK bundle did not load"


async def api_call(tab, path, body):
    """A call the plugin makes itself with the customer's key (token minting), from the page, through nginx."""
    return await tab.js(f"""(async () => {{
        const response = await fetch({json.dumps(GATEWAY + path)}, {{method: "POST",
            headers: {{"X-Api-Key": {json.dumps(DEMO_API_KEY)}, "Content-Type": "application/json"}},
            body: {json.dumps(json.dumps(body))}}});
        return {{status: response.status, body: await response.json()}};
    }})()""")


# --- livekit-client's page --------------------------------------------------------------------------------------------

async def open_livekit_tab(devtools, url):
    """A tab with the livekit-client bundle's page at `url` loaded (window.LivekitClients, keyed by version)."""
    response = await AsyncHTTPClient().fetch(f"{devtools}/json/new?about:blank", method="PUT", body=b"")
    target = json.loads(response.body)
    tab = Tab(await websocket_connect(target["webSocketDebuggerUrl"], max_message_size=64 * 1024 * 1024))
    tab.target_id = target["id"]
    for domain in ("Page.enable", "Runtime.enable"):
        await tab.send(domain)
    await tab.send("Page.navigate", url=url)
    deadline = time.monotonic() + 15
    while not await tab.js("typeof window.LivekitClients === 'object'"):
        assert time.monotonic() < deadline, "the bundle did not load"
        await asyncio.sleep(0.05)
    return tab


JOIN = """(async (version, url, token) => {
  const LK = LivekitClients[version];
  const seen = window.seen = {events: [], data: [], connectMs: null, firstFrameMs: null};
  const t0 = performance.now();
  const room = window.room = new LK.Room({adaptiveStream: false, dynacast: false});
  room.on(LK.RoomEvent.TrackSubscribed, (track, publication, participant) => {
    seen.events.push({type: "trackSubscribed", kind: track.kind, identity: participant.identity,
                      sid: publication.trackSid});
    const element = track.attach();
    document.getElementById(track.kind)?.remove();  // a track subscribed again (after a rejoin) replaces its element
    element.id = track.kind;
    element.muted = true;
    document.body.appendChild(element);
    if (track.kind === "video") {
      element.requestVideoFrameCallback(() => { seen.firstFrameMs = performance.now() - t0; });
    }
  });
  room.on(LK.RoomEvent.DataReceived, (payload, participant, kind, topic) => seen.data.push(
    {from: participant ? participant.identity : null, topic: topic ?? null, kind,
     text: new TextDecoder().decode(payload)}));
  for (const type of ["participantConnected", "participantDisconnected"]) {
    room.on(type, (p) => seen.events.push({type, identity: p.identity}));
  }
  room.on(LK.RoomEvent.Disconnected, (reason) => seen.events.push({type: "disconnected", reason}));
  await room.connect(url, token);
  seen.connectMs = performance.now() - t0;
  return [...room.remoteParticipants.values()].map((p) => ({identity: p.identity, name: p.name,
    tracks: [...p.trackPublications.values()].map((t) => ({kind: t.kind, sid: t.trackSid, mime: t.mimeType}))}));
})"""
