"""The scheduled refresh of saved segments (``segments.refresh``, exactly once across processes)
and the incremental membership from the ingest outbox (``segments.outbox``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog

from app.access.service import SYSTEM
from app.db import unit_of_work
from app.errors import DomainError
from app.ledger.service import record
from app.segments.incremental import BATCH, apply_outbox
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


async def apply_outbox_job(passes: int = 50) -> dict[str, Any]:
    """Apply the ingest outbox to saved segments' membership (the processor loop calls this
    after storing, the scheduler as a backstop); each call of ``apply_outbox`` commits alone."""
    applied = 0
    for _ in range(passes):
        async with unit_of_work() as session:
            n = await apply_outbox(session, BATCH)
        applied += n
        if n < BATCH:
            break
    return {"applied": applied}
