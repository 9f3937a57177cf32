"""Every setting of the gateway, declared once, in groups, with its default, its type and a one-line doc.

Values come from the environment, then from a `.env` file (the environment wins, as python-dotenv does), then from
the defaults below. `configured()` reads what the environment and the file set; `load_settings()` validates every
setting and raises ConfigError naming the first bad one, so a bad start stops with one clear line. It returns a typed
`Settings` (conf/settings.py), generated from these declarations with `python -m conf typed`, as are the README's
table (`markdown`) and conf/.env.example (`env`).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dotenv import dotenv_values

from conf.settings import Settings

__all__ = ["GROUPS", "REQUIRED", "SETTINGS", "ConfigError", "Group", "Setting", "Settings", "configured",
           "load_settings", "parse_setting"]


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it."""


REQUIRED = object()  # the default of a setting that has none


Parser = Callable[[str], Any]


def typed(annotation: str) -> Callable[[Parser], Parser]:
    """Mark a parser with the type of what it returns, as the generated Settings declares it."""
    def mark(parse: Parser) -> Parser:
        parse.annotation = annotation  # type: ignore[attr-defined]
        return parse
    return mark


def _int(low: int | None = None, high: int | None = None) -> Parser:
    @typed("int")
    def parse(raw: str) -> int:
        value = int(raw)
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"must be between {low} and {high}")
        return value
    return parse


def _float(low: float = 0.0) -> Parser:
    @typed("float")
    def parse(raw: str) -> float:
        value = float(raw)
        if value < low:
            raise ValueError(f"must be >= {low}")
        return value
    return parse


@typed("str")
def _str(raw: str) -> str:
    return raw


@typed("str")
def _url(raw: str) -> str:
    raw = raw.strip().rstrip("/")
    if not raw.startswith(("http://", "https://")) or len(raw) < 10:
        raise ValueError("must be an http:// or https:// URL")
    return raw


@typed("str")
def _optional_url(raw: str) -> str:
    return _url(raw) if raw.strip() else ""


@typed("str")
def _mongodb_uri(raw: str) -> str:
    if not raw.startswith(("mongodb://", "mongodb+srv://")):
        raise ValueError("must be a mongodb:// or mongodb+srv:// URI")
    return raw


def _secret(min_length: int = 1) -> Parser:
    @typed("str")
    def parse(raw: str) -> str:
        if len(raw) < min_length:
            raise ValueError(f"must be at least {min_length} characters")
        return raw
    return parse


def _optional_secret(min_length: int) -> Parser:
    @typed("str")
    def parse(raw: str) -> str:
        if raw and len(raw) < min_length:
            raise ValueError(f"must be empty or at least {min_length} characters")
        return raw
    return parse


@typed("tuple[str, ...]")
def _origins(raw: str) -> tuple[str, ...]:
    """`*` or a comma list of origins such as https://shop.example.com."""
    items = [item.strip().rstrip("/") for item in raw.split(",") if item.strip()]
    if items == ["*"]:
        return ("*",)
    for item in items:
        if item == "*" or not item.startswith(("http://", "https://")):
            raise ValueError(f"{item!r} is not an origin (scheme://host[:port]) and '*' must stand alone")
    return tuple(items)


@typed("bool")
def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _choice(*choices: str) -> Parser:
    @typed("Literal[" + ", ".join(repr(choice) for choice in choices) + "]")
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return parse


@typed("tuple[str, int] | None")
def _address(raw: str) -> tuple[str, int] | None:
    """`host:port` (`[v6 address]:port`), or empty for none."""
    raw = raw.strip()
    if not raw:
        return None
    host, sep, port = raw.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be host:port, e.g. 127.0.0.1:9100")
    return host, int(port)


@typed("Literal['DEBUG', 'INFO', 'WARNING', 'ERROR']")
def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Parser
    doc: str
    secret: bool = False

    @property
    def annotation(self) -> str:
        return getattr(self.parse, "annotation", "Any")


