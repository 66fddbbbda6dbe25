"""Demo only: move a request's clock back, so a fresh demo shows deadlines that are near or
past (the console's colours) as a months-old service would."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.dsr.lifecycle import load_request


async def backdate(session: AsyncSession, request_id: str, days: int) -> None:
    """Receipt, deadlines and the state history of one request, ``days`` earlier."""
    r = await load_request(session, request_id, lock=True)
    shift = timedelta(days=days)
    r.received_at -= shift
    r.due_at -= shift
    for name in ("ack_due_at", "extension_latest_at", "verified_at", "extended_at"):
        if getattr(r, name) is not None:
            setattr(r, name, getattr(r, name) - shift)
