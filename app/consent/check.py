"""Validate every policy file in ``policies/`` before it is used, with file and line.

``check_policies(dir)`` parses each file with its node marks (``yaml.compose``), checks
keys, types and allowed values, then the cross-references between files (a data category
that is not in the vocabulary, a purpose or a jurisdiction that is not declared), and
returns one ``PolicyProblem`` per finding, naming the line where the bad value is written.
``consentry policy check`` prints them; the service refuses to start while there are any.

The vocabulary of data categories is ``policies/taxonomy.yaml`` (fideslang's keys, plus
our own extensions such as ``user.unknown``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from app.access.models import ROLES

PURPOSES = "purposes.yaml"
DATA_CATEGORIES = "data_categories.yaml"
IDENTITY = "identity.yaml"
TEXT_CHANNELS = "text_channels.yaml"
JURISDICTIONS = "jurisdictions.yaml"
NOTICES = "notices.yaml"
CONSENT_MAPPING = "consent_mapping.yaml"
RETENTION = "retention.yaml"
TAXONOMY = "taxonomy.yaml"
DSR = "dsr.yaml"
"""Checked by ``app.dsr.policy.check_dsr_policy`` (start-up and ``consentry policy check`` run
both); listed here so its content is part of the checked set's digest."""
TRAITS = "computed_traits.yaml"
"""Checked by ``app.traits.catalog.check_traits_policy`` (start-up and ``consentry policy check``)."""
TAGS = "tags.yaml"
"""Checked by ``app.tags.taxonomy.check_tags_policy`` (start-up and ``consentry policy check``)."""
CHECKED_FILES = (
    TAXONOMY,
    PURPOSES,
    DATA_CATEGORIES,
    IDENTITY,
    TEXT_CHANNELS,
    JURISDICTIONS,
    NOTICES,
    CONSENT_MAPPING,
    RETENTION,
    DSR,
    TRAITS,
    TAGS,
)

