"""Pieces shared by the emulators: request recording and JSON replies.

Emulators are real tornado apps on loopback ports. Each keeps its state in memory (the Petya reference keeps it in
MongoDB) and records every request it receives, so tests can check what the gateway really sent over the wire.
"""
import json
import secrets
import time
from dataclasses import dataclass, field

import tornado.web


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict  # lower-cased names
    body: bytes
    at: float = field(default_factory=time.time)

    def json(self):
        return json.loads(self.body) if self.body else None


class Recorder:
    """The list of requests an emulator received, newest last."""

    def __init__(self):
        self.requests = []

    def record(self, request):
        self.requests.append(RecordedRequest(
            method=request.method, path=request.path, query=request.query,
            headers={k.lower(): v for k, v in request.headers.get_all()}, body=request.body or b"",
        ))

    def calls(self, path_suffix, method=None):
        """Requests whose path ends with `path_suffix` (and of `method`, when given)."""
        return [r for r in self.requests
                if r.path.endswith(path_suffix) and (method is None or r.method == method)]

    def clear(self):
        self.requests.clear()


class EmulatorHandler(tornado.web.RequestHandler):
    """Base handler: records the request, parses JSON bodies, answers JSON."""

    def initialize(self, emulator):
        self.emulator = emulator

    def prepare(self):
        self.emulator.recorder.record(self.request)

    def json_body(self):
        """The parsed JSON body, {} when empty, or None when it is not a JSON object."""
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def reply(self, status, body):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def bearer(self):
        auth = self.request.headers.get("Authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def check_xsrf_cookie(self):  # machine-to-machine APIs
        pass


def new_id(prefix=""):
    return prefix + secrets.token_hex(16)
