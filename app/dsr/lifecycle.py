"""The life of a request: received → verified → in_progress → completed | denied, with
``extended`` (once, with a reason and a notice) and ``waiting`` (the clock stops) on the way.
Every change is kept in ``dsr_transition`` and the ledger; a change the states do not allow
is refused with 409."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.access.service import Principal
from app.dsr.channel import channel
from app.dsr.deadlines import Paused, deadlines_at_receipt, extended_due, paused_between
from app.dsr.models import DsrRequest, DsrTransition
from app.dsr.policy import DsrPolicy, load_policy
from app.dsr.sealing import request_key
from app.errors import Conflict, InvalidField, NotFound
from app.ledger.service import record_many
from app.settings import get_settings

PURPOSE = "legal.compliance.dsr"
LEGAL_BASIS = "legal_obligation"
OPEN = ("received", "verified", "in_progress", "extended", "waiting")
CLOSED = ("completed", "denied")
NEXT: dict[str, tuple[str, ...]] = {
    "received": ("verified", "waiting", "extended", "denied"),
    "verified": ("in_progress", "waiting", "extended", "denied"),
    "in_progress": ("completed", "waiting", "extended", "denied"),
    "extended": ("in_progress", "completed", "waiting", "denied"),
    "waiting": (),  # leaves only by resume, to the state it came from
    "completed": (),
    "denied": (),
}
MANUAL = ("in_progress", "completed", "denied")
"""States staff set directly; ``verified`` comes from a code, ``extended`` and ``waiting``
from their own actions."""


async def audit(
    session: AsyncSession,
    principal: Principal,
    action: str,
    request: DsrRequest,
    subjects: Sequence[str | None],
    details: dict[str, Any] | None = None,
) -> None:
    """One ledger entry per person concerned (one without a subject when nobody matched),
    naming the request; ``details`` hold no personal data."""
    await record_many(
        session,
        principal,
        action,
        cast(list[str], list(subjects) or [None]),  # None: an entry about nobody in particular
        purpose=PURPOSE,
        legal_basis=LEGAL_BASIS,
        details={"dsr": request.id, "status": request.status, **(details or {})},
    )


async def load_request(session: AsyncSession, request_id: str, lock: bool = False) -> DsrRequest:
    q = select(DsrRequest).where(col(DsrRequest.id) == request_id)
    if lock:
        q = q.with_for_update()
    found = (await session.execute(q)).scalars().first()
    if found is None:
        raise NotFound("no request with this id", field="request_id")
    return found


async def move(
    session: AsyncSession, principal: Principal, request: DsrRequest, to: str, reason: str | None = None
) -> None:
    """Change the state if the states allow it (409 otherwise) and keep the change."""
    if to not in NEXT.get(request.status, ()):
        raise Conflict(f"a request that is {request.status} cannot become {to}", field="status")
    now = datetime.now(UTC)
    session.add(
        DsrTransition(
            request_id=request.id,
            from_status=request.status,
            to_status=to,
            at=now,
            actor=principal.key_id,
            reason=reason,
        )
    )
    request.status = to
    if to in CLOSED:
        request.closed_at = now
        request.flag = None
    if to == "denied":
        request.denial_reason = reason


async def set_status(
    session: AsyncSession, principal: Principal, request: DsrRequest, to: str, reason: str | None
) -> None:
    """Staff moves a request on: in progress (only once verified), completed, or denied with a reason."""
    if to not in MANUAL:
        raise InvalidField(
            f"must be one of {', '.join(MANUAL)} (use verify, extend, wait or resume for the others)", field="status"
        )
    if to == "denied" and not reason:
        raise InvalidField("a denial needs a reason", field="reason")
    if to == "in_progress" and request.verified_at is None:
        raise Conflict("the requester's identity is not verified yet", field="status")
    before = request.status
    await move(session, principal, request, to, reason)
    await audit(session, principal, "dsr.status", request, [request.subject_id], {"from": before})


async def extend(
    session: AsyncSession, principal: Principal, policy: DsrPolicy, request: DsrRequest, reason: str
) -> None:
    """The one extension the regulation allows, before the original deadline, with a reason;
    the notice to the person goes out through the channel in the same transaction."""
    rules = policy.regulations[request.regulation]
    if not reason or not reason.strip():
        raise InvalidField("an extension needs a reason", field="reason")
    if rules.extension is None or request.extension_latest_at is None:
        raise Conflict(f"{request.regulation.upper()} allows no extension for this request", field="status")
    if request.extended_at is not None:
        raise Conflict("this request was already extended once", field="status")
    now = datetime.now(UTC)
    if now > request.extension_latest_at:
        raise Conflict("too late: an extension must be taken and notified before the original deadline", field="status")
    before = request.status
    await move(session, principal, request, "extended", reason)
    request.extended_at, request.extension_reason = now, reason.strip()
    request.due_at = extended_due(rules, request.due_at)
    key = await request_key(session, request)
    if key is not None:
        await channel().deliver(
            session, key, "extension_notice", {"reason": request.extension_reason, "due_at": request.due_at.isoformat()}
        )
    await audit(
        session, principal, "dsr.extended", request, [request.subject_id], {"from": before, "notified": key is not None}
    )


async def wait(session: AsyncSession, principal: Principal, request: DsrRequest, reason: str | None) -> None:
    """Wait for the requester (more information, a clarification): the clock stops."""
    before = request.status
    await move(session, principal, request, "waiting", reason)
    request.held_status, request.waiting_since = before, datetime.now(UTC)
    await audit(session, principal, "dsr.waiting", request, [request.subject_id], {"from": before})


async def resume(session: AsyncSession, principal: Principal, request: DsrRequest, reason: str | None) -> None:
    """The requester answered: the request goes back to where it was, every deadline moved by
    the days the clock stood still, counted as the regulation counts them (``policies/dsr.yaml``)."""
    if request.status != "waiting" or request.waiting_since is None or request.held_status is None:
        raise Conflict(f"a request that is {request.status} is not waiting", field="status")
    now = datetime.now(UTC)
    waited = now - request.waiting_since
    rules = load_policy(get_settings().policy_dir).regulations[request.regulation]
    paused = Paused(request.paused_days, request.paused_working_days)
    paused += paused_between(rules, request.waiting_since, now)
    moved = deadlines_at_receipt(rules, request.kind, request.received_at, paused, request.extended_at is not None)
    request.due_at, request.ack_due_at, request.extension_latest_at = (
        moved.due_at,
        moved.ack_due_at,
        moved.extension_latest_at,
    )
    request.paused_days, request.paused_working_days = paused.days, paused.working_days
    request.waited_seconds += int(waited.total_seconds())
    session.add(
        DsrTransition(
            request_id=request.id,
            from_status="waiting",
            to_status=request.held_status,
            at=now,
            actor=principal.key_id,
            reason=reason,
        )
    )
    request.status, request.held_status, request.waiting_since = request.held_status, None, None
    await audit(
        session, principal, "dsr.resumed", request, [request.subject_id], {"waited_s": int(waited.total_seconds())}
    )


@dataclass(frozen=True)
class Filter:
    status: str | None = None
    due_before: datetime | None = None
    kind: str | None = None
    regulation: str | None = None
    flag: str | None = None
    verified_only: bool = False
    """Leave out requests whose requester is not verified yet (the console's default queue)."""
    open_only: bool = False
    """Leave out completed and denied requests (the console's default queue)."""


def filtered(f: Filter) -> Select[Any]:
    """The requests matching a filter, soonest deadline first."""
    q = select(DsrRequest)
    if f.status:
        q = q.where(col(DsrRequest.status) == f.status)
    if f.due_before:
        q = q.where(col(DsrRequest.due_at) < f.due_before)
    if f.kind:
        q = q.where(col(DsrRequest.kind) == f.kind)
    if f.regulation:
        q = q.where(col(DsrRequest.regulation) == f.regulation)
    if f.flag:
        q = q.where(col(DsrRequest.flag) == f.flag)
    if f.verified_only:
        q = q.where(col(DsrRequest.verified_at).is_not(None))
    if f.open_only:
        q = q.where(col(DsrRequest.status).in_(OPEN))
    return q.order_by(col(DsrRequest.due_at), col(DsrRequest.id))


async def list_requests(session: AsyncSession, f: Filter, limit: int = 100) -> list[DsrRequest]:
    return list((await session.execute(filtered(f).limit(limit))).scalars())


async def flag_deadlines(session: AsyncSession, policy: DsrPolicy, now: datetime | None = None) -> dict[str, int]:
    """Mark open requests ``due_soon`` (within ``due_soon_days``) or ``overdue``; a waiting
    request's clock is stopped, so it is left unflagged."""
    now = now or datetime.now(UTC)
    soon = now + timedelta(days=policy.due_soon_days)
    q = select(DsrRequest).where(
        col(DsrRequest.status).in_([s for s in OPEN if s != "waiting"]), col(DsrRequest.due_at) < soon
    )
    counts = {"due_soon": 0, "overdue": 0}
    for request in (await session.execute(q)).scalars():
        flag = "overdue" if request.due_at <= now else "due_soon"
        counts[flag] += 1
        request.flag = flag
    return counts
