"""What each area of the HTTP surface registers — a plugin contract (HeyGen's, LiveAvatar's, the gateway's reports),
the operators' routes, the demo console — and how the application's route table and its OpenAPI document
(handlers/openapi.py) are assembled from them. A route is declared once, with its handler and its operations."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tornado.routing import PathMatches

from handlers.base import NoBodyHandler

PREFIXES = ("", "/api/v1/avatar")  # every API route is served at the root and, identically, under the prefix

Operations = dict[str, dict[str, Any]]  # method -> OpenAPI operation object


@dataclass(frozen=True)
class Route:
    pattern: str  # the path's regular expression, e.g. r"/v1/streaming\.task"
    handler: type
    path: str  # the path in the OpenAPI document, e.g. "/v1/streaming.task"
    operations: Callable[[], Operations]  # built when the document is
    prefixed: bool = True  # served under both PREFIXES; False: at the root only
    admin: bool = False  # an operators' route: on ADMIN_ADDRESS's listener when that is set (then not on PORT)
    preflight: bool = True  # answers OPTIONS (CORS preflight), documented as such
    no_body: bool = False  # its handler buffers the request (the WebSocket): one with a body is refused unread
    catch_all: bool = False  # matched after every other route
    documented: bool = True  # in the OpenAPI document (False: the gateway processes' internal calls)


@dataclass(frozen=True)
class Contract:
    name: str
    routes: tuple[Route, ...]
    tag: dict[str, str] = field(default_factory=dict)  # its OpenAPI tag: name and description


class WithBody(PathMatches):
    """A path, for the requests that carry a body (any Content-Length but 0, or a Transfer-Encoding)."""

    def match(self, request: Any) -> dict[str, Any] | None:
        headers = request.headers
        if headers.get("Content-Length", "0") == "0" and "Transfer-Encoding" not in headers:
            return None
        return super().match(request)


def route_table(contracts: tuple[Contract, ...], deps: dict[str, Any], admin_apart: bool) -> list[tuple[Any, ...]]:
    """Tornado's rules for `contracts`, in matching order: the refusals of bodies on routes that take none, then every
    route (catch-alls last) under its prefixes. With `admin_apart`, the operators' routes are left out (they are
    served on their own listener: admin_table)."""
    routes = [route for contract in contracts for route in contract.routes if not (admin_apart and route.admin)]
    routes.sort(key=lambda route: route.catch_all)  # stable: otherwise as declared
    table: list[tuple[Any, ...]] = [(WithBody(prefix + route.pattern), NoBodyHandler, deps)
                                    for prefix in PREFIXES for route in routes if route.no_body]
    api = [route for route in routes if route.prefixed]
    table += [(prefix + route.pattern, route.handler, deps) for prefix in PREFIXES for route in api]
    table += [(route.pattern, route.handler, deps) for route in routes if not route.prefixed]
    return table


def admin_table(contracts: tuple[Contract, ...], deps: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The operators' routes, for their own listener (ADMIN_ADDRESS)."""
    return [(route.pattern, route.handler, deps) for contract in contracts for route in contract.routes
            if route.admin]
