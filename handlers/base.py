"""The base of every gateway handler: JSON errors, CORS, body limits, customer authentication, scrubbed logs."""
import contextlib
import json
import logging
import sys
from dataclasses import dataclass

import tornado.web
from marshmallow import INCLUDE, ValidationError
from tornado.http1connection import is_transfer_encoding_chunked
from tornado.httputil import HTTPInputError
from tornado.iostream import StreamClosedError

from handlers.requestlog import request_summary
from models.errors import BadRequest, GatewayError, NotFound, PayloadTooLarge, ServiceUnavailable, Unauthorized
from models.sessions import customer_id
from models.tokens import TokenSigner
from models.store import RETRY_AFTER

log = logging.getLogger("gateway")

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Content-Type, X-Api-Key, X-api-key, Authorization"
MAX_KEY_LENGTH = 512


def origin_allowed(allowed, origin):
    return bool(origin) and ("*" in allowed or origin.rstrip("/") in allowed)


# How deeply a request body may nest: far beyond any real body, and well within what json and the BSON encoder
# handle without recursing out of the stack.
MAX_JSON_DEPTH = 32


def _not_json(name):
    raise ValueError(f"{name} is not JSON")


def _nested_deeper_than(value, limit):
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def parse_json_body(raw):
    """A request body parsed as JSON (RFC 8259: UTF-8, no NaN/Infinity), or BadRequest saying why not. Strings that
    cannot be encoded again (a `\\udc00` escape of a lone surrogate) are refused here rather than failing later in
    the BSON encoder or an upstream call."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    try:
        body = json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise BadRequest(f"request body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError:
        raise BadRequest("request body is not valid JSON") from None
    if _nested_deeper_than(body, MAX_JSON_DEPTH):
        raise BadRequest(f"request body is nested more than {MAX_JSON_DEPTH} levels deep")
    if "\\ud" in text.lower():  # only an escape can bring in a surrogate: the UTF-8 decode refused the rest
        try:
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise BadRequest("request body has a string that is not valid Unicode (a lone surrogate escape)") from None
    return body


@dataclass
class Customer:
    id: str  # HMAC of the API key
    config: dict  # avatar config from Petya (or the token's snapshot of it)
    token: object = None  # the GatewayToken when the caller presented one


def _tornado_message(error):
    """The message of one of tornado's HTTPErrors up to its first colon: what follows quotes the input (e.g. "Invalid
    unicode in session_token: b'ilgt_…'"), which may be a token."""
    if not isinstance(error, tornado.web.HTTPError) or not error.log_message:
        return ""
    message = error.log_message % error.args if error.args else error.log_message
    return message.split(":", 1)[0]


class GatewayHandlerMixin:
    """JSON errors with CORS headers and scrubbed logs, for REST handlers, the WebSocket relay and the demo console
    alike. (Tornado's default error logging prints the request with its headers, API keys included; ours does not.)
    The handler has a `gateway` once initialize() ran."""

    log_session_id = None

    def _request_summary(self):
        return request_summary(self)

    def log_exception(self, typ, value, tb):
        if isinstance(value, tornado.web.HTTPError):
            if value.log_message and not isinstance(value, GatewayError):
                log.warning("%d %s: %s", value.status_code, request_summary(self), _tornado_message(value))
            return
        log.error("uncaught exception in %s", request_summary(self), exc_info=(typ, value, tb))

    def set_default_headers(self):
        # Tornado calls this before initialize() (no gateway yet: nothing to do) and again when an error clears
        # the response, so error answers carry the CORS headers too.
        if getattr(self, "gateway", None) is not None:
            self.set_cors_headers()

    def set_cors_headers(self):
        origin = self.request.headers.get("Origin")
        if origin_allowed(self.gateway.settings.cors_origins, origin):
            # Echoed (never `*`) so credentialed fetches (LiveAvatar's SDK) work too.
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Allow-Credentials", "true")
            self.set_header("Access-Control-Allow-Methods", ALLOWED_METHODS)
            self.set_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
            self.set_header("Access-Control-Max-Age", "600")
        self.set_header("Vary", "Origin")

    def write_error(self, status_code, **kwargs):
        error = kwargs.get("exc_info", (None, None))[1]
        if isinstance(error, GatewayError):
            body = error.body()
            for name, value in (getattr(error, "headers", None) or {}).items():
                self.set_header(name, value)
            if getattr(error, "retry_after", None) is not None:
                self.set_header("Retry-After", str(max(0, round(error.retry_after))))
        elif status_code < 500:  # tornado's own (405, a query argument that is not UTF-8, a missing static file)
            body = {"code": status_code, "message": _tornado_message(error) or self._reason}
        else:
            body = {"code": status_code, "message": "internal error"}
        if status_code == 405:
            self.set_header("Allow", ", ".join(allowed_methods(type(self))))
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body))


