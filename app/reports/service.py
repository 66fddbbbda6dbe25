"""Dashboard figures: a segment's size over time, consent rates by purpose and jurisdiction,
reach per purpose, the overlap of two segments. Aggregates only, never a person.

Every count of people who may be used comes from the decision engine: ``decide_population``
(counts by denial reason, recorded when some are denied) or its ``population_predicate``
(the same rule as one SQL condition, for counts grouped by region). Counts below
``CONSENTRY_SEGMENT_MIN_COUNT`` read ``<10`` to roles that see masked values for the purpose,
and a rate is left out (None) when either of its counts is masked. Masking each figure does
not stop differencing (``a`` minus ``both`` in an overlap): the threshold keeps a single
report from naming a person, not a series of them.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.consent.gate import authorize, decide
from app.decisions.engine import Ask
from app.decisions.service import current_rules, decide_population, population_predicate
from app.errors import InvalidField, NotFound
from app.ledger.service import record
from app.profiles.service import population
from app.segments.service import counts, get_segment, member_of, shown, sizes
from app.settings import get_settings

REPORTING = "analytics.reporting"
"""The purpose reports are recorded under (aggregates for the marketing team's dashboard)."""


def _masked(principal: Principal, purpose: str) -> bool:
    return decide(principal, purpose).reveal != "plain"


def _figures(total: int, usable: int, masked: bool) -> dict[str, Any]:
    floor_hit = masked and (total < _floor() or usable < _floor())
    rate = None if floor_hit or not total else round(usable / total, 4)
    return {"total": shown(total, masked), "usable": shown(usable, masked), "rate": rate}


def _floor() -> int:
    return get_settings().segment_min_count


async def _recorded(session: AsyncSession, principal: Principal, report: str, details: dict[str, Any]) -> None:
    purpose = REPORTING if REPORTING in current_rules().purposes else None
    await record(session, principal, f"report.{report}", purpose=purpose, details=details)


async def segment_sizes(session: AsyncSession, principal: Principal, segment_id: str, limit: int) -> dict[str, Any]:
    """The segment's size at each refresh, oldest first, and now (members, and how many of
    them may be used for its purpose with counts by denial reason)."""
    seg = await get_segment(session, segment_id)
    points = list(reversed(await sizes(session, principal, seg.id, limit)))
    current = await counts(session, principal, seg.purpose, member_of(seg.id), datetime.now(UTC))
    current.pop("_allowed")
    await _recorded(session, principal, "segment_sizes", {"segment_id": seg.id, "points": len(points)})
    return {"segment_id": seg.id, "purpose": seg.purpose, "now": current, "points": points}


async def consent_rates(session: AsyncSession, principal: Principal) -> dict[str, Any]:
    """Per purpose: how many surviving people may be used for it and the rate, overall, by
    jurisdiction and by region (a profile without a region falls under the default regime)."""
    rules = current_rules()
    now = datetime.now(UTC)
    table, person, region, live = population()
    out = []
    for purpose in sorted(rules.purposes):
        ok = population_predicate(Ask(purpose), person, region, now)
        q = select(region, func.count(), func.sum(case((ok, 1), else_=0))).select_from(table).where(live)
        rows = [(r, int(n), int(u or 0)) for r, n, u in (await session.execute(q.group_by(region))).all()]
        masked = _masked(principal, purpose)
        by_j: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r, n, u in rows:
            pair = by_j[rules.jurisdiction_of(r).name]
            pair[0] += n
            pair[1] += u
        out.append(
            {
                "purpose": purpose,
                **_figures(sum(n for _r, n, _u in rows), sum(u for _r, _n, u in rows), masked),
                "by_jurisdiction": [
                    {"jurisdiction": j, **_figures(n, u, masked)} for j, (n, u) in sorted(by_j.items())
                ],
                "by_region": [
                    {"region": r, "jurisdiction": rules.jurisdiction_of(r).name, **_figures(n, u, masked)}
                    for r, n, u in sorted(rows, key=lambda row: row[0] or "")
                ],
            }
        )
    await _recorded(session, principal, "consent_rates", {"purposes": len(out)})
    return {"policy_version": rules.version, "purposes": out}


async def reach(session: AsyncSession, principal: Principal) -> dict[str, Any]:
    """Per purpose: how many surviving people the caller's role may use for it, and why not
    the others (``role may not use purpose`` when the role has no access to the purpose)."""
    rules = current_rules()
    now = datetime.now(UTC)
    out = []
    for purpose in sorted(rules.purposes):
        verdict = await decide_population(session, principal, Ask(purpose), now)
        masked = _masked(principal, purpose)
        out.append(
            {
                "purpose": purpose,
                **_figures(verdict.total, verdict.allowed, masked),
                "denied": {r: shown(n, masked) for r, n in sorted(verdict.denied.items())},
            }
        )
    await _recorded(session, principal, "reach", {"purposes": len(out)})
    return {"policy_version": rules.version, "purposes": out}


async def overlap(session: AsyncSession, principal: Principal, a: str, b: str, purpose: str | None) -> dict[str, Any]:
    """Members of segment ``a``, of ``b``, of both and of either, each with how many may be
    used for ``purpose`` (default: ``a``'s purpose). The role must be allowed to use both
    segments' purposes and this one."""
    segs = []
    for field, sid in (("a", a), ("b", b)):
        try:
            segs.append(await get_segment(session, sid))
        except NotFound as exc:
            raise NotFound("no segment with this id", field=field) from exc
    use = purpose or segs[0].purpose
    if use not in current_rules().purposes:
        raise InvalidField("is not a purpose in policies/purposes.yaml", field="purpose")
    for p in sorted({s.purpose for s in segs} | {use}):
        await authorize(session, principal, "segment.use", [], p)
    in_a, in_b = member_of(segs[0].id), member_of(segs[1].id)
    now = datetime.now(UTC)
    figures = {}
    for name, within in (("a", in_a), ("b", in_b), ("both", in_a & in_b), ("either", in_a | in_b)):
        got = await counts(session, principal, use, within, now)
        got.pop("_allowed")
        got.pop("policy_version")
        figures[name] = got
    await _recorded(session, principal, "overlap", {"a": segs[0].id, "b": segs[1].id})
    return {"segments": {"a": segs[0].id, "b": segs[1].id}, "purpose": use, **figures}
