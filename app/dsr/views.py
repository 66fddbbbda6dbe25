"""Read-only views of requests for staff pages (the console): a request's codes' states and
state history, the requests naming some profiles, and the kinds and regulations a request may have."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.dsr.models import KINDS, REGULATIONS, DsrRequest, DsrTransition, DsrVerification

__all__ = ["KINDS", "REGULATIONS", "codes_of", "history_of", "requests_by_id", "requests_naming"]


async def codes_of(session: AsyncSession, request_id: str) -> list[dict[str, Any]]:
    """Each code's profile, state, matched points and attempts (never the code)."""
    q = select(DsrVerification).where(col(DsrVerification.request_id) == request_id).order_by(col(DsrVerification.id))
    return [
        {"profile_id": c.profile_id, "state": c.state, "points": c.matched_points, "attempts": c.attempts}
        for c in (await session.execute(q)).scalars()
    ]


async def history_of(session: AsyncSession, request_id: str) -> list[dict[str, Any]]:
    """The request's state changes, oldest first: from, to, when, by which key, why."""
    q = select(DsrTransition).where(col(DsrTransition.request_id) == request_id).order_by(col(DsrTransition.id))
    return [
        {"from": t.from_status, "to": t.to_status, "at": t.at, "actor": t.actor, "reason": t.reason}
        for t in (await session.execute(q)).scalars()
    ]


async def requests_naming(session: AsyncSession, profile_ids: list[str]) -> list[str]:
    """Ids of the requests whose codes went to, or that were verified for, any of these profiles."""
    if not profile_ids:
        return []
    by_code = select(col(DsrVerification.request_id)).where(col(DsrVerification.profile_id).in_(profile_ids))
    by_subject = select(col(DsrRequest.id)).where(col(DsrRequest.subject_id).in_(profile_ids))
    found = set((await session.execute(by_code)).scalars()) | set((await session.execute(by_subject)).scalars())
    return sorted(found)


async def requests_by_id(session: AsyncSession, request_ids: list[str]) -> list[DsrRequest]:
    """These requests, soonest deadline first."""
    q = select(DsrRequest).where(col(DsrRequest.id).in_(request_ids)).order_by(col(DsrRequest.due_at))
    return list((await session.execute(q)).scalars())
