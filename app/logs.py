"""JSON logs through structlog, with a request id on every line and a PII scrubber.

Every record, at every level and including those of uvicorn, SQLAlchemy and APScheduler,
passes through ``scrub_pii`` before it is rendered: values of personal-data keys are
replaced, and what the PII engine's pattern detectors find inside any string (emails,
phone numbers, national ids, cards, IBANs, IP addresses…, ``app.pii.quick``) is masked.
SQL statement loggers never log below WARNING (their records would carry bound values);
engines are also made with ``hide_parameters``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from app.settings import Settings

EMAIL_RE = re.compile(r"[^\s@<>\"'(),;:]+@[^\s@<>\"'(),;:]+\.[A-Za-z]{2,}")
PHONE_RE = re.compile(r"(?<![\w-])(?:\+|\()?\d[\d\s().-]{5,}\d(?![\w-])")
PII_KEYS = frozenset(
    {
        "email",
        "phone",
        "name",
        "firstname",
        "lastname",
        "first_name",
        "last_name",
        "username",
        "birthday",
        "date_of_birth",
        "dob",
        "address",
        "nationalid",
        "national_id",
        "passport",
        "socialid",
        "ip",
        "mobile",
        "phone_number",
        "password",
        "token",
        "authorization",
        "api_key",
        "secret",
        "traits",
        "text",
    }
)
REDACTED = "[REDACTED]"


SQL_LOGGERS = ("sqlalchemy", "aiosqlite", "asyncpg", "psycopg", "psycopg2")
TOKENS = {
    "EMAIL_ADDRESS": "[EMAIL]",
    "PHONE_NUMBER": "[PHONE]",
    "CN_MOBILE": "[PHONE]",
    "IP_ADDRESS": "[IP]",
    "PERSON": "[NAME]",
    "STREET_ADDRESS": "[ADDRESS]",
}


def _mask_phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    if digits >= 9 or (text.startswith(("+", "(")) and digits >= 7):
        return "[PHONE]"
    return text


def scrub_text(text: str) -> str:
    """Mask what the PII detectors find inside free text (and any remaining email address)."""
    try:
        from app.pii.quick import ready_scanner
    except ImportError:  # a record logged while the detectors themselves are being imported
        scanner = None
    else:
        scanner = ready_scanner()
    if scanner is None:
        return PHONE_RE.sub(_mask_phone, EMAIL_RE.sub("[EMAIL]", text))
    hits = scanner.spans(text)
    if hits:
        parts, pos = [], 0
        for h in hits:
            parts += [text[pos : h.start], TOKENS.get(h.entity, "[PII]")]
            pos = h.end
        parts.append(text[pos:])
        text = "".join(parts)
    return EMAIL_RE.sub("[EMAIL]", text) if "@" in text else text


class _NoStatementLogs(logging.Filter):
    """Drop records of SQL driver and engine loggers below WARNING (statements and their parameters)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(SQL_LOGGERS)


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 6:
        return REDACTED
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if str(k).lower() in PII_KEYS else _scrub(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_scrub(v, depth + 1) for v in value]
    return value


def scrub_pii(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: no personal data leaves in a log line."""
    for key in list(event):
        if key.lower() in PII_KEYS:
            event[key] = REDACTED
        else:
            event[key] = _scrub(event[key])
    return event


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to JSON lines on ``stream`` (stdout) and the log file."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.format_exc_info,
        scrub_pii,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.JSONRenderer()],
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stdout)]
    if settings.log_file:
        handlers.append(logging.FileHandler(settings.log_file, encoding="utf-8"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        h.setFormatter(formatter)
        h.addFilter(_NoStatementLogs())
        root.addHandler(h)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar", "apscheduler"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our access line carries the request id
    for name in SQL_LOGGERS:  # statement logs carry bound values: never below WARNING, DEBUG included
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
