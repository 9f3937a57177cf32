"""The demo console: one static page that drives the gateway's public API exactly as the plugin does."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import tornado.web

from handlers.base import GatewayHandlerMixin
from handlers.body import BodyLimitMixin
from handlers.contracts import Contract, Route
from handlers.openapi import CORS, FRAMING, answer, error, operation, shared

if TYPE_CHECKING:
    from handlers.app import Gateway

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
PAGE = "demo.html"


@tornado.web.stream_request_body
class DemoHandler(BodyLimitMixin, GatewayHandlerMixin, tornado.web.StaticFileHandler):
    """Serves the page at /demo (and /demo/) without a redirect, and handlers/static/ under /demo/. Errors (a missing
    file, a method other than GET/HEAD, a body over MAX_BODY_SIZE) are answered in JSON like the API's."""

    def initialize(self, gateway: Gateway, **kwargs: Any) -> None:  # type: ignore[override]
        self.gateway = gateway
        super().initialize(path=STATIC_DIR)
        self.set_default_headers()  # tornado called it before initialize(), when the gateway was not known yet

    def get(self, path: str | None = None, include_body: bool = True) -> Any:
        return super().get(path or PAGE, include_body)

    def head(self, path: str | None = None) -> Any:
        return self.get(path, include_body=False)

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")


def operations(parameter: str | None) -> dict[str, Any]:
    """/demo (and /demo/) is the page, /demo/<file> its static files."""
    media = {"text/html": {"schema": {"type": "string"}}}
    if parameter:
        media.update({"text/css": {"schema": {"type": "string"}}, "text/javascript": {"schema": {"type": "string"}},
                      "application/javascript": {"schema": {"type": "string"}}})
    ok = {**answer("the file"), "content": media,
          "headers": {**CORS, "Cache-Control": {"schema": {"type": "string", "enum": ["no-cache"]}}}}
    errors = {
        "304": answer("not modified (If-None-Match / If-Modified-Since)"),
        "400": error("a query argument that is not UTF-8, or " + FRAMING),
        "403": error("a path outside the console's directory"),
        "404": error("no such file"),
        "413": shared("PayloadTooLarge"),
        "416": error("a Range that is not satisfiable"),
    }
    if not parameter:
        del errors["403"]
        del errors["404"]
    responses = {"200": ok, "206": {**ok, "description": "part of the file (Range)"}, **errors}
    params = [{"name": parameter, "in": "path", "required": True, "schema": {"type": "string"},
               "description": "a file of the console", "example": "demo.js"}] if parameter else None
    suffix = "File" if parameter else ""
    return {
        method: operation(f"demo{suffix}{method.title()}", "The demo console" + (": a file" if parameter else ""),
                          "The demo console (`GET /demo` or `/demo/`), driving the public API as the plugin does. "
                          "Root only." + (" HEAD: the same headers, no body." if method == "head" else ""),
                          responses, security=[], parameters=params, tags=("Demo",))
        for method in ("get", "head")
    }


CONTRACT = Contract("demo", (
    Route(r"/demo/?", DemoHandler, "/demo", lambda: operations(None), prefixed=False, preflight=False),
    Route(r"/demo/(.+)", DemoHandler, "/demo/{file}", lambda: operations("file"), prefixed=False, preflight=False),
), tag={"name": "Demo", "description": "The demo console."})
