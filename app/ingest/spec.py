"""Validation of Segment Spec messages (identify, track, page, screen, group, alias).

Each message either becomes a ``Message`` or a ``Rejection`` naming the field and the
reason; values are never echoed back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

TYPES = ("identify", "track", "page", "screen", "group", "alias")
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_EVENTS = 2500
MAX_ID_LEN = 256


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
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(name, "must be an ISO 8601 string")
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise Invalid(name, "is not an ISO 8601 time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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


def validate(
    raw: Any,
    index: int,
    received_at: datetime,
    defaults: dict[str, Any] | None = None,
    expected_type: str | None = None,
    require_ids: bool = True,
) -> Message | Rejection:
    """Check one message against the Spec; ``defaults`` are the batch's context/sentAt.

    Imports pass ``require_ids=False``: their rows are identified by email, phone or
    external ids instead of a userId/anonymousId.
    """
    try:
        if not isinstance(raw, dict):
            raise Invalid("", "each message must be an object")
        size = len(msgspec.json.encode(raw))
        if size > MAX_EVENT_BYTES:
            raise Invalid("", f"message is {size} bytes; the limit is {MAX_EVENT_BYTES}")
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
        context = {**_object(defaults, "context"), **_object(raw, "context")}
        timestamp = parse_time(raw.get("timestamp") or raw.get("originalTimestamp"), "timestamp")
        sent_at = parse_time(raw.get("sentAt") or defaults.get("sentAt"), "sentAt")
        occurred = timestamp or received_at
        if timestamp and sent_at:  # correct the device clock: receivedAt - (sentAt - timestamp)
            occurred = received_at - (sent_at - timestamp)
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
