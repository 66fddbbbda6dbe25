"""JSON logs through structlog, with a request id on every line and a PII scrubber.

Every record, including those of uvicorn, SQLAlchemy and APScheduler, passes through
``scrub_pii`` before it is rendered: values of personal-data keys are replaced and
email addresses and phone-like numbers inside any string are masked.
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


def _mask_phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    if digits >= 9 or (text.startswith(("+", "(")) and digits >= 7):
        return "[PHONE]"
    return text


def scrub_text(text: str) -> str:
    """Mask email addresses and phone numbers inside free text."""
    return PHONE_RE.sub(_mask_phone, EMAIL_RE.sub("[EMAIL]", text))


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
        root.addHandler(h)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar", "apscheduler"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our access line carries the request id
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
