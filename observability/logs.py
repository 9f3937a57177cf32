"""One access-log line per request, with keys and tokens scrubbed from whatever is logged; the log formats
(LOG_FORMAT): text lines, or JSON objects for log pipelines; lines batched into one write per loop iteration."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("gateway.access")

# Loggers whose DEBUG output carries secrets: curl prints request headers (our API keys), pymongo prints commands
# (the provider session tokens we store). They are held at INFO whatever the log level.
SECRET_BEARING_LOGGERS = ("tornado.curl_httpclient", "pymongo.command")

_SECRET_PARAMS = re.compile(r"((?:session_token|token|api_key|apikey|key|access_token)=)[^&\s]*", re.IGNORECASE)


def scrub(text: str) -> str:
    """Mask the values of secret-looking query parameters in a path or URL."""
    return _SECRET_PARAMS.sub(r"\1***", text)


def request_summary(handler: Any) -> str:
    return f"{handler.request.method} {scrub(handler.request.uri)}"


def log_request(handler: Any) -> None:
    """Application `log_function`: method, path, status, duration, session id. Never headers or bodies. The fields
    also go on the record (`access`) for the JSON format."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if not log.isEnabledFor(level):
        return
    session_id = getattr(handler, "log_session_id", None) or "-"
    method, path = handler.request.method, scrub(handler.request.path)
    duration_ms = 1000.0 * handler.request.request_time()
    log.log(level, "%s %s %d %.1fms session=%s", method, path, status, duration_ms, session_id,
            extra={"scrubbed": True, "access": {"method": method, "path": path, "status": status,
                                                "duration_ms": round(duration_ms, 1), "session": session_id}})


def clamp_secret_loggers() -> None:
    for name in SECRET_BEARING_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger(name).level))


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """`LOG_FORMAT=text`: one line per event, scrubbed (a traceback included; an access line's fields were
    scrubbed when it was made). The time is formatted once per second."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second: int | None = None
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._second_text = second, super().formatTime(record, "%Y-%m-%d %H:%M:%S")
        return "%s,%03d" % (self._second_text, record.msecs)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return line if getattr(record, "scrubbed", False) and not record.exc_info else scrub(line)


class JsonFormatter(logging.Formatter):
    """`LOG_FORMAT=json`: one JSON object per event (ASCII, one line): time (UTC, ISO 8601), level, logger,
    message; access lines add method, path, status, duration_ms and session, as in their text; a traceback goes
    into `exception`. Scrubbed as the text lines are."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
                 .replace("+00:00", "Z"),
                 "level": record.levelname, "logger": record.name, "message": scrub(record.getMessage())}
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        if record.exc_info:
            entry["exception"] = scrub(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = scrub(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str)


class BatchedStreamHandler(logging.StreamHandler):
    """A StreamHandler that, on the event loop's thread, collects the lines of one loop iteration and writes them
    with one write() at its end, instead of a write and a flush per line (a system call per request under load).
    Other threads, and records logged with no running loop, are written at once. A line waits at most until the
    loop's current iteration ends; `flush()` (and so logging.shutdown()) writes what is pending."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop whose iteration the pending lines wait for

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or (self._loop is not None and loop is not self._loop):
            self._write(line)
            return
        self._pending.append(line)
        if self._loop is None:
            self._loop = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self.acquire()
        try:
            pending, self._pending, self._loop = self._pending, [], None
            if pending:
                self.stream.write("".join(pending))
            super().flush()
        finally:
            self.release()

    def _write(self, line: str) -> None:
        self.stream.write(line)
        super().flush()


def log_formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Every logger to stdout, as text lines or JSON objects (LOG_FORMAT), secrets scrubbed either way."""
    # No format uses the thread, process or multiprocessing names: not looked up for every record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = BatchedStreamHandler(sys.stdout)
    handler.setFormatter(log_formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler])
