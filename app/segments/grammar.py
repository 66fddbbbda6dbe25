"""The segment condition tree: an allow-listed JSON grammar parsed into typed nodes.

A tree is ``{"all": [...]}``, ``{"any": [...]}``, ``{"not": node}`` or one condition:

- ``{"trait": "plan", "eq": "pro"}`` — a non-personal profile trait, one or more operators;
- ``{"consent": PURPOSE, "state": "granted" | "denied" | "withdrawn" | "none"}``;
- ``{"segment": ID}`` — a member of another saved segment;
- ``{"age": {"between": [18, 30]}}`` (or ``gte``, ``lte``) and ``{"birthday": "today"}`` —
  from keyed blind indexes of the birth year and month-day (the birthday stays encrypted);
- ``{"event": NAME, "where": {PROP: {OP: VALUE}}, "count": {"gte": 2}, "within": {"days": 90}}``
  (``count``: ``gte``, ``lte`` or ``between`` [a, b]; default at least one; instead of
  ``within`` (``days`` or ``hours``) ``between`` [date, date] inclusive);
- ``{"funnel": [{"event": A, "where": …}, {"event": B}], "within": {"days": 7}}`` — A, then B
  strictly later, the whole funnel within the window.
- ``{"tag": "lifecycle.active"}`` — the person carries a tag of ``policies/tags.yaml``;
- ``{"account": {"plan": {"eq": "pro"}}}`` — the person belongs to an account (a Segment
  ``group``) whose non-personal traits match (``{"account": {}}``: to any account);
- an event or funnel step's ``"product": {"brand": {"eq": "X"}, "category": {"eq": "Y"}}`` —
  the event was about a product (``product_id`` or an item of ``products``) whose attributes
  all match (the same product).
- ``{"computed": "churn_risk", "gte": 70}`` — a computed trait of
  ``policies/computed_traits.yaml``; a tree using one marked ``profiling`` leaves out everyone
  who refuses profiling, wherever the condition stands (under ``not`` too).

Operators: ``eq``, ``ne`` (string, number, boolean), ``in``, ``not_in`` (strings or numbers),
``gt``, ``gte``, ``lt``, ``lte``, ``between`` (numbers), ``contains``, ``starts_with``,
``ends_with`` (strings, case-sensitive), ``before``, ``after``, ``date_between`` (ISO dates
compared with ISO date strings), ``includes`` (a list holds the value), ``exists`` (true/false).
A comparison is true only for a value of the operator's type (``ne`` and ``not_in`` too: a
missing trait is neither equal nor unequal to anything).

Personal fields are encrypted: a trait or property name must be non-personal by policy
(``non_personal`` in ``policies/data_categories.yaml`` or a field review); anything else is
refused. Errors name the path (``all[1].where.category``), never the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from app.errors import InvalidField

MAX_DEPTH = 16
MAX_NODES = 200
MAX_LIST = 500
MAX_TEXT = 512
MAX_NUMBER = 1e15
MAX_DAYS = 36_600
MAX_COUNT = 1_000_000
NAME = re.compile(r"^[\w\- ]{1,64}$")
STATES = ("granted", "denied", "withdrawn", "none")
STRING_OPS = ("contains", "starts_with", "ends_with")
NUMBER_OPS = ("gt", "gte", "lt", "lte")
DATE_OPS = ("before", "after", "date_between")
OPERATORS = ("eq", "ne", "in", "not_in", *NUMBER_OPS, "between", *STRING_OPS, *DATE_OPS, "includes", "exists")

KINDS = (
    *("all", "any", "not", "trait", "consent", "segment", "age", "birthday", "event", "funnel", "tag", "account"),
    "computed",
)
MAX_AGE = 150
Scalar = str | float | bool


@dataclass(frozen=True)
class Cmp:
    """One comparison on a JSON value. Numbers are floats; dates are ISO strings (``after``
    holds the day after, so every date operator is a plain string comparison)."""

    op: str
    value: Any


@dataclass(frozen=True)
class All:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


@dataclass(frozen=True)
class Trait:
    name: str
    cmps: tuple[Cmp, ...]


@dataclass(frozen=True)
class Consent:
    purpose: str
    state: str


@dataclass(frozen=True)
class Age:
    """Age in whole years today, between ``low`` and ``high`` inclusive."""

    low: int
    high: int


@dataclass(frozen=True)
class BirthdayToday:
    pass


@dataclass(frozen=True)
class InSegment:
    segment_id: str


@dataclass(frozen=True)
class Window:
    """Events between ``start`` (inclusive) and ``end`` (exclusive), or in the last ``seconds_back``."""

    seconds_back: int | None = None
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class Step:
    name: str
    where: tuple[tuple[str, tuple[Cmp, ...]], ...] = ()
    product: tuple[tuple[str, tuple[Cmp, ...]], ...] = ()
    """Conditions one product of the event must all meet (none: no product needed)."""


@dataclass(frozen=True)
class Event:
    step: Step
    count_min: int = 1
    count_max: int | None = None
    window: Window = Window()


@dataclass(frozen=True)
class Funnel:
    steps: tuple[Step, ...]
    within_s: int


@dataclass(frozen=True)
class HasTag:
    tag: str


@dataclass(frozen=True)
class InAccount:
    where: tuple[tuple[str, tuple[Cmp, ...]], ...] = ()


@dataclass(frozen=True)
class Computed:
    """A computed trait's value (``app.traits``) meets every comparison."""

    name: str
    cmps: tuple[Cmp, ...]


