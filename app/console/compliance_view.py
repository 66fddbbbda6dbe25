"""What the compliance officer's pages show, read through the DSR services: the queue with
its filters and deadline colours, a request's full view (audited like the API's), masked
identifiers and their audited reveal."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.consent.gate import authorize
from app.dsr import lifecycle, views
from app.dsr.certificate import certificate_of
from app.dsr.sealing import opened
from app.dsr.steps import step_view, steps_of
from app.errors import InvalidField
from app.identity.service import lookup_ident, profiles_holding
from app.ledger.service import record_many
from app.logs import scrub_text
from app.profiles.masking import mask_value
from app.profiles.service import VaultContext

DUE_CHOICES = {"overdue": 0, "3": 3, "7": 7, "30": 30}
"""The queue's due filter: overdue, or due within so many days."""
STATUSES = (*lifecycle.OPEN, *lifecycle.CLOSED)
ALL = "all"
"""The state filter's value for every request, closed ones too (by default the queue shows open ones)."""
PAGE_SIZE = 100
MASK_CATEGORY = {
    "email": "user.contact.email",
    "phone": "user.contact.phone_number",
    "name": "user.name",
    "firstName": "user.name",
    "lastName": "user.name",
    "birthday": "user.demographic.date_of_birth",
}
BULK_ACTIONS = (*lifecycle.MANUAL, "wait", "resume")


@dataclass(frozen=True)
class QueueFilter:
    kind: str | None = None
    regulation: str | None = None
    status: str | None = None
    due: str | None = None
    unverified: bool = False
    """Show requests whose requester is not verified yet (hidden by default)."""

    def query(self) -> dict[str, str]:
        """The filter as query parameters (no personal data: kinds, states, dates)."""
        pairs = {"kind": self.kind, "regulation": self.regulation, "status": self.status, "due": self.due}
        out = {k: v for k, v in pairs.items() if v}
        return {**out, "unverified": "1"} if self.unverified else out


