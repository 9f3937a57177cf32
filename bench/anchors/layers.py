"""The design card's layers alone, as REST references for part 1 (`python bench/anchors/layers.py MODE PORT UPSTREAM`).

What a proxied call costs at least on the gateway's stack, before any of the gateway's own code runs:
- `tornado`: a bare tornado RequestHandler answering HeyGen's keep_alive body itself (tornado's HTTP server, its
  routing and RequestHandler, the response written; no upstream call).
- `tornado+curl`: the same handler forwarding the call to HeyGen through tornado's stock `CurlAsyncHTTPClient` and
  answering its body (adds a bare curl call).
- `tornado+gwcurl`: the same through the gateway's own curl client (clients/http.py `UpstreamCurlClient`: tornado's
  client with less set-up per call), with the same defaults as the gateway's `make_http_client`.

Same event loop as the gateway's default (uvloop), same Python; no authentication, MongoDB, validation or access log.
The client presents HeyGen's own key, which is passed through, as with the other anchors.
"""
import asyncio
import os
import sys

import tornado.httpserver
import tornado.web
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import HTTPRequest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEEP_ALIVE_ANSWER = b'{"code": 100, "data": null, "message": "success"}'
CLIENT_DEFAULTS = dict(connect_timeout=5, request_timeout=30, decompress_response=False)  # as make_http_client's
MODES = ("tornado", "tornado+curl", "tornado+gwcurl")


class Answered(tornado.web.RequestHandler):
    def post(self, name):
        self.set_header("Content-Type", "application/json")
        self.finish(KEEP_ALIVE_ANSWER)


class Forwarded(tornado.web.RequestHandler):
    def initialize(self, http, upstream):
        self.http = http
        self.upstream = upstream

    async def post(self, name):
        request = HTTPRequest(f"{self.upstream}/v1/streaming.{name}", method="POST", body=self.request.body,
                              headers={"Content-Type": "application/json",
                                       "x-api-key": self.request.headers.get("x-api-key", "")})
        response = await self.http.fetch(request, raise_error=False)
        self.set_status(response.code)
        self.set_header("Content-Type", "application/json")
        self.finish(response.body or b"")


def client(mode):
    if mode == "tornado+gwcurl":
        sys.path.insert(0, ROOT)
        from clients.http import UpstreamCurlClient
        return UpstreamCurlClient(force_instance=True, max_clients=200, defaults=CLIENT_DEFAULTS)
    return CurlAsyncHTTPClient(force_instance=True, max_clients=200, defaults=CLIENT_DEFAULTS)


async def serve(mode, port, upstream):
    if mode == "tornado":
        routes = [(r"/v1/streaming\.([a-z_]+)", Answered)]
    else:
        routes = [(r"/v1/streaming\.([a-z_]+)", Forwarded, {"http": client(mode), "upstream": upstream})]
    server = tornado.httpserver.HTTPServer(tornado.web.Application(routes), xheaders=False)
    server.listen(port, "127.0.0.1")
    await asyncio.Event().wait()


def main():
    mode, port, upstream = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode not in MODES:
        raise SystemExit(f"layers.py: mode must be one of {MODES}")
    import uvloop
    uvloop.run(serve(mode, port, upstream))


if __name__ == "__main__":
    main()
