"""The demo console: one static page that drives the gateway's public API exactly as the plugin does."""
import os

import tornado.web

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")


class DemoHandler(tornado.web.StaticFileHandler):
    """Serves handlers/static/ under /demo/ (the page itself at /demo)."""

    def initialize(self, **kwargs):
        super().initialize(path=STATIC_DIR, default_filename="demo.html")

    def set_extra_headers(self, path):
        self.set_header("Cache-Control", "no-cache")
