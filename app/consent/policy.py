"""Policy-as-code loaded from ``policies/``: purposes, roles, data categories."""

from __future__ import annotations

from dataclasses import dataclass
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

    def personal_property(self, name: str) -> bool:
        """Is an event property of this name declared personal data?"""
        return name not in self.properties_not_personal and self.trait(name) is not None

    def trait(self, name: str) -> TraitRule | None:
        """The rule for a trait name or one of its aliases (None: not personal data)."""
        return self.traits.get(self.aliases.get(name, name))

    def canonical_trait(self, name: str) -> str:
        return self.aliases.get(name, name)


def _load_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping")
    return data


@lru_cache(maxsize=4)
def load_policies(policy_dir: Path) -> PolicySet:
    """Parse and check the policy files (cached per directory)."""
    p = _load_yaml(policy_dir / "purposes.yaml")
    purposes = {
        pid: Purpose(pid, spec.get("description", ""), spec["legal_basis"], frozenset(spec["roles"]), spec["reveal"])
        for pid, spec in p["purposes"].items()
    }
    defaults = dict(p.get("role_defaults", {}))
    for role, pid in defaults.items():
        if pid not in purposes or role not in purposes[pid].roles:
            raise ValueError(f"role_defaults: {role} -> {pid} is not a purpose that role may use")
    c = _load_yaml(policy_dir / "data_categories.yaml")
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
    i = _load_yaml(policy_dir / "identity.yaml")
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
    t = _load_yaml(policy_dir / "text_channels.yaml")
    channels = tuple(t["channels"])
    exempt = frozenset(c.get("properties_not_personal") or [])
    return PolicySet(purposes, defaults, traits, aliases, identity, channels, exempt)
