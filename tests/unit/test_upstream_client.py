"""clients.http.UpstreamCurlClient (tornado's curl client with a lean setup) against a real local HTTP server."""
import asyncio
import json

import pytest
from tornado.web import Application, RequestHandler

from clients.http import Upstream, UpstreamCurlClient
from clients.tornado_compat import HookedCurlClient
from domain.errors import UpstreamTimeout, UpstreamUnavailable


class Echo(RequestHandler):
    def _echo(self):
        if self.get_query_argument("slow", None):
            return asyncio.sleep(1.5)
        self.set_header("Retry-After", "7")
        self.set_header("X-Other", "not kept")
        self.write({"method": self.request.method, "body": self.request.body.decode(),
                    "headers": {k: v for k, v in self.request.headers.items() if k.startswith("X-")},
                    "expect": self.request.headers.get("Expect"), "pragma": self.request.headers.get("Pragma")})

    async def get(self):
        await self._echo() if self.get_query_argument("slow", None) else self._echo()

    post = delete = get


@pytest.fixture
def app():
    return Application([(r"/echo", Echo), (r"/big", Big)])


class Big(RequestHandler):
    def get(self):
        self.write(b"x" * 200_000)


def upstream(base_url, **kwargs):
    http = UpstreamCurlClient(force_instance=True, max_clients=2,
                              defaults=dict(connect_timeout=1, request_timeout=1, decompress_response=False), **kwargs)
    return Upstream(http, base_url, "test")


@pytest.mark.gen_test(timeout=20)
async def test_methods_bodies_and_headers_on_reused_handles(http_server, base_url):
    client = upstream(base_url)
    for method in ["GET", "POST", "POST", "DELETE", "GET", "POST"]:  # two handles, each reused across methods
        body = {"n": 1, "text": "héllo"} if method == "POST" else None
        response = await client.call(method, "/echo", headers={"X-Api-Key": "k1"}, body=body)
        echoed = response.json()
        assert (response.status, echoed["method"]) == (200, method)
        assert echoed["body"] == (json.dumps(body) if body else "")
        assert echoed["headers"] == {"X-Api-Key": "k1"}
        assert (echoed["expect"], echoed["pragma"]) == (None, None)  # libcurl's own additions are switched off
        assert response.content_type.startswith("application/json") and response.retry_after == 7.0


@pytest.mark.gen_test(timeout=20)
async def test_the_request_timeout_holds_on_every_call(http_server, base_url):
    client = upstream(base_url)
    for _ in range(3):  # a handle set up afresh each time: the timeout must be there each time
        with pytest.raises(UpstreamTimeout):
            await client.call("GET", "/echo", query="slow=1")
        assert (await client.call("GET", "/echo")).status == 200


@pytest.mark.gen_test(timeout=20)
async def test_a_response_over_max_body_size_is_refused_as_unavailable(http_server, base_url, caplog):
    client = upstream(base_url, max_body_size=100_000)
    with pytest.raises(UpstreamUnavailable):
        await client.call("GET", "/big")
    assert "exceeded max_body_size" in caplog.text


@pytest.mark.gen_test(timeout=20)
async def test_a_header_with_a_line_break_is_refused(http_server, base_url):
    with pytest.raises(ValueError):
        await upstream(base_url).call("GET", "/echo", headers={"X-Bad": "a\r\nInjected: 1"})


class CountedTimers(HookedCurlClient):
    """Counts the timers tornado sets for libcurl (what UpstreamCurlClient.set_timer passes on)."""
    set = 0

    def set_timer(self, msecs):
        type(self).set += 1
        super().set_timer(msecs)


class TimedUpstreamClient(UpstreamCurlClient, CountedTimers):
    pass


@pytest.mark.gen_test(timeout=20)
async def test_calls_arriving_together_share_one_timer_and_timeouts_still_hold(http_server, base_url):
    http = TimedUpstreamClient(force_instance=True, max_clients=16,
                               defaults=dict(connect_timeout=1, request_timeout=1, decompress_response=False))
    client = Upstream(http, base_url, "test")
    await client.call("GET", "/echo")  # connections aside: one call first
    TimedUpstreamClient.set = 0
    replies = await asyncio.gather(*(client.call("POST", "/echo", body={"n": n}) for n in range(16)))
    assert [r.json()["body"] for r in replies] == [json.dumps({"n": n}) for n in range(16)]
    # tornado asks for a 0 ms timer on each of the 16 fetches, libcurl for more: most are the pending one, kept
    assert TimedUpstreamClient.set < 16, TimedUpstreamClient.set
    # a later, shorter wait still replaces a longer pending timer: every call's timeout holds beside others
    slow = [client.call("GET", "/echo", query="slow=1") for _ in range(3)]
    outcomes = await asyncio.gather(*slow, client.call("GET", "/echo"), return_exceptions=True)
    assert [type(o) for o in outcomes[:3]] == [UpstreamTimeout] * 3 and outcomes[3].status == 200
