"""The scheduled refresh of saved segments (``segments.refresh``, exactly once across processes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog

from app.access.service import SYSTEM
from app.db import unit_of_work
from app.errors import DomainError
from app.ledger.service import record
from app.segments.models import Segment
from app.segments.service import live_segments, refresh

log = structlog.get_logger("consentry.segments")


async def refresh_segments() -> dict[str, Any]:
    """Materialise every saved segment again, each in its own transaction (referred segments
    first); a segment whose tree policy no longer allows is skipped and counted."""
    async with unit_of_work() as session:
        ids = [s.id for s in await live_segments(session)]
    done, failed = 0, 0
    for sid in ids:
        try:
            async with unit_of_work() as session:
                seg = await session.get(Segment, sid)
                if seg is None or seg.deleted_at is not None:
                    continue
                size = await refresh(session, seg, datetime.now(UTC))
                await record(
                    session, SYSTEM, "segment.refresh", purpose=seg.purpose, details={"segment_id": sid, **size}
                )
            done += 1
        except DomainError as exc:
            failed += 1
            log.warning("segment_refresh_failed", segment=sid, field=exc.field)
    return {"refreshed": done, "failed": failed}
