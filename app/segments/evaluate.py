"""The in-memory evaluator: the same tree over one person's facts, for real-time use
(triggers). It follows the SQL compiler's semantics exactly; a property test checks both
agree on random trees and populations."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from app.segments.grammar import (
    Age,
    All,
    AnyOf,
    BirthdayToday,
    Cmp,
    Computed,
    Consent,
    Event,
    Funnel,
    HasTag,
    InAccount,
    InSegment,
    Node,
    Not,
    ProfilingAllowed,
    Step,
    Trait,
    Window,
)


@dataclass(frozen=True)
class Fact:
    """One event: name, time, non-personal properties."""

    name: str
    at: datetime
    properties: Mapping[str, Any] = field(default_factory=dict)
    products: Sequence[Mapping[str, Any]] = ()
    """Attributes of each product the event was about (``app.entities``)."""


@dataclass(frozen=True)
class ConsentFact:
    purpose: str
    state: str
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Facts:
    """What the evaluator knows of one person."""

    traits: Mapping[str, Any] = field(default_factory=dict)
    events: Sequence[Fact] = ()
    consents: Sequence[ConsentFact] = ()
    segments: Collection[str] = frozenset()
    birthday: date | None = None
    tags: Collection[str] = frozenset()
    accounts: Sequence[Mapping[str, Any]] = ()
    """Non-personal traits of each account the person belongs to."""
    computed: Mapping[str, Any] = field(default_factory=dict)
    """Computed trait values (``app.traits``) by name."""
    profiling_refused: bool = False


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _typed(v: Any, like: Any) -> Any:
    if isinstance(like, bool):
        return v if isinstance(v, bool) else None
    return _text(v) if isinstance(like, str) else _number(v)


def cmp_holds(values: Mapping[str, Any], key: str, c: Cmp) -> bool:
    """One comparison on ``values[key]``, with the SQL compiler's typing."""
    raw, v = values.get(key), c.value
    if c.op == "exists":
        return (raw is not None) == v
    if c.op == "includes":
        return isinstance(raw, list) and any(_typed(x, v) is not None and _typed(x, v) == v for x in raw)
    if c.op in ("eq", "ne", "in", "not_in"):
        x = _typed(raw, v if c.op in ("eq", "ne") else v[0])
        if x is None:
            return False
        if c.op in ("eq", "ne"):
            return (x == v) == (c.op == "eq")
        return (x in v) == (c.op == "in")
    if c.op in ("gt", "gte", "lt", "lte", "between"):
        n = _number(raw)
        if n is None:
            return False
        if c.op == "between":
            return bool(v[0] <= n <= v[1])
        return {"gt": n > v, "gte": n >= v, "lt": n < v, "lte": n <= v}[c.op]
    t = _text(raw)
    if t is None:
        return False
    return {
        "contains": lambda: v in t,
        "starts_with": lambda: t.startswith(v),
        "ends_with": lambda: t.endswith(v),
        "before": lambda: t < v,
        "after": lambda: t >= v,
        "date_between": lambda: v[0] <= t < v[1],
    }[c.op]()


def _all_of(values: Mapping[str, Any], fields: tuple[tuple[str, tuple[Cmp, ...]], ...]) -> bool:
    return all(cmp_holds(values, name, c) for name, cs in fields for c in cs)


def _step_holds(f: Fact, step: Step) -> bool:
    return (
        f.name == step.name
        and _all_of(f.properties, step.where)
        and (not step.product or any(_all_of(p, step.product) for p in f.products))
    )


def _in_window(f: Fact, w: Window, now: datetime) -> bool:
    if w.seconds_back is not None:
        return f.at >= now - timedelta(seconds=w.seconds_back)
    if w.start is not None and w.end is not None:
        return w.start <= f.at < w.end
    return True


def _epoch(at: datetime) -> int:
    return int(at.timestamp() // 1)


def _funnel(node: Funnel, events: Sequence[Fact]) -> bool:
    ordered = sorted(events, key=lambda f: f.at)
    for first in (f for f in ordered if _step_holds(f, node.steps[0])):
        at, ok = first.at, True
        for step in node.steps[1:]:
            nxt = next((f for f in ordered if f.at > at and _step_holds(f, step)), None)
            if nxt is None:
                ok = False
                break
            at = nxt.at
        if ok and _epoch(at) - _epoch(first.at) <= node.within_s:
            return True
    return False


def _consent(node: Consent, facts: Facts, now: datetime) -> bool:
    states = ["granted", "denied", "withdrawn"] if node.state == "none" else [node.state]
    found = any(
        c.purpose == node.purpose
        and c.state in states
        and ("granted" not in states or c.expires_at is None or c.expires_at > now)
        for c in facts.consents
    )
    return not found if node.state == "none" else found


def _born(node: Age | BirthdayToday, born: date | None, today: date) -> bool:
    if born is None:
        return False
    if isinstance(node, BirthdayToday):
        return (born.month, born.day) == (today.month, today.day)
    age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    return node.low <= age <= node.high


def matches(node: Node, facts: Facts, now: datetime) -> bool:
    """Whether the person these facts describe is in the tree's segment at ``now``."""
    if isinstance(node, All):
        return all(matches(n, facts, now) for n in node.items)
    if isinstance(node, AnyOf):
        return any(matches(n, facts, now) for n in node.items)
    if isinstance(node, Not):
        return not matches(node.item, facts, now)
    if isinstance(node, Trait):
        return all(cmp_holds(facts.traits, node.name, c) for c in node.cmps)
    if isinstance(node, Consent):
        return _consent(node, facts, now)
    if isinstance(node, InSegment):
        return node.segment_id in facts.segments
    if isinstance(node, Age | BirthdayToday):
        return _born(node, facts.birthday, now.date())
    if isinstance(node, HasTag):
        return node.tag in facts.tags
    if isinstance(node, InAccount):
        return any(_all_of(a, node.where) for a in facts.accounts)
    if isinstance(node, Computed):
        return all(cmp_holds(facts.computed, node.name, c) for c in node.cmps)
    if isinstance(node, ProfilingAllowed):
        return not facts.profiling_refused
    if isinstance(node, Event):
        n = sum(1 for f in facts.events if _step_holds(f, node.step) and _in_window(f, node.window, now))
        return n >= node.count_min and (node.count_max is None or n <= node.count_max)
    return _funnel(node, facts.events)
