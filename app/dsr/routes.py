"""HTTP API for data-subject requests: intake (public form or staff), code verification, the
request list and view, state changes, extension, waiting, bulk actions, step retries and the
demo outbox."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
from litestar import Controller, Request, get, post
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException, TooManyRequestsException
from litestar.middleware.rate_limit import DURATION_VALUES
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.access.guards import token_from_headers
from app.access.service import Principal, authenticate
from app.consent.gate import authorize
from app.deps import Caller, Db
from app.dsr import fulfil, lifecycle
from app.dsr.certificate import certificate_of
from app.dsr.channel import read_outbox
from app.dsr.intake import PUBLIC, Intake, check_intake, receive, resend_codes, verify_code
from app.dsr.models import KINDS, REGULATIONS, STATUSES, DsrRequest, DsrTransition, DsrVerification
from app.dsr.policy import DsrPolicy, load_policy
from app.dsr.schemas import (
    BulkIn,
    BulkResult,
    CodeIn,
    DsrIntakeIn,
    DsrOut,
    DsrReceipt,
    OutboxMessage,
    ReasonIn,
    StatusIn,
)
from app.dsr.sealing import opened, request_key
from app.dsr.steps import step_view, steps_of
from app.errors import DomainError, InvalidField, NotFound
from app.logs import scrub_text
from app.profiles.service import VaultContext
from app.ratelimit import STORE_NAME, caller_identity, count_hit, parse_rate
from app.settings import get_settings

STAFF = ("compliance", "admin")
RECEIVED = (
    "Your request was received. If we hold data about you, we will ask you to confirm it is you "
    "with a code sent to the contact you gave."
)


def _policy() -> DsrPolicy:
    return load_policy(get_settings().policy_dir)


def _reason(text: str | None) -> str | None:
    """Staff's reason, without personal data (names, emails, numbers are masked)."""
    if text is None or not text.strip():
        return None
    if len(text) > 500:
        raise InvalidField("is longer than 500 characters", field="reason")
    return scrub_text(text.strip())


async def _staff(request: Request[Any, Any, Any], db: AsyncSession) -> Principal | None:
    """The caller's principal when a key is given (compliance or admin only), else None."""
    token = token_from_headers(request)
    if not token:
        return None
    principal = await authenticate(db, token)
    if principal is None:
        raise NotAuthorizedException(detail="the API key is unknown or revoked")
    if principal.role not in STAFF:
        raise PermissionDeniedException(detail=f"role '{principal.role}' may not call this endpoint")
    return principal


