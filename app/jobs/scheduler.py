"""APScheduler 3.11 with an exactly-once lease in the database.

Every process runs its own in-memory scheduler with the same interval triggers,
anchored to a fixed epoch so all processes fire at the same due times. Before a run,
a process inserts ``JobRun(job_id, slot)``; the primary key lets exactly one insert
succeed, and the others skip that slot. Runs and failures are logged and kept in
``job_run`` (``GET /v1/jobs/runs``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.exc import IntegrityError

from app.db import unit_of_work
from app.jobs.models import JobRun
from app.logs import scrub_text

log = structlog.get_logger("consentry.jobs")
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
OWNER = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class JobSpec:
    id: str
    func: Callable[[], Awaitable[dict[str, Any] | None]]
    interval_s: int
    description: str = ""


def slot_for(moment: datetime, interval_s: int) -> datetime:
    """The due time a run at ``moment`` belongs to (floored to the interval from EPOCH)."""
    elapsed = int((moment - EPOCH).total_seconds())
    return EPOCH + timedelta(seconds=elapsed - elapsed % interval_s)


async def claim(job_id: str, slot: datetime) -> bool:
    """Take the lease for (job, slot); False if another process already has it."""
    try:
        async with unit_of_work() as session:
            session.add(JobRun(job_id=job_id, slot=slot, owner=OWNER, status="running", started_at=datetime.now(UTC)))
    except IntegrityError:
        return False
    return True


async def _finish(job_id: str, slot: datetime, status: str, result: str) -> None:
    async with unit_of_work() as session:
        run = await session.get(JobRun, (job_id, slot))
        if run is not None:
            run.status, run.result, run.finished_at = status, result[:1000], datetime.now(UTC)


async def run_due(spec: JobSpec, now: datetime | None = None) -> bool:
    """Run ``spec`` for the slot that is due now, unless another process claimed it."""
    slot = slot_for(now or datetime.now(UTC), spec.interval_s)
    if not await claim(spec.id, slot):
        log.debug("job_skipped", job=spec.id, slot=slot.isoformat())
        return False
    log.info("job_started", job=spec.id, slot=slot.isoformat())
    try:
        result = await spec.func()
    except Exception as exc:  # a failing job must not kill the scheduler
        message = scrub_text(f"{type(exc).__name__}: {exc}")
        log.error("job_failed", job=spec.id, slot=slot.isoformat(), error=message)
        await _finish(spec.id, slot, "failed", message)
        return True
    await _finish(spec.id, slot, "ok", str(result or ""))
    log.info("job_finished", job=spec.id, slot=slot.isoformat(), result=result)
    return True


def build_scheduler(specs: list[JobSpec]) -> AsyncIOScheduler:
    """A scheduler (not started) firing every spec at epoch-aligned intervals."""
    scheduler = AsyncIOScheduler(timezone=UTC)
    for spec in specs:
        scheduler.add_job(
            run_due,
            IntervalTrigger(seconds=spec.interval_s, start_date=EPOCH, timezone=UTC),
            args=[spec],
            id=spec.id,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, spec.interval_s // 2),
        )
    return scheduler


def product_jobs() -> list[JobSpec]:
    """The product's periodic jobs; each domain contributes its own."""
    from app.activation.jobs import run_schedules
    from app.dsr.access_package import purge_expired_packages
    from app.dsr.jobs import INTERVAL_S as DSR_WATCH_S
    from app.dsr.jobs import watch_deadlines
    from app.imports.jobs import resume_imports
    from app.journeys.jobs import TICK_S, fire_journeys
    from app.ledger.jobs import sign_checkpoint
    from app.retention.jobs import DAILY, apply_retention
    from app.segments.jobs import apply_outbox_job, refresh_segments
    from app.segments.tag_rules import apply_tags
    from app.settings import get_settings
    from app.traits.jobs import refresh_all_traits

    s = get_settings()
    return [
        JobSpec("audit.checkpoint", sign_checkpoint, s.checkpoint_interval_s, "sign the ledger head"),
        JobSpec("imports.resume", resume_imports, 60, "run queued imports and those whose runner died"),
        JobSpec("dsr.deadlines", watch_deadlines, DSR_WATCH_S, "flag requests near or past their deadline"),
        JobSpec("dsr.packages", purge_expired_packages, 3600, "delete access packages whose link expired"),
        JobSpec("retention.apply", apply_retention, DAILY, "apply retention.yaml; queue inactive profiles"),
        JobSpec("segments.refresh", refresh_segments, s.segment_refresh_s, "materialise every saved segment's members"),
        JobSpec("segments.outbox", apply_outbox_job, 15, "apply the ingest outbox to segment membership (backstop)"),
        JobSpec("activation.schedules", partial(run_schedules, claim), 60, "start scheduled activation runs now due"),
        JobSpec("journeys.fire", fire_journeys, TICK_S, "journey timers from events and birthdays; send what is due"),
        JobSpec("traits.refresh", refresh_all_traits, s.segment_refresh_s, "compute every computed trait again"),
        JobSpec("tags.apply", apply_tags, s.segment_refresh_s, "give and take rule and threshold tags (tags.yaml)"),
    ]
