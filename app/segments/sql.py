"""Compiling a parsed tree to one SQLAlchemy Core condition over people.

Every value is a bound parameter (field names too: JSON keys and paths are bound). JSON
values are read by type, the same way on SQLite and PostgreSQL: a comparison sees a
trait only when it holds the operator's type (``json_text`` is NULL for a number), strings
compare by code point (``COLLATE "C"`` on PostgreSQL, binary on SQLite), and every leaf is
a definite true or false, so ``not`` never meets a NULL.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Integer,
    String,
    and_,
    false,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from app.consent.records import state_clause
from app.db import table_of
from app.entities.service import account_clause, person_product_clause, product_clause
from app.ingest.event_reads import (
    CODE_POINT,
    epoch,
    events_table,
    json_bool,
    json_has,
    json_number,
    json_present,
    json_text,
)
from app.profiles.service import age_clause, birthday_clause
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
from app.segments.models import SegmentMember
from app.tags.service import tag_clause
from app.traits.service import refused, value_clause


class text_pos(FunctionElement[int]):
    """1-based position of a string in another (0: absent), case-sensitive."""

    type = Integer()
    inherit_cache = True


class json_contains(FunctionElement[bool]):
    """The JSON column holds the string ``value`` under ``key`` (among other things), as a
    pre-filter an index answers: ``jsonb @>`` on PostgreSQL (the GIN index on event
    properties, migration 0023), true on SQLite. ``eq`` on a string implies it, so adding
    it beside the exact comparison changes no result."""

    type = Boolean()
    inherit_cache = True

    def __init__(self, column: Any, key: str, value: str) -> None:
        super().__init__(column, literal(json.dumps({key: value}, ensure_ascii=False), String()))


def _parts(el: Any, compiler: Any, skip: int | None = None, **kw: Any) -> list[str]:
    """The rendered arguments, ``skip`` left out (rendering a bind registers it in the statement)."""
    return [("" if n == skip else compiler.process(c, **kw)) for n, c in enumerate(el.clauses)]


@compiles(json_contains, "sqlite")
def _contains_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    return "1"


@compiles(json_contains, "postgresql")
def _contains_pg(el: Any, compiler: Any, **kw: Any) -> str:
    c, v = _parts(el, compiler, **kw)
    return f"(CAST({c} AS JSONB) @> CAST({v} AS JSONB))"


@compiles(text_pos, "sqlite")
def _pos_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    a, b = _parts(el, compiler, **kw)
    return f"instr({a}, {b})"


@compiles(text_pos, "postgresql")
def _pos_pg(el: Any, compiler: Any, **kw: Any) -> str:
    a, b = _parts(el, compiler, **kw)
    return f"strpos({a}, {b})"


class by_row_order(FunctionElement[bool]):
    """``rows`` (a query of one column, row ids) holds the event row: on SQLite, ``rowid IN
    (rows)``, so the rows an index range finds are read in storage order (the ids sorted
    once, then one pass along the table) instead of one random seek each; true on
    PostgreSQL, whose bitmap scans already read pages in order. ``rows`` is chosen to
    include every row the rest of the condition accepts, so it changes no result. Untyped:
    a Boolean would render as ``(… IN …) = 1`` on SQLite, which no index answers."""

    inherit_cache = True

    def __init__(self, table: Any, rows: Any) -> None:
        super().__init__(literal_column(f"{table.name}.rowid").in_(rows))


@compiles(by_row_order)
def _row_order_any(el: Any, compiler: Any, **kw: Any) -> str:
    return "1 = 1"


@compiles(by_row_order, "sqlite")
def _row_order_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    (condition,) = el.clauses
    return str(compiler.process(condition, **kw))


def _indexed(e: Any, step: Step) -> list[ColumnElement[bool]]:
    """Pre-filters on an event step that the index on properties answers (string equalities)."""
    return [
        json_contains(e.c.properties, prop, c.value)
        for prop, cmps in step.where
        for c in cmps
        if c.op == "eq" and isinstance(c.value, str)
    ]


def _has(x: Any, cond: ColumnElement[bool]) -> ColumnElement[bool]:
    """``cond`` on the typed read ``x``, false when the key does not hold that type: every
    comparison here is NULL on a NULL read, so COALESCE makes it definite while reading the
    JSON once (``x IS NOT NULL AND cond`` read it twice per row)."""
    return func.coalesce(cond, false())


def cmp_sql(column: Any, key: str, c: Cmp) -> ColumnElement[bool]:
    """One comparison on ``column[key]`` (a JSON column), never NULL."""
    v = c.value
    if c.op == "exists":
        present = json_present(column, key)
        return present if v else not_(present)
    if c.op == "includes":
        return json_has(column, key, v)
    if c.op in ("eq", "ne"):
        x: Any = (
            json_bool(column, key)
            if isinstance(v, bool)
            else json_text(column, key, CODE_POINT)
            if isinstance(v, str)
            else json_number(column, key)
        )
        target = int(v) if isinstance(v, bool) else v
        return _has(x, x == target if c.op == "eq" else x != target)
    if c.op in ("in", "not_in"):
        x = json_text(column, key, CODE_POINT) if isinstance(v[0], str) else json_number(column, key)
        return _has(x, x.in_(list(v)) if c.op == "in" else x.not_in(list(v)))
    if c.op in ("gt", "gte", "lt", "lte", "between"):
        return _has(json_number(column, key), _order(json_number(column, key), c))
    t = json_text(column, key, CODE_POINT)
    return _has(t, _text_cmp(t, c))


def _order(x: Any, c: Cmp) -> ColumnElement[bool]:
    if c.op == "between":
        return and_(x >= c.value[0], x <= c.value[1])
    return {"gt": x > c.value, "gte": x >= c.value, "lt": x < c.value, "lte": x <= c.value}[c.op]


def _text_cmp(t: Any, c: Cmp) -> ColumnElement[bool]:
    v = c.value
    if c.op == "contains":
        return text_pos(t, literal(v, String())) > 0
    if c.op == "starts_with":
        return func.substr(t, 1, len(v)) == v
    if c.op == "ends_with":
        return and_(func.length(t) >= len(v), func.substr(t, func.length(t) - len(v) + 1) == v)
    if c.op == "before":
        return t < v
    if c.op == "after":
        return t >= v
    return and_(t >= v[0], t < v[1])  # date_between


def _all_of(column: Any, fields: tuple[tuple[str, tuple[Cmp, ...]], ...]) -> ColumnElement[bool]:
    """Every comparison of ``fields`` on the JSON ``column`` (true when there are none)."""
    return and_(true(), *(cmp_sql(column, name, c) for name, cmps in fields for c in cmps))


def _computed(person: Any, name: str, c: Cmp) -> ColumnElement[bool]:
    """One comparison on a computed trait; a person without a value has none (``exists: false``)."""
    if c.op == "exists" and not c.value:
        return not_(value_clause(person, name, lambda v: cmp_sql(v, "v", Cmp("exists", True))))
    return value_clause(person, name, lambda v: cmp_sql(v, "v", c))


class Compiler:
    """Compiles trees for a population query: ``person`` is the column holding the surviving
    profile id, ``traits`` its plain-traits JSON column, ``now`` the time windows count from.

    ``few``: the query asks about a few named people (incremental membership), so an event
    condition probes each person's events (EXISTS on the person-and-time index). Otherwise
    (counts, previews, materialising) "has such an event" is ``person IN (the matching
    events' people)``: the matching events are found once, by name and time, and only their
    people are looked up, instead of probing every profile (1,000,000 profiles, 10,000,000
    events, SQLite: see scripts/bench/segments.py). Both give the same people."""

    def __init__(self, person: Any, traits: Any, now: datetime, few: bool = False) -> None:
        self.person, self.traits, self.now, self.few = person, traits, now, few
        self.events = events_table()

    def __call__(self, node: Node) -> ColumnElement[bool]:
        if isinstance(node, All):
            return and_(*(self(n) for n in node.items))
        if isinstance(node, AnyOf):
            return or_(*(self(n) for n in node.items))
        if isinstance(node, Not):
            return not_(self(node.item))
        if isinstance(node, Trait):
            return and_(*(cmp_sql(self.traits, node.name, c) for c in node.cmps))
        if isinstance(node, Consent):
            return self._consent(node)
        if isinstance(node, InSegment):
            m = table_of(SegmentMember)
            q = select(m.c.profile_id).where(m.c.segment_id == node.segment_id, m.c.profile_id == self.person)
            return q.correlate_except(m).exists()
        if isinstance(node, Age):
            return age_clause(self.person, node.low, node.high, self.now.date())
        if isinstance(node, BirthdayToday):
            return birthday_clause(self.person, self.now.date())
        if isinstance(node, Event):
            return and_(self._has_product(node), self._event(node))
        if isinstance(node, HasTag):
            return tag_clause(self.person, node.tag)
        if isinstance(node, InAccount):
            return account_clause(self.person, lambda traits: _all_of(traits, node.where))
        if isinstance(node, Computed):
            return and_(*(_computed(self.person, node.name, c) for c in node.cmps))
        if isinstance(node, ProfilingAllowed):
            return not_(refused(self.person, self.now))
        return self._funnel(node)

    def _consent(self, node: Consent) -> ColumnElement[bool]:
        if node.state == "none":
            return not_(state_clause(self.person, node.purpose, ["granted", "denied", "withdrawn"], self.now))
        return state_clause(self.person, node.purpose, [node.state], self.now)

    def _step(self, e: Any, step: Step) -> list[ColumnElement[bool]]:
        out = [e.c.name == step.name]
        for prop, cmps in step.where:
            out += [cmp_sql(e.c.properties, prop, c) for c in cmps]
        if step.product:
            out.append(product_clause(e.c.id, lambda attributes: _all_of(attributes, step.product)))
        return out

    def _window(self, e: Any, w: Window) -> list[ColumnElement[bool]]:
        if w.seconds_back is not None:
            return [e.c.occurred_at >= self.now - timedelta(seconds=w.seconds_back)]
        if w.start is not None and w.end is not None:
            return [e.c.occurred_at >= w.start, e.c.occurred_at < w.end]
        return []

    def _has_product(self, node: Event) -> ColumnElement[bool]:
        """A guard implied by an event condition on products: some event of the person was about
        a matching product (the profile-and-product index), so nobody else's events are read."""
        if node.count_min < 1 or not node.step.product:
            return true()
        return person_product_clause(self.person, lambda attributes: _all_of(attributes, node.step.product))

    def _event(self, node: Event) -> ColumnElement[bool]:
        e = self.events
        where = [e.c.profile_id == self.person, *self._step(e, node.step), *self._window(e, node.window)]
        where += _indexed(e, node.step)
        if node.count_min <= 0 and node.count_max is None:
            return true()
        if node.count_min == 1 and node.count_max is None and not self.few:
            return self.person.in_(select(e.c.profile_id).where(*where[1:], self._in_order(node)))
        if node.count_min == 1 and node.count_max is None:
            return select(e.c.id).where(*where).correlate_except(e).exists()
        n = select(func.count()).select_from(e).where(*where).correlate_except(e).scalar_subquery()
        bounds = [n >= node.count_min] if node.count_min > 0 else []
        if node.count_max is not None:
            bounds.append(n <= node.count_max)
        return and_(*bounds) if bounds else false()

    def _in_order(self, node: Event) -> ColumnElement[bool]:
        """The events of the step's name in its window (``ix_event_name_time``), read in storage
        order on SQLite (``by_row_order``): a superset of the rows the full condition accepts."""
        e = self.events.alias("by_time")
        rows: Any = select(literal_column("by_time.rowid"))
        rows = rows.where(e.c.name == node.step.name, *self._window(e, node.window))
        return by_row_order(self.events, rows)

    def _funnel(self, node: Funnel) -> ColumnElement[bool]:
        steps = [self.events.alias(f"funnel_{n}") for n in range(len(node.steps))]
        first, last = steps[0], steps[-1]
        where = [first.c.profile_id == self.person]
        for n, (e, step) in enumerate(zip(steps, node.steps, strict=True)):
            where += self._step(e, step)
            if n:
                prev = steps[n - 1]
                where += [e.c.profile_id == prev.c.profile_id, e.c.occurred_at > prev.c.occurred_at]
        where.append(epoch(last.c.occurred_at) - epoch(first.c.occurred_at) <= node.within_s)
        q = select(first.c.id).select_from(*steps).where(*where)
        return q.correlate_except(*steps).exists()