REVEALS = ("plain", "masked", "none")
NORMALIZE = ("email", "phone", "date", "text", "any")
MODES = ("opt_in", "opt_out", "none")
LEGAL_BASES = (
    "consent",
    "contract",
    "legal_obligation",
    "vital_interests",
    "public_task",
    "legitimate_interest",
)
"""GDPR Art. 6(1) (a)-(f); PIPL Art. 13's bases map onto the same names."""
TCF_PURPOSES = range(1, 12)
"""IAB TCF v2.2 purposes 1-11."""
TAXONOMY_KEY = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
SUBDIVISION = re.compile(r"^([A-Z]{2})-[A-Z0-9]{1,3}$")
_ISO_3166_1 = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW
"""
ISO_3166_1 = frozenset(_ISO_3166_1.split())
"""ISO 3166-1 alpha-2 country codes (the 249 officially assigned ones)."""


@dataclass(frozen=True)
class PolicyProblem:
    file: str
    line: int | None
    problem: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.problem}" if self.line else f"{self.file}: {self.problem}"


class PolicyError(RuntimeError):
    """The policy files are broken; ``problems`` says where."""

    def __init__(self, policy_dir: Path, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        lines = "\n".join(str(p) for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the policy files of {policy_dir}:\n{lines}")


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return f"{_value(node)!r}"


_CONSTRUCTOR = yaml.SafeLoader("")


def _value(node: Node) -> Any:
    """The Python value of a node (SafeLoader's own resolution: ints, bools, dates…)."""
    try:
        return _CONSTRUCTOR.construct_object(node, deep=True)  # type: ignore[no-untyped-call]
    finally:
        _CONSTRUCTOR.constructed_objects.clear()
        _CONSTRUCTOR.recursive_objects.clear()


def _unconstructable(root: Node) -> tuple[Node, Exception] | None:
    """The first scalar whose value cannot be built (``2026-02-30``, a bad ``!!int``)."""
    stack = [root]
    while stack:
        node = stack.pop(0)
        if isinstance(node, MappingNode):
            stack[:0] = [n for pair in node.value for n in pair]
        elif isinstance(node, SequenceNode):
            stack[:0] = list(node.value)
        else:
            try:
                _value(node)
            except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
                return node, exc
    return None


class _Checker:
    def __init__(self, policy_dir: Path) -> None:
        self.dir = policy_dir
        self.problems: list[PolicyProblem] = []
        self.file = ""
        self.categories: set[str] | None = None
        self.purposes: dict[str, set[str]] | None = None
        """Purpose → the roles that may use it (None: purposes.yaml is unreadable)."""
        self.traits: set[str] | None = None
        self.jurisdictions: set[str] | None = None

    # -- reporting and typed access ------------------------------------------------------

    def add(self, node: Node | None, problem: str) -> None:
        self.problems.append(PolicyProblem(self.file, _line(node) if node is not None else None, problem))

    def parse(self, name: str) -> MappingNode | None:
        """The file's root mapping node, or None after reporting why it cannot be read."""
        self.file = name
        path = self.dir / name
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self.add(None, "file is missing")
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.add(None, f"cannot be read: {exc}")
            return None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            what = " ".join(str(s) for s in (exc.context, exc.problem) if s)
            self.problems.append(
                PolicyProblem(name, int(mark.line) + 1 if mark else None, f"YAML syntax error: {what}")
            )
            return None
        except yaml.YAMLError as exc:
            self.add(None, f"YAML error: {exc}")
            return None
        if not isinstance(root, MappingNode):
            self.problems.append(PolicyProblem(name, _line(root) if root else 1, "must hold a mapping"))
            return None
        bad = _unconstructable(root)
        if bad is not None:
            node, error = bad
            self.add(node, f"unreadable value {node.value!r}: {error}")
            return None
        return root

    def items(self, node: MappingNode) -> Iterator[tuple[str, Node, Node]]:
        """(key, key node, value node); duplicate and non-scalar keys are reported and skipped."""
        seen: dict[str, int] = {}
        for k, v in node.value:
            if not isinstance(k, ScalarNode):
                self.add(k, "a key must be a plain name")
                continue
            key = str(_value(k))
            if key in seen:
                self.add(k, f"duplicate key {key!r} (first on line {seen[key]})")
                continue
            seen[key] = _line(k)
            yield key, k, v

    def fields(
        self, node: Node, what: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> dict[str, Node] | None:
        """A mapping with a fixed set of keys: missing and unknown keys are problems."""
        if not isinstance(node, MappingNode):
            self.add(node, f"{what} must be a mapping, not {_kind(node)}")
            return None
        out: dict[str, Node] = {}
        for key, knode, vnode in self.items(node):
            if key not in required and key not in optional:
                allowed = ", ".join((*required, *optional))
                self.add(knode, f"{what}: unknown key {key!r} (allowed: {allowed})")
                continue
            out[key] = vnode
        for key in required:
            if key not in out:
                self.add(node, f"{what}: missing {key!r}")
        return out

    def mapping(self, node: Node | None, what: str) -> list[tuple[str, Node, Node]]:
        if node is None:
            return []
        if isinstance(node, ScalarNode) and _value(node) is None:
            return []
        if not isinstance(node, MappingNode):
            self.add(node, f"{what} must be a mapping, not {_kind(node)}")
            return []
        return list(self.items(node))

    def seq(self, node: Node | None, what: str) -> list[Node]:
        if node is None:
            return []
        if isinstance(node, ScalarNode) and _value(node) is None:
            return []
        if not isinstance(node, SequenceNode):
            self.add(node, f"{what} must be a list, not {_kind(node)}")
            return []
        return list(node.value)

    def string(self, node: Node | None, what: str) -> str | None:
        if node is None:
            return None
        v = _value(node) if isinstance(node, ScalarNode) else None
        if not isinstance(v, str) or not v.strip():
            self.add(node, f"{what} must be a non-empty string, not {_kind(node)}")
            return None
        return v

    def strings(self, node: Node | None, what: str) -> list[tuple[str, Node]]:
        out = []
        for item in self.seq(node, what):
            s = self.string(item, f"{what} item")
            if s is not None:
                out.append((s, item))
        return out

    def boolean(self, node: Node | None, what: str) -> None:
        if node is not None and not isinstance(_value(node) if isinstance(node, ScalarNode) else None, bool):
            self.add(node, f"{what} must be true or false, not {_kind(node)}")

    def integer(self, node: Node | None, what: str, minimum: int = 1) -> int | None:
        if node is None:
            return None
        v = _value(node) if isinstance(node, ScalarNode) else None
        if not isinstance(v, int) or isinstance(v, bool):
            self.add(node, f"{what} must be a whole number, not {_kind(node)}")
            return None
        if v < minimum:
            self.add(node, f"{what} must be at least {minimum}, not {v}")
            return None
        return v

    def one_of(self, node: Node | None, what: str, allowed: tuple[str, ...]) -> str | None:
        if node is None:
            return None
        v = _value(node) if isinstance(node, ScalarNode) else None
        if v not in allowed:
            self.add(node, f"{what} must be one of {', '.join(allowed)}, not {_kind(node)}")
            return None
        return str(v)

    def category(self, name: str, node: Node, what: str) -> None:
        if self.categories is not None and name not in self.categories:
            self.add(node, f"{what}: unknown data category {name!r} (not in {TAXONOMY})")

    def purpose(self, name: str, node: Node, what: str) -> None:
        if self.purposes is not None and name not in self.purposes:
            self.add(node, f"{what}: unknown purpose {name!r} (not in {PURPOSES})")

    # -- the files -----------------------------------------------------------------------

    def taxonomy(self) -> None:
        root = self.parse(TAXONOMY)
        if root is None:
            return
        f = self.fields(root, TAXONOMY, ("data_categories", "data_uses"), ("extensions",))
        if f is None:
            return
        categories: dict[str, Node] = {}

        def keys(node: Node | None, what: str, into: dict[str, Node]) -> None:
            for key, knode, vnode in self.mapping(node, what):
                if not TAXONOMY_KEY.match(key):
                    self.add(knode, f"{what}: {key!r} is not a dotted lower-case key")
                elif key in into:
                    self.add(knode, f"{what}: {key!r} is already defined on line {_line(into[key])}")
                else:
                    into[key] = knode
                self.string(vnode, f"{what}: {key} description")

        keys(f.get("data_categories"), "data_categories", categories)
        keys(f.get("data_uses"), "data_uses", {})
        ext = self.fields(f["extensions"], "extensions", (), ("data_categories",)) if "extensions" in f else {}
        keys((ext or {}).get("data_categories"), "extensions.data_categories", categories)
        for key, knode in categories.items():
            parent = key.rpartition(".")[0]
            if parent and parent not in categories:
                self.add(knode, f"data category {key!r} has no parent {parent!r}")
        self.categories = set(categories)

    def purposes_file(self) -> None:
        root = self.parse(PURPOSES)
        if root is None:
            return
        f = self.fields(root, PURPOSES, ("purposes",), ("role_defaults",))
        if f is None:
            return
        purposes: dict[str, set[str]] = {}
        for pid, knode, spec in self.mapping(f.get("purposes"), "purposes"):
            if not TAXONOMY_KEY.match(pid):
                self.add(knode, f"purpose {pid!r} is not a dotted lower-case key")
            what = f"purpose {pid}"
            s = self.fields(spec, what, ("description", "legal_basis", "roles", "reveal", "categories", "profiling"))
            roles: set[str] = set()
            if s is not None:
                self.string(s.get("description"), f"{what}: description")
                self.one_of(s.get("legal_basis"), f"{what}: legal_basis", LEGAL_BASES)
                for role, rnode in self.strings(s.get("roles"), f"{what}: roles"):
                    if role not in ROLES:
                        self.add(rnode, f"{what}: unknown role {role!r} (roles: {', '.join(ROLES)})")
                    roles.add(role)
                self.one_of(s.get("reveal"), f"{what}: reveal", REVEALS)
                for cat, cnode in self.strings(s.get("categories"), f"{what}: categories"):
                    self.category(cat, cnode, f"{what}: categories")
                self.boolean(s.get("profiling"), f"{what}: profiling")
            purposes[pid] = roles
        self.purposes = purposes
        for role, knode, vnode in self.mapping(f.get("role_defaults"), "role_defaults"):
            if role not in ROLES:
                self.add(knode, f"role_defaults: unknown role {role!r} (roles: {', '.join(ROLES)})")
            default = self.string(vnode, f"role_defaults: {role}")
            if default is None:
                continue
            if default not in purposes:
                self.add(vnode, f"role_defaults: {role} -> unknown purpose {default!r}")
            elif role not in purposes[default]:
                self.add(vnode, f"role_defaults: {role} -> {default}, a purpose the role {role!r} may not use")

    def data_categories(self) -> None:
        root = self.parse(DATA_CATEGORIES)
        if root is None:
            return
        f = self.fields(
            root,
            DATA_CATEGORIES,
            ("traits",),
            ("aliases", "non_personal", "properties_not_personal", "name_patterns"),
        )
        if f is None:
            return
        traits: set[str] = set()
        for name, _knode, spec in self.mapping(f.get("traits"), "traits"):
            what = f"trait {name}"
            s = self.fields(spec, what, ("category",), ("identifier", "normalize", "index"))
            traits.add(name)
            if s is None:
                continue
            cat = self.string(s.get("category"), f"{what}: category")
            if cat is not None:
                self.category(cat, s["category"], what)
            self.boolean(s.get("identifier"), f"{what}: identifier")
            self.one_of(s.get("normalize"), f"{what}: normalize", NORMALIZE)
            self.string(s.get("index"), f"{what}: index")
        self.traits = traits
        for alias, _knode, vnode in self.mapping(f.get("aliases"), "aliases"):
            target = self.string(vnode, f"alias {alias}")
            if target is not None and target not in traits:
                self.add(vnode, f"alias {alias!r} points to unknown trait {target!r}")
        for key in ("non_personal", "properties_not_personal"):
            for item in self.seq(f.get(key), key):
                v = _value(item) if isinstance(item, ScalarNode) else None
                if v is None or isinstance(v, bool) or not str(v).strip():
                    self.add(item, f"{key} items must be field names, not {_kind(item)}")
        for cat, knode, vnode in self.mapping(f.get("name_patterns"), "name_patterns"):
            self.category(cat, knode, "name_patterns")
            for pattern, pnode in self.strings(vnode, f"name_patterns {cat}"):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    self.add(pnode, f"name_patterns {cat}: invalid regular expression {pattern!r}: {exc}")

    def identity(self) -> None:
        root = self.parse(IDENTITY)
        if root is None:
            return
        f = self.fields(root, IDENTITY, ("identifiers",), ("blocked_values", "trait_authority"))
        if f is None:
            return
        for kind, _knode, spec in self.mapping(f.get("identifiers"), "identifiers"):
            what = f"identifier {kind}"
            s = self.fields(spec, what, ("cap",), ("merge", "stitch_only"))
            if s is None:
                continue
            self.integer(s.get("cap"), f"{what}: cap")
            self.boolean(s.get("merge"), f"{what}: merge")
            self.boolean(s.get("stitch_only"), f"{what}: stitch_only")
        for item in self.seq(f.get("blocked_values"), "blocked_values"):
            if not isinstance(item, ScalarNode):
                self.add(item, f"blocked_values items must be plain values, not {_kind(item)}")
        for trait, knode, vnode in self.mapping(f.get("trait_authority"), "trait_authority"):
            if self.traits is not None and trait not in self.traits:
                self.add(knode, f"trait_authority: unknown trait {trait!r} (not in {DATA_CATEGORIES} traits)")
            self.strings(vnode, f"trait_authority {trait}")

    def text_channels(self) -> None:
        root = self.parse(TEXT_CHANNELS)
        if root is None:
            return
        f = self.fields(root, TEXT_CHANNELS, ("channels",))
        if f is None:
            return
        for name, _knode, spec in self.mapping(f.get("channels"), "channels"):
            self.mapping(spec, f"channel {name}")

    def jurisdictions_file(self) -> None:
        root = self.parse(JURISDICTIONS)
        if root is None:
            return
        f = self.fields(root, JURISDICTIONS, ("default", "jurisdictions"))
        if f is None:
            return
        names: set[str] = set()
        region_of: dict[str, tuple[str, int]] = {}
        for name, _knode, spec in self.mapping(f.get("jurisdictions"), "jurisdictions"):
            names.add(name)
            what = f"jurisdiction {name}"
            s = self.fields(
                spec,
                what,
                ("regions", "minor_age", "purposes"),
                ("gpc", "gpc_overridable", "sensitive", "profiling_refusal", "cross_border_consent"),
            )
            if s is None:
                continue
            for region, rnode in self.strings(s.get("regions"), f"{what}: regions"):
                sub = SUBDIVISION.match(region)
                if region not in ISO_3166_1 and not (sub and sub.group(1) in ISO_3166_1):
                    self.add(rnode, f"{what}: {region!r} is not an ISO 3166 country code or country-subdivision")
                elif region in region_of:
                    other, line = region_of[region]
                    self.add(rnode, f"{what}: region {region} is already in jurisdiction {other} (line {line})")
                else:
                    region_of[region] = (name, _line(rnode))
            age = self.integer(s.get("minor_age"), f"{what}: minor_age")
            if age is not None and age > 21:
                self.add(s["minor_age"], f"{what}: minor_age {age} is not an age of majority")
            for pid, pnode, mnode in self.mapping(s.get("purposes"), f"{what}: purposes"):
                self.purpose(pid, pnode, f"{what}: purposes")
                self.one_of(mnode, f"{what}: purposes: {pid}", MODES)
            for pid, pnode in self.strings(s.get("gpc"), f"{what}: gpc"):
                self.purpose(pid, pnode, f"{what}: gpc")
            for cat, cnode in self.strings(s.get("sensitive"), f"{what}: sensitive"):
                self.category(cat, cnode, f"{what}: sensitive")
            for key in ("gpc_overridable", "profiling_refusal", "cross_border_consent"):
                self.boolean(s.get(key), f"{what}: {key}")
        self.jurisdictions = names
        default = self.string(f.get("default"), "default")
        if default is not None and default not in names:
            self.add(f["default"], f"default: unknown jurisdiction {default!r} (not under jurisdictions)")

    def notices(self) -> None:
        root = self.parse(NOTICES)
        if root is None:
            return
        f = self.fields(root, NOTICES, ("notices", "current"))
        if f is None:
            return
        ids: set[str] = set()
        for nid, _knode, spec in self.mapping(f.get("notices"), "notices"):
            ids.add(nid)
            what = f"notice {nid}"
            s = self.fields(spec, what, ("title", "effective"), ("language", "url"))
            if s is None:
                continue
            self.string(s.get("title"), f"{what}: title")
            if "effective" in s and not isinstance(_value(s["effective"]), date):
                self.add(s["effective"], f"{what}: effective must be a date (YYYY-MM-DD)")
            self.strings(s.get("language"), f"{what}: language")
            self.string(s.get("url"), f"{what}: url")
        current = self.string(f.get("current"), "current")
        if current is not None and current not in ids:
            self.add(f["current"], f"current: unknown notice {current!r} (not under notices)")

    def consent_mapping(self) -> None:
        root = self.parse(CONSENT_MAPPING)
        if root is None:
            return
        for tool, _knode, ids in self.items(root):
            for cid, cnode, pnode in self.mapping(ids, tool):
                if tool == "tcf" and not (cid.isdigit() and int(cid) in TCF_PURPOSES):
                    self.add(cnode, f"tcf: {cid!r} is not a TCF v2.2 purpose id (1-11)")
                for pid, node in self.strings(pnode, f"{tool} {cid}"):
                    self.purpose(pid, node, f"{tool} {cid}")

    def retention(self) -> None:
        root = self.parse(RETENTION)
        if root is None:
            return
        f = self.fields(root, RETENTION, (), ("categories", "purposes", "inactive_profile_days"))
        if f is None:
            return
        for cat, knode, vnode in self.mapping(f.get("categories"), "categories"):
            self.category(cat, knode, "categories")
            self.integer(vnode, f"categories: {cat} (days)")
        for pid, knode, vnode in self.mapping(f.get("purposes"), "purposes"):
            self.purpose(pid, knode, "purposes")
            self.integer(vnode, f"purposes: {pid} (days)")
        self.integer(f.get("inactive_profile_days"), "inactive_profile_days")


STEPS: tuple[Callable[[_Checker], None], ...] = (
    _Checker.taxonomy,
    _Checker.purposes_file,
    _Checker.data_categories,
    _Checker.identity,
    _Checker.text_channels,
    _Checker.jurisdictions_file,
    _Checker.notices,
    _Checker.consent_mapping,
    _Checker.retention,
)
"""In dependency order: each file's cross-references are checked against the ones before."""

_cache: dict[tuple[str, str], list[PolicyProblem]] = {}


def _digest(policy_dir: Path) -> str:
    h = hashlib.sha256()
    for name in CHECKED_FILES:
        path = policy_dir / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"\1missing") + b"\0")
    return h.hexdigest()


def check_policies(policy_dir: Path) -> list[PolicyProblem]:
    """Every problem in the policy files of ``policy_dir`` (empty: the policies are sound).

    The result is cached per directory and content, so starting many apps (tests) reads the
    files once; an edited file is checked again."""
    key = (str(policy_dir.resolve()), _digest(policy_dir))
    if key not in _cache:
        checker = _Checker(policy_dir)
        for step in STEPS:
            step(checker)
        _cache[key] = checker.problems
    return list(_cache[key])


def require_sound_policies(policy_dir: Path) -> None:
    """Raise ``PolicyError`` (listing file, line and problem) unless the policies are sound."""
    problems = check_policies(policy_dir)
    if problems:
        raise PolicyError(policy_dir, problems)
