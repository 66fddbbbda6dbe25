"""Validation of Segment Spec messages (identify, track, page, screen, group, alias).

Each message either becomes a ``Message`` or a ``Rejection`` naming the field and the
reason; values are never echoed back.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

TYPES = ("identify", "track", "page", "screen", "group", "alias")
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_EVENTS = 2500
MAX_ID_LEN = 256
MAX_MESSAGE_ID_LEN = 128
MAX_JSON_DEPTH = 32
"""Deepest nesting of objects and arrays in a request body (a batch's events sit at depth 3)."""
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
"""Events dated before this are refused (a device clock or a typo, never a real event)."""
MAX_AHEAD = timedelta(days=1)
"""How far past the receipt time an event may be dated after skew correction."""
SPEC_FIELDS = frozenset(
    {
        *("type", "userId", "anonymousId", "messageId", "event", "name", "properties", "traits", "context"),
        *("timestamp", "originalTimestamp", "sentAt", "receivedAt", "groupId", "previousId", "integrations"),
        *("category", "channel", "version"),
    }
)
"""Top-level fields a rejection may name (a client's own keys are never echoed)."""

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep objects and arrays nest in a JSON text (strings ignored); stops counting past ``limit``.

    Works on the raw bytes, before decoding, so a hostile body costs no recursion.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return min(limit, body.count(b"[") + body.count(b"{"))
    brackets = _STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for b in brackets:
        if b in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        else:
            depth -= 1
    return deepest


def has_nul(value: Any) -> bool:
    """True if a string or key anywhere inside ``value`` holds a NUL character (iterative)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            for k, v in item.items():
                if isinstance(k, str) and "\x00" in k:
                    return True
                stack.append(v)
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


@dataclass
class Rejection:
    index: int
    field: str
    reason: str


@dataclass
class Message:
    """A valid message, with the server's receipt time and the skew-corrected event time."""

    index: int
    type: str
    message_id: str
    user_id: str | None
    anonymous_id: str | None
    occurred_at: datetime
    name: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    group_id: str | None = None
    previous_id: str | None = None


class Invalid(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


def parse_time(value: Any, name: str) -> datetime | None:
    """An ISO 8601 time in UTC; a time that cannot be expressed in UTC is refused by name."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(name, "must be an ISO 8601 string")
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise Invalid(name, "is not an ISO 8601 time between years 1 and 9999") from exc


def event_time(timestamp: datetime | None, sent_at: datetime | None, received_at: datetime) -> datetime:
    """The event's time, corrected for the device clock (receivedAt - (sentAt - timestamp)),
    within the accepted window: from 2000-01-01 to one day past receipt."""
    occurred = timestamp or received_at
    if timestamp and sent_at:
        try:
            occurred = received_at - (sent_at - timestamp)
        except OverflowError as exc:
            raise Invalid("timestamp", "with sentAt, gives a time outside the accepted window") from exc
    if occurred < EARLIEST or occurred > received_at + MAX_AHEAD:
        raise Invalid("timestamp", "must be between 2000-01-01 and one day in the future (after clock correction)")
    return occurred


def _ident(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Invalid(name, "must be a string")
    text = str(value).strip()
    if len(text) > MAX_ID_LEN:
        raise Invalid(name, f"is longer than {MAX_ID_LEN} characters")
    return text or None


def _object(msg: dict[str, Any], name: str) -> dict[str, Any]:
    value = msg.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(name, "must be an object")
    return value


def _text(msg: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = msg.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise Invalid(name, "is required")
        return None
    if not isinstance(value, str):
        raise Invalid(name, "must be a string")
    if len(value) > 200:
        raise Invalid(name, "is longer than 200 characters")
    return value.strip()


def _check_size(raw: dict[str, Any]) -> None:
    """The message's size and nesting as JSON, and no NUL character in it."""
    try:
        encoded = msgspec.json.encode(raw)
    except (UnicodeEncodeError, TypeError, ValueError, OverflowError) as exc:  # lone surrogates, odd numbers
        raise Invalid("", "the message holds text or numbers JSON cannot carry") from exc
    size = len(encoded)
    if size > MAX_EVENT_BYTES:
        raise Invalid("", f"message is {size} bytes; the limit is {MAX_EVENT_BYTES}")
    if json_depth(encoded) > MAX_JSON_DEPTH:
        raise Invalid("", f"is nested deeper than {MAX_JSON_DEPTH} levels")
    if b"\\u0000" in encoded:  # NUL cannot be stored (PostgreSQL refuses it): name the field it is in
        for name, value in raw.items():
            if has_nul(name) or has_nul(value):
                raise Invalid(name if name in SPEC_FIELDS else "", "contains a NUL character")


def validate(
    raw: Any,
    index: int,
    received_at: datetime,
    defaults: dict[str, Any] | None = None,
    expected_type: str | None = None,
    require_ids: bool = True,
    sized: bool = False,
) -> Message | Rejection:
    """Check one message against the Spec; ``defaults`` are the batch's context/sentAt.

    Imports pass ``require_ids=False``: their rows are identified by email, phone or
    external ids instead of a userId/anonymousId. ``sized``: the message and its defaults
    passed the size, nesting and NUL checks when they were accepted (the inbox holds them
    sealed), which depend on nothing else: not checked again.
    """
    try:
        if not isinstance(raw, dict):
            raise Invalid("", "each message must be an object")
        if not sized:
            _check_size(raw)
        defaults = defaults or {}
        mtype = raw.get("type") or expected_type
        if mtype not in TYPES:
            raise Invalid("type", f"must be one of {', '.join(TYPES)}")
        if expected_type and mtype != expected_type:
            raise Invalid("type", f"must be '{expected_type}' on this endpoint")
        user_id, anon = _ident(raw.get("userId"), "userId"), _ident(raw.get("anonymousId"), "anonymousId")
        if user_id is None and anon is None and require_ids:
            raise Invalid("userId", "userId or anonymousId is required")
        message_id = _ident(raw.get("messageId"), "messageId") or f"auto-{uuid.uuid4()}"
        if len(message_id) > MAX_MESSAGE_ID_LEN:
            raise Invalid("messageId", f"is longer than {MAX_MESSAGE_ID_LEN} characters")
        if not sized and "context" in defaults and has_nul(defaults["context"]):
            raise Invalid("context", "contains a NUL character")
        context = {**_object(defaults, "context"), **_object(raw, "context")}
        timestamp = parse_time(raw.get("timestamp") or raw.get("originalTimestamp"), "timestamp")
        sent_at = parse_time(raw.get("sentAt") or defaults.get("sentAt"), "sentAt")
        occurred = event_time(timestamp, sent_at, received_at)
        msg = Message(index, mtype, message_id, user_id, anon, occurred, context=context)
        if mtype == "track":
            msg.name = _text(raw, "event", required=True)
            msg.properties = _object(raw, "properties")
        elif mtype in ("page", "screen"):
            msg.name = _text(raw, "name")
            msg.properties = _object(raw, "properties")
        elif mtype == "identify":
            msg.traits = _object(raw, "traits") or _object(context, "traits")
        elif mtype == "group":
            msg.group_id = _ident(raw.get("groupId"), "groupId")
            if msg.group_id is None:
                raise Invalid("groupId", "is required")
            msg.traits = _object(raw, "traits")
        elif mtype == "alias":
            msg.previous_id = _ident(raw.get("previousId"), "previousId")
            if msg.previous_id is None:
                raise Invalid("previousId", "is required")
            if user_id is None:
                raise Invalid("userId", "is required for alias")
        return msg
    except Invalid as exc:
        return Rejection(index, exc.field, exc.reason)
