"""The tag taxonomy of ``policies/tags.yaml``: groups of named labels (English and Chinese),
each applied by hand, by a rule (a segment tree) or from a computed-trait threshold."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from app.consent.check import PolicyProblem
from app.consent.policy import load_yaml
from app.settings import get_settings

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
SOURCES = ("manual", "rule", "threshold")


BOUNDS = ("gt", "gte", "lt", "lte")


@dataclass(frozen=True)
class Threshold:
    """A computed trait compared with numbers: ``bounds`` maps gt, gte, lt, lte to a number."""

    trait: str
    bounds: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class TagSpec:
    name: str
    """``group.tag``."""
    group: str
    en: str
    zh: str
    profiling: bool
    rule: dict[str, Any] | None = None
    threshold: Threshold | None = None


@dataclass(frozen=True)
class Taxonomy:
    groups: dict[str, tuple[str, str]]
    """Group → (English, Chinese) name."""
    tags: dict[str, TagSpec]


class TaxonomyError(ValueError):
    """``policies/tags.yaml`` is malformed (the message names the place, from the file)."""


def _names(spec: Any, where: str) -> tuple[str, str]:
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), str) and spec[k] for k in ("en", "zh")):
        raise TaxonomyError(f"{where}: needs en and zh names")
    return spec["en"], spec["zh"]


def _threshold(spec: Any, where: str) -> Threshold | None:
    if spec is None:
        return None
    ok = isinstance(spec, dict) and isinstance(spec.get("trait"), str) and set(spec) <= {"trait", *BOUNDS}
    bounds = tuple((k, spec[k]) for k in BOUNDS if k in spec) if isinstance(spec, dict) else ()
    if not ok or not bounds or not all(isinstance(v, int | float) and not isinstance(v, bool) for _k, v in bounds):
        raise TaxonomyError(f"{where}.threshold: expects trait and one or more of gt, gte, lt, lte (numbers)")
    return Threshold(spec["trait"], tuple((k, float(v)) for k, v in bounds))


def parse_taxonomy(data: dict[str, Any]) -> Taxonomy:
    """Check and read the taxonomy (rule trees are checked by the segments grammar when applied)."""
    groups: dict[str, tuple[str, str]] = {}
    tags: dict[str, TagSpec] = {}
    for group, gspec in (data.get("groups") or {}).items():
        if not isinstance(group, str) or not NAME.match(group):
            raise TaxonomyError("groups: names are lower-case letters, digits and _")
        groups[group] = _names(gspec, f"groups.{group}")
        for tag, tspec in (gspec.get("tags") or {}).items():
            where = f"groups.{group}.tags.{tag}"
            if not isinstance(tag, str) or not NAME.match(tag):
                raise TaxonomyError(f"groups.{group}.tags: names are lower-case letters, digits and _")
            en, zh = _names(tspec, where)
            rule = tspec.get("rule")
            if rule is not None and not isinstance(rule, dict):
                raise TaxonomyError(f"{where}.rule: expects a condition tree")
            profiling = bool(tspec.get("profiling", gspec.get("profiling", False)))
            name = f"{group}.{tag}"
            tags[name] = TagSpec(name, group, en, zh, profiling, rule, _threshold(tspec.get("threshold"), where))
    return Taxonomy(groups, tags)


@lru_cache(maxsize=4)
def _load(path: Path, mtime: float) -> Taxonomy:
    return parse_taxonomy(load_yaml(path)) if path.exists() else Taxonomy({}, {})


def load_taxonomy(policy_dir: Path | None = None) -> Taxonomy:
    """The taxonomy in ``policies/tags.yaml`` (read again when the file changes)."""
    path = (policy_dir or get_settings().policy_dir) / "tags.yaml"
    return _load(path, path.stat().st_mtime if path.exists() else 0.0)


def check_tags_policy(policy_dir: Path) -> list[PolicyProblem]:
    """Problems in ``tags.yaml`` (none when it is sound or absent); rule trees are checked
    against the segments grammar when the tags.apply job runs."""
    path = policy_dir / "tags.yaml"
    if not path.exists():
        return []
    try:
        parse_taxonomy(load_yaml(path))
    except (TaxonomyError, ValueError, yaml.YAMLError) as exc:
        return [PolicyProblem("tags.yaml", None, str(exc))]
    except (AttributeError, TypeError):
        return [PolicyProblem("tags.yaml", None, "groups: expects GROUP: {en, zh, tags: {TAG: {en, zh, ...}}}")]
    return []


def tag_spec(name: str) -> TagSpec | None:
    return load_taxonomy().tags.get(name)
