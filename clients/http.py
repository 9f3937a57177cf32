"""The one shared curl HTTP client and the JSON call every upstream client makes through it."""
from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any

import pycurl
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from clients.tornado_compat import HookedCurlClient
from domain.answers import Answer
from domain.errors import UpstreamTimeout, UpstreamUnavailable
from observability import metrics

if TYPE_CHECKING:
    from conf import Settings

log = logging.getLogger("gateway.upstream")

# curl reports these errno values (as tornado's 599) for a request that ran out of time.
_CURL_TIMEOUT_CODES = (28,)


SEEK_OK: int = pycurl.SEEKFUNC_OK

# The response headers the gateway reads (UpstreamResponse). Parsing every line curl hands over into HTTPHeaders took
# about 5 % of a proxied call's CPU (cProfile, keep_alive at c=16).
KEPT_RESPONSE_HEADERS = frozenset(("content-type", "retry-after"))


class UpstreamCurlClient(HookedCurlClient):
    """Tornado's curl client, with less Python per call. Its only caller is `Upstream.call`, whose requests differ
    only in method, URL, headers and body; everything else comes from the client's defaults.

    - Setup: tornado resets a handle after each request, then sets two dozen options for the next, reading some forty
      attributes through the request's defaults proxy. Here only what differs from libcurl's defaults is set: http(s)
      only, URL, headers (no `Expect`/`Pragma`), callbacks, the two timeouts, no signals, the method and its body.
      Redirects are not followed (an upstream API that redirects is answered as it answered).
    - Response headers: only KEPT_RESPONSE_HEADERS are parsed (tornado parses every line into HTTPHeaders).

    Measured on this machine (keep_alive-sized POSTs at concurrency 16, the client's CPU only): about 215 us per
    call with tornado's setup and header parsing, 170 us with these."""

    def setup_request(self, curl: Any, request: Any, buffer: BytesIO, headers: Any) -> None:
        if request.method not in ("GET", "POST", "DELETE") or request.streaming_callback or request.header_callback:
            return super().setup_request(curl, request, buffer, headers)
        curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.URL, request.url)
        lines = [b"Expect: ", b"Pragma: "]
        for name, value in request.headers.get_all():
            line = b"%s: %s" % (name.encode("ascii"), value.encode("latin-1"))
            if b"\r" in line or b"\n" in line:
                raise ValueError("CR or LF in a header")
            lines.append(line)
        curl.setopt(pycurl.HTTPHEADER, lines)
        curl.setopt(pycurl.HEADERFUNCTION, functools.partial(self.header_line, headers, None))
        max_size = self.max_body_size

        def write(chunk: bytes) -> int:
            if buffer.tell() + len(chunk) > max_size:
                self.body_too_large(curl)
                return 0  # libcurl then fails the transfer
            return buffer.write(chunk)

        curl.setopt(pycurl.WRITEFUNCTION, write)
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(1000 * request.connect_timeout))
        curl.setopt(pycurl.TIMEOUT_MS, int(1000 * request.request_timeout))
        curl.setopt(pycurl.NOSIGNAL, 1)  # MongoDB's executor threads: libcurl must not use signals
        if request.method == "POST":
            body = BytesIO(request.body or b"")

            # libcurl rewinds the body to send it again (a reused connection went away)
            def seek(offset: int, origin: int) -> int:
                body.seek(offset, origin)
                return SEEK_OK

            curl.setopt(pycurl.POST, True)
            curl.setopt(pycurl.READFUNCTION, body.read)
            curl.setopt(pycurl.SEEKFUNCTION, seek)
            curl.setopt(pycurl.POSTFIELDSIZE, len(request.body or b""))
        elif request.method == "DELETE":
            curl.setopt(pycurl.CUSTOMREQUEST, "DELETE")

    timer_due = 0.0  # when the pending timer fires (IOLoop time)

    def set_timer(self, msecs: int) -> None:
        """libcurl's timer, kept when it already fires no later than asked. Tornado asks for a 0 ms timer on every
        fetch (and libcurl for its own), replacing the pending one each time: with 16 calls arriving in one loop
        iteration, 16 timeouts removed and added for one wake-up. Being woken early is harmless: tornado then asks
        libcurl for its next timeout and sets that."""
        due = self.io_loop.time() + msecs / 1000.0
        if self.timer_pending and self.timer_due <= due:
            return
        super().set_timer(msecs)
        self.timer_due = due

    def header_line(self, headers: Any, header_callback: Any, header_line_bytes: bytes) -> None:
        name, colon, value = header_line_bytes.decode("latin-1").partition(":")
        if colon and name.strip().lower() in KEPT_RESPONSE_HEADERS:
            headers[name.strip()] = value.strip()
        elif name.startswith("HTTP/"):
            headers.clear()  # a new response (after a 100 Continue, or a redirect) starts afresh


