"""``policies/dsr.yaml``: deadlines, calendars and verification strength per regulation,
loaded once per file content and validated at start-up (file and key named on a problem)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
import yaml

from app.consent.check import PolicyProblem
from app.dsr.models import KINDS, REGULATIONS
from app.ratelimit import parse_rate

FILE = "dsr.yaml"
UNITS = ("months", "days", "working_days")


@dataclass(frozen=True)
class Period:
    """A span in one unit: calendar months, calendar days or working days."""

    unit: str
    count: int


@dataclass(frozen=True)
class RegulationRules:
    name: str
    timezone: ZoneInfo
    country: str
    subdivision: str | None
    deadline: Period
    extension: Period | None
    acknowledge_business_days: int | None
    opt_out_business_days: int | None
    verification: dict[str, int]
    extra_workdays: frozenset[date] = frozenset()
    extra_holidays: frozenset[date] = frozenset()

    def points_needed(self, kind: str, scope: str | None) -> int:
        """Matching data points a request of this kind (and scope) needs; opt-outs need none."""
        if kind == "opt_out":
            return 0
        v = self.verification
        return v.get(f"{kind}_{scope}", v.get(kind, v.get("default", 1)))


@dataclass(frozen=True)
class DsrPolicy:
    regulations: dict[str, RegulationRules]
    code_digits: int = 6
    code_ttl_minutes: int = 30
    max_attempts: int = 5
    public_intake_rate: str = "10/hour"
    due_soon_days: int = 5
    problems: list[PolicyProblem] = field(default_factory=list)


def _period(raw: Any, where: str, problems: list[PolicyProblem]) -> Period | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or len(raw) != 1:
        problems.append(PolicyProblem(FILE, None, f"{where}: give one of {', '.join(UNITS)}"))
        return None
    unit, count = next(iter(raw.items()))
    if unit not in UNITS or not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        problems.append(
            PolicyProblem(FILE, None, f"{where}: {unit} must be one of {', '.join(UNITS)} with a positive whole number")
        )
        return None
    return Period(unit, count)


def _dates(raw: Any, where: str, problems: list[PolicyProblem]) -> frozenset[date]:
    if raw is None:
        return frozenset()
    if not isinstance(raw, list) or not all(isinstance(d, date) for d in raw):
        problems.append(PolicyProblem(FILE, None, f"{where}: a list of ISO dates (YYYY-MM-DD)"))
        return frozenset()
    return frozenset(raw)


def _optional_int(raw: Any, where: str, problems: list[PolicyProblem]) -> int | None:
    if raw is None or (isinstance(raw, int) and not isinstance(raw, bool) and raw > 0):
        return raw
    problems.append(PolicyProblem(FILE, None, f"{where}: a positive whole number or null"))
    return None


def _zone(raw: Any, where: str, problems: list[PolicyProblem]) -> ZoneInfo:
    try:
        return ZoneInfo(str(raw))
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(PolicyProblem(FILE, None, f"{where}: not a known IANA timezone"))
        return ZoneInfo("UTC")


def _calendar(raw: Any, where: str, problems: list[PolicyProblem]) -> tuple[str, str | None]:
    country = raw.get("country") if isinstance(raw, dict) else None
    sub = raw.get("subdivision") if isinstance(raw, dict) else None
    try:
        holidays.country_holidays(str(country), subdiv=sub)
    except NotImplementedError:
        problems.append(
            PolicyProblem(FILE, None, f"{where}: the holidays package has no calendar for this country/subdivision")
        )
        return "DE", None
    return str(country), sub


def _verification(raw: Any, where: str, problems: list[PolicyProblem]) -> dict[str, int]:
    if not isinstance(raw, dict):
        problems.append(PolicyProblem(FILE, None, f"{where}: a mapping of request kind to data points"))
        return {"default": 1}
    out: dict[str, int] = {}
    for key, n in raw.items():
        if str(key).split("_")[0] not in {k.split("_")[0] for k in KINDS} and key != "default":
            problems.append(PolicyProblem(FILE, None, f"{where}.{key}: not a request kind"))
        elif not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 5:
            problems.append(PolicyProblem(FILE, None, f"{where}.{key}: between 1 and 5 data points"))
        else:
            out[str(key)] = n
    return out


def _regulation(name: str, raw: Any, problems: list[PolicyProblem]) -> RegulationRules | None:
    where = f"regulations.{name}"
    if not isinstance(raw, dict):
        problems.append(PolicyProblem(FILE, None, f"{where}: a mapping"))
        return None
    deadline = _period(raw.get("deadline"), f"{where}.deadline", problems)
    if deadline is None:
        problems.append(PolicyProblem(FILE, None, f"{where}.deadline: required"))
        return None
    country, sub = _calendar(raw.get("calendar"), f"{where}.calendar", problems)
    return RegulationRules(
        name=name,
        timezone=_zone(raw.get("timezone", "UTC"), f"{where}.timezone", problems),
        country=country,
        subdivision=sub,
        deadline=deadline,
        extension=_period(raw.get("extension"), f"{where}.extension", problems),
        acknowledge_business_days=_optional_int(
            raw.get("acknowledge_business_days"), f"{where}.acknowledge_business_days", problems
        ),
        opt_out_business_days=_optional_int(
            raw.get("opt_out_business_days"), f"{where}.opt_out_business_days", problems
        ),
        verification=_verification(raw.get("verification", {"default": 1}), f"{where}.verification", problems),
        extra_workdays=_dates(raw.get("extra_workdays"), f"{where}.extra_workdays", problems),
        extra_holidays=_dates(raw.get("extra_holidays"), f"{where}.extra_holidays", problems),
    )


def parse_policy(text: str) -> DsrPolicy:
    """The policy in ``text``; problems are collected on ``DsrPolicy.problems``, never raised."""
    problems: list[PolicyProblem] = []
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return DsrPolicy({}, problems=[PolicyProblem(FILE, mark.line + 1 if mark else None, "not valid YAML")])
    regs = raw.get("regulations") if isinstance(raw, dict) else None
    if not isinstance(regs, dict):
        return DsrPolicy({}, problems=[PolicyProblem(FILE, None, "regulations: a mapping per regulation is required")])
    rules = {}
    for name in REGULATIONS:
        if name not in regs:
            problems.append(PolicyProblem(FILE, None, f"regulations.{name}: missing"))
        elif (r := _regulation(name, regs[name], problems)) is not None:
            rules[name] = r
    for extra in sorted(set(regs) - set(REGULATIONS)):
        problems.append(
            PolicyProblem(FILE, None, f"regulations.{extra}: unknown regulation (known: {', '.join(REGULATIONS)})")
        )
    code = raw.get("code") or {}
    return DsrPolicy(
        rules,
        code_digits=_bounded(code.get("digits", 6), "code.digits", 6, 10, problems),
        code_ttl_minutes=_bounded(code.get("ttl_minutes", 30), "code.ttl_minutes", 1, 1440, problems),
        max_attempts=_bounded(code.get("max_attempts", 5), "code.max_attempts", 1, 20, problems),
        public_intake_rate=_rate(raw.get("public_intake_rate", "10/hour"), problems),
        due_soon_days=_bounded(raw.get("due_soon_days", 5), "due_soon_days", 1, 60, problems),
        problems=problems,
    )


def _rate(raw: Any, problems: list[PolicyProblem]) -> str:
    """``N/unit``; ``off`` (YAML reads a bare off as false) for no limit of its own."""
    if raw is False or raw is None:
        return "off"
    try:
        parse_rate(str(raw))
    except ValueError:
        problems.append(
            PolicyProblem(FILE, None, "public_intake_rate: like 10/hour (second, minute, hour, day) or off")
        )
        return "10/hour"
    return str(raw)


def _bounded(raw: Any, where: str, low: int, high: int, problems: list[PolicyProblem]) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool) and low <= raw <= high:
        return raw
    problems.append(PolicyProblem(FILE, None, f"{where}: a whole number from {low} to {high}"))
    return low


@lru_cache(maxsize=8)
def _cached(path: str, digest: str) -> DsrPolicy:
    return parse_policy(Path(path).read_text(encoding="utf-8"))


def load_policy(policy_dir: Path) -> DsrPolicy:
    """The DSR policy of ``policy_dir`` (re-read when the file changes)."""
    path = policy_dir / FILE
    if not path.is_file():
        return DsrPolicy({}, problems=[PolicyProblem(FILE, None, "missing")])
    return _cached(str(path), hashlib.sha256(path.read_bytes()).hexdigest())


def check_dsr_policy(policy_dir: Path) -> list[PolicyProblem]:
    """Every problem in ``dsr.yaml`` (empty: sound)."""
    return list(load_policy(policy_dir).problems)