@dataclass(frozen=True)
class ProfilingAllowed:
    """The person does not refuse profiling (added at the root of a tree using a profiling trait)."""


Node = (
    All
    | AnyOf
    | Not
    | Trait
    | Consent
    | InSegment
    | Age
    | BirthdayToday
    | Event
    | Funnel
    | HasTag
    | InAccount
    | Computed
    | ProfilingAllowed
)
NameCheck = Callable[[str], str | None]
"""A field name → None when conditions may use it, else why not (a short reason)."""
Label = Callable[[str], str]
"""A field name → how an error may name it (a keyed hash when the name looks personal)."""


class Parser:
    """Parses one tree against the allow-list: field names pass ``check``; purposes are
    those in ``purposes``."""

    def __init__(self, check: NameCheck, label: Label, purposes: frozenset[str]) -> None:
        self.check, self.label, self.purposes = check, label, purposes
        self.nodes = 0
        self.segments: set[str] = set()
        self.profiling = False
        """Whether the tree uses a computed trait that profiles a person."""

    def parse(self, tree: Any, path: str = "tree") -> Node:
        node = self._node(tree, path, 0)
        return All((node, ProfilingAllowed())) if self.profiling else node

    def _node(self, obj: Any, path: str, depth: int) -> Node:
        self.nodes += 1
        if depth > MAX_DEPTH or self.nodes > MAX_NODES:
            raise InvalidField(f"a tree has at most {MAX_NODES} conditions, {MAX_DEPTH} deep", field=path)
        if not isinstance(obj, dict) or not obj:
            raise InvalidField("expects a condition object", field=path)
        kind = next((k for k in KINDS if k in obj), None)
        if kind is None:
            raise InvalidField(f"expects one of {', '.join(KINDS)}", field=path)
        if kind in ("all", "any"):
            _only(obj, {kind}, path)
            items = obj[kind]
            if not isinstance(items, list) or not items or len(items) > MAX_NODES:
                raise InvalidField("expects a non-empty list of conditions", field=f"{path}.{kind}")
            nodes = tuple(self._node(x, f"{path}.{kind}[{n}]", depth + 1) for n, x in enumerate(items))
            return All(nodes) if kind == "all" else AnyOf(nodes)
        if kind == "not":
            _only(obj, {"not"}, path)
            return Not(self._node(obj["not"], f"{path}.not", depth + 1))
        return getattr(self, f"_{kind}")(obj, path)

    def _trait(self, obj: dict[str, Any], path: str) -> Trait:
        name = self._name(obj["trait"], f"{path}.trait")
        ops = {k: v for k, v in obj.items() if k != "trait"}
        return Trait(name, self._cmps(ops, path))

    def _consent(self, obj: dict[str, Any], path: str) -> Consent:
        _only(obj, {"consent", "state"}, path)
        purpose, state = obj["consent"], obj.get("state", "granted")
        if not isinstance(purpose, str) or purpose not in self.purposes:
            raise InvalidField("is not a purpose in policies/purposes.yaml", field=f"{path}.consent")
        if state not in STATES:
            raise InvalidField(f"expects one of {', '.join(STATES)}", field=f"{path}.state")
        return Consent(purpose, state)

    def _segment(self, obj: dict[str, Any], path: str) -> InSegment:
        _only(obj, {"segment"}, path)
        sid = obj["segment"]
        if not isinstance(sid, str) or not re.fullmatch(r"[0-9a-f\-]{36}", sid):
            raise InvalidField("expects a segment id", field=f"{path}.segment")
        self.segments.add(sid)
        return InSegment(sid)

    def _age(self, obj: dict[str, Any], path: str) -> Age:
        _only(obj, {"age"}, path)
        spec, at = obj["age"], f"{path}.age"
        if not isinstance(spec, dict) or not spec or not set(spec) <= {"gte", "lte", "between"}:
            raise InvalidField("expects gte, lte or between", field=at)
        if "between" in spec:
            _only(spec, {"between"}, at)
            return Age(*_pair(spec["between"], f"{at}.between", _age_value))
        low = _age_value(spec.get("gte", 0), f"{at}.gte")
        high = _age_value(spec.get("lte", MAX_AGE), f"{at}.lte")
        if low > high:
            raise InvalidField("gte must not exceed lte", field=at)
        return Age(low, high)

    def _birthday(self, obj: dict[str, Any], path: str) -> BirthdayToday:
        _only(obj, {"birthday"}, path)
        if obj["birthday"] != "today":
            raise InvalidField("expects today", field=f"{path}.birthday")
        return BirthdayToday()

    def _event(self, obj: dict[str, Any], path: str) -> Event:
        _only(obj, {"event", "where", "product", "count", "within", "between"}, path)
        step = self._step(obj, path)
        low, high = self._count(obj.get("count"), f"{path}.count")
        if "within" in obj and "between" in obj:
            raise InvalidField("give within or between, not both", field=f"{path}.between")
        window = Window()
        if "within" in obj:
            window = Window(seconds_back=self._seconds(obj["within"], f"{path}.within"))
        elif "between" in obj:
            start, end = _date_pair(obj["between"], f"{path}.between")
            window = Window(start=_midnight(start), end=_midnight(end) + timedelta(days=1))
        return Event(step, low, high, window)

    def _funnel(self, obj: dict[str, Any], path: str) -> Funnel:
        _only(obj, {"funnel", "within"}, path)
        steps = obj["funnel"]
        if not isinstance(steps, list) or not 2 <= len(steps) <= 5:
            raise InvalidField("expects a list of 2 to 5 steps", field=f"{path}.funnel")
        parsed = []
        for n, s in enumerate(steps):
            if not isinstance(s, dict):
                raise InvalidField("expects a step object", field=f"{path}.funnel[{n}]")
            _only(s, {"event", "where", "product"}, f"{path}.funnel[{n}]")
            parsed.append(self._step(s, f"{path}.funnel[{n}]"))
        if "within" not in obj:
            raise InvalidField("a funnel needs within", field=f"{path}.within")
        return Funnel(tuple(parsed), self._seconds(obj["within"], f"{path}.within"))

    def _step(self, obj: dict[str, Any], path: str) -> Step:
        name = obj.get("event")
        if not isinstance(name, str) or not 0 < len(name) <= 200 or "\x00" in name:
            raise InvalidField("expects an event name (1 to 200 characters)", field=f"{path}.event")
        where = self._fields(obj.get("where", {}), f"{path}.where")
        return Step(name, where, self._fields(obj.get("product", {}), f"{path}.product"))

    def _fields(self, where: Any, path: str) -> tuple[tuple[str, tuple[Cmp, ...]], ...]:
        """``{NAME: {OP: VALUE}}``: names pass the allow-list."""
        if not isinstance(where, dict) or len(where) > 20:
            raise InvalidField("expects an object of field conditions (at most 20)", field=path)
        out = []
        for n, (prop, ops) in enumerate(where.items()):
            at = f"{path}[{n}]"
            prop = self._name(prop, at)
            at = f"{path}.{self.label(prop)}"
            if not isinstance(ops, dict):
                raise InvalidField("expects an object of operators", field=at)
            out.append((prop, self._cmps(ops, at)))
        return tuple(out)

    def _tag(self, obj: dict[str, Any], path: str) -> HasTag:
        from app.tags.taxonomy import load_taxonomy

        _only(obj, {"tag"}, path)
        name = obj["tag"]
        spec = load_taxonomy().tags.get(name) if isinstance(name, str) else None
        if spec is None:
            raise InvalidField("is not a tag in policies/tags.yaml", field=f"{path}.tag")
        self.profiling = self.profiling or spec.profiling
        return HasTag(spec.name)

    def _computed(self, obj: dict[str, Any], path: str) -> Computed:
        from app.traits.catalog import catalog

        name, traits = obj["computed"], catalog().traits
        if not isinstance(name, str) or name not in traits:
            raise InvalidField("is not a computed trait in policies/computed_traits.yaml", field=f"{path}.computed")
        self.profiling = self.profiling or traits[name].profiling
        return Computed(name, self._cmps({k: v for k, v in obj.items() if k != "computed"}, path))

    def _account(self, obj: dict[str, Any], path: str) -> InAccount:
        _only(obj, {"account"}, path)
        return InAccount(self._fields(obj["account"], f"{path}.account"))

    def _name(self, name: Any, path: str) -> str:
        if not isinstance(name, str) or not NAME.match(name):
            raise InvalidField("expects a field name (letters, digits, _ - and spaces, at most 64)", field=path)
        why = self.check(name)
        if why:
            raise InvalidField(why, field=path)
        return name

    def _cmps(self, ops: dict[str, Any], path: str) -> tuple[Cmp, ...]:
        if not ops:
            raise InvalidField("expects at least one operator", field=path)
        out = []
        for op, value in ops.items():
            if op not in OPERATORS:
                raise InvalidField(f"unknown operator; expects one of {', '.join(OPERATORS)}", field=path)
            out.append(_cmp(op, value, f"{path}.{op}"))
        return tuple(out)

    def _count(self, obj: Any, path: str) -> tuple[int, int | None]:
        if obj is None:
            return 1, None
        if not isinstance(obj, dict) or len(obj) != 1:
            raise InvalidField("expects one of gte, lte, between", field=path)
        ((op, v),) = obj.items()
        if op == "between":
            low, high = _pair(v, f"{path}.between", _count_value)
            return low, high
        if op in ("gte", "lte"):
            n = _count_value(v, f"{path}.{op}")
            return (n, None) if op == "gte" else (0, n)
        raise InvalidField("expects one of gte, lte, between", field=path)

    def _seconds(self, obj: Any, path: str) -> int:
        if not isinstance(obj, dict) or len(obj) != 1 or next(iter(obj)) not in ("days", "hours"):
            raise InvalidField("expects {days: N} or {hours: N}", field=path)
        unit, n = next(iter(obj.items()))
        if not _is_int(n) or not 1 <= n <= (MAX_DAYS if unit == "days" else MAX_DAYS * 24):
            raise InvalidField("expects a positive whole number within 100 years", field=f"{path}.{unit}")
        return int(n) * (86_400 if unit == "days" else 3_600)