@dataclass(frozen=True)
class Group:
    title: str
    doc: str
    settings: tuple[Setting, ...]


GROUPS: tuple[Group, ...] = (
    Group("Server", "Where and how the process listens and logs.", (
        Setting("HOST", "127.0.0.1", _str, "Address to listen on (nginx proxies to it)."),
        Setting("PORT", "8000", _int(0, 65535), "Port to listen on (0: any free port)."),
        Setting("XHEADERS", "false", _bool,
                "Take the client's address and scheme from X-Real-IP / X-Forwarded-* (a proxy in front sets them). Off "
                "by default: nothing the gateway logs or decides uses them, and tornado checks the address on every "
                "request."),
        Setting("ADMIN_ADDRESS", "", _address,
                "host:port of a separate listener for /metrics, /readyz and /healthz (then 404 on PORT); empty: they "
                "are served on PORT."),
        Setting("EVENT_LOOP", "uvloop", _choice("uvloop", "asyncio"),
                "The event loop: uvloop (libuv; the socket relay's transports run in C, about a third less CPU per "
                "frame, see bench/) or asyncio (the standard library's)."),
        Setting("LOG_LEVEL", "INFO", _log_level, "Log level of the gateway's own loggers."),
        Setting("LOG_FORMAT", "text", _choice("text", "json"),
                "Log lines as text, or as JSON objects (time, level, logger, message; access lines also method, path, "
                "status, duration_ms, session) for log pipelines."),
    )),
    Group("Secrets and upstreams", "Our keys and the providers' addresses.", (
        Setting("GATEWAY_SECRET", REQUIRED, _secret(16),
                "Key of the HMAC that turns customer API keys into stored customer ids (16+ chars).", secret=True),
        Setting("HEYGEN_API_KEY", REQUIRED, _secret(), "Our HeyGen API key; never leaves the server.", secret=True),
        Setting("ADMIN_TOKEN", "", _optional_secret(16),
                "Bearer token of the admin API (/admin/usage, /admin/conversations/…; served with the operators' "
                "routes, on ADMIN_ADDRESS when set); empty: the admin API is off (404). 16+ chars.", secret=True),
        Setting("HEYGEN_BASE_URL", "https://api.heygen.com", _url, "HeyGen API base URL (REST and WebSocket)."),
        Setting("LIVEAVATAR_API_KEY", "", _str,
                "Our LiveAvatar API key; never leaves the server. Empty: the LiveAvatar routes answer 503.",
                secret=True),
        Setting("LIVEAVATAR_BASE_URL", "https://api.liveavatar.com", _url, "LiveAvatar API base URL."),
        Setting("LIVEAVATAR_RATE_LIMIT", "10", _int(0),
                "Calls per second per LiveAvatar endpoint made with our key, for all processes together (divided "
                "among the live ones); 0: no limit."),
        Setting("RATE_LIMIT_WAIT", "2", _float(0),
                "Seconds a browser's call may wait for the rate limiter before it is answered 429 with Retry-After."),
        Setting("UPSTREAM_CONNECT_TIMEOUT", "5", _float(0.1), "Seconds to connect to HeyGen/LiveAvatar/Petya."),
        Setting("UPSTREAM_REQUEST_TIMEOUT", "30", _float(0.1), "Seconds for a whole upstream HTTP exchange."),
        Setting("HTTP_MAX_CLIENTS", "200", _int(1, 10000),
                "Concurrent upstream HTTP requests of the shared curl client."),
    )),
    Group("Customers (Petya)", "Who may call, their quota, and who serves them.", (
        Setting("PETYA_BASE_URL", REQUIRED, _url, "Petya backend base URL (avatar config and conversation status)."),
        Setting("PETYA_AUTH_TOKEN", REQUIRED, _secret(), "Service token the gateway presents to Petya.", secret=True),
        Setting("PETYA_CONFIG_TTL", "60", _float(0), "Seconds a customer's avatar config from Petya stays cached."),
        Setting("MAX_CONCURRENT_SESSIONS", "3", _int(1),
                "Live sessions a customer may hold at once, unless its Petya config sets maxConcurrentSessions."),
        Setting("HEYGEN_CONTRACT_PROVIDER", "heygen", _choice("heygen", "liveavatar"),
                "Who serves HeyGen's contract (/v1/streaming.*) for a customer whose Petya config names no provider: "
                "heygen or liveavatar."),
    )),
    Group("MongoDB", "Where session state lives, and the process leases kept there.", (
        Setting("MONGODB_URI", REQUIRED, _mongodb_uri,
                "MongoDB URI holding sessions and transcripts; the database is the URI's path, else ilianaai_avatar.",
                secret=True),
        Setting("DB_WORKERS", "8", _int(1, 256), "Threads running MongoDB calls (and pymongo's pool size)."),
        Setting("DB_TIMEOUT", "5", _float(0.1),
                "Seconds a MongoDB call may wait for the server (selection, connect); meanwhile callers get 503. A "
                "call waits at most half of it for a free DB_WORKERS thread, else it is refused (503, busy)."),
        Setting("DB_WRITE_CONCERN", "journaled", _choice("journaled", "majority"),
                "How durable an acknowledged write is: journaled (w=1, j=true) or majority (w=majority, j=true; "
                "replica sets)."),
        Setting("LEASE_HEARTBEAT", "2", _float(0.05),
                "Seconds between a process's lease heartbeats in MongoDB (its open sockets are recorded against it)."),
        Setting("LEASE_TTL", "30", _float(0.2),
                "Seconds without a heartbeat after which a process counts as dead and its sockets as closed."),
        Setting("TURN_QUEUE_MAX", "10000", _int(1),
                "Turns a process holds while MongoDB cannot take them; when full, tasks and reports answer 503 and "
                "socket relays pause."),
    )),
    Group("HTTP", "What the gateway accepts from browsers.", (
        Setting("CORS_ORIGINS", "*", _origins, "Origins allowed to call the gateway: a comma list, or * for any."),
        Setting("MAX_BODY_SIZE", "65536", _int(256),
                "Largest request body accepted, in bytes (larger: 413, answered before the body is read; then the "
                "rest is read and discarded, for at most 5 s and 8 MiB, so the client reads the 413: a lingering "
                "close, handlers/linger.py)."),
        Setting("HTTP_IDLE_TIMEOUT", "60", _float(0.1),
                "Seconds a client connection may wait before and while sending a request's headers, from its connect "
                "or the end of its previous answer (tornado's header timeout): ends idle keep-alive connections and "
                "slowloris."),
        Setting("HTTP_BODY_TIMEOUT", "15", _float(0.1),
                "Seconds a client may take to send a request body once its headers are in; slower: connection closed."),
        Setting("HTTP_MAX_HEADER_SIZE", "16384", _int(1024, 1 << 20),
                "Largest request line plus headers, in bytes; larger: the connection is closed without an answer."),
    )),
    Group("WebSocket relay", "The streaming-chat socket.", (
        Setting("WS_PING_INTERVAL", "25", _float(0), "Seconds between WebSocket pings on both legs (0 disables)."),
        Setting("WS_MAX_MESSAGE_SIZE", "1048576", _int(1024), "Largest WebSocket message relayed, in bytes."),
        Setting("MAX_SOCKETS", "10000", _int(1),
                "Browser sockets one process relays at once; beyond: the handshake answers 503 + Retry-After. At start "
                "the process raises its open-files limit to cover them (two descriptors each, plus 1024), and says "
                "so clearly when the hard limit is lower (raise it: supervisor's minfds, ulimit -n)."),
        Setting("RELAY_PUMP", "fast", _choice("fast", "plain"),
                "How the socket relay moves frames: fast (bytes on the sockets taken from tornado, relay/pump.py) or "
                "plain (message by message on tornado's public API, relay/plain.py; slower). fast falls back to plain, "
                "with a warning, on a tornado that lacks what it needs."),
    )),
    Group("Rooms", "The gateway's room agents in the providers' LiveKit rooms (services/rooms.py).", (
        Setting("ROOM_JOIN_TIMEOUT", "10", _float(0.5),
                "Seconds the room agent may take to join a session's room; longer: streaming.start of a session served "
                "by LiveAvatar answers 502 and the session is stopped upstream."),
        Setting("INTERNAL_URL", "", _optional_url,
                "This process's URL as the other gateway processes reach it (they forward a room's commands to the "
                "process holding it); empty: http://127.0.0.1:<PORT>, enough for processes on one host."),
    )),
    Group("Sessions", "How long sessions, tokens and hand-offs last.", (
        Setting("SOCKET_GRACE_PERIOD", "30", _float(0),
                "Seconds a session waits for a reconnect after its socket closes (ended by the next sweep after "
                "that)."),
        Setting("SESSION_IDLE_TIMEOUT", "300", _float(1),
                "Seconds without a client call, keep-alive or open socket before a session is reaped (stopped "
                "upstream)."),
        Setting("SESSION_MAX_AGE", "3600", _float(1), "Seconds after which any session is reaped, active or not."),
        Setting("TOKEN_TTL", "3600", _float(1), "Seconds a gateway session token stays valid."),
        Setting("SWEEP_INTERVAL", "5", _float(0.05),
                "Seconds between sweeps for pending flushes and for abandoned, idle or too-old sessions."),
        Setting("FLUSH_RETRY_INITIAL", "2", _float(0.01),
                "First retry delay of a failed transcript flush, in seconds."),
        Setting("FLUSH_RETRY_MAX", "300", _float(0.01),
                "Longest retry delay of a failed transcript flush, in seconds."),
        Setting("SHUTDOWN_TIMEOUT", "8", _float(0), "Seconds a graceful stop waits for in-flight work."),
        Setting("TRANSCRIPT_RETENTION_DAYS", "30", _float(0),
                "Days every stored word of a session is kept after its hand-off was delivered or rejected (fractions "
                "allowed); then deleted by the sweep, keeping what usage needs. 0: kept forever."),
    )),
)
SETTINGS: tuple[Setting, ...] = tuple(setting for group in GROUPS for setting in group.settings)
_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


