"""The demo console: one static page that drives the gateway's public API exactly as the plugin does."""
import os

import tornado.web

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
PAGE = "demo.html"


class DemoHandler(tornado.web.StaticFileHandler):
    """Serves the page at /demo (and /demo/) without a redirect, and handlers/static/ under /demo/."""

    def initialize(self, **kwargs):
        super().initialize(path=STATIC_DIR)

    def get(self, path=None, include_body=True):
        return super().get(path or PAGE, include_body)

    def set_extra_headers(self, path):
        self.set_header("Cache-Control", "no-cache")
