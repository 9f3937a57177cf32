"""The base of every gateway handler: JSON errors, CORS, body limits, customer authentication, scrubbed logs."""
import json
import logging
from dataclasses import dataclass

import tornado.web
from marshmallow import INCLUDE, ValidationError

from handlers.requestlog import request_summary
from models.errors import BadRequest, GatewayError, PayloadTooLarge, ServiceUnavailable, Unauthorized
from models.sessions import TOKEN_PREFIX, customer_id

log = logging.getLogger("gateway")

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Content-Type, X-Api-Key, X-api-key, Authorization"


def origin_allowed(allowed, origin):
    return bool(origin) and ("*" in allowed or origin.rstrip("/") in allowed)


@dataclass
class Customer:
    id: str  # HMAC of the API key
    config: dict  # avatar config from Petya (or the token's snapshot of it)
    token: object = None  # the GatewayToken when the caller presented one


class GatewayHandlerMixin:
    """JSON errors and scrubbed logs, for REST handlers and the WebSocket relay alike. (Tornado's default error
    logging prints the request with its headers, API keys included; ours does not.)"""

    log_session_id = None

    def _request_summary(self):
        return request_summary(self)

    def log_exception(self, typ, value, tb):
        if isinstance(value, tornado.web.HTTPError):
            return super().log_exception(typ, value, tb)
        log.error("uncaught exception in %s", request_summary(self), exc_info=(typ, value, tb))

    def write_error(self, status_code, **kwargs):
        error = kwargs.get("exc_info", (None, None))[1]
        if isinstance(error, GatewayError):
            body = error.body()
        elif isinstance(error, tornado.web.HTTPError):
            body = {"code": status_code, "message": error.log_message or self._reason}
        else:
            body = {"code": status_code, "message": self._reason if status_code < 500 else "internal error"}
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(body))


class BaseHandler(GatewayHandlerMixin, tornado.web.RequestHandler):
    def initialize(self, gateway):
        self.gateway = gateway
        self.set_default_headers()  # tornado called it before initialize(), when the gateway was not known yet

    # --- CORS -----------------------------------------------------------------------------------------------------

    def set_default_headers(self):
        if not hasattr(self, "gateway"):
            return
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        origin = self.request.headers.get("Origin")
        if origin_allowed(self.gateway.settings.cors_origins, origin):
            # Echoed (never `*`) so credentialed fetches (LiveAvatar's SDK) work too.
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Allow-Credentials", "true")
            self.set_header("Access-Control-Allow-Methods", ALLOWED_METHODS)
            self.set_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
            self.set_header("Access-Control-Max-Age", "600")
        self.set_header("Vary", "Origin")

    def options(self, *args, **kwargs):
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()

    def check_xsrf_cookie(self):  # a JSON API authenticated by key, not by cookie
        pass

    # --- request and response -------------------------------------------------------------------------------------

    def prepare(self):
        limit = self.gateway.settings.max_body_size
        if len(self.request.body or b"") > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")

    def load_body(self, schema):
        """The JSON body validated by a marshmallow schema (unknown fields kept); BadRequest naming the field."""
        raw = self.request.body
        if raw and raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                raise BadRequest("request body is not valid JSON") from None
        else:
            body = {}
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        try:
            return schema.load(body, unknown=INCLUDE)
        except ValidationError as exc:
            fields = ", ".join(sorted(exc.messages)) if isinstance(exc.messages, dict) else "body"
            raise BadRequest(f"invalid field: {fields}", errors=exc.messages) from None

    def send_json(self, body, status=200):
        self.set_status(status)
        self.finish(json.dumps(body))

    def pass_through(self, response, body=None):
        """Answer with an upstream response: its status and body (or `body`, an edited copy of its JSON)."""
        self.set_status(response.status)
        if body is not None:
            self.finish(json.dumps(body))
        elif response.json() is not None or not response.body:
            self.finish(response.body)
        else:  # a non-JSON answer from upstream (an HTML error page): ours instead
            raise GatewayError(f"upstream answered {response.status} with a non-JSON body", status=502)

    # --- customers ------------------------------------------------------------------------------------------------

    def credentials(self):
        """(api_key, gateway_token) from `X-Api-Key` (any case) or `Authorization: Bearer`."""
        api_key = (self.request.headers.get("X-Api-Key") or "").strip()
        if api_key:
            return api_key, None
        auth = self.request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            value = auth[7:].strip()
            if value.startswith(TOKEN_PREFIX):
                return None, value
            return value or None, None
        return None, None

    async def authenticate(self, allow_token=True):
        return await authenticate(self.gateway, *self.credentials(), allow_token=allow_token)

    async def owned_session(self, session_id, customer, provider=None, touch=True):
        """The customer's session (of that provider, when given; 404 otherwise); by default the call counts as
        activity on it."""
        self.log_session_id = session_id
        return await self.gateway.sessions.owned(session_id, customer.id, provider=provider, touch=touch)

    async def record_new_session(self, provider, session_id, **fields):
        """Record a session the provider just created; if that fails, stop it upstream rather than leak it."""
        try:
            await self.gateway.sessions.create(session_id, provider.provider, **fields)
        except Exception:
            log.exception("could not record %s session %s; stopping it", provider.provider, session_id)
            await provider.abandon(session_id)
            raise ServiceUnavailable("could not record the session; it was stopped") from None


async def authenticate(gateway, api_key, token, allow_token=True):
    """The calling customer; Unauthorized (401) for a missing or unknown key or token."""
    if token and allow_token:
        record = await gateway.sessions.find_token(token)
        if record is None:
            raise Unauthorized("invalid or expired session token")
        return Customer(id=record.customer, config=dict(record.config or {}), token=record)
    if not api_key:
        raise Unauthorized("missing API key: send X-Api-Key or Authorization: Bearer")
    cid = customer_id(gateway.settings.gateway_secret, api_key)
    config = await gateway.petya.get_config(api_key, cid)
    return Customer(id=cid, config=config)


class NotFoundHandler(BaseHandler):
    def prepare(self):
        raise tornado.web.HTTPError(404, "no such route")