def configured(environ: Mapping[str, str] | None = None, dotenv_path: str | None = ".env") -> dict[str, str]:
    """Setting name -> raw value, for every declared setting the environment or the dotenv file sets (the environment
    wins; an empty value counts as unset). Not parsed: `parse_setting` or `load_settings` do that."""
    environ = os.environ if environ is None else environ
    file_values = dotenv_values(dotenv_path) if dotenv_path and os.path.exists(dotenv_path) else {}
    values: dict[str, str] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.name) or file_values.get(setting.name)
        if raw:
            values[setting.name] = raw
    return values


def parse_setting(name: str, raw: str) -> Any:
    """The value of setting `name` given as `raw`; ConfigError naming it when invalid (or not a setting)."""
    setting = _BY_NAME.get(name)
    if setting is None:
        raise ConfigError(f"{name} is not a setting")
    try:
        return setting.parse(raw)
    except ValueError as exc:
        shown = "***" if setting.secret else repr(raw)
        raise ConfigError(f"{setting.name}={shown} is invalid: {exc}") from None


def load_settings(environ: Mapping[str, str] | None = None, dotenv_path: str | None = ".env") -> Settings:
    """Read, parse and validate every setting; raise ConfigError naming the first bad one."""
    given = configured(environ, dotenv_path)
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = given.get(setting.name)
        if raw is None:
            if setting.default is REQUIRED:
                raise ConfigError(f"{setting.name} is required: {setting.doc}")
            raw = setting.default
        values[setting.name] = parse_setting(setting.name, raw)
    return Settings(**{name.lower(): value for name, value in values.items()})
