"""Which parts of an arriving payload are personal data: by name, then by value.

Every name (identify and group traits, event properties at any depth, import columns) is
decided by policy after normalising case and separators (``policies/data_categories.yaml``
explains the order: a reviewer's decision, declared traits and aliases, ``non_personal``,
``name_patterns``, else unknown). Every string under a name that is not personal passes
the cheap pattern detectors (:mod:`app.pii.quick`). What is personal is sealed with its
category; what is unknown is sealed as ``user.unknown`` and listed for review. Privacy by
default: an unknown name is personal until a reviewer says otherwise.

Name decisions are cached per name (a dict lookup per field after the first sighting).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.consent.policy import PolicySet, TraitRule, normal_name
from app.pii.quick import QuickScanner, quick_scanner

UNKNOWN = "user.unknown"
NON_PERSONAL = "non_personal"
MAX_LABEL = 64


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""Nothing on this side of a split."""


@dataclass(frozen=True)
class NameDecision:
    kind: str
    """``trait`` (a declared trait or alias), ``personal`` (pattern or reviewer), ``plain`` or ``unknown``."""
    category: str | None = None
    rule: TraitRule | None = None

    @property
    def personal(self) -> bool:
        return self.kind != "plain"


PLAIN = NameDecision("plain")


def name_key(index_key: bytes, name: str) -> str:
    """The keyed hash a field name is listed and decided by (of its normalised form)."""
    mac = hmac.new(index_key, b"consentry:field-name:" + normal_name(name).encode("utf-8"), hashlib.sha256)
    return mac.hexdigest()[:32]


class FieldPolicy:
    """Name decisions for one policy set and one snapshot of reviewers' decisions."""

    def __init__(
        self,
        policies: PolicySet,
        index_key: bytes,
        decisions: Mapping[str, str] | None = None,
        scanner: QuickScanner | None = None,
    ) -> None:
        self.policies = policies
        self.index_key = index_key
        self.decisions = dict(decisions or {})
        self.scanner = scanner or quick_scanner()
        self._names: dict[str, NameDecision] = {}
        self._labels: dict[str, str] = {}
        self._clean: set[str] = set()

    def key(self, name: str) -> str:
        return name_key(self.index_key, name)

    def decide(self, name: str) -> NameDecision:
        d = self._names.get(name)
        if d is None:
            d = self._decide(name)
            if len(self._names) < 50_000:
                self._names[name] = d
        return d

    def _decide(self, name: str) -> NameDecision:
        if self.decisions:
            decided = self.decisions.get(self.key(name))
            if decided == NON_PERSONAL:
                return PLAIN
            if decided:
                return NameDecision("personal", decided, _rule(self.label(name), decided))
        rule = self.policies.trait(name)
        if rule is not None:
            return NameDecision("trait", rule.category, rule)
        normal = normal_name(name)
        if not normal or self.looks_personal(name):
            return NameDecision("unknown", UNKNOWN, _rule(self.label(name), UNKNOWN))
        if normal in self.policies.non_personal:
            return PLAIN
        for pattern, category in self.policies.name_patterns:
            if pattern.search(normal):
                return NameDecision("personal", category, _rule(self.label(name), category))
        return NameDecision("unknown", UNKNOWN, _rule(self.label(name), UNKNOWN))

    def looks_personal(self, name: str) -> bool:
        """Is the name itself personal data (an email or phone number used as a key…)?"""
        return len(name) > MAX_LABEL or not name.isprintable() or bool(self.scanner.scan(name))

    def label(self, name: str) -> str:
        """How a name is stored and shown outside the sealed data: itself, or ``h_<keyed hash>``
        when it is itself personal-looking or too long."""
        got = self._labels.get(name)
        if got is None:
            got = f"h_{self.key(name)[:16]}" if self.looks_personal(name) else name
            if len(self._labels) < 50_000:
                self._labels[name] = got
        return got

    def value_category(self, value: Any) -> str | None:
        """The category the value detectors give a string (None for clean values). Short
        strings found clean are remembered (SKUs, currencies, product names repeat); strings
        with findings never are."""
        if not isinstance(value, str) or value in self._clean:
            return None
        category = self.scanner.category(value)
        if category is None and len(value) <= 64:
            if len(self._clean) >= 100_000:
                self._clean.clear()
            self._clean.add(value)
        return category


def _rule(label: str, category: str) -> TraitRule:
    return TraitRule(label, category, True, "any", None)


