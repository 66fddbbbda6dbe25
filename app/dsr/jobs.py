"""The deadline watch: flags requests near and past their deadline, and retires codes that
expired unused (their messages are purged with them)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlmodel import col

from app.db import unit_of_work
from app.dsr.channel import purge
from app.dsr.lifecycle import flag_deadlines
from app.dsr.models import DsrVerification
from app.dsr.policy import load_policy
from app.settings import get_settings

INTERVAL_S = 900


async def watch_deadlines(now: datetime | None = None) -> dict[str, Any]:
    """Flag open requests ``due_soon`` / ``overdue``; expire unused codes; returns counts."""
    now = now or datetime.now(UTC)
    async with unit_of_work() as session:
        counts: dict[str, Any] = await flag_deadlines(session, load_policy(get_settings().policy_dir), now)
        q = select(DsrVerification).where(
            col(DsrVerification.state) == "pending", col(DsrVerification.expires_at) <= now
        )
        expired = list((await session.execute(q)).scalars())
        for row in expired:
            row.state = "expired"
        for request_id in {r.request_id for r in expired}:
            await purge(session, request_id, "code")
        counts["codes_expired"] = len(expired)
    return counts
