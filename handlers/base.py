"""The base of every gateway handler: JSON errors (mapped in handlers/errors.py) with CORS headers, scrubbed logs,
the body limit (handlers/body.py), and the caller's credentials."""
from __future__ import annotations

import hmac
import json
import logging
from http.client import responses
from typing import TYPE_CHECKING, Any

import tornado.web
from marshmallow import INCLUDE, Schema, ValidationError

from domain.answers import Answer
from domain.errors import BadRequest, GatewayError, NotFound
from domain.records import Customer
from domain.tokens import TokenSigner
from handlers.body import BodyLimitMixin, parse_json_body
from handlers.errors import body_of, headers_of, status_of
from observability.logs import request_summary

if TYPE_CHECKING:
    from handlers.app import Gateway

log = logging.getLogger("gateway")

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Content-Type, X-Api-Key, X-api-key, Authorization"


def bearer_is(header: str | None, secret: str) -> bool:
    """Whether an Authorization header presents `secret` as its Bearer token (compared in constant time)."""
    scheme, _, presented = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), secret.encode())


def origin_allowed(allowed: tuple[str, ...], origin: str | None) -> bool:
    return bool(origin) and ("*" in allowed or (origin or "").rstrip("/") in allowed)


def _tornado_message(error: BaseException | None) -> str:
    """The message of one of tornado's HTTPErrors up to its first colon: what follows quotes the input (e.g. "Invalid
    unicode in session_token: b'ilgt_…'"), which may be a token."""
    if not isinstance(error, tornado.web.HTTPError) or not error.log_message:
        return ""
    message = error.log_message % error.args if error.args else error.log_message
    return str(message).split(":", 1)[0]


def allowed_methods(handler_class: type) -> list[str]:
    """The methods a handler class serves (for a 405's Allow header): those it defines beyond RequestHandler's."""
    return [method for method in handler_class.SUPPORTED_METHODS  # type: ignore[attr-defined]
            if getattr(handler_class, method.lower(), None) is not getattr(tornado.web.RequestHandler,
                                                                           method.lower(), None)]


class GatewayHandlerMixin:
    """JSON errors with CORS headers and scrubbed logs, for REST handlers, the WebSocket relay and the demo console
    alike. (Tornado's default error logging prints the request with its headers, API keys included; ours does not.)
    The handler has a `gateway` once initialize() ran. A GatewayError raised anywhere in a handler is answered with
    its status (handlers/errors.py) and is not logged as an uncaught exception (the access line records it)."""

    gateway: Gateway
    log_session_id: str | None = None  # the session the request is about, for the access line
    request: Any

    def _request_summary(self) -> str:
        return request_summary(self)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, GatewayError):
            return
        if isinstance(value, tornado.web.HTTPError):
            if value.log_message:
                log.warning("%d %s: %s", value.status_code, request_summary(self), _tornado_message(value))
            return
        log.error("uncaught exception in %s", request_summary(self), exc_info=(typ, value, tb))

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        if isinstance(error, GatewayError):
            status_code = status_of(error)
        elif isinstance(error, tornado.web.HTTPError):
            status_code = error.status_code
        super().send_error(status_code, **kwargs)  # type: ignore[misc]

    def set_default_headers(self) -> None:
        # Tornado calls this before initialize() (no gateway yet: nothing to do) and again when an error clears
        # the response, so error answers carry the CORS headers too.
        if getattr(self, "gateway", None) is not None:
            self.set_cors_headers()

    def set_cors_headers(self) -> None:
        origin = self.request.headers.get("Origin")
        set_header = self.set_header  # type: ignore[attr-defined]
        if origin_allowed(self.gateway.settings.cors_origins, origin):
            # Echoed (never `*`) so credentialed fetches (LiveAvatar's SDK) work too.
            set_header("Access-Control-Allow-Origin", origin)
            set_header("Access-Control-Allow-Credentials", "true")
            set_header("Access-Control-Allow-Methods", ALLOWED_METHODS)
            set_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
            set_header("Access-Control-Max-Age", "600")
        set_header("Vary", "Origin")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        set_header = self.set_header  # type: ignore[attr-defined]
        if isinstance(error, GatewayError):
            body = body_of(error)
            for name, value in headers_of(error).items():
                set_header(name, value)
        elif status_code < 500:  # tornado's own (405, a query argument that is not UTF-8, a missing static file)
            body = {"code": status_code, "message": _tornado_message(error) or responses.get(status_code, "Unknown")}
        else:
            body = {"code": status_code, "message": "internal error"}
        if status_code == 405:
            set_header("Allow", ", ".join(allowed_methods(type(self))))
        set_header("Content-Type", "application/json; charset=utf-8")
        set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body))  # type: ignore[attr-defined]


@tornado.web.stream_request_body
class BaseHandler(BodyLimitMixin, GatewayHandlerMixin, tornado.web.RequestHandler):
    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.set_default_headers()  # tornado called it before initialize(), when the gateway was not known yet

    def set_default_headers(self) -> None:
        if getattr(self, "gateway", None) is None:
            return
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_cors_headers()

    def options(self, *args: Any, **kwargs: Any) -> None:
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()

    def check_xsrf_cookie(self) -> None:  # a JSON API authenticated by key, not by cookie
        pass

    # --- request and response -------------------------------------------------------------------------------------

    def load_body(self, schema: Schema) -> dict[str, Any]:
        """The JSON body validated by a marshmallow schema (unknown fields kept); BadRequest naming the field."""
        raw = self.body
        body = parse_json_body(raw) if raw and raw.strip() else {}
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        try:
            loaded: dict[str, Any] = schema.load(body, unknown=INCLUDE)
            return loaded
        except ValidationError as exc:
            fields = ", ".join(sorted(exc.messages)) if isinstance(exc.messages, dict) else "body"
            raise BadRequest(f"invalid field: {fields}", errors=exc.messages) from None

    def send_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body))

    def answer(self, answer: Answer) -> None:
        """Write what a service answered."""
        if answer.session_id:
            self.log_session_id = answer.session_id
        self.set_status(answer.status)
        self.finish(answer.raw if answer.raw is not None else json.dumps(answer.body))

    # --- customers ------------------------------------------------------------------------------------------------

    def credentials(self) -> tuple[str | None, str | None]:
        """(api_key, gateway_token) from `X-Api-Key` (any case) or `Authorization: Bearer`."""
        api_key = (self.request.headers.get("X-Api-Key") or "").strip()
        if api_key:
            return api_key, None
        auth = self.request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            value = auth[7:].strip()
            if TokenSigner.is_gateway_token(value):
                return None, value
            return value or None, None
        return None, None

    async def authenticate(self, allow_token: bool = True, contract: str | None = None) -> Customer:
        return await self.gateway.customers.authenticate(*self.credentials(), allow_token=allow_token,
                                                         contract=contract)


class NotFoundHandler(BaseHandler):
    """Unknown routes: 404 once the body is in (a body over the limit is a 413 first; the connection stays open).
    A preflight is answered like any other (204 with CORS headers), so the browser goes on to show the page the
    real 404 and its body instead of a bare "Failed to fetch"."""

    def not_found(self, *args: Any, **kwargs: Any) -> None:
        raise NotFound("no such route")

    get = head = post = put = delete = patch = not_found


class NoBodyHandler(BaseHandler):
    """Requests with a body on a route that takes none (the WebSocket handshake, whose handler would buffer it):
    413 over MAX_BODY_SIZE, else 400."""

    def refuse_early(self) -> None:
        super().refuse_early()
        raise BadRequest("this route takes no request body")
