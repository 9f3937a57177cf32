"""The demo console: one static page that drives the gateway's public API exactly as the plugin does."""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

import tornado.web

from domain.errors import NotFound
from handlers.base import GatewayHandlerMixin
from handlers.body import BodyLimitMixin
from handlers.contracts import Contract, Route
from handlers.openapi import CORS, FRAMING, answer, error, operation, shared

if TYPE_CHECKING:
    from handlers.app import Gateway

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
PAGE = "demo.html"
# The console's file names, as /demo/<file> may ask for them: slash-separated segments of letters, digits, `_`, `-`
# and `.`, none starting with a dot (so no `.`, `..` or hidden file), none empty (no leading, doubled or trailing
# slash). Anything else — a way out of the folder however it is spelled or encoded, a NUL, a backslash — is "no such
# file", before the filesystem is asked.
FILE_PATH = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*")
NO_SUCH_FILE = "no such file"


@tornado.web.stream_request_body
class DemoHandler(BodyLimitMixin, GatewayHandlerMixin, tornado.web.StaticFileHandler):
    """Serves the page at /demo (and /demo/) without a redirect, and handlers/static/ under /demo/. Errors (a missing
    file, a method other than GET/HEAD, a body over MAX_BODY_SIZE) are answered in JSON like the API's. A path that is
    not one of the folder's file names (FILE_PATH: e.g. `../server.py`, `%2e%2e/x`, `..%2fx`, a directory) is a 404
    "no such file" that does not echo the path (tornado's own 403 would: "… is not in root static directory")."""

    def initialize(self, gateway: Gateway, **kwargs: Any) -> None:  # type: ignore[override]
        self.gateway = gateway
        super().initialize(path=STATIC_DIR)
        self.set_default_headers()  # tornado called it before initialize(), when the gateway was not known yet

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        try:
            return super().decode_argument(value, name)
        except tornado.web.HTTPError:
            if name is None:  # a path that is not UTF-8 names no file of ours
                return "\x00"
            raise

    async def get(self, path: str | None = None, include_body: bool = True) -> None:
        path = path or PAGE
        if not FILE_PATH.fullmatch(path):
            raise NotFound(NO_SUCH_FILE)
        try:
            await super().get(path, include_body)
        except tornado.web.HTTPError as error:
            if error.status_code in (403, 404):  # outside the folder after all (a symlink), a directory, missing
                raise NotFound(NO_SUCH_FILE) from None
            raise

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
        "404": error("no such file, or a path that is not a file of the console's folder (`..`, however encoded)"),
        "413": shared("PayloadTooLarge"),
        "416": error("a Range that is not satisfiable"),
    }
    if not parameter:
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
