"""Journeys: save, version and retire definitions (every change in the ledger), list sends,
and run the triggers (scan events, plan birthdays, fire due timers)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.access.service import Principal
from app.consent.gate import authorize
from app.consent.policy import load_policies
from app.db import table_of, unit_of_work
from app.decisions.service import current_rules
from app.errors import InvalidField, NotFound, PolicyDenied
from app.journeys.delivery import Sender, check_destination, current_sender
from app.journeys.models import Journey, JourneySend, JourneyTimer, JourneyVersion
from app.journeys.rules import KINDS, read_rules
from app.journeys.triggers import BATCH, fire_due, parse_condition, plan_birthdays, scan_events, start_cursor
from app.ledger.service import record, record_group
from app.settings import get_settings


async def check_definition(
    session: AsyncSession,
    principal: Principal,
    kind: str,
    purpose: str | None,
    destination_id: str,
    definition: dict[str, Any],
) -> str:
    """The purpose the journey's messages are for (checked against the role), after checking
    the kind and every field of the definition."""
    if kind not in KINDS:
        raise InvalidField(f"expects one of {', '.join(KINDS)}", field="kind")
    chosen = purpose or load_policies(get_settings().policy_dir).role_defaults.get(principal.role, "")
    if chosen not in current_rules().purposes:
        raise InvalidField("is not a purpose in policies/purposes.yaml", field="purpose")
    await authorize(session, principal, "journey.use", [], chosen)
    await check_destination(session, destination_id, chosen)
    rules = read_rules(definition)
    if rules.condition is not None:
        await parse_condition(session, rules.condition)
    return chosen


async def get_journey(session: AsyncSession, journey_id: str) -> Journey:
    j = await session.get(Journey, journey_id)
    if j is None or j.deleted_at is not None:
        raise NotFound("no journey with this id", field="journey_id")
    return j


def _may_change(principal: Principal, j: Journey) -> None:
    if principal.role != "admin" and principal.key_id != j.owner_key_id:
        raise PolicyDenied("only the journey's owner (or an admin) may change it", field="journey_id")


async def create_journey(
    session: AsyncSession,
    principal: Principal,
    name: str,
    kind: str,
    destination_id: str,
    purpose: str | None,
    definition: dict[str, Any],
    active: bool = True,
) -> Journey:
    use = await check_definition(session, principal, kind, purpose, destination_id, definition)
    now = datetime.now(UTC)
    j = Journey(
        id=str(uuid.uuid4()),
        name=name,
        kind=kind,
        purpose=use,
        destination_id=destination_id,
        definition=definition,
        active=active,
        owner_key_id=principal.key_id,
        owner_role=principal.role,
        created_at=now,
        updated_at=now,
    )
    session.add(j)
    await start_cursor(session, now)
    await _saved(session, principal, j, "journey.create", now)
    return j


async def update_journey(
    session: AsyncSession,
    principal: Principal,
    journey_id: str,
    name: str,
    kind: str,
    destination_id: str,
    purpose: str | None,
    definition: dict[str, Any],
    active: bool = True,
) -> Journey:
    """A new version of the definition. Pending timers stay (they are checked against the
    new definition when due); a paused journey's timers are dropped when due."""
    j = await get_journey(session, journey_id)
    _may_change(principal, j)
    if kind != j.kind:
        raise InvalidField("a journey's kind cannot change; make a new journey", field="kind")
    use = await check_definition(session, principal, kind, purpose or j.purpose, destination_id, definition)
    now = datetime.now(UTC)
    j.name, j.purpose, j.destination_id, j.definition, j.active = name, use, destination_id, definition, active
    j.version, j.updated_at = j.version + 1, now
    await _saved(session, principal, j, "journey.update", now)
    return j


