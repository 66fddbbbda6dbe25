"""One step per store of a request's fulfilment, with its own status (pending, done, failed
with the error's class), so a failed store is retried on its own instead of the request
being stuck."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.dsr.models import DsrStep
from app.errors import Conflict, NotFound

StepAction = Callable[[AsyncSession, dict[str, Any]], Awaitable[dict[str, Any]]]
"""Runs one store's step from its saved context; returns what it found and did."""


async def steps_of(session: AsyncSession, request_id: str) -> list[DsrStep]:
    q = select(DsrStep).where(col(DsrStep.request_id) == request_id).order_by(col(DsrStep.store))
    return list((await session.execute(q)).scalars())


async def save_step(
    session: AsyncSession,
    request_id: str,
    store: str,
    status: str,
    *,
    error_class: str | None = None,
    counts: dict[str, Any] | None = None,
) -> DsrStep:
    """Create or update the step of one store."""
    step = await session.get(DsrStep, (request_id, store))
    if step is None:
        step = DsrStep(request_id=request_id, store=store, updated_at=datetime.now(UTC))
        session.add(step)
    step.status, step.error_class, step.updated_at = status, error_class, datetime.now(UTC)
    step.attempts += 1 if status != "pending" else 0
    step.counts = json.dumps(counts, sort_keys=True, default=str) if counts is not None else step.counts
    return step


def step_view(step: DsrStep) -> dict[str, Any]:
    counts = json.loads(step.counts) if step.counts else {}
    return {
        "store": step.store,
        "status": step.status,
        "error_class": step.error_class,
        "attempts": step.attempts,
        "updated_at": step.updated_at.isoformat(),
        "result": {k: v for k, v in counts.items() if not k.startswith("_")},
    }


async def retry_step(session: AsyncSession, request_id: str, store: str, action: StepAction) -> DsrStep:
    """Run a failed (or pending) step again, in a savepoint: failing again is recorded, not raised."""
    step = await session.get(DsrStep, (request_id, store))
    if step is None:
        raise NotFound("this request has no step for this store", field="store")
    if step.status == "done":
        raise Conflict("this store's step is already done", field="store")
    context = json.loads(step.counts) if step.counts else {}
    try:
        async with session.begin_nested():
            result = await action(session, context)
    except Exception as exc:  # the step stays failed, with the error's class; the request goes on
        return await save_step(session, request_id, store, "failed", error_class=type(exc).__name__)
    return await save_step(session, request_id, store, "done", counts=result)


async def all_done(session: AsyncSession, request_id: str) -> bool:
    return all(s.status == "done" for s in await steps_of(session, request_id))
