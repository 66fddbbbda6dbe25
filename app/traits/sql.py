"""Each computed trait as one set-based query: rows of (person, ``{"v": value}``).

The same SQLAlchemy Core on SQLite and PostgreSQL; typed reads of event properties come from
the ingestion domain (``app.ingest.event_reads``: text in the database's collation, compared
for equality and grouped), and the other dialect differences (building JSON, ISO times,
rounding, list expansion) are small compiled constructs here. Strings order by code point on
both (``code_point``: ``COLLATE "C"`` on PostgreSQL). Lists are built
from rows sorted by person and position (SQLite aggregates in input order; PostgreSQL is
told the order).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Float,
    Integer,
    Select,
    String,
    and_,
    case,
    func,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from app.db import table_of
from app.ingest.event_reads import (
    DATABASE,
    code_point,
    element_text,
    epoch,
    events_table,
    json_number,
    json_scalar,
    json_text,
)
from app.traits.catalog import TraitDef
from app.traits.models import TraitPair

DAY_S = 86_400


class wrapped(FunctionElement[Any]):
    """``{"v": x}``."""

    type = JSON()
    inherit_cache = True


class wrapped_list(FunctionElement[Any]):
    """Aggregate: ``{"v": [x, …]}`` in ``position`` order."""

    type = JSON()
    inherit_cache = True


class iso_time(FunctionElement[str]):
    """A time as ``YYYY-MM-DDTHH:MM:SSZ`` (UTC)."""

    type = String()
    inherit_cache = True


class unindexed(FunctionElement[str]):
    """SQLite: a column its planner may not search by index (``+x``; PostgreSQL: ``x``). A
    refresh of named people must find their events by person: without statistics SQLite
    prefers ``name = ?`` and read every event of that name in the store."""

    type = String()
    inherit_cache = True


class half_up(FunctionElement[int]):
    """A non-negative number rounded to a whole number, halves up."""

    type = Integer()
    inherit_cache = True


def _args(el: Any, compiler: Any, **kw: Any) -> list[str]:
    return [compiler.process(c, **kw) for c in el.clauses]


@compiles(wrapped, "sqlite")
def _wrapped_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    (x,) = _args(el, compiler, **kw)
    return f"json_object('v', {x})"


@compiles(wrapped, "postgresql")
def _wrapped_pg(el: Any, compiler: Any, **kw: Any) -> str:
    (x,) = _args(el, compiler, **kw)
    return f"json_build_object('v', {x})"


@compiles(wrapped_list, "sqlite")
def _list_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    x, _position = _args(el, compiler, **kw)
    return f"json_object('v', json(json_group_array({x})))"


@compiles(wrapped_list, "postgresql")
def _list_pg(el: Any, compiler: Any, **kw: Any) -> str:
    x, position = _args(el, compiler, **kw)
    return f"json_build_object('v', json_agg({x} ORDER BY {position}))"


@compiles(iso_time, "sqlite")
def _iso_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    (x,) = _args(el, compiler, **kw)
    return f"strftime('%Y-%m-%dT%H:%M:%SZ', {x})"


@compiles(iso_time, "postgresql")
def _iso_pg(el: Any, compiler: Any, **kw: Any) -> str:
    (x,) = _args(el, compiler, **kw)
    return f"""to_char({x} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""


@compiles(unindexed)
def _unindexed(el: Any, compiler: Any, **kw: Any) -> str:
    (x,) = _args(el, compiler, **kw)
    return str(x)


@compiles(unindexed, "sqlite")
def _unindexed_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    (x,) = _args(el, compiler, **kw)
    return f"+{x}"


@compiles(half_up, "sqlite")
def _half_up_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    (x,) = _args(el, compiler, **kw)
    return f"CAST(({x}) + 0.5 AS INTEGER)"


@compiles(half_up, "postgresql")
def _half_up_pg(el: Any, compiler: Any, **kw: Any) -> str:
    (x,) = _args(el, compiler, **kw)
    return f"CAST(floor(({x}) + 0.5) AS INTEGER)"


def _number(v: float) -> Any:
    return literal(v, Float())


def _first_number(e: Any, props: tuple[str, ...]) -> Any:
    """The first of the properties holding a number."""
    reads = [json_number(e.c.properties, p) for p in props]
    return reads[0] if len(reads) == 1 else func.coalesce(*reads)


class TraitQuery:
    """Builds a trait's query over the events of ``scope`` (None: everyone) at ``now``.

    Every query yields ``pid`` (the event's profile id: merges rekey events to the
    survivor) and ``value``; the caller keeps surviving people and applies the profiling
    refusal."""

    def __init__(
        self,
        now: datetime,
        scope: Collection[str] | None,
        dialect: str,
        ranked: Callable[[Any], ColumnElement[bool]] = lambda _person: true(),
    ) -> None:
        self.now, self.scope, self.dialect = now, scope, dialect
        self.ranked = ranked
        """The people a population-wide score (RFM) ranks, given the person column."""
        self.e = events_table()

    def __call__(self, t: TraitDef) -> Select[Any]:
        return getattr(self, f"_{t.kind}")(t)  # type: ignore[no-any-return]

    def _mine(self, e: Any) -> list[Any]:
        return [e.c.profile_id.in_(list(self.scope))] if self.scope is not None else []

    def _name(self, e: Any, scoped: bool = True) -> Any:
        """The event name column, searched by index unless the events are read by person."""
        return unindexed(e.c.name) if scoped and self.scope is not None else e.c.name

    def _matching(self, t: TraitDef, e: Any | None = None, scoped: bool = True) -> list[Any]:
        """The trait's events: name, ``where`` and window (and the scope)."""
        e = self.e if e is None else e
        out = [self._name(e, scoped) == t.event] if t.event else []
        for prop, values in t.where:
            texts = [v for v in values if isinstance(v, str)]
            numbers = [float(v) for v in values if not isinstance(v, str)]
            either = []
            if texts:
                either.append(json_text(e.c.properties, prop, DATABASE).in_(texts))
            if numbers:
                either.append(json_number(e.c.properties, prop).in_(numbers))
            out.append(or_(*either))
        if t.within_days:
            out.append(e.c.occurred_at >= self.now - timedelta(days=t.within_days))
        return out + (self._mine(e) if scoped else [])

    def _counter(self, t: TraitDef) -> Select[Any]:
        e = self.e
        return (
            select(e.c.profile_id.label("pid"), wrapped(func.count()).label("value"))
            .where(*self._matching(t))
            .group_by(e.c.profile_id)
        )

    def _sum(self, t: TraitDef) -> Select[Any]:
        e = self.e
        x = _first_number(e, t.properties)
        q = select(e.c.profile_id.label("pid"), wrapped(func.sum(x)).label("value"))
        return q.where(*self._matching(t), x.isnot(None)).group_by(e.c.profile_id)

    def _most_frequent(self, t: TraitDef) -> Select[Any]:
        e = self.e
        v = json_text(e.c.properties, t.properties[0], DATABASE)
        counted = (
            select(e.c.profile_id.label("pid"), v.label("v"), func.count().label("n"))
            .where(*self._matching(t), v.isnot(None))
            .group_by(e.c.profile_id, v)
            .subquery("counted")
        )
        order = (counted.c.n.desc(), code_point(counted.c.v))
        ranked = select(
            counted.c.pid, counted.c.v, func.row_number().over(partition_by=counted.c.pid, order_by=order).label("rn")
        ).subquery("ranked")
        return select(ranked.c.pid, wrapped(ranked.c.v).label("value")).where(ranked.c.rn == 1)

    def _first(self, t: TraitDef, latest: bool = False) -> Select[Any]:
        e = self.e
        v = json_scalar(e.c.properties, t.properties[0])
        when = e.c.occurred_at.desc() if latest else e.c.occurred_at.asc()
        ranked = (
            select(
                e.c.profile_id.label("pid"),
                v.label("v"),
                func.row_number().over(partition_by=e.c.profile_id, order_by=(when, e.c.id)).label("rn"),
            )
            .where(*self._matching(t), v.isnot(None))
            .subquery("ranked")
        )
        return select(ranked.c.pid, wrapped(ranked.c.v).label("value")).where(ranked.c.rn == 1)

    def _last(self, t: TraitDef) -> Select[Any]:
        return self._first(t, latest=True)

    def _listed(self, rows: Any, item: Any, order: Any, limit: int) -> Select[Any]:
        """``{"v": [item, …]}`` per person from ``rows`` (pid, item), the first ``limit`` in ``order``."""
        ranked = select(
            rows.c.pid, item.label("item"), func.row_number().over(partition_by=rows.c.pid, order_by=order).label("rn")
        ).subquery("listed")
        kept = (
            select(ranked.c.pid, ranked.c.item, ranked.c.rn)
            .where(ranked.c.rn <= limit)
            .order_by(ranked.c.pid, ranked.c.rn)
            .subquery("kept")
        )
        return select(kept.c.pid, wrapped_list(kept.c.item, kept.c.rn).label("value")).group_by(kept.c.pid)

    def _unique_list(self, t: TraitDef) -> Select[Any]:
        e = self.e
        v = json_text(e.c.properties, t.properties[0], DATABASE)
        distinct = (
            select(e.c.profile_id.label("pid"), v.label("v")).where(*self._matching(t), v.isnot(None)).distinct()
        ).subquery("distinct_values")
        return self._listed(distinct, distinct.c.v, code_point(distinct.c.v), t.limit)

    def _last_seen(self, t: TraitDef) -> Select[Any]:
        e = self.e
        q = select(e.c.profile_id.label("pid"), wrapped(iso_time(func.max(e.c.occurred_at))).label("value"))
        return q.where(*self._mine(e)).group_by(e.c.profile_id)

    def _rfm(self, t: TraitDef) -> Select[Any]:
        """Ranks over everyone ``ranked`` admits who has an order."""
        e = self.e
        x = _first_number(e, t.properties)
        orders = (
            select(
                e.c.profile_id.label("pid"),
                epoch(func.max(e.c.occurred_at)).label("recency"),
                func.count().label("frequency"),
                func.sum(func.coalesce(x, _number(0.0))).label("monetary"),
            )
            .where(*self._matching(t, scoped=False), self.ranked(e.c.profile_id))
            .group_by(e.c.profile_id)
            .subquery("orders")
        )
        metric = orders.c[t.part or "recency"]
        rank = func.rank().over(order_by=metric)
        score = literal(1, Integer()) + (literal(5, Integer()) * (rank - 1)) // func.count().over()
        scored = select(orders.c.pid, score.label("score")).subquery("scored")
        q = select(scored.c.pid, wrapped(scored.c.score).label("value"))
        return q.where(scored.c.pid.in_(list(self.scope))) if self.scope is not None else q

    def _clv(self, t: TraitDef) -> Select[Any]:
        e = self.e
        x = _first_number(e, t.properties)
        signed = case((e.c.name == t.refund_event, -x), else_=x)
        names = [n for n in (t.event, t.refund_event) if n]
        q = select(e.c.profile_id.label("pid"), wrapped(func.sum(signed)).label("value"))
        return q.where(self._name(e).in_(names), x.isnot(None), *self._mine(e)).group_by(e.c.profile_id)

    def _churn(self, t: TraitDef) -> Select[Any]:
        e = self.e
        month, two = self.now - timedelta(days=30), self.now - timedelta(days=60)
        recent = func.sum(case((e.c.occurred_at >= month, 1), else_=0))
        before = func.sum(case((and_(e.c.occurred_at >= two, e.c.occurred_at < month), 1), else_=0))
        agg = (
            select(
                e.c.profile_id.label("pid"),
                epoch(func.max(e.c.occurred_at)).label("last"),
                recent.label("a"),
                before.label("b"),
            )
            .where(*self._mine(e))
            .group_by(e.c.profile_id)
            .subquery("activity")
        )
        now_s = literal(int(self.now.timestamp()), Integer())
        days = (now_s - agg.c["last"]) // DAY_S
        capped = case((days > 90, 90), (days < 0, 0), else_=days)
        trend = case((agg.c.a + agg.c.b == 0, _number(20.0)), else_=_number(40.0) * agg.c.b / (agg.c.a + agg.c.b))
        score = half_up(_number(2.0) * capped / _number(3.0) + trend)
        return select(agg.c.pid, wrapped(score).label("value"))

    def _weighted(self, t: TraitDef) -> Select[Any]:
        e = self.e
        terms = []
        for c in t.components:
            hit = [e.c.name == c.event]
            if c.within_days:
                hit.append(e.c.occurred_at >= self.now - timedelta(days=c.within_days))
            n = func.sum(case((and_(*hit), 1), else_=0))
            terms.append(case((n * c.points > c.cap, c.cap), else_=n * c.points))
        total: Any = terms[0]
        for term in terms[1:]:
            total = total + term
        score = case((total > 100, 100), else_=total)
        names = sorted({c.event for c in t.components})
        q = select(e.c.profile_id.label("pid"), wrapped(score).label("value"))
        return q.where(self._name(e).in_(names), *self._mine(e)).group_by(e.c.profile_id)

    def _items(self, t: TraitDef, scoped: bool) -> Any:
        """(order event id, pid, item id) for every item of every matching order."""
        e = self.e
        listed = t.properties[0]
        if self.dialect == "postgresql":
            arr = e.c.properties[listed]
            source = case((func.json_typeof(arr) == "array", arr))
            elements = func.json_array_elements(source).table_valued("value").alias("element")
        else:
            elements = (
                func.json_each(e.c.properties, literal(f'$."{listed}"', String()))
                .table_valued("value")
                .alias("element")
            )
        item = element_text(elements.c.value, t.item or "")
        q = (
            select(e.c.id.label("order_id"), e.c.profile_id.label("pid"), item.label("item"))
            .select_from(e.join(elements, true()))
            .where(*self._matching(t, scoped=scoped), item.isnot(None))
        )  # an item listed twice in one order is counted once below (count distinct, distinct)
        return q.cte("order_items").prefix_with("MATERIALIZED")

    def neighbours(self, t: TraitDef) -> Select[Any]:
        """``bought_together``'s item-to-item table over every order: (item, other, co), the
        ``t.neighbours`` others most often in the same order as each item (then by id)."""
        items = self._items(t, scoped=False)
        a, b = items.alias("a"), items.alias("b")
        counted = (
            select(a.c.item.label("item"), b.c.item.label("other"), func.count(a.c.order_id.distinct()).label("co"))
            .select_from(a.join(b, and_(a.c.order_id == b.c.order_id, a.c.item != b.c.item)))
            .group_by(a.c.item, b.c.item)
            .subquery("co_occurrence")
        )
        nearest = (counted.c.co.desc(), code_point(counted.c.other))
        rn = func.row_number().over(partition_by=counted.c.item, order_by=nearest)
        ranked = select(counted.c.item, counted.c.other, counted.c.co, rn.label("rn")).subquery("ranked")
        return select(ranked.c.item, ranked.c.other, ranked.c.co).where(ranked.c.rn <= t.neighbours)

    def _bought_together(self, t: TraitDef) -> Select[Any]:
        """Scores from the stored item-to-item table (``neighbours``, kept by the full refresh)."""
        items = self._items(t, scoped=True)
        bought = select(items.c.pid, items.c.item).distinct().cte("bought").prefix_with("MATERIALIZED")
        owned = bought.alias("owned")
        pairs = table_of(TraitPair)
        has = select(owned.c.item).where(owned.c.pid == bought.c.pid, owned.c.item == pairs.c.other).exists()
        scores = (
            select(bought.c.pid, pairs.c.other.label("j"), func.sum(pairs.c.co).label("s"))
            .select_from(bought.join(pairs, and_(pairs.c.trait == t.name, pairs.c.item == bought.c.item)))
            .where(~has)
            .group_by(bought.c.pid, pairs.c.other)
            .subquery("scores")
        )
        return self._listed(scores, scores.c.j, (scores.c.s.desc(), code_point(scores.c.j)), t.limit)
