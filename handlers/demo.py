"""The demo console: one static page that drives the gateway's public API exactly as the plugin does."""
import os

import tornado.web

from handlers.base import BodyLimitMixin, GatewayHandlerMixin

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
PAGE = "demo.html"


@tornado.web.stream_request_body
class DemoHandler(BodyLimitMixin, GatewayHandlerMixin, tornado.web.StaticFileHandler):
    """Serves the page at /demo (and /demo/) without a redirect, and handlers/static/ under /demo/. Errors (a missing
    file, a method other than GET/HEAD, a body over MAX_BODY_SIZE) are answered in JSON like the API's."""

    def initialize(self, gateway, **kwargs):
        self.gateway = gateway
        super().initialize(path=STATIC_DIR)
        self.set_default_headers()  # tornado called it before initialize(), when the gateway was not known yet

    def get(self, path=None, include_body=True):
        return super().get(path or PAGE, include_body)

    def head(self, path=None):
        return self.get(path, include_body=False)

    def set_extra_headers(self, path):
        self.set_header("Cache-Control", "no-cache")