def allowed_methods(handler_class):
    """The methods a handler class serves (for a 405's Allow header): those it defines beyond RequestHandler's."""
    return [method for method in handler_class.SUPPORTED_METHODS
            if getattr(handler_class, method.lower(), None) is not getattr(tornado.web.RequestHandler,
                                                                           method.lower(), None)]


UNLIMITED = 1 << 62


class BodyLimitMixin:
    """For `@tornado.web.stream_request_body` handlers: the body is received here, at most MAX_BODY_SIZE bytes of it.

    A declared Content-Length over the limit is answered 413 before any of the body is read, and a chunked body is
    answered 413 as soon as it goes over, keeping no more of it; either way the connection is closed after the answer
    (tornado stops reading an answered request's body by closing). Tornado's own per-connection cap is lifted for
    these handlers, so its bare `400` never follows our answer. Handlers read the body with `self.body` (or
    `load_body`): `request.body` is not filled in streaming mode. A subclass that must refuse a request from its
    headers overrides `refuse_early`, not `prepare`."""

    _received = None
    _sent = None
    _cut_off = False  # answered before the whole body was read: the connection closes after the answer

    def __init__(self, application, request, **kwargs):
        # Lifted before anything can answer (tornado answers an unknown method 405 before prepare() runs).
        request.connection.set_max_body_size(UNLIMITED)
        super().__init__(application, request, **kwargs)

    @property
    def body(self):
        if self._received is None:
            return b""
        if not isinstance(self._received, bytes):
            self._received = bytes(self._received)
        return self._received

    def finish(self, chunk=None):
        if self._cut_off and not self._headers_written:
            self.set_header("Connection", "close")
        self._sent = super().finish(chunk)
        return self._sent

    async def prepare(self):
        """Refuse a bad request before its body is read (see `refuse_early`); the answer is on the wire and the
        connection closed before tornado goes on to read the body."""
        try:
            self.refuse_early()
        except tornado.web.HTTPError as error:
            self._cut_off = True
            self.send_error(error.status_code, exc_info=sys.exc_info())
            if self._sent is not None:
                try:
                    await self._sent
                except StreamClosedError:
                    pass

    def refuse_early(self):
        """Raise an HTTPError to answer now, from the headers alone: a body framing tornado would refuse with a bare
        400, or a declared length over MAX_BODY_SIZE."""
        limit = self.gateway.settings.max_body_size
        try:
            is_transfer_encoding_chunked(self.request.headers)  # also refuses Transfer-Encoding with Content-Length
        except HTTPInputError:
            raise BadRequest("invalid Transfer-Encoding") from None
        declared = self.request.headers.get("Content-Length")
        if declared is None:
            return
        values = {value.strip() for value in declared.split(",")}
        length = values.pop() if len(values) == 1 else ""
        if not (length.isascii() and length.isdigit()):
            raise BadRequest("invalid Content-Length")
        if int(length) > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")

    def data_received(self, chunk):
        if self._finished:
            return
        limit = self.gateway.settings.max_body_size
        if self._received is None:
            self._received = bytearray()
        if len(self._received) + len(chunk) > limit:
            self._received, self._cut_off = None, True
            error = PayloadTooLarge(f"request body exceeds {limit} bytes")
            self.send_error(error.status, exc_info=(type(error), error, None))
            return
        self._received += chunk


