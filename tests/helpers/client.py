"""The plugin's side of the wire: GatewayClient calls the gateway over real HTTP, Reply is what it answered; FAST,
the short timings the sandbox fixtures run with; `eventually`, the wait for a condition."""
import asyncio
import inspect
import json

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from sandbox.stack import DEMO_API_KEY

# Short timings so lifecycle tests run in fractions of a second.
# A generous per-customer quota: most tests open more sessions than a real customer would (the quota has its own).
FAST = dict(SWEEP_INTERVAL="0.1", LEASE_HEARTBEAT="0.1", MAX_CONCURRENT_SESSIONS="100", FLUSH_RETRY_INITIAL="0.05",
            FLUSH_RETRY_MAX="0.2", SOCKET_GRACE_PERIOD="0.3", UPSTREAM_REQUEST_TIMEOUT="3",
            UPSTREAM_CONNECT_TIMEOUT="1", CORS_ORIGINS="https://shop.example.com,https://other.example.org",
            LOG_LEVEL="INFO")


class Reply:
    def __init__(self, response):
        self.status = response.code
        self.headers = response.headers
        self.raw = response.body or b""
        try:
            self.json = json.loads(self.raw) if self.raw else None
        except ValueError:
            self.json = None

    @property
    def data(self):
        return (self.json or {}).get("data")


class GatewayClient:
    """Calls the gateway over real HTTP as the plugin does."""

    def __init__(self, base_url, api_key=DEMO_API_KEY):
        self.base_url = base_url
        self.api_key = api_key
        self.http = AsyncHTTPClient()

    async def call(self, path, body=None, api_key="default", headers=None, method="POST", raw=None):
        sent = {"Content-Type": "application/json"}
        key = self.api_key if api_key == "default" else api_key
        if key:
            sent["X-Api-Key"] = key
        sent.update(headers or {})
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        request = HTTPRequest(self.base_url + path, method=method, headers=sent,
                              body=payload if method in ("POST", "PUT") else None,
                              allow_nonstandard_methods=True, request_timeout=20)
        return Reply(await self.http.fetch(request, raise_error=False))


async def eventually(check, timeout=5.0, interval=0.02):
    """Wait until check() (sync or async) returns a truthy value; return it, or fail after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
