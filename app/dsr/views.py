"""Read-only views of a request for staff pages (the console): its codes' states and its
state history, with the kinds and regulations a request may have."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.dsr.models import KINDS, REGULATIONS, DsrTransition, DsrVerification

__all__ = ["KINDS", "REGULATIONS", "codes_of", "history_of"]


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
