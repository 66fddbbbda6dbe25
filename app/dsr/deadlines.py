"""Deadlines of a request, computed at receipt from ``policies/dsr.yaml``.

Days are counted in the regulation's timezone from the day after receipt; a deadline is the
end of its last day there. Working days follow the ``holidays`` calendar of the regulation's
country (China's adjusted working weekends included), corrected by the policy's own lists.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Any

import holidays

from app.dsr.policy import Period, RegulationRules


@dataclass(frozen=True)
class Deadlines:
    due_at: datetime
    ack_due_at: datetime | None
    extension_latest_at: datetime | None


@lru_cache(maxsize=16)
def _holidays(country: str, subdivision: str | None) -> Any:
    return holidays.country_holidays(country, subdiv=subdivision)


def is_working_day(rules: RegulationRules, day: date) -> bool:
    """A working day of the regulation's calendar (weekends, public holidays and adjusted
    working weekends from ``holidays``; the policy's extra lists win)."""
    if day in rules.extra_workdays:
        return True
    if day in rules.extra_holidays:
        return False
    return bool(_holidays(rules.country, rules.subdivision).is_working_day(day))


def nth_working_day(rules: RegulationRules, start: date, n: int) -> date:
    """The ``n``-th working day after ``start`` (``start`` itself not counted)."""
    day = start
    while n > 0:
        day += timedelta(days=1)
        if is_working_day(rules, day):
            n -= 1
    return day


def add_months(start: date, months: int) -> date:
    """The same day number ``months`` later, or that month's last day when it has none
    (31 January + 1 month = 28/29 February)."""
    total = start.month - 1 + months
    year, month = start.year + total // 12, total % 12 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def _next_working_or_same(rules: RegulationRules, day: date) -> date:
    while not is_working_day(rules, day):
        day += timedelta(days=1)
    return day


def add_period(rules: RegulationRules, start: date, period: Period) -> date:
    """The last day of ``period`` counted from ``start``. A period of months that ends on a
    weekend or public holiday runs to the next working day (Regulation 1182/71 Art. 3(4))."""
    if period.unit == "months":
        return _next_working_or_same(rules, add_months(start, period.count))
    if period.unit == "days":
        return start + timedelta(days=period.count)
    return nth_working_day(rules, start, period.count)


def end_of_day(rules: RegulationRules, day: date) -> datetime:
    """The last second of ``day`` in the regulation's timezone."""
    return datetime.combine(day, time(23, 59, 59), rules.timezone)


def local_day(rules: RegulationRules, moment: datetime) -> date:
    return moment.astimezone(rules.timezone).date()


@dataclass(frozen=True)
class Paused:
    """How long the clock stood still while waiting for the requester, in the regulation's
    own days: calendar days, and the working days of its calendar among them."""

    days: int = 0
    working_days: int = 0

    def __add__(self, other: Paused) -> Paused:
        return Paused(self.days + other.days, self.working_days + other.working_days)


def paused_between(rules: RegulationRules, since: datetime, until: datetime) -> Paused:
    """The days a wait from ``since`` to ``until`` stops: those after the day it began, up to
    and including the day the requester answered (counting resumes the next day, as after a
    receipt), in the regulation's timezone. A wait within one day stops nothing."""
    first, last = local_day(rules, since), local_day(rules, until)
    days = max((last - first).days, 0)
    working = sum(is_working_day(rules, first + timedelta(days=k)) for k in range(1, days + 1))
    return Paused(days, working)


def deadlines_at_receipt(
    rules: RegulationRules, kind: str, received_at: datetime, paused: Paused = Paused(), extended: bool = False
) -> Deadlines:
    """The response deadline, the acknowledgement deadline and the last moment to extend;
    with ``paused``, as moved by waits: periods of working days skip the working days
    stopped, calendar periods (days, months) run as if received the stopped days later;
    ``extended``: the one extension taken."""
    day = local_day(rules, received_at)
    if kind == "opt_out" and rules.opt_out_business_days:
        due = end_of_day(rules, nth_working_day(rules, day, rules.opt_out_business_days + paused.working_days))
    elif rules.deadline.unit == "working_days":
        due = end_of_day(rules, nth_working_day(rules, day, rules.deadline.count + paused.working_days))
    else:
        due = end_of_day(rules, add_period(rules, day + timedelta(days=paused.days), rules.deadline))
    ack = rules.acknowledge_business_days
    return Deadlines(
        due_at=extended_due(rules, due) if extended else due,
        ack_due_at=end_of_day(rules, nth_working_day(rules, day, ack + paused.working_days)) if ack else None,
        extension_latest_at=due if rules.extension is not None and kind != "opt_out" else None,
    )


def extended_due(rules: RegulationRules, due_at: datetime) -> datetime:
    """The deadline after the one extension the regulation allows (``due_at`` + the extension)."""
    if rules.extension is None:
        raise ValueError("this regulation allows no extension")
    return end_of_day(rules, add_period(rules, local_day(rules, due_at), rules.extension))
