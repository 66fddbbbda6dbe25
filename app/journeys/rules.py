"""A journey's definition: checked once (422 naming the field, never echoing the value) and
read back as a ``Rules`` value by the triggers.

Fields of ``definition`` (all optional):

- ``hours`` — abandoned cart: ``Product Added`` with no ``Order Completed`` within this many
  hours (default 24); ``days`` — re-engagement: no activity for this many days (default 30);
- ``delay_minutes`` — welcome: minutes after the signup (default 0);
- ``send_at`` — birthday: local time of day ``HH:MM`` (default ``09:00``);
- ``timezone`` — IANA zone used when the person has no ``timezone`` trait (default ``UTC``);
- ``quiet_hours`` — ``{"start": "21:00", "end": "08:00"}`` in the person's zone: a message due
  inside waits until they end;
- ``caps`` — ``{"person": {"count": 3, "hours": 24}, "journey": {"count": 1, "hours": 168}}``:
  at most ``count`` messages to one person within ``hours`` from any journey (``person``)
  or from this one (``journey``);
- ``condition`` — a segment tree (traits and events) the person must match when the
  message is due, evaluated in memory (``app/segments/evaluate.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.errors import InvalidField

KINDS = ("welcome", "abandoned_cart", "birthday", "reengagement")
CART_ADDED, CART_BOUGHT, SIGNED_UP = "Product Added", "Order Completed", "Signed Up"
FIELDS = frozenset({"hours", "days", "delay_minutes", "send_at", "timezone", "quiet_hours", "caps", "condition"})
CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
MAX_HOURS = 24 * 366
MAX_DAYS = 3660


@dataclass(frozen=True)
class Cap:
    count: int
    hours: int


@dataclass(frozen=True)
class Rules:
    """What the triggers read from a journey's definition."""

    hours: int = 24
    days: int = 30
    delay_minutes: int = 0
    send_at: time = time(9, 0)
    zone: str = "UTC"
    quiet: tuple[time, time] | None = None
    person_cap: Cap | None = None
    journey_cap: Cap | None = None
    condition: dict[str, Any] | None = None


def _whole(v: Any, low: int, high: int, path: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise InvalidField(f"expects a whole number from {low} to {high}", field=path)
    return v


def _clock(v: Any, path: str) -> time:
    m = CLOCK.match(v) if isinstance(v, str) else None
    if m is None:
        raise InvalidField("expects a time of day HH:MM", field=path)
    return time(int(m.group(1)), int(m.group(2)))


def zone_or_none(name: Any) -> ZoneInfo | None:
    """The IANA zone of that name, or None when it is none."""
    if not isinstance(name, str) or not 0 < len(name) <= 64 or not re.fullmatch(r"[A-Za-z0-9_+\-/]+", name):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _cap(v: Any, path: str) -> Cap:
    if not isinstance(v, dict) or set(v) != {"count", "hours"}:
        raise InvalidField("expects {count: N, hours: H}", field=path)
    return Cap(_whole(v["count"], 1, 10_000, f"{path}.count"), _whole(v["hours"], 1, MAX_HOURS, f"{path}.hours"))


def read_rules(definition: dict[str, Any]) -> Rules:
    """The definition checked field by field (``definition.<field>`` names what is wrong)."""
    for k in definition:
        if k not in FIELDS:
            named = k if isinstance(k, str) and re.fullmatch(r"[a-z_]{1,20}", k) else ""
            raise InvalidField(f"unknown field; expects {', '.join(sorted(FIELDS))}", field=f"definition.{named}")
    d, p = definition, "definition"
    zone = d.get("timezone", "UTC")
    if zone_or_none(zone) is None:
        raise InvalidField("expects an IANA time zone name", field=f"{p}.timezone")
    quiet = None
    if d.get("quiet_hours") is not None:
        q = d["quiet_hours"]
        if not isinstance(q, dict) or set(q) != {"start", "end"}:
            raise InvalidField("expects {start: HH:MM, end: HH:MM}", field=f"{p}.quiet_hours")
        quiet = (_clock(q["start"], f"{p}.quiet_hours.start"), _clock(q["end"], f"{p}.quiet_hours.end"))
        if quiet[0] == quiet[1]:
            raise InvalidField("start and end must differ", field=f"{p}.quiet_hours")
    caps = d.get("caps") or {}
    if not isinstance(caps, dict) or not set(caps) <= {"person", "journey"}:
        raise InvalidField("expects {person: …, journey: …}", field=f"{p}.caps")
    condition = d.get("condition")
    if condition is not None and not isinstance(condition, dict):
        raise InvalidField("expects a condition tree", field=f"{p}.condition")
    return Rules(
        hours=_whole(d.get("hours", 24), 1, MAX_HOURS, f"{p}.hours"),
        days=_whole(d.get("days", 30), 1, MAX_DAYS, f"{p}.days"),
        delay_minutes=_whole(d.get("delay_minutes", 0), 0, 60 * 24 * 30, f"{p}.delay_minutes"),
        send_at=_clock(d.get("send_at", "09:00"), f"{p}.send_at"),
        zone=zone,
        quiet=quiet,
        person_cap=_cap(caps["person"], f"{p}.caps.person") if "person" in caps else None,
        journey_cap=_cap(caps["journey"], f"{p}.caps.journey") if "journey" in caps else None,
        condition=condition,
    )