def make_http_client(settings: Settings) -> AsyncHTTPClient:
    """One curl client per process: it reuses upstream connections across requests."""
    return UpstreamCurlClient(
        force_instance=True,
        max_clients=settings.http_max_clients,
        defaults=dict(
            connect_timeout=settings.upstream_connect_timeout,
            request_timeout=settings.upstream_request_timeout,
            decompress_response=False,
        ),
    )


_UNPARSED = object()


def _seconds(value: str | None) -> float | None:
    """A Retry-After given in seconds (the HTTP-date form counts as absent)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


@dataclass
class UpstreamResponse:
    status: int
    body: bytes
    content_type: str
    retry_after: float | None = None  # seconds, from a Retry-After header (429, 503)
    _parsed: Any = field(default=_UNPARSED, init=False, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON; parsed once (the same object on every call, so a
        handler that edits it answers with the edited copy)."""
        if self._parsed is _UNPARSED:
            try:
                self._parsed = json.loads(self.body) if self.body else None
            except ValueError:
                self._parsed = None
        return self._parsed

    def answer(self, body: Any = None, session_id: str | None = None) -> Answer:
        """This response as the plugin's answer: its status and body (or `body`, an edited copy of its JSON). A
        body that is not JSON (an HTML error page) is not passed on: UpstreamUnavailable (502) instead."""
        if body is not None:
            return Answer(self.status, body=body, session_id=session_id)
        if self.json() is not None or not self.body:
            return Answer(self.status, raw=self.body, session_id=session_id)
        raise UpstreamUnavailable(f"upstream answered {self.status} with a non-JSON body")


class Upstream:
    """A JSON API at `base_url`, reached through the shared client. Error statuses come back as responses;
    only transport failures raise (UpstreamTimeout 504, UpstreamUnavailable 502). Every call is timed into the
    upstream latency histogram (observability/metrics.py) under `call`, or its method and path with ids replaced."""

    def __init__(self, http: AsyncHTTPClient, base_url: str, name: str) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.name = name

    async def call(self, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None,
                   query: str = "", call: str | None = None, timeout: float | None = None) -> UpstreamResponse:
        url = self.base_url + path + (("?" + query) if query else "")
        headers = dict(headers or {})
        payload: bytes | None = None
        if method in ("POST", "PUT", "PATCH"):
            payload = b"" if body is None else json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Accept", "application/json")
        request = HTTPRequest(url, method=method, headers=headers, body=payload, request_timeout=timeout)
        started, status = time.perf_counter(), None  # type: float, int | None
        try:
            response = await self.http.fetch(request, raise_error=False)
            status = response.code
        except HTTPClientError as exc:  # curl failures (599) raise even with raise_error=False
            raise self._transport_error(exc) from None
        finally:
            metrics.observe_upstream(self.name, call or metrics.call_label(self.name, method, path), status,
                                     time.perf_counter() - started)
        return UpstreamResponse(response.code, response.body or b"",
                                response.headers.get("Content-Type", "application/json"),
                                _seconds(response.headers.get("Retry-After")))

    def _transport_error(self, error: HTTPClientError) -> UpstreamTimeout | UpstreamUnavailable:
        detail = str(error)
        if getattr(error, "errno", None) in _CURL_TIMEOUT_CODES or "timed out" in detail.lower():
            log.warning("%s timed out: %s", self.name, detail)
            return UpstreamTimeout(f"{self.name} did not answer in time")
        log.warning("%s unreachable: %s", self.name, detail)
        return UpstreamUnavailable(f"{self.name} is unreachable")
