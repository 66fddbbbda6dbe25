"""The daily retention job (``retention.apply``, exactly once across processes by the lease)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.db import unit_of_work
from app.retention.service import run_retention

DAILY = 86_400


async def apply_retention() -> dict[str, Any]:
    """Apply ``policies/retention.yaml`` now; returns the counts (kept in ``job_run.result``)."""
    async with unit_of_work() as session:
        report = await run_retention(session, datetime.now(UTC), dry_run=False)
    return {"removed": report.removed, "queued_for_erasure": len(report.queued)}
