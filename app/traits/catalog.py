"""The computed traits declared in ``policies/computed_traits.yaml``, checked on load."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from app.consent.check import PolicyProblem
from app.consent.policy import load_yaml
from app.settings import get_settings

KINDS = (
    "counter",
    "sum",
    "most_frequent",
    "first",
    "last",
    "unique_list",
    "last_seen",
    "rfm",
    "clv",
    "churn",
    "weighted",
    "bought_together",
)
PARTS = ("recency", "frequency", "monetary")
FILE = "computed_traits.yaml"
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
Scalar = str | int | float


@dataclass(frozen=True)
class Component:
    """One term of a weighted score: ``min(cap, points * events)``."""

    event: str
    points: int
    cap: int
    within_days: int | None = None


CHURN_DAYS = 90
"""Churn risk counts whole days since the latest event up to this many (``TraitQuery._churn``)."""


@dataclass(frozen=True)
class TraitDef:
    name: str
    kind: str
    description: str
    formula: str
    profiling: bool
    event: str | None = None
    where: tuple[tuple[str, tuple[Scalar, ...]], ...] = ()
    """(property, accepted values): the event's property equals one of them."""
    within_days: int | None = None
    properties: tuple[str, ...] = ()
    """The number or value read: the first of these present (with the right type)."""
    part: str | None = None
    refund_event: str | None = None
    limit: int = 50
    components: tuple[Component, ...] = ()
    item: str | None = None
    """``bought_together``: the key of each element of the ``properties[0]`` list."""
    neighbours: int = 10
    """``bought_together``: the products most often bought with each product that count."""

    @property
    def population_wide(self) -> bool:
        """A person's value depends on everyone's events at once (ranks)."""
        return self.kind == "rfm"

    def ages(self) -> frozenset[int]:
        """Days after an event at which time alone may change its person's value: the event
        leaves a ``within_days`` window, or (churn) one more whole day has passed since it."""
        days = {d for d in (self.within_days, *(c.within_days for c in self.components)) if d}
        if self.kind == "churn":
            days |= set(range(1, CHURN_DAYS + 1))
        return frozenset(days)

    def names_read(self) -> set[str]:
        """Every event property the trait reads (each must be non-personal)."""
        return {p for p, _ in self.where} | set(self.properties) | ({self.item} if self.item else set())


@dataclass(frozen=True)
class Catalog:
    traits: dict[str, TraitDef] = field(default_factory=dict)

    def profiling(self) -> dict[str, bool]:
        """Trait name → whether it profiles a person."""
        return {n: t.profiling for n, t in self.traits.items()}


def catalog() -> Catalog:
    """The traits of the policy directory in the settings (cached per directory)."""
    return load_catalog(get_settings().policy_dir)


@lru_cache(maxsize=8)
def load_catalog(policy_dir: Path) -> Catalog:
    path = policy_dir / FILE
    if not path.exists():
        return Catalog()
    raw = load_yaml(path) or {}
    return Catalog({name: parse_trait(name, spec) for name, spec in (raw.get("traits") or {}).items()})


def check_traits_policy(policy_dir: Path) -> list[PolicyProblem]:
    """Every problem in ``computed_traits.yaml`` (empty: sound; no file declares no traits)."""
    try:
        load_catalog(policy_dir)
    except (ValueError, TypeError, AttributeError, yaml.YAMLError) as exc:
        return [PolicyProblem(FILE, None, str(exc).removeprefix(f"{FILE}: "))]
    return []


def parse_trait(name: str, spec: dict[str, Any]) -> TraitDef:
    """One definition; a ValueError names the trait and the key at fault."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"computed_traits.yaml: {name!r} is not a trait name (a-z, 0-9, _)")
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise ValueError(f"computed_traits.yaml: {name}: kind must be one of {', '.join(KINDS)}")
    if not isinstance(spec.get("profiling"), bool):
        raise ValueError(f"computed_traits.yaml: {name}: profiling must be true or false")
    kind = spec["kind"]
    props = spec.get("property", spec.get("list"))
    props = [props] if isinstance(props, str) else list(props or [])
    trait = TraitDef(
        name=name,
        kind=kind,
        description=str(spec.get("description", "")),
        formula=str(spec.get("formula", "")),
        profiling=spec["profiling"],
        event=spec.get("event"),
        where=_where(name, spec.get("where") or {}),
        within_days=_days(name, spec.get("within_days")),
        properties=tuple(props),
        part=spec.get("part"),
        refund_event=spec.get("refund_event"),
        limit=int(spec.get("limit", 50)),
        components=tuple(_component(name, c) for c in spec.get("components") or []),
        item=spec.get("item"),
        neighbours=int(spec.get("neighbours", 10)),
    )
    _check(trait)
    return trait


def _check(t: TraitDef) -> None:
    needs_event = t.kind not in ("last_seen", "churn", "weighted")
    needs_property = t.kind in ("sum", "most_frequent", "first", "last", "unique_list", "rfm", "clv")
    if needs_event and not isinstance(t.event, str):
        raise ValueError(f"computed_traits.yaml: {t.name}: needs event")
    if needs_property and not t.properties:
        raise ValueError(f"computed_traits.yaml: {t.name}: needs property")
    if t.kind == "rfm" and t.part not in PARTS:
        raise ValueError(f"computed_traits.yaml: {t.name}: part must be one of {', '.join(PARTS)}")
    if t.kind == "bought_together" and (len(t.properties) != 1 or not t.item):
        raise ValueError(f"computed_traits.yaml: {t.name}: needs list and item")
    if t.kind == "weighted" and not t.components:
        raise ValueError(f"computed_traits.yaml: {t.name}: needs components")
    if not 1 <= t.limit <= 500 or not 1 <= t.neighbours <= 500:
        raise ValueError(f"computed_traits.yaml: {t.name}: limit and neighbours must be 1 to 500")
    if not all(isinstance(p, str) and p for p in t.names_read()):
        raise ValueError(f"computed_traits.yaml: {t.name}: property names must be strings")


def _where(name: str, where: Any) -> tuple[tuple[str, tuple[Scalar, ...]], ...]:
    if not isinstance(where, dict):
        raise ValueError(f"computed_traits.yaml: {name}: where must be a mapping")
    out = []
    for prop, v in where.items():
        values = v.get("in") if isinstance(v, dict) else [v]
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(x, str | int | float) and not isinstance(x, bool) for x in values)
        ):
            raise ValueError(f"computed_traits.yaml: {name}: where.{prop} must be a value or {{in: [values]}}")
        out.append((str(prop), tuple(values)))
    return tuple(out)


def _days(name: str, v: Any) -> int | None:
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 36_600:
        raise ValueError(f"computed_traits.yaml: {name}: within_days must be a whole number of days")
    return v


def _component(name: str, c: Any) -> Component:
    if not isinstance(c, dict) or not isinstance(c.get("event"), str):
        raise ValueError(f"computed_traits.yaml: {name}: each component needs event, points and cap")
    return Component(c["event"], int(c.get("points", 0)), int(c.get("cap", 100)), _days(name, c.get("within_days")))