@dataclass
class Split:
    """One payload part (properties, group traits…) split into plain and sealed halves."""

    plain: dict[str, Any] = field(default_factory=dict)
    sealed: dict[str, Any] = field(default_factory=dict)
    categories: dict[str, str] = field(default_factory=dict)
    """Path → category of each sealed part."""
    unknown: dict[str, str] = field(default_factory=dict)
    """Names sealed as unknown (raw name → label), for review."""
    flagged: list[str] = field(default_factory=list)
    """Paths sealed though their name is not a declared trait (pattern, value or unknown)."""


class Splitter:
    """Splits nested payloads leaf by leaf: a container under a personal name is sealed
    whole; otherwise each leaf is decided by its own name (list items by the list's) and,
    when the name is plain, by its value."""

    def __init__(self, fp: FieldPolicy, exempt: frozenset[str] = frozenset(), max_depth: int = 64) -> None:
        self.fp = fp
        self.exempt = exempt
        self.max_depth = max_depth

    def split(self, payload: Mapping[str, Any], prefix: str) -> Split:
        out = Split()
        plain, sealed = self._dict(payload, prefix, out, 0, True)
        out.plain = plain
        out.sealed = {} if sealed is MISSING else sealed
        return out

    def _dict(self, d: Mapping[str, Any], path: str, out: Split, depth: int, exempt_ok: bool) -> tuple[Any, Any]:
        plain: dict[str, Any] = {}
        sealed: dict[str, Any] = {}
        for name, value in d.items():
            p, s = self._item(str(name), value, f"{path}.{self.fp.label(str(name))}", out, depth + 1, exempt_ok)
            if p is not MISSING:
                plain[name] = p
            if s is not MISSING:
                sealed[name] = s
        return plain, (sealed if sealed else MISSING)

    def _item(self, name: str, value: Any, path: str, out: Split, depth: int, exempt_ok: bool) -> tuple[Any, Any]:
        decision = PLAIN if exempt_ok and name in self.exempt else self.fp.decide(name)
        container = isinstance(value, dict | list)
        if decision.personal and (not container or decision.kind != "unknown"):
            return self._seal(name, value, path, out, decision)  # a personal name seals what is under it
        if depth >= self.max_depth:
            return self._seal(name, value, path, out, NameDecision("unknown", UNKNOWN))
        if isinstance(value, dict):
            return self._dict(value, path, out, depth, False)
        if isinstance(value, list):
            return self._list(name, value, path, out, depth, decision)
        return self._leaf(value, path, out)

    def _leaf(self, value: Any, path: str, out: Split) -> tuple[Any, Any]:
        """A value under a plain name: sealed if the detectors find personal data in it."""
        category = self.fp.value_category(value)
        if category is None:
            return value, MISSING
        out.flagged.append(path[path.index(".") + 1 :])
        out.categories[path] = category
        return MISSING, value

    def _list(
        self, name: str, items: list[Any], path: str, out: Split, depth: int, decision: NameDecision
    ) -> tuple[Any, Any]:
        if not any(isinstance(v, dict | list) for v in items):
            if decision.personal:
                return self._seal(name, items, path, out, decision)
            for v in items:
                category = self.fp.value_category(v)
                if category is not None:
                    out.flagged.append(path[path.index(".") + 1 :])
                    out.categories[path] = category
                    return MISSING, items
            return items, MISSING
        plain: list[Any] = []
        sealed: list[Any] = []
        for i, v in enumerate(items):
            where = f"{path}[{i}]"
            if isinstance(v, dict):
                p, s = self._dict(v, where, out, depth, True)
            elif isinstance(v, list):
                p, s = self._list(name, v, where, out, depth + 1, decision)
            elif decision.personal:
                p, s = self._seal(name, v, where, out, decision)
            else:
                p, s = self._leaf(v, where, out)
            plain.append(None if p is MISSING else p)
            sealed.append(None if s is MISSING else s)
        return plain, (sealed if any(s is not None for s in sealed) else MISSING)

    def _seal(self, name: str, value: Any, path: str, out: Split, decision: NameDecision) -> tuple[Any, Any]:
        category = decision.category or UNKNOWN
        if category == UNKNOWN:
            category = self.fp.value_category(value) or UNKNOWN  # what the value shows, if anything
        out.categories[path] = category
        if decision.kind != "trait":
            out.flagged.append(path[path.index(".") + 1 :])
        if decision.kind == "unknown":
            out.unknown[name] = self.fp.label(name)
        return MISSING, value


@dataclass
class TraitSplit:
    """Traits split by name: personal ones (a rule each, keyed by trait or label) and plain ones."""

    personal: dict[str, tuple[TraitRule, Any]] = field(default_factory=dict)
    plain: dict[str, Any] = field(default_factory=dict)
    unknown: dict[str, str] = field(default_factory=dict)
    """Names sealed as unknown (raw name → label), for review."""
    flagged: list[str] = field(default_factory=list)


