"""What the marketer's activation and journey pages ask of those domains' services.

Destinations are shown as ``app.activation.destinations.view`` shows them (never a secret),
runs as ``app.activation.service.report`` reports them (excluded counts masked for the role),
journey sends as ``app.journeys.service.sends_page`` lists them (the read is in the ledger).
A run started here is queued by ``start_run`` (the role must be allowed the destination's
purpose) and carried out by ``execute_run`` after the request commits, as the API does.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.activation import destinations as dests
from app.activation import service as activation
from app.errors import InvalidField, NotFound
from app.journeys import service as journeys
from app.segments import service as segments

RUNS_SHOWN = 50
SENDS_SHOWN = 200


async def destinations(session: AsyncSession) -> list[dict[str, Any]]:
    """Live destinations as the API shows them (secrets never)."""
    return [dests.view(d) for d in await dests.live_destinations(session)]


async def _names(session: AsyncSession) -> tuple[dict[str, str], dict[str, str]]:
    """Segment id → name and destination id → name (retired ones included for old runs)."""
    segs = {s.id: s.name for s in await segments.live_segments(session)}
    found = {d.id: d.name for d in await dests.live_destinations(session)}
    return segs, found


async def runs(session: AsyncSession, principal: Principal) -> list[dict[str, Any]]:
    """The latest runs with their reports, naming their segment and destination."""
    segs, found = await _names(session)
    out = []
    for run in await activation.runs(session, RUNS_SHOWN):
        report = await activation.report(session, principal, run)
        out.append(
            {
                **report,
                "segment_name": segs.get(run.segment_id or "", ""),
                "destination_name": found.get(run.destination_id, ""),
            }
        )
    return out


async def run_report(session: AsyncSession, principal: Principal, run_id: str) -> dict[str, Any]:
    """One run's status, progress and report."""
    run = await activation.get_run(session, run_id)
    segs, found = await _names(session)
    report = await activation.report(session, principal, run)
    return {
        **report,
        "segment_name": segs.get(run.segment_id or "", ""),
        "destination_name": found.get(run.destination_id, ""),
    }


async def start(session: AsyncSession, principal: Principal, segment_id: str, destination_id: str) -> str:
    """Queue a run of a segment to a destination (the caller commits, then ``execute_run``)."""
    if not segment_id:
        raise InvalidField("choose a segment", field="segment_id")
    if not destination_id:
        raise InvalidField("choose a destination", field="destination_id")
    try:
        run = await activation.start_run(session, principal, segment_id, destination_id)
    except NotFound as exc:
        raise InvalidField(exc.detail, field=exc.field) from None
    return run.id


async def journey_list(session: AsyncSession) -> list[dict[str, Any]]:
    """Journeys with their destination's name and how many timers wait."""
    _segs, found = await _names(session)
    return [
        {
            "id": j.id,
            "name": j.name,
            "kind": j.kind,
            "purpose": j.purpose,
            "active": j.active,
            "version": j.version,
            "definition": j.definition,
            "destination_name": found.get(j.destination_id, j.destination_id),
            "pending": await journeys.pending_count(session, j.id),
        }
        for j in await journeys.live_journeys(session)
    ]


async def journey_sends(session: AsyncSession, principal: Principal, journey_id: str) -> dict[str, Any]:
    """A journey, its newest sends (the read recorded in the ledger) and counts by outcome."""
    j = await journeys.get_journey(session, journey_id)
    page = await journeys.sends_page(session, principal, j.id, None, SENDS_SHOWN)
    outcomes = Counter(s["outcome"] for s in page["sends"])
    return {"journey": j, "sends": page["sends"], "outcomes": dict(sorted(outcomes.items()))}
