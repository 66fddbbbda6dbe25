"""Policy-as-code loaded from ``policies/``: purposes, roles, data categories."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml

Reveal = Literal["plain", "masked", "none"]


@dataclass(frozen=True)
class Purpose:
    id: str
    description: str
    legal_basis: str
    roles: frozenset[str]
    reveal: Reveal


@dataclass(frozen=True)
class TraitRule:
    """How one personal-data trait is categorised, normalised, stored and indexed."""

    name: str
    category: str
    identifier: bool
    normalize: str
    index: str | None


@dataclass(frozen=True)
class IdentifierRule:
    kind: str
    priority: int
    cap: int
    merge: bool
    stitch_only: bool = False
    """A device-level id (anonymous id, device id): it may join an anonymous profile to a
    known one, never two known profiles (a shared device)."""


@dataclass(frozen=True)
class IdentityPolicy:
    """Identifier kinds in priority order, caps, blocked values, trait authorities."""

    rules: dict[str, IdentifierRule]
    blocked_values: frozenset[str]
    trait_authority: dict[str, frozenset[str]]

    def rule(self, kind: str) -> IdentifierRule:
        return self.rules["external" if kind.startswith("external:") else kind]


@dataclass(frozen=True)
class PolicySet:
    purposes: dict[str, Purpose]
    role_defaults: dict[str, str]
    traits: dict[str, TraitRule]
    aliases: dict[str, str]
    identity: IdentityPolicy
    text_channels: tuple[str, ...]
    """Free-text channels texts may come from."""
    properties_not_personal: frozenset[str] = frozenset()
    non_personal: frozenset[str] = frozenset()
    """Normalised names that are not personal data by policy (``non_personal``)."""
    name_patterns: tuple[tuple[re.Pattern[str], str], ...] = ()
    """(pattern searched in a normalised name, category), in policy order."""
    normal_traits: dict[str, str] = field(default_factory=dict)
    """Normalised trait names and aliases → the trait."""

    def personal_property(self, name: str) -> bool:
        """Is an event property of this name declared personal data?"""
        return name not in self.properties_not_personal and self.trait(name) is not None

    def trait(self, name: str) -> TraitRule | None:
        """The rule for a trait name or one of its aliases, compared exactly and then after
        normalising case and separators (``First Name`` = ``first_name`` = ``firstName``);
        None: not a declared personal trait."""
        rule = self.traits.get(self.aliases.get(name, name))
        if rule is None:
            target = self.normal_traits.get(normal_name(name))
            rule = self.traits.get(target) if target else None
        return rule

    def canonical_trait(self, name: str) -> str:
        return self.aliases.get(name, name)


@lru_cache(maxsize=65536)
def normal_name(name: str) -> str:
    """A field name compared by policy: case folded, only letters and digits kept (any script)."""
    return "".join(c for c in name.casefold() if c.isalnum())


def load_yaml(path: Path) -> dict[str, Any]:
    """A policy file's mapping (a file holding anything else is an error)."""
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping")
    return data


@lru_cache(maxsize=4)
def load_policies(policy_dir: Path) -> PolicySet:
    """Parse and check the policy files (cached per directory)."""
    p = load_yaml(policy_dir / "purposes.yaml")
    purposes = {
        pid: Purpose(pid, spec.get("description", ""), spec["legal_basis"], frozenset(spec["roles"]), spec["reveal"])
        for pid, spec in p["purposes"].items()
    }
    defaults = dict(p.get("role_defaults", {}))
    for role, pid in defaults.items():
        if pid not in purposes or role not in purposes[pid].roles:
            raise ValueError(f"role_defaults: {role} -> {pid} is not a purpose that role may use")
    c = load_yaml(policy_dir / "data_categories.yaml")
    traits = {
        name: TraitRule(
            name, spec["category"], bool(spec.get("identifier")), spec.get("normalize", "any"), spec.get("index")
        )
        for name, spec in c["traits"].items()
    }
    aliases = dict(c.get("aliases", {}))
    for alias, target in aliases.items():
        if target not in traits:
            raise ValueError(f"alias {alias} points to unknown trait {target}")
    i = load_yaml(policy_dir / "identity.yaml")
    rules = {
        kind: IdentifierRule(
            kind, n, int(spec["cap"]), bool(spec.get("merge", True)), bool(spec.get("stitch_only", False))
        )
        for n, (kind, spec) in enumerate(i["identifiers"].items())
    }
    identity = IdentityPolicy(
        rules,
        frozenset(str(v).lower() for v in i.get("blocked_values", [])),
        {t: frozenset(srcs) for t, srcs in (i.get("trait_authority") or {}).items()},
    )
    t = load_yaml(policy_dir / "text_channels.yaml")
    channels = tuple(t["channels"])
    exempt = frozenset(c.get("properties_not_personal") or [])
    normal_traits = {normal_name(n): n for n in traits}
    for alias, target in aliases.items():
        normal_traits.setdefault(normal_name(alias), target)
    non_personal = frozenset(normal_name(str(n)) for n in c.get("non_personal") or [])
    patterns = tuple(
        (re.compile(str(pattern)), str(category))
        for category, items in (c.get("name_patterns") or {}).items()
        for pattern in items
    )
    return PolicySet(
        purposes, defaults, traits, aliases, identity, channels, exempt, non_personal, patterns, normal_traits
    )