def _choice(params: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = params.get(name) or None
    if value is not None and value not in allowed:
        raise InvalidField(f"must be one of {', '.join(allowed)}", field=name)
    return value


def parse_filter(params: Mapping[str, Any]) -> QueueFilter:
    """The queue filter from query or form fields; an unknown value is refused by name."""
    return QueueFilter(
        kind=_choice(params, "kind", views.KINDS),
        regulation=_choice(params, "regulation", views.REGULATIONS),
        status=_choice(params, "status", (*STATUSES, ALL)),
        due=_choice(params, "due", tuple(DUE_CHOICES)),
        unverified=params.get("unverified") in {"1", "on", "true"},
    )


def lifecycle_filter(q: QueueFilter, now: datetime) -> lifecycle.Filter:
    due_before = now + timedelta(days=DUE_CHOICES[q.due]) if q.due else None
    status = None if q.status == ALL else q.status
    hide_unverified = not q.unverified and status is None
    return lifecycle.Filter(
        status, due_before, q.kind, q.regulation, None, verified_only=hide_unverified, open_only=q.status is None
    )


def days_left(r: Any, now: datetime) -> int:
    """Whole days to the deadline (the clock stops while waiting), as the API counts them."""
    delta: timedelta = r.due_at - (r.waiting_since or now)
    return delta.days


def urgency(r: Any, left: int) -> str:
    """The deadline colour: closed, waiting (clock stopped), overdue, urgent (≤ 3 days), soon (≤ 7), ok."""
    if r.status in lifecycle.CLOSED:
        return "closed"
    if r.status == "waiting":
        return "waiting"
    if left < 0:
        return "overdue"
    return "urgent" if left <= 3 else "soon" if left <= 7 else "ok"


@dataclass(frozen=True)
class QueueRow:
    id: str
    kind: str
    regulation: str
    status: str
    channel: str
    received_at: datetime
    due_at: datetime
    days_left: int
    urgency: str
    verified: bool


def _row(r: Any, now: datetime) -> QueueRow:
    left = days_left(r, now)
    return QueueRow(
        r.id, r.kind, r.regulation, r.status, r.channel, r.received_at, r.due_at, left, urgency(r, left),
        r.verified_at is not None,
    )  # fmt: skip


async def queue(session: AsyncSession, q: QueueFilter, limit: int = PAGE_SIZE) -> tuple[list[QueueRow], int]:
    """The requests a filter matches, soonest deadline first (one page), and how many match."""
    now = datetime.now(UTC)
    f = lifecycle_filter(q, now)
    rows = await lifecycle.list_requests(session, f, limit)
    counted = lifecycle.filtered(f).with_only_columns(func.count(), maintain_column_froms=True).order_by(None)
    return [_row(r, now) for r in rows], int((await session.execute(counted)).scalar_one())


def clean_reason(text: str | None, required: bool = False) -> str | None:
    """Staff's reason without personal data (scrubbed), at most 500 characters."""
    if text is None or not text.strip():
        if required:
            raise InvalidField("give a reason", field="reason")
        return None
    if len(text) > 500:
        raise InvalidField("is longer than 500 characters", field="reason")
    return scrub_text(text.strip())


@dataclass
class RequestView:
    request: Any
    days_left: int
    urgency: str
    identifiers: list[dict[str, str]] = field(default_factory=list)
    verifications: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    certificate: bool = False
    erased: bool = False


async def _subjects(session: AsyncSession, request_id: str) -> list[str]:
    return sorted({v["profile_id"] for v in await views.codes_of(session, request_id) if v["profile_id"]})


async def request_view(session: AsyncSession, principal: Principal, request_id: str) -> RequestView:
    """One request for its page: identifiers masked, codes, steps, history; the read passes the
    consent gate and is recorded (``dsr.viewed``) as the API's view is."""
    r = await lifecycle.load_request(session, request_id)
    codes = await views.codes_of(session, r.id)
    subjects = sorted({c["profile_id"] for c in codes if c["profile_id"]})
    await authorize(session, principal, "dsr.read", subjects, lifecycle.PURPOSE, details={"dsr": r.id})
    now = datetime.now(UTC)
    left = days_left(r, now)
    given = await opened(session, r)
    view = RequestView(r, left, urgency(r, left), verifications=codes, erased=given is None)
    for name, value in sorted(((given or {}).get("identifiers") or {}).items()):
        view.identifiers.append({"name": name, "masked": mask_value(MASK_CATEGORY.get(name, ""), str(value))})
    view.steps = [_step(step_view(s)) for s in await steps_of(session, r.id)]
    view.history = await views.history_of(session, r.id)
    # (an erasure whose store failed already has a certificate stored: offered once completed)
    view.certificate = r.status == "completed" and await certificate_of(session, r.id) is not None
    await lifecycle.audit(session, principal, "dsr.viewed", r, subjects)
    return view


def _step(view: dict[str, Any]) -> dict[str, Any]:
    return {**view, "result": json.dumps(view["result"], sort_keys=True, default=str) if view["result"] else ""}


async def reveal(session: AsyncSession, principal: Principal, request_id: str, name: str, reason: str) -> str:
    """One identifier the requester gave, in clear, for a reason that goes to the ledger
    (``dsr.revealed`` names the field and the reason, never the value)."""
    why = clean_reason(reason, required=True) or ""
    r = await lifecycle.load_request(session, request_id)
    given = await opened(session, r)
    identifiers = (given or {}).get("identifiers") or {}
    if name not in identifiers:
        raise InvalidField("this request holds no such identifier", field="field")
    subjects = await _subjects(session, r.id)
    await authorize(session, principal, "dsr.read", subjects, lifecycle.PURPOSE, details={"dsr": r.id})
    await lifecycle.audit(session, principal, "dsr.revealed", r, subjects, {"field": name, "reason": why})
    return str(identifiers[name])


def outbox_view(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages to the requester for the page: the contact masked, codes and package links as sent."""
    out = []
    for m in messages:
        to = str(m.get("to") or "")
        category = MASK_CATEGORY["email"] if "@" in to else MASK_CATEGORY["phone"]
        out.append(
            {
                "topic": m.get("topic", ""),
                "to": mask_value(category, to) if to else "",
                "codes": list(m.get("codes") or []),
                "token": m.get("token"),
                "expires_at": m.get("expires_at"),
            }
        )
    return out


async def search(session: AsyncSession, principal: Principal, query: str) -> list[QueueRow]:
    """The requests about the person an email or phone (posted, never in a URL) belongs to,
    found by blind index; the search passes the consent gate and is recorded (``dsr.searched``,
    naming the people found, never the value searched)."""
    text = query.strip()
    if not text or len(text) > 254:
        raise InvalidField("give the requester's email or phone", field="query")
    kind = "email" if "@" in text else "phone"
    try:
        ident = lookup_ident(VaultContext.from_settings(), kind, text)
    except InvalidField as exc:
        raise InvalidField(f"not a usable {kind}", field="query") from exc
    profiles = await profiles_holding(session, ident)
    await authorize(session, principal, "dsr.read", profiles, lifecycle.PURPOSE, details={"search": kind})
    ids = await views.requests_naming(session, profiles)
    await record_many(
        session, principal, "dsr.searched", list(profiles) or [None],  # type: ignore[list-item]
        purpose=lifecycle.PURPOSE, legal_basis=lifecycle.LEGAL_BASIS, details={"by": kind, "found": len(ids)},
    )  # fmt: skip
    now = datetime.now(UTC)
    return [_row(r, now) for r in await views.requests_by_id(session, ids)]