@tornado.web.stream_request_body
class BaseHandler(BodyLimitMixin, GatewayHandlerMixin, tornado.web.RequestHandler):
    def initialize(self, gateway):
        self.gateway = gateway
        self.set_default_headers()  # tornado called it before initialize(), when the gateway was not known yet

    # --- CORS -----------------------------------------------------------------------------------------------------

    def set_default_headers(self):
        if getattr(self, "gateway", None) is None:
            return
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_cors_headers()

    def options(self, *args, **kwargs):
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()

    def check_xsrf_cookie(self):  # a JSON API authenticated by key, not by cookie
        pass

    # --- request and response -------------------------------------------------------------------------------------

    def load_body(self, schema):
        """The JSON body validated by a marshmallow schema (unknown fields kept); BadRequest naming the field."""
        raw = self.body
        if raw and raw.strip():
            body = parse_json_body(raw)
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
            if TokenSigner.is_gateway_token(value):
                return None, value
            return value or None, None
        return None, None

    async def authenticate(self, allow_token=True, provider=None):
        return await authenticate(self.gateway, *self.credentials(), allow_token=allow_token, provider=provider)

    async def owned_session(self, session_id, customer, provider=None, touch=True, before_cutoff=False, facts=False):
        """The customer's session (of that provider, when given; 404 otherwise); by default the call counts as
        activity on it. See SessionStore.owned for before_cutoff; with facts, only what never changes about it
        (SessionStore.owned_facts: no MongoDB round trip once known)."""
        self.log_session_id = session_id
        return await owned_session(self.gateway, session_id, customer, provider=provider, touch=touch,
                                   before_cutoff=before_cutoff, facts=facts)

    @contextlib.asynccontextmanager
    async def session_slot(self, customer):
        """One of the customer's concurrent sessions (`maxConcurrentSessions` in its Petya config, else
        MAX_CONCURRENT_SESSIONS), held while the upstream call that opens a session is under way; 429
        concurrency_limit_exceeded when all are taken, before any upstream call."""
        settings = self.gateway.settings
        limit = customer.config.get("maxConcurrentSessions")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            limit = settings.max_concurrent_sessions
        claim = await self.gateway.sessions.claim_slot(customer.id, limit,
                                                       ttl=2 * settings.upstream_request_timeout + 5)
        try:
            yield
        finally:
            try:
                await self.gateway.sessions.release_slot(claim)
            except ServiceUnavailable:
                pass  # it expires by itself

    async def record_new_session(self, provider, session_id, **fields):
        """Record a session the provider just created; if that fails, stop it upstream rather than leak it."""
        try:
            await self.gateway.sessions.create(session_id, provider.provider, **fields)
        except Exception as exc:
            log.error("could not record %s session %s (%s); stopping it", provider.provider, session_id,
                      exc.message if isinstance(exc, ServiceUnavailable) else repr(exc))
            await provider.abandon(session_id)
            raise ServiceUnavailable("could not record the session; it was stopped", retry_after=RETRY_AFTER) from None


async def authenticate(gateway, api_key, token, allow_token=True, provider=None):
    """The calling customer; Unauthorized (401) for a missing or unknown key or token, or a token of another
    provider than `provider` (when given)."""
    if token and allow_token:
        record = await gateway.sessions.find_token(token) if gateway.tokens.verify(token) else None
        if record is None:
            raise Unauthorized("invalid or expired session token")
        if provider and record.provider != provider:
            raise Unauthorized(f"this session token is not valid for {provider}")
        return Customer(id=record.customer, config=dict(record.config or {}), token=record)
    if not api_key:
        raise Unauthorized("missing API key: send X-Api-Key or Authorization: Bearer")
    if not _plausible_key(api_key):  # it goes into a header to Petya: printable ASCII only
        raise Unauthorized("invalid API key")
    cid = customer_id(gateway.settings.gateway_secret, api_key)
    config = await gateway.petya.get_config(api_key, cid)
    return Customer(id=cid, config=config)


async def owned_session(gateway, session_id, customer, provider=None, touch=True, before_cutoff=False, facts=False):
    """The customer's session; NotFound unless it is theirs. A gateway token reaches only sessions of its own
    provider, and a LiveAvatar token only its own session."""
    token = customer.token
    if token is not None:
        if provider and provider != token.provider:
            raise NotFound("session not found")
        provider = token.provider
        if provider == "liveavatar" and session_id != token.session_id:
            raise NotFound("session not found")
    if facts:
        return await gateway.sessions.owned_facts(session_id, customer.id, provider=provider)
    return await gateway.sessions.owned(session_id, customer.id, provider=provider, touch=touch,
                                        before_cutoff=before_cutoff)


def _plausible_key(key):
    return len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()


class NotFoundHandler(BaseHandler):
    """Unknown routes: 404 once the body is in (a body over the limit is a 413 first; the connection stays open).
    A preflight is answered like any other (204 with CORS headers), so the browser goes on to show the page the
    real 404 and its body instead of a bare "Failed to fetch"."""

    def not_found(self, *args, **kwargs):
        raise NotFound("no such route")

    get = head = post = put = delete = patch = not_found


class NoBodyHandler(BaseHandler):
    """Requests with a body on a route that takes none (the WebSocket handshake, whose handler would buffer it):
    413 over MAX_BODY_SIZE, else 400."""

    def refuse_early(self):
        super().refuse_early()
        raise BadRequest("this route takes no request body")