async def _saved(session: AsyncSession, principal: Principal, j: Journey, action: str, now: datetime) -> None:
    session.add(
        JourneyVersion(
            journey_id=j.id,
            version=j.version,
            name=j.name,
            kind=j.kind,
            purpose=j.purpose,
            destination_id=j.destination_id,
            definition=j.definition,
            active=j.active,
            changed_by=principal.key_id,
            changed_at=now,
        )
    )
    await session.flush()
    await record(
        session,
        principal,
        action,
        purpose=j.purpose,
        details={"journey_id": j.id, "version": j.version, "kind": j.kind, "active": j.active},
    )


async def delete_journey(session: AsyncSession, principal: Principal, journey_id: str) -> None:
    """Retire a journey: its pending timers go, its sends and history stay."""
    j = await get_journey(session, journey_id)
    _may_change(principal, j)
    j.deleted_at = j.updated_at = datetime.now(UTC)
    t = table_of(JourneyTimer)
    await session.execute(delete(t).where(t.c.journey_id == j.id))
    await record(session, principal, "journey.delete", purpose=j.purpose, details={"journey_id": j.id})


async def live_journeys(session: AsyncSession) -> list[Journey]:
    q = select(Journey).where(col(Journey.deleted_at).is_(None)).order_by(col(Journey.created_at), col(Journey.id))
    return list((await session.execute(q)).scalars())


async def versions(session: AsyncSession, journey_id: str) -> list[dict[str, Any]]:
    q = select(JourneyVersion).where(col(JourneyVersion.journey_id) == journey_id).order_by(col(JourneyVersion.version))
    return [
        {
            "version": v.version,
            "name": v.name,
            "purpose": v.purpose,
            "destination_id": v.destination_id,
            "definition": v.definition,
            "active": v.active,
            "changed_at": v.changed_at.isoformat(),
        }
        for v in (await session.execute(q)).scalars()
    ]


async def sends_page(
    session: AsyncSession, principal: Principal, journey_id: str, before: datetime | None, limit: int
) -> dict[str, Any]:
    """The journey's sends, newest first (who, when, where, what became of it), for the
    caller's own purpose (a marketer's campaign work, a compliance review); reading them is
    recorded for every person listed."""
    j = await get_journey(session, journey_id)
    reading = await authorize(session, principal, "journey.sends.read", [])  # for the role's own purpose
    q = select(JourneySend).where(col(JourneySend.journey_id) == j.id)
    if before is not None:
        q = q.where(col(JourneySend.at) < before)
    q = q.order_by(col(JourneySend.at).desc(), col(JourneySend.id)).limit(limit)
    rows = list((await session.execute(q)).scalars())
    if rows:
        await record_group(
            session,
            principal,
            "journey.sends.read",
            sorted({r.profile_id for r in rows}),
            purpose=reading.purpose,
            legal_basis=reading.legal_basis,
            details={"journey_id": j.id, "rows": len(rows)},
        )
    sends = [
        {
            "profile_id": r.profile_id,
            "occasion": r.key,
            "due_at": r.due_at.isoformat(),
            "at": r.at.isoformat(),
            "destination_id": r.destination_id,
            "outcome": r.outcome,
            "reason": r.reason,
        }
        for r in rows
    ]
    return {"journey_id": j.id, "sends": sends, "next": rows[-1].at.isoformat() if len(rows) == limit else None}


async def pending_count(session: AsyncSession, journey_id: str) -> int:
    t = table_of(JourneyTimer)
    return int((await session.execute(select(func.count()).where(t.c.journey_id == journey_id))).scalar() or 0)


async def run_triggers(now: datetime | None = None, sender: Sender | None = None) -> dict[str, int]:
    """One round: timers from new events and birthdays, then every due timer fired, a
    batch per transaction (each batch's sends commit with its timers' removal)."""
    at = now or datetime.now(UTC)
    async with unit_of_work() as session:
        made = await scan_events(session, at)
    async with unit_of_work() as session:
        made += await plan_birthdays(session, at)
    out: dict[str, int] = {"timers": made}
    while True:
        async with unit_of_work() as session:
            fired = await fire_due(session, at, sender or current_sender())
        for k, n in fired.items():
            out[k] = out.get(k, 0) + n
        if fired.get("due", 0) < BATCH:
            return out