def _only(obj: dict[str, Any], keys: set[str], path: str) -> None:
    for k in obj:
        if k not in keys:
            where = f"{path}.{k}" if isinstance(k, str) and NAME.match(k) and len(k) <= 20 else path
            raise InvalidField(f"unknown key; expects {', '.join(sorted(keys))}", field=where)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= MAX_NUMBER


def _age_value(v: Any, path: str) -> int:
    if not _is_int(v) or not 0 <= v <= MAX_AGE:
        raise InvalidField(f"expects whole years from 0 to {MAX_AGE}", field=path)
    return int(v)


def _count_value(v: Any, path: str) -> int:
    if not _is_int(v) or not 0 <= v <= MAX_COUNT:
        raise InvalidField(f"expects a whole number from 0 to {MAX_COUNT}", field=path)
    return int(v)


def _text(v: Any, path: str, empty: bool = False) -> str:
    if not isinstance(v, str) or len(v) > MAX_TEXT or (not v and not empty) or "\x00" in v:
        raise InvalidField(f"expects a string (at most {MAX_TEXT} characters)", field=path)
    return v


def _number(v: Any, path: str) -> float:
    if not _is_number(v):
        raise InvalidField("expects a number", field=path)
    return float(v)


def _day(v: Any, path: str) -> date:
    try:
        if isinstance(v, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            return date.fromisoformat(v)
    except ValueError:
        pass
    raise InvalidField("expects a date (YYYY-MM-DD)", field=path)


def _pair(v: Any, path: str, item: Callable[[Any, str], Any]) -> tuple[Any, Any]:
    if not isinstance(v, list) or len(v) != 2:
        raise InvalidField("expects a list of two values", field=path)
    low, high = item(v[0], f"{path}[0]"), item(v[1], f"{path}[1]")
    if low > high:
        raise InvalidField("the first value must not exceed the second", field=path)
    return low, high


def _date_pair(v: Any, path: str) -> tuple[date, date]:
    return _pair(v, path, _day)


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def _scalar(v: Any, path: str) -> Scalar:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        return _text(v, path, empty=True)
    return _number(v, path)


def _cmp(op: str, v: Any, path: str) -> Cmp:
    if op in ("eq", "ne"):
        return Cmp(op, _scalar(v, path))
    if op in ("in", "not_in"):
        if not isinstance(v, list) or not 0 < len(v) <= MAX_LIST:
            raise InvalidField(f"expects a list of 1 to {MAX_LIST} strings or numbers", field=path)
        if all(isinstance(x, str) for x in v):
            return Cmp(op, tuple(_text(x, f"{path}[{n}]", empty=True) for n, x in enumerate(v)))
        return Cmp(op, tuple(_number(x, f"{path}[{n}]") for n, x in enumerate(v)))
    if op in NUMBER_OPS:
        return Cmp(op, _number(v, path))
    if op == "between":
        return Cmp(op, _pair(v, path, _number))
    if op in STRING_OPS:
        return Cmp(op, _text(v, path))
    if op == "before":
        return Cmp(op, _day(v, path).isoformat())
    if op == "after":
        return Cmp(op, (_day(v, path) + timedelta(days=1)).isoformat())
    if op == "date_between":
        low, high = _date_pair(v, path)
        return Cmp(op, (low.isoformat(), (high + timedelta(days=1)).isoformat()))
    if op == "includes":
        if isinstance(v, str):
            return Cmp(op, _text(v, path, empty=True))
        return Cmp(op, _number(v, path))
    if not isinstance(v, bool):
        raise InvalidField("expects true or false", field=path)
    return Cmp(op, v)


def walk(node: Node) -> Iterator[Node]:
    """Every node of a tree, depth first."""
    yield node
    if isinstance(node, All | AnyOf):
        for item in node.items:
            yield from walk(item)
    elif isinstance(node, Not):
        yield from walk(node.item)