async def _within_intake_rate(request: Request[Any, Any, Any], rate: str) -> None:
    """The public form's own limit per client address (stricter than the API's), counted in
    the rate-limit store every process shares (atomically: requests arriving together are
    each counted)."""
    parsed = parse_rate(rate)
    if parsed is None:
        return
    unit, allowed = parsed
    store = request.app.stores.get(STORE_NAME)
    lock = request.app.state.setdefault("dsr_intake_lock", anyio.Lock())
    count, reset = await count_hit(store, "dsr-intake:" + caller_identity(request), DURATION_VALUES[unit], lock)
    if count > allowed:
        wait = max(1, reset - int(time.time()))
        raise TooManyRequestsException(
            detail=f"more than {allowed} requests a {unit} from this address; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )


def _days_left(r: DsrRequest) -> int:
    since = r.waiting_since or datetime.now(UTC)
    return (r.due_at - since).days


def _out(r: DsrRequest) -> DsrOut:
    return DsrOut(
        id=r.id,
        kind=r.kind,
        regulation=r.regulation,
        channel=r.channel,
        status=r.status,
        received_at=r.received_at,
        due_at=r.due_at,
        days_left=_days_left(r),
        jurisdiction=r.jurisdiction,
        scope=r.scope,
        field=r.field,
        ack_due_at=r.ack_due_at,
        extension_latest_at=r.extension_latest_at,
        extended_at=r.extended_at,
        extension_reason=r.extension_reason,
        waiting_since=r.waiting_since,
        waited_seconds=r.waited_seconds,
        verified_at=r.verified_at,
        closed_at=r.closed_at,
        denial_reason=r.denial_reason,
        flag=r.flag,
        subject_id=r.subject_id,
    )


async def _detail(db: AsyncSession, principal: Principal, r: DsrRequest) -> DsrOut:
    """The full view: what the requester gave (opened), codes' states, steps, history; audited."""
    codes = list((await db.execute(select(DsrVerification).where(col(DsrVerification.request_id) == r.id))).scalars())
    subjects = sorted({c.profile_id for c in codes if c.profile_id})
    await authorize(db, principal, "dsr.read", subjects, lifecycle.PURPOSE, details={"dsr": r.id})
    out = _out(r)
    given = await opened(db, r)
    if given is not None:
        out.identifiers, out.details = given.get("identifiers"), given.get("details")
    out.verifications = [
        {"profile_id": c.profile_id, "state": c.state, "points": c.matched_points, "attempts": c.attempts}
        for c in codes
    ]
    out.steps = [step_view(s) for s in await steps_of(db, r.id)]
    q = select(DsrTransition).where(col(DsrTransition.request_id) == r.id).order_by(col(DsrTransition.id))
    out.history = [
        {"from": t.from_status, "to": t.to_status, "at": t.at.isoformat(), "actor": t.actor, "reason": t.reason}
        for t in (await db.execute(q)).scalars()
    ]
    await lifecycle.audit(db, principal, "dsr.viewed", r, subjects)
    return out


def _choice(value: str | None, allowed: tuple[str, ...], name: str) -> str | None:
    if value is not None and value not in allowed:
        raise InvalidField(f"must be one of {', '.join(allowed)}", field=name)
    return value


class DsrController(Controller):
    path = "/v1/dsr"
    tags = ["data-subject requests"]

    @post("/", operation_id="submitDsr", status_code=202)
    async def submit(self, request: Request[Any, Any, Any], data: JSONBody[DsrIntakeIn], db: Db) -> DsrReceipt | DsrOut:
        """Receive a request. Without a key: the public form (rate-limited per address; the
        answer is the same whether or not we hold data about the person). With a compliance
        key: a request that arrived by mail or phone, entered by staff."""
        policy = _policy()
        staff = await _staff(request, db)
        if staff is None:
            await _within_intake_rate(request, policy.public_intake_rate)
        intake = check_intake(
            Intake(
                data.kind,
                data.regulation,
                data.identifiers,
                data.jurisdiction,
                data.scope,
                data.field,
                data.details,
                data.verify,
                _reason(data.verification_note),
            ),
            staff=staff is not None,
        )
        got = await receive(db, VaultContext.from_settings(), policy, staff or PUBLIC, intake)
        r = got.request
        if staff is None:
            return DsrReceipt(r.id, r.status, r.received_at, r.due_at, RECEIVED)
        return _out(r)

    @post("/{request_id:str}/verify", operation_id="verifyDsr", status_code=200)
    async def verify(self, request_id: FromPath[str], data: JSONBody[CodeIn], db: Db) -> DsrReceipt:
        """The requester enters the code they received (no key: it is their own request)."""
        r = await verify_code(db, VaultContext.from_settings(), _policy(), request_id, data.code)
        return DsrReceipt(r.id, r.status, r.received_at, r.due_at, "Thank you: your request is confirmed.")

    @post("/{request_id:str}/codes", opt={"roles": STAFF}, operation_id="resendDsrCodes", status_code=200)
    async def resend(self, request_id: FromPath[str], db: Db, principal: Caller) -> dict[str, int]:
        """Send new codes for a request whose codes expired or were lost (the old ones stop working)."""
        r = await lifecycle.load_request(db, request_id, lock=True)
        return {"sent": await resend_codes(db, VaultContext.from_settings(), _policy(), principal, r)}

    @get("/", opt={"roles": STAFF}, operation_id="listDsr")
    async def list_requests(
        self,
        db: Db,
        status: Annotated[str | None, QueryParameter(description="received, verified, in_progress…")] = None,
        due_before: Annotated[datetime | None, QueryParameter(description="deadline strictly before")] = None,
        kind: Annotated[str | None, QueryParameter(description="access, erasure, opt_out…")] = None,
        regulation: Annotated[str | None, QueryParameter(description="gdpr, ccpa or pipl")] = None,
        flag: Annotated[str | None, QueryParameter(description="due_soon or overdue")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> list[DsrOut]:
        """Requests by state and deadline, soonest first (no personal data in the list)."""
        f = lifecycle.Filter(
            _choice(status, STATUSES, "status"),
            due_before,
            _choice(kind, KINDS, "kind"),
            _choice(regulation, REGULATIONS, "regulation"),
            _choice(flag, ("due_soon", "overdue"), "flag"),
        )
        return [_out(r) for r in await lifecycle.list_requests(db, f, limit)]

    @get("/{request_id:str}", opt={"roles": STAFF}, operation_id="getDsr")
    async def read(self, request_id: FromPath[str], db: Db, principal: Caller) -> DsrOut:
        """One request with what the requester gave, its codes' states, steps and history; audited."""
        return await _detail(db, principal, await lifecycle.load_request(db, request_id))

    @get("/{request_id:str}/outbox", opt={"roles": STAFF}, operation_id="readDsrOutbox")
    async def outbox(self, request_id: FromPath[str], db: Db, principal: Caller) -> list[OutboxMessage]:
        """The demo channel: messages to the requester (codes, notices), opened; reading
        delivers them, so they are purged. Audited."""
        r = await lifecycle.load_request(db, request_id)
        messages = await read_outbox(db, await request_key(db, r), r.id)
        await lifecycle.audit(db, principal, "dsr.outbox_read", r, [r.subject_id], {"messages": len(messages)})
        return [OutboxMessage(m.pop("topic"), m.pop("created_at"), m) for m in messages]

    @post("/{request_id:str}/status", opt={"roles": STAFF}, operation_id="setDsrStatus", status_code=200)
    async def set_status(
        self, request_id: FromPath[str], data: JSONBody[StatusIn], db: Db, principal: Caller
    ) -> DsrOut:
        """Move a request on: ``in_progress`` (once verified), ``completed``, or ``denied`` with a reason."""
        r = await lifecycle.load_request(db, request_id, lock=True)
        await lifecycle.set_status(db, principal, r, data.status, _reason(data.reason))
        return _out(r)

    @post("/{request_id:str}/extend", opt={"roles": STAFF}, operation_id="extendDsr", status_code=200)
    async def extend(self, request_id: FromPath[str], data: JSONBody[ReasonIn], db: Db, principal: Caller) -> DsrOut:
        """Take the regulation's one extension (GDPR two months, CCPA 45 days) before the
        original deadline, with a reason; the notice to the person is sent with it."""
        r = await lifecycle.load_request(db, request_id, lock=True)
        await lifecycle.extend(db, principal, _policy(), r, _reason(data.reason) or "")
        return _out(r)

    @post("/{request_id:str}/wait", opt={"roles": STAFF}, operation_id="waitDsr", status_code=200)
    async def wait(self, request_id: FromPath[str], data: JSONBody[ReasonIn], db: Db, principal: Caller) -> DsrOut:
        """Wait for the requester: the clock stops until ``resume``."""
        r = await lifecycle.load_request(db, request_id, lock=True)
        await lifecycle.wait(db, principal, r, _reason(data.reason))
        return _out(r)

    @post("/{request_id:str}/resume", opt={"roles": STAFF}, operation_id="resumeDsr", status_code=200)
    async def resume(self, request_id: FromPath[str], data: JSONBody[ReasonIn], db: Db, principal: Caller) -> DsrOut:
        """The requester answered: back to the previous state, deadlines moved by the time waited."""
        r = await lifecycle.load_request(db, request_id, lock=True)
        await lifecycle.resume(db, principal, r, _reason(data.reason))
        return _out(r)

    @get("/{request_id:str}/plan", opt={"roles": STAFF}, operation_id="planDsr")
    async def plan(self, request_id: FromPath[str], db: Db, principal: Caller) -> list[dict[str, Any]]:
        """The dry run of an erasure: per verified person, the rows each store would remove."""
        r = await lifecycle.load_request(db, request_id)
        out = await fulfil.plan(db, r)
        await lifecycle.audit(db, principal, "dsr.planned", r, [r.subject_id])
        return out

    @post("/{request_id:str}/run", opt={"roles": STAFF}, operation_id="runDsr", status_code=200)
    async def run(self, request_id: FromPath[str], db: Db, principal: Caller) -> dict[str, Any]:
        """Carry an in-progress request out on the verified profiles, one step per store;
        completes it (signed certificate) when every step is done."""
        r = await lifecycle.load_request(db, request_id, lock=True)
        return await fulfil.run(db, principal, r)

    @post(
        "/{request_id:str}/steps/{store:str}/retry", opt={"roles": STAFF}, operation_id="retryDsrStep", status_code=200
    )
    async def retry(self, request_id: FromPath[str], store: FromPath[str], db: Db, principal: Caller) -> dict[str, Any]:
        """Run one store's failed step again on its own."""
        r = await lifecycle.load_request(db, request_id, lock=True)
        return await fulfil.retry(db, principal, r, store)

    @get("/{request_id:str}/certificate", opt={"roles": (*STAFF, "auditor")}, operation_id="getDsrCertificate")
    async def certificate(self, request_id: FromPath[str], db: Db) -> dict[str, Any]:
        """The signed completion certificate (body as signed, signature, key id)."""
        found = await certificate_of(db, request_id)
        if found is None:
            raise NotFound("this request has no certificate (yet)", field="request_id")
        return found

    @post("/bulk", opt={"roles": STAFF}, operation_id="bulkDsr", status_code=200)
    async def bulk(self, data: JSONBody[BulkIn], db: Db, principal: Caller) -> list[BulkResult]:
        """One action on every request a filter matches; each is changed or refused on its
        own (a refusal does not stop the others)."""
        if not 1 <= data.limit <= 1000:
            raise InvalidField("must be from 1 to 1000", field="limit")
        f = lifecycle.Filter(
            _choice(data.status, STATUSES, "status"),
            data.due_before,
            _choice(data.kind, KINDS, "kind"),
            _choice(data.regulation, REGULATIONS, "regulation"),
            _choice(data.flag, ("due_soon", "overdue"), "flag"),
        )
        action = _choice(data.action, (*lifecycle.MANUAL, "wait", "resume"), "action")
        reason = _reason(data.reason)
        out = []
        for r in await lifecycle.list_requests(db, f, data.limit):
            try:
                async with db.begin_nested():
                    await _apply(db, principal, r, action or "", reason)
                out.append(BulkResult(r.id, True, r.status))
            except DomainError as exc:
                await db.refresh(r)
                out.append(BulkResult(r.id, False, r.status, exc.detail))
        return out


async def _apply(db: AsyncSession, principal: Principal, r: DsrRequest, action: str, reason: str | None) -> None:
    if action == "wait":
        await lifecycle.wait(db, principal, r, reason)
    elif action == "resume":
        await lifecycle.resume(db, principal, r, reason)
    else:
        await lifecycle.set_status(db, principal, r, action, reason)
