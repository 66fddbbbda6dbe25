"""The consent rules from ``policies/``: jurisdictions, purposes' consent needs, notices,
consent-tool mappings and retention, plus the policy version every decision records.

``app/consent/check.py`` validates the same files with line numbers before they are used.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from app.consent.policy import load_yaml

Mode = Literal["none", "opt_in", "opt_out"]
POLICY_FILES = (
    "purposes.yaml",
    "data_categories.yaml",
    "identity.yaml",
    "text_channels.yaml",
    "jurisdictions.yaml",
    "notices.yaml",
    "consent_mapping.yaml",
    "retention.yaml",
    "taxonomy.yaml",
)


@dataclass(frozen=True)
class Jurisdiction:
    name: str
    regions: frozenset[str]
    minor_age: int
    modes: dict[str, Mode]
    """Purpose → how it needs consent here (purposes not listed need none)."""
    gpc: frozenset[str]
    """Purposes a Global Privacy Control signal opts the person out of."""
    gpc_overridable: bool
    sensitive: tuple[str, ...]
    profiling_refusal: bool
    cross_border_consent: bool

    def mode(self, purpose: str) -> Mode:
        return self.modes.get(purpose, "none")

    def is_sensitive(self, category: str) -> bool:
        return any(category == s or category.startswith(s + ".") for s in self.sensitive)


@dataclass(frozen=True)
class PurposeUse:
    """What consent rules need to know of a purpose besides its roles."""

    categories: tuple[str, ...]
    profiling: bool
    legal_basis: str = ""

    @property
    def legal_duty(self) -> bool:
        """A legal obligation: what a restriction of processing still allows (GDPR Art. 18(2))."""
        return self.legal_basis == "legal_obligation"

    def may_receive(self, category: str) -> bool:
        return any(category == c or category.startswith(c + ".") for c in self.categories)


@dataclass(frozen=True)
class Rules:
    version: str
    """Content hash over every policy file: what each decision records."""
    jurisdictions: dict[str, Jurisdiction]
    default: str
    purposes: dict[str, PurposeUse]
    notices: frozenset[str]
    current_notice: str | None
    notice_urls: dict[str, str]
    mapping: dict[str, dict[str, tuple[str, ...]]]
    retention: dict[str, Any]

    def jurisdiction_of(self, region: str | None) -> Jurisdiction:
        """The regime for a coarse region (``DE``, ``US-CA``, ``CN``); unknown → the default (strictest)."""
        if region:
            for j in self.jurisdictions.values():
                if region in j.regions or region.split("-")[0] in j.regions:
                    return j
        return self.jurisdictions[self.default]

    def region_jurisdictions(self) -> list[tuple[str, Jurisdiction]]:
        """(region, jurisdiction) pairs for every listed region."""
        return [(r, j) for j in self.jurisdictions.values() for r in sorted(j.regions)]


def policy_version(policy_dir: Path) -> str:
    """SHA-256 over every policy file's name and bytes, in a fixed order (first 16 hex digits)."""
    digest = hashlib.sha256()
    for name in POLICY_FILES:
        path = policy_dir / name
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes() if path.exists() else b"")
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@lru_cache(maxsize=4)
def load_rules(policy_dir: Path) -> Rules:
    """Parse the consent rules (cached per directory; ``check.py`` validates them first)."""
    j = load_yaml(policy_dir / "jurisdictions.yaml")
    jurisdictions = {
        name: Jurisdiction(
            name,
            frozenset(str(r) for r in spec.get("regions") or []),
            int(spec.get("minor_age", 16)),
            {str(p): m for p, m in (spec.get("purposes") or {}).items()},
            frozenset(spec.get("gpc") or []),
            bool(spec.get("gpc_overridable", False)),
            tuple(spec.get("sensitive") or []),
            bool(spec.get("profiling_refusal", False)),
            bool(spec.get("cross_border_consent", False)),
        )
        for name, spec in j["jurisdictions"].items()
    }
    p = load_yaml(policy_dir / "purposes.yaml")
    purposes = {
        pid: PurposeUse(
            tuple(spec.get("categories") or []), bool(spec.get("profiling", False)), str(spec.get("legal_basis", ""))
        )
        for pid, spec in p["purposes"].items()
    }
    n = load_yaml(policy_dir / "notices.yaml")
    m = load_yaml(policy_dir / "consent_mapping.yaml")
    mapping = {tool: {str(k): tuple(v or []) for k, v in (ids or {}).items()} for tool, ids in m.items()}
    return Rules(
        policy_version(policy_dir),
        jurisdictions,
        str(j.get("default", "STRICT")),
        purposes,
        frozenset(n.get("notices") or {}),
        n.get("current"),
        {str(k): str((v or {}).get("url", "")) for k, v in (n.get("notices") or {}).items()},
        mapping,
        load_yaml(policy_dir / "retention.yaml"),
    )
