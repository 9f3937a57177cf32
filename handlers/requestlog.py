"""One access-log line per request, with keys and tokens scrubbed from whatever is logged."""
import logging
import re

log = logging.getLogger("gateway.access")

# Loggers whose DEBUG output carries secrets: curl prints request headers (our API keys), pymongo prints commands
# (the provider session tokens we store). They are held at INFO whatever the log level.
SECRET_BEARING_LOGGERS = ("tornado.curl_httpclient", "pymongo.command")

_SECRET_PARAMS = re.compile(r"((?:session_token|token|api_key|apikey|key|access_token)=)[^&\s]*", re.IGNORECASE)


def scrub(text):
    """Mask the values of secret-looking query parameters in a path or URL."""
    return _SECRET_PARAMS.sub(r"\1***", text)


def request_summary(handler):
    return f"{handler.request.method} {scrub(handler.request.uri)}"


def log_request(handler):
    """Application `log_function`: method, path, status, duration, session id. Never headers or bodies."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    session_id = getattr(handler, "log_session_id", None) or "-"
    log.log(level, "%s %s %d %.1fms session=%s", handler.request.method, scrub(handler.request.path),
            status, 1000.0 * handler.request.request_time(), session_id)


def clamp_secret_loggers():
    for name in SECRET_BEARING_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger(name).level))
