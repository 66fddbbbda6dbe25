"""Scheduled activation runs: APScheduler cron triggers, exactly once across processes.

The ``activation.schedules`` job (every minute) asks each schedule's ``CronTrigger`` for the
due time in the last ``WINDOW``; a due time is taken with the scheduler's lease
(``claim(job, slot)``: one insert wins among all processes; handed in by ``product_jobs``
so this domain does not import the scheduler that imports it) before the run is started,
as the schedule's owner, so a run happens once per due time however many processes look.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.access.service import Principal
from app.activation.destinations import get_destination
from app.activation.models import ActivationSchedule
from app.activation.runs import execute_run, resume_stale
from app.activation.service import start_run
from app.consent.gate import authorize
from app.db import unit_of_work
from app.errors import DomainError, InvalidField, NotFound, PolicyDenied
from app.ledger.service import record
from app.segments.service import get_segment

log = structlog.get_logger("consentry.activation")
WINDOW = timedelta(seconds=150)
"""How far back a due time is still started (the job runs every 60 s)."""


def trigger_of(cron: str) -> CronTrigger:
    try:
        return CronTrigger.from_crontab(cron, timezone=UTC)
    except (ValueError, TypeError) as exc:
        raise InvalidField("expects a five-field crontab (minute hour day month weekday)", field="cron") from exc


def view(s: ActivationSchedule) -> dict[str, Any]:
    return {
        "id": s.id,
        "segment_id": s.segment_id,
        "destination_id": s.destination_id,
        "cron": s.cron,
        "owner_key_id": s.owner_key_id,
        "created_at": s.created_at.isoformat(),
        "last_slot": s.last_slot.isoformat() if s.last_slot else None,
    }


async def create_schedule(
    session: AsyncSession, principal: Principal, segment_id: str, destination_id: str, cron: str
) -> ActivationSchedule:
    if len(cron) > 100:
        raise InvalidField("expects a five-field crontab (minute hour day month weekday)", field="cron")
    trigger_of(cron)
    await get_segment(session, segment_id)
    dest = await get_destination(session, destination_id)
    await authorize(session, principal, "activation.schedule", [], dest.purpose)
    s = ActivationSchedule(
        id=str(uuid.uuid4()),
        segment_id=segment_id,
        destination_id=destination_id,
        cron=cron,
        owner_key_id=principal.key_id,
        owner_role=principal.role,
        created_at=datetime.now(UTC),
    )
    session.add(s)
    await record(session, principal, "activation.schedule", purpose=dest.purpose, details=view(s))
    return s


async def live_schedules(session: AsyncSession) -> list[ActivationSchedule]:
    q = select(ActivationSchedule).where(col(ActivationSchedule.deleted_at).is_(None))
    return list((await session.execute(q.order_by(col(ActivationSchedule.created_at)))).scalars())


async def delete_schedule(session: AsyncSession, principal: Principal, schedule_id: str) -> None:
    s = await session.get(ActivationSchedule, schedule_id)
    if s is None or s.deleted_at is not None:
        raise NotFound("no schedule with this id", field="schedule_id")
    if principal.role != "admin" and principal.key_id != s.owner_key_id:
        raise PolicyDenied("only the schedule's owner (or an admin) may delete it", field="schedule_id")
    s.deleted_at = datetime.now(UTC)
    await record(session, principal, "activation.unschedule", details={"schedule_id": s.id})


def due_slot(s: ActivationSchedule, now: datetime) -> datetime | None:
    """The schedule's latest due time within ``WINDOW`` before ``now`` not yet run here."""
    since = max(now - WINDOW, s.created_at, s.last_slot or s.created_at)
    fire = trigger_of(s.cron).get_next_fire_time(None, since)
    if fire is None or fire > now or (s.last_slot is not None and fire <= s.last_slot):
        return None
    return fire.astimezone(UTC)


Lease = Callable[[str, datetime], Awaitable[bool]]
"""``app.jobs.scheduler.claim``: True for the one process that takes (job, slot)."""


async def run_schedules(lease: Lease, now: datetime | None = None) -> dict[str, Any]:
    """Start every schedule's run that is due, each due time once: whichever process takes
    its lease (``lease``, the scheduler's ``claim``, passed in by ``product_jobs``)."""
    at = now or datetime.now(UTC)
    async with unit_of_work() as session:
        due = [(s, slot) for s in await live_schedules(session) if (slot := due_slot(s, at)) is not None]
    started = skipped = 0
    for s, slot in due:
        if not await lease(f"activation:{s.id}", slot):
            continue
        owner = Principal(key_id=s.owner_key_id, role=s.owner_role, name="activation schedule")
        try:
            async with unit_of_work() as session:
                run = await start_run(session, owner, s.segment_id, s.destination_id, "schedule")
                row = await session.get(ActivationSchedule, s.id)
                if row is not None:
                    row.last_slot = slot
                run_id = run.id
        except DomainError as exc:  # the segment or destination is gone, or policy changed
            log.warning("activation_schedule_skipped", schedule=s.id, field=exc.field)
            skipped += 1
            continue
        await execute_run(run_id)
        started += 1
    return {"started": started, "skipped": skipped, **await resume_stale(at)}