def split_traits_by_policy(
    fp: FieldPolicy,
    traits: Mapping[str, Any],
    normalize: Callable[[TraitRule, Any, str], Any],
    *,
    keep_none: bool = True,
) -> TraitSplit:
    """Traits one by one (a trait is sealed or plain as a whole): declared traits normalised
    by ``normalize(rule, value, field)``; pattern-matched, reviewer-mapped and unknown names
    sealed as they are under their category; a plain name's value sealed when the value
    detectors find personal data anywhere in it."""
    out = TraitSplit()
    taken: dict[str, str] = {}
    for raw, value in traits.items():
        d = fp.decide(raw)
        if value is None and not keep_none:
            continue
        if d.kind == "trait":
            assert d.rule is not None
            canonical = d.rule.name
            if canonical in taken and taken[canonical] != raw:
                # two spellings of one trait in a payload: the exact name keeps the trait,
                # the other is sealed under its own name (nothing is dropped)
                if raw != canonical:
                    out.personal[fp.label(raw)] = (_rule(fp.label(raw), d.rule.category), value)
                    continue
                other = taken[canonical]
                out.personal[fp.label(other)] = (_rule(fp.label(other), d.rule.category), traits[other])
            taken[canonical] = raw
            out.personal[canonical] = (d.rule, None if value is None else normalize(d.rule, value, f"traits.{raw}"))
            continue
        if d.personal:
            assert d.rule is not None
            rule = d.rule
            if d.kind == "unknown" and (found := fp.value_category(value)):
                rule = _rule(rule.name, found)  # an unknown name, but the value shows what it is
            out.personal[rule.name] = (rule, value)
            out.flagged.append(d.rule.name)
            if d.kind == "unknown":
                out.unknown[raw] = d.rule.name
            continue
        if value is None or isinstance(value, bool | int | float):
            out.plain[raw] = value
            continue
        if isinstance(value, str):
            category = fp.value_category(value)
        else:
            inner = Splitter(fp).split({raw: value}, "traits")
            out.unknown.update(inner.unknown)
            category = next(iter(inner.categories.values()), None)
        if category is None:
            out.plain[raw] = value
        else:
            label = fp.label(raw)
            out.personal[label] = (_rule(label, category), value)
            out.flagged.append(label)
    return out


def deep_merge(plain: Any, sealed: Any) -> Any:
    """Put a split back together (the inverse of :meth:`Splitter.split`)."""
    if isinstance(plain, dict) and isinstance(sealed, dict):
        out = dict(plain)
        for k, v in sealed.items():
            out[k] = deep_merge(out[k], v) if k in out else v
        return out
    if isinstance(plain, list) and isinstance(sealed, list) and len(plain) == len(sealed):
        pairs = zip(plain, sealed, strict=True)
        return [p if s is None else s if p is None else deep_merge(p, s) for p, s in pairs]
    return sealed


# --- reviewers' decisions, per database ---------------------------------------------------

_snapshots: dict[str, tuple[float, int, dict[str, str]]] = {}
"""Per database URL: (read at, version, name key → decision)."""
_policies: dict[tuple[int, str, int, bytes], FieldPolicy] = {}
_versions = iter(range(1, 1 << 62))
REFRESH_SECONDS = 2.0


def set_decisions(url: str, decisions: dict[str, str]) -> None:
    """Remember the decisions just read from this database (a new version only if they changed)."""
    snap = _snapshots.get(url)
    version = snap[1] if snap is not None and snap[2] == decisions else next(_versions)
    _snapshots[url] = (time.monotonic(), version, decisions)


def forget_decisions(url: str | None = None) -> None:
    """Drop cached decisions (for one database, or all): they are read again at next use."""
    if url is None:
        _snapshots.clear()
    else:
        _snapshots.pop(url, None)


def needs_refresh(url: str) -> bool:
    snap = _snapshots.get(url)
    return snap is None or time.monotonic() - snap[0] > REFRESH_SECONDS


def field_policy(policies: PolicySet, index_key: bytes, url: str) -> FieldPolicy:
    """The name decisions for this database's current reviewers' decisions (cached)."""
    snap = _snapshots.get(url)
    version, decisions = (snap[1], snap[2]) if snap else (0, {})
    ident = (id(policies), url, version, index_key)
    fp = _policies.get(ident)
    if fp is None:
        if len(_policies) > 32:
            _policies.clear()
        fp = _policies[ident] = FieldPolicy(policies, index_key, decisions)
    return fp
