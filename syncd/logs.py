"""Logging for the daemon: one event a line, context on every line, and no secrets, ever.

- JSON lines when the stream is not a terminal (journald, log shippers), readable text when it is.
- ``log_context(target=..., cycle=...)`` puts those fields on every line logged inside it. It
  uses contextvars, so concurrent cycles on worker threads do not see each other's fields (a new
  thread starts with an empty context: enter ``log_context`` in the thread that runs the cycle).
- ``register_secret`` adds a value (an API key) that is replaced with ``***`` wherever it shows
  up: message, arguments, extra fields, exception text. This is defence in depth; code should
  not log keys in the first place, but a traceback of a request object or a URL may.
- The libraries' loggers (``LIBRARY_LOGGERS``) stay at WARNING unless ``setup_logging`` is given
  another ``library_level`` (``syncd run --library-log-level``): at DEBUG, watchdog logs every
  file event and httpx every request, and a log file in a watched folder then feeds on itself;
  at INFO, Alembic says "Context impl SQLiteImpl." each time the store opens.
- Times are UTC in both forms (a server's local time changes with the season; logs must not).
- When the stream is the systemd journal (``$JOURNAL_STREAM`` names its device and inode,
  systemd.exec(5)), each line starts with its syslog priority (``<3>`` for ERROR ...), which
  journald strips and keeps as the entry's PRIORITY, so ``journalctl -p warning`` works.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

REDACTED = "***"
#: Shorter values are not redacted: replacing every "ab" in every line would wreck the logs,
#: and no provider issues keys that short.
MIN_SECRET_LENGTH = 4
#: Context fields shown first, in this order; other extras follow in the order they were given.
LEADING_FIELDS = ("target", "cycle")
#: Third-party loggers kept at ``library_level`` whatever syncd's own level is.
LIBRARY_LOGGERS = ("watchdog", "apscheduler", "httpx", "httpcore", "sqlalchemy", "alembic")

_EMPTY: Mapping[str, object] = MappingProxyType({})
_context: ContextVar[Mapping[str, object]] = ContextVar("syncd_log_context")
_secrets: tuple[str, ...] = ()  # every form of every secret, longest first
_secrets_lock = threading.Lock()
# The attributes every LogRecord has; anything else on a record came from ``extra`` or context.
_STANDARD = frozenset(
    [*logging.LogRecord("", 0, "", 0, "", None, None).__dict__, "message", "asctime", "taskName"]
)
_plain = logging.Formatter()


# --------------------------------------------------------------------------- context


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Every line logged inside carries ``fields`` (None values are left out); nests."""
    merged = {**_context.get(_EMPTY), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(MappingProxyType(merged))
    try:
        yield
    finally:
        _context.reset(token)


# --------------------------------------------------------------------------- secrets


def secret_forms(value: str) -> set[str]:
    """``value`` as it may appear in text: as is, URL-encoded (a form body echoed back), or
    JSON-escaped."""
    return {value, quote(value), quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]}


def register_secret(value: str) -> None:
    """Never let ``value`` (nor its URL- or JSON-escaped forms) reach a log line."""
    global _secrets
    if len(value) < MIN_SECRET_LENGTH:
        return
    forms = secret_forms(value)
    with _secrets_lock:
        _secrets = tuple(sorted(set(_secrets) | forms, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact_value(value: Any) -> Any:
    """A JSON-ready copy of ``value`` with secrets redacted in every string inside it."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    return redact(str(value))


class SecretFilter(logging.Filter):
    """Adds the log context to each record and scrubs secrets from it, in place.

    Scrubbing the record itself (not only our own output) means any other handler that sees the
    record after ours sees it clean too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get(_EMPTY).items():
            if not hasattr(record, key):  # an explicit extra= wins over the context
                setattr(record, key, value)
        try:
            message = record.getMessage()
        except Exception:
            return True  # a broken format string: leave it for the handler to report
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _plain.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in _extras(record).items():
            setattr(record, key, _redact_value(value))
        return True


# --------------------------------------------------------------------------- formatters


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    found = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
    leading = {k: found.pop(k) for k in LEADING_FIELDS if k in found}
    return {**leading, **found}


def _exception_text(record: logging.LogRecord) -> str:
    if record.exc_info and not record.exc_text:
        record.exc_text = _plain.formatException(record.exc_info)
    return record.exc_text or ""


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, then the context and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            event.setdefault(key, value)
        if exc := _exception_text(record):
            event["exc"] = exc
        if record.stack_info:
            event["stack"] = record.stack_info
        # Redact the values before encoding (escaping could hide a secret from a text search)
        # and the line after (in case str() of some object produced one).
        return redact(json.dumps(_redact_value(event), ensure_ascii=False))


def _utc(created: float) -> str:
    when = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return when.replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``time(UTC) LEVEL logger: message key=value ...`` for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        line = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in _extras(record).items())
        if fields:
            line += "  " + fields
        if exc := _exception_text(record):
            line += "\n" + exc  # tracebacks stay multi-line here: a person reads them
        if record.stack_info:
            line += "\n" + record.stack_info
        return redact(line)


def _text_value(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in '"=' for c in value):
        return value
    return json.dumps(_redact_value(value), ensure_ascii=False)


# --------------------------------------------------------------------------- setup


#: syslog priorities (sd-daemon(3)) of the logging levels, for the journal's line prefix
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level: 7 debug ... 3 error, 2 critical."""
    if levelno >= logging.CRITICAL:
        return 2
    return next(p for level, p in sorted(_PRIORITY.items(), reverse=True) if levelno >= level)


def is_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is the systemd journal: ``$JOURNAL_STREAM`` is its "device:inode"."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no file behind it (a StringIO), or closed
        return False
    return bool(expected) and expected == f"{info.st_dev}:{info.st_ino}"


class _SyncdHandler(logging.StreamHandler[TextIO]):
    """Marks the handler ``setup_logging`` installed, so a second call replaces it; on the
    journal, starts each line with its syslog priority."""

    def __init__(self, stream: TextIO, journal: bool = False) -> None:
        super().__init__(stream)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self.journal:
            return text
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


def setup_logging(
    level: int | str,
    *,
    json_output: bool | None = None,
    stream: TextIO | None = None,
    library_level: int | str = logging.WARNING,
) -> logging.Handler:
    """Send every log event to ``stream`` (default: stderr), one a line, scrubbed of secrets.

    ``json_output`` defaults to "the stream is not a terminal". ``library_level`` is the level of
    the ``LIBRARY_LOGGERS``, whatever ``level`` is: their DEBUG and INFO lines (a line per file
    event, per request, per job run) are shown only when asked for.
    """
    stream = sys.stderr if stream is None else stream
    if json_output is None:
        json_output = not _isatty(stream)
    handler = _SyncdHandler(stream, journal=is_journal(stream))
    handler.setFormatter(JsonFormatter() if json_output else TextFormatter())
    handler.addFilter(SecretFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        # Ours from an earlier call, and plain console handlers (logging.basicConfig's): left in
        # place they would print every event twice, the second time unscrubbed. Subclasses such
        # as file handlers or pytest's capture are someone else's and stay.
        if isinstance(old, _SyncdHandler) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
    return handler


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or already closed
        return False
