"""The one decision engine: may this person's data be used for this purpose, and why not.

A decision is a SQL ``CASE`` over the person's region (→ jurisdiction), consent states,
privacy flags and GPC signals, built once per (purpose, categories) ask. Applied to one
profile it answers a single decision; applied to a whole population it is a predicate the
caller joins into its own query, with counts by reason in one ``GROUP BY``. Both use the
same expression, so they cannot disagree.

Reasons (a fixed vocabulary, ``REASONS``) are checked in this order: restricted,
suppressed, profiling refused, minor without guardian consent, GPC, sensitive category
without explicit consent, cross-border transfer without consent, withdrawn, denied, no
consent (opt-in regimes) or opted out (opt-out regimes). Role and purpose are checked
before any person is looked at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal, or_

from app.consent.records import When, constants, flag_clause, flags_clause, guardian_clause, state_clause
from app.consent.rules import Jurisdiction, Rules
from app.identity.service import gpc_clause

REASONS = (
    "allowed",
    "unknown purpose",
    "role may not use purpose",
    "restricted",
    "suppressed",
    "profiling refused",
    "minor without guardian consent",
    "GPC",
    "sensitive category without explicit consent",
    "cross-border transfer not consented",
    "withdrawn",
    "denied",
    "no consent",
    "opted out",
)
RULES = {
    "allowed": "no rule stands in the way",
    "restricted": "the person restricted processing (GDPR Art. 18); only storage and legal claims remain",
    "suppressed": "the person is suppressed (erased or do-not-contact): nothing may be used",
    "profiling refused": "jurisdictions.yaml profiling_refusal, purposes.yaml profiling: true, and the person refused",
    "minor without guardian consent": "jurisdictions.yaml minor_age: consent must come from a guardian",
    "GPC": "jurisdictions.yaml gpc: a Global Privacy Control signal opts the person out of this purpose",
    "sensitive category without explicit consent": "jurisdictions.yaml sensitive: needs a grant of sensitive:<c>",
    "cross-border transfer not consented": "jurisdictions.yaml cross_border_consent: needs cross_border:<purpose>",
    "withdrawn": "the person withdrew consent for this purpose",
    "denied": "the person refused consent for this purpose",
    "no consent": "jurisdictions.yaml: the purpose is opt-in here and there is no current grant",
    "opted out": "jurisdictions.yaml: the purpose is opt-out here and the person opted out",
}


@dataclass(frozen=True)
class Ask:
    """What a caller wants to do with people's data."""

    purpose: str
    categories: tuple[str, ...] = ()
    cross_border: bool = False


@dataclass
class Verdict:
    allowed: bool
    reason: str
    jurisdiction: str
    policy_version: str
    categories: list[str] = field(default_factory=list)
    """The asked categories the purpose may receive (all of them when none were asked)."""
    rule: str = ""


def region_clause(region: Any, j: Jurisdiction) -> ColumnElement[bool]:
    """SQL: a region (``DE``, ``US-CA``) belongs to the jurisdiction (by itself or its country)."""
    listed = sorted(j.regions)
    return or_(region.in_(constants(listed)), func.substr(region, 1, 2).in_(constants(listed)))


def jurisdiction_expr(rules: Rules, region: Any) -> ColumnElement[str]:
    """SQL: the jurisdiction's name for a region column (the default, strictest, when unknown)."""
    whens = [(region_clause(region, j), literal(name)) for name, j in rules.jurisdictions.items() if j.regions]
    return case(*whens, else_=literal(rules.default))


def _reason_in(j: Jurisdiction, rules: Rules, ask: Ask, person: Any, now: When) -> ColumnElement[str]:
    mode = j.mode(ask.purpose)
    purpose = rules.purposes[ask.purpose]
    sensitive = [c for c in ask.categories if j.is_sensitive(c)]
    if mode == "none" and not sensitive and not (ask.cross_border and j.cross_border_consent):
        return literal("allowed")
    whens: list[tuple[ColumnElement[bool], str]] = []
    flagged: list[str] = []  # the flags the first ``flag_whens`` conditions look at
    flag_whens = 0
    if mode != "none":
        whens += [(flag_clause(person, f, now), f) for f in ("restricted", "suppressed")]
        flagged += ["restricted", "suppressed"]
        if purpose.profiling and j.profiling_refusal:
            whens.append((flag_clause(person, "profiling_refused", now), "profiling refused"))
            flagged.append("profiling_refused")
        minor = flag_clause(person, "minor_under_14", now)  # under 14 is under 16 as well
        flagged.append("minor_under_14")
        if j.minor_age > 14:
            minor = or_(minor, flag_clause(person, "minor_under_16", now))
            flagged.append("minor_under_16")
        no_guardian = ~guardian_clause(person, ask.purpose, now)
        whens.append((and_(minor, no_guardian), "minor without guardian consent"))
        flag_whens = len(whens)
        if ask.purpose in j.gpc:
            whens.append((gpc_clause(person, _later_grant(person, ask.purpose, now, j)), "GPC"))
    for category in sensitive:
        explicit = state_clause(person, f"sensitive:{category}", ["granted"], now)
        whens.append((~explicit, "sensitive category without explicit consent"))
    if ask.cross_border and j.cross_border_consent:
        transfer = state_clause(person, f"cross_border:{ask.purpose}", ["granted"], now)
        whens.append((~transfer, "cross-border transfer not consented"))
    if mode != "none":
        whens.append((state_clause(person, ask.purpose, ["withdrawn"], now), "withdrawn"))
        whens.append((state_clause(person, ask.purpose, ["denied"], now), "denied"))
        if mode == "opt_in":
            whens.append((~state_clause(person, ask.purpose, ["granted"], now), "no consent"))
    full = case(*[(cond, literal(reason)) for cond, reason in whens], else_=literal("allowed"))
    if not flagged:
        return full
    # Most people carry none of these flags: one probe for all of them, and without any the
    # flag conditions are all false, so the remaining conditions decide alone (same result).
    rest = whens[flag_whens:]
    unflagged = case(*[(c, literal(r)) for c, r in rest], else_=literal("allowed")) if rest else literal("allowed")
    return case((flags_clause(person, flagged), full), else_=unflagged)


def _later_grant(person: Any, purpose: str, now: When, j: Jurisdiction) -> Any:
    """Where the regime lets a later explicit opt-in override GPC: that grant, given the signal's time."""
    if not j.gpc_overridable:
        return None
    return lambda at: state_clause(person, purpose, ["granted"], now, after=at)


def reason_expr(rules: Rules, ask: Ask, person: Any, region: Any, now: When) -> ColumnElement[str]:
    """SQL: the reason the person (a column with the surviving profile id, and its region
    column) may not be used for ``ask`` — ``'allowed'`` when nothing stands in the way.
    ``now`` is a time or a bound parameter standing for one."""
    whens = [
        (region_clause(region, j), _reason_in(j, rules, ask, person, now))
        for j in rules.jurisdictions.values()
        if j.regions
    ]
    default = _reason_in(rules.jurisdictions[rules.default], rules, ask, person, now)
    return case(*whens, else_=default)


def allowed_categories(rules: Rules, ask: Ask) -> list[str]:
    """The asked categories the purpose may receive (purposes.yaml ``categories``)."""
    use = rules.purposes[ask.purpose]
    return [c for c in ask.categories if use.may_receive(c)] if ask.categories else list(use.categories)
