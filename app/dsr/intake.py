"""Receiving a request and verifying who sent it.

Intake does the same work whether or not the identifiers match anyone (the same lookups, one
key, one sealed record, at least one code row and one message), and answers the same, so the
public form tells nobody whether a person is known. Each matching profile gets its own code,
sent to a contact the requester gave that this profile holds; a profile matched only through
other identifiers gets no code and is never acted on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.access.service import Principal
from app.dsr.channel import channel, purge
from app.dsr.deadlines import deadlines_at_receipt
from app.dsr.lifecycle import LEGAL_BASIS, PURPOSE, audit, load_request, move
from app.dsr.models import KINDS, REGULATIONS, DsrRequest, DsrVerification
from app.dsr.policy import DsrPolicy, RegulationRules
from app.dsr.sealing import IDENTIFIERS_FIELD, opened, request_key
from app.errors import Conflict, InvalidField
from app.identity.service import lookup_ident, profiles_holding
from app.profiles.service import VaultContext
from app.vault.cipher import seal_field
from app.vault.service import DataKey, new_subject_key, store_subject_keys

CONTACTS = ("email", "phone")
"""Identifier kinds a code can be sent to."""
MAX_IDENTIFIERS = 8
PUBLIC = Principal(key_id="public", role="public", name="dsr-intake")
"""The actor of requests sent through the public form (no key)."""
ALIASES = {"cpra": "ccpa", "ccpa/cpra": "ccpa"}


@dataclass(frozen=True)
class Intake:
    kind: str
    regulation: str
    identifiers: dict[str, Any]
    jurisdiction: str | None = None
    scope: str | None = None
    field: str | None = None
    """For a rectification: the field to correct (it does not count towards verification)."""
    details: dict[str, Any] | None = None
    """What the requester asks, in their words (the correct value, the objection's grounds): sealed."""
    verify: bool = True
    """Staff only: False when identity was checked another way (the note says how)."""
    verification_note: str | None = None


@dataclass(frozen=True)
class Received:
    request: DsrRequest
    codes: int


def check_intake(data: Intake, staff: bool) -> Intake:
    """The intake with its kind and regulation normalised; ``InvalidField`` names what is wrong."""
    kind = data.kind.strip().lower().replace("-", "_")
    if kind not in KINDS:
        raise InvalidField(f"must be one of {', '.join(KINDS)}", field="kind")
    reg = data.regulation.strip().lower()
    reg = ALIASES.get(reg, reg)
    if reg not in REGULATIONS:
        raise InvalidField("must be GDPR, CCPA (or CPRA) or PIPL", field="regulation")
    if not data.identifiers or len(data.identifiers) > MAX_IDENTIFIERS:
        raise InvalidField(f"give 1 to {MAX_IDENTIFIERS} identifiers", field="identifiers")
    if not any(k in data.identifiers and k != data.field for k in CONTACTS):
        raise InvalidField(
            "give an email or phone (other than the field being corrected) to reach you", field="identifiers"
        )
    if kind == "rectification" and not data.field:
        raise InvalidField("name the field to correct", field="field")
    if not data.verify and not (staff and data.verification_note):
        raise InvalidField(
            "only staff may skip verification, with a note saying how identity was checked", field="verify"
        )
    return Intake(
        kind,
        reg,
        data.identifiers,
        data.jurisdiction,
        data.scope,
        data.field,
        data.details,
        data.verify,
        data.verification_note,
    )


def _code(policy: DsrPolicy) -> str:
    return f"{secrets.randbelow(10**policy.code_digits):0{policy.code_digits}d}"


def code_hash(index_key: bytes, verification_id: str, code: str) -> str:
    """A keyed hash of a code (a leaked table does not give six-digit codes away)."""
    return hmac.new(index_key, f"dsr-code|{verification_id}|{code}".encode(), hashlib.sha256).hexdigest()


async def _matches(session: AsyncSession, ctx: VaultContext, data: Intake) -> dict[str, set[str]]:
    """Profile → the identifier kinds given that it holds (found by blind index only)."""
    found: dict[str, set[str]] = defaultdict(set)
    for kind, value in data.identifiers.items():
        try:
            ident = lookup_ident(ctx, str(kind), value)
        except InvalidField as exc:
            raise InvalidField(exc.detail, field=f"identifiers.{kind}") from exc
        for pid in await profiles_holding(session, ident):
            found[pid].add(str(kind))
    return found


def _contact(data: Intake, held: set[str] | None) -> str | None:
    """Where a code goes: the first contact given that the profile holds (any given, for nobody)."""
    for kind in CONTACTS:
        if kind in data.identifiers and kind != data.field and (held is None or kind in held):
            return kind
    return None


async def receive(
    session: AsyncSession,
    ctx: VaultContext,
    policy: DsrPolicy,
    principal: Principal,
    data: Intake,
    channel_name: str = "outbox",
) -> Received:
    """Record a request, send its codes (or acknowledgement) and audit it."""
    rules = policy.regulations[data.regulation]
    now = datetime.now(UTC)
    matched = await _matches(session, ctx, data)
    request_id = str(uuid.uuid4())
    key, key_row = new_subject_key(ctx.keys.master, request_id)
    await store_subject_keys(session, [key_row])
    request = _request_row(rules, data, principal, key, request_id, now)
    session.add(request)
    sent, verified = await _send_codes(session, ctx, policy, rules, data, request, key, matched, channel_name)
    if not data.verify and verified:
        request.subject_id = verified[0]
    if not data.verify or data.kind == "opt_out":
        await move(
            session, principal, request, "verified", "no verification needed" if data.verify else "verified by staff"
        )
        request.verified_at = now
    await audit(
        session,
        principal,
        "dsr.received",
        request,
        # the public form names nobody in the ledger yet (the same entry, known or not: no
        # timing difference); a code or staff verification names the person
        [None] if principal is PUBLIC else sorted(matched) or [None],
        {
            "kind": data.kind,
            "regulation": data.regulation,
            "channel": request.channel,
            "identifier_kinds": sorted(data.identifiers),
        },
    )
    return Received(request, sent)


def _request_row(
    rules: RegulationRules, data: Intake, principal: Principal, key: DataKey, request_id: str, now: datetime
) -> DsrRequest:
    d = deadlines_at_receipt(rules, data.kind, now)
    sealed = {
        "identifiers": data.identifiers,
        "details": data.details or {},
        "verification_note": data.verification_note,
    }
    return DsrRequest(
        id=request_id,
        kind=data.kind,
        regulation=data.regulation,
        jurisdiction=data.jurisdiction,
        channel="public" if principal is PUBLIC else "staff",
        status="received",
        received_at=now,
        due_at=d.due_at,
        ack_due_at=d.ack_due_at,
        extension_latest_at=d.extension_latest_at,
        scope=data.scope,
        field=data.field,
        created_by=principal.key_id,
        key_version=key.version,
        sealed=seal_field(key.key, request_id, IDENTIFIERS_FIELD, key.version, sealed),
    )


async def _send_codes(
    session: AsyncSession,
    ctx: VaultContext,
    policy: DsrPolicy,
    rules: RegulationRules,
    data: Intake,
    request: DsrRequest,
    key: DataKey,
    matched: dict[str, set[str]],
    channel_name: str,
) -> tuple[int, list[str]]:
    """One verification row per matching profile (one for nobody when none match), and one
    message per contact: the codes, or an acknowledgement when no code is needed. Returns the
    codes sent and the profiles staff verified at intake."""
    needed = rules.points_needed(data.kind, data.scope)
    targets: list[tuple[str | None, set[str]]] = list(matched.items()) or [(None, set())]
    expires = datetime.now(UTC) + timedelta(minutes=policy.code_ttl_minutes)
    by_contact: dict[str, list[str]] = defaultdict(list)
    verified: list[str] = []
    for profile_id, kinds in targets:
        points = len(kinds - {data.field})
        contact = _contact(data, kinds if profile_id else None)
        vid = str(uuid.uuid4())
        code = _code(policy)
        state = "pending"
        if data.kind == "opt_out":
            state = "not_required"
        elif not data.verify:
            state = "verified" if points >= needed else "insufficient"
            verified += [profile_id] if profile_id and state == "verified" else []
        elif contact is None:
            state = "unreachable"
        session.add(
            DsrVerification(
                id=vid,
                request_id=request.id,
                profile_id=profile_id,
                code_hash=code_hash(ctx.keys.index_key, vid, code),
                expires_at=expires,
                matched_points=points,
                state=state,
            )
        )
        if state == "pending" and contact is not None:
            by_contact[contact].append(code)
    out = channel(channel_name)
    for contact, codes in by_contact.items():
        await out.deliver(session, key, "code", {"to": contact, "codes": codes, "due_at": request.due_at.isoformat()})
    if not by_contact:
        await out.deliver(
            session, key, "acknowledgement", {"to": _contact(data, None), "due_at": request.due_at.isoformat()}
        )
    return sum(len(c) for c in by_contact.values()), verified


async def verify_code(
    session: AsyncSession, ctx: VaultContext, policy: DsrPolicy, request_id: str, code: str
) -> DsrRequest:
    """Check a code: it verifies the one profile it was sent for. Wrong codes count against
    every open code of the request; at the limit they lock and the request is denied."""
    if not (isinstance(code, str) and code.isdigit() and len(code) == policy.code_digits):
        raise InvalidField(f"must be {policy.code_digits} digits", field="code")
    request = await load_request(session, request_id)
    rows = list(
        (await session.execute(select(DsrVerification).where(col(DsrVerification.request_id) == request_id))).scalars()
    )
    now = datetime.now(UTC)
    pending = [r for r in rows if r.state == "pending"]
    if not pending:
        if any(r.state == "locked" for r in rows):
            raise InvalidField("too many wrong codes: this request was closed; send a new request", field="code")
        if any(r.state == "expired" for r in rows):
            raise InvalidField("the code expired; ask for a new one", field="code")
        raise Conflict("this request has no code waiting to be entered", field="code")
    live = [r for r in pending if r.expires_at > now]
    if not live:
        for r in pending:
            r.state = "expired"
        await purge(session, request_id, "code")
        await audit(session, PUBLIC, "dsr.code_expired", request, [None], {})
        await session.commit()  # the refusal is kept although the request answers with an error
        raise InvalidField("the code expired; ask for a new one", field="code")
    hit = next((r for r in live if hmac.compare_digest(r.code_hash, code_hash(ctx.keys.index_key, r.id, code))), None)
    if hit is None:
        locked = await _wrong_code(session, policy, request, live)
        await session.commit()  # the attempt counts although the request answers with an error
        if locked:
            raise InvalidField("too many wrong codes: this request was closed; send a new request", field="code")
        raise InvalidField("the code is not right", field="code")
    rules = policy.regulations[request.regulation]
    needed = rules.points_needed(request.kind, request.scope)
    hit.state = "verified" if hit.profile_id is None or hit.matched_points >= needed else "insufficient"
    hit.verified_at = now
    if hit.state == "verified" and request.subject_id is None:
        request.subject_id = hit.profile_id
    if not any(r.state == "pending" for r in rows):
        await purge(session, request_id, "code")
    if request.status == "received":
        request.verified_at = now
        await move(session, PUBLIC, request, "verified", "code entered")
    await audit(
        session, PUBLIC, "dsr.verified", request, [hit.profile_id], {"state": hit.state, "points": hit.matched_points}
    )
    return request


async def resend_codes(
    session: AsyncSession, ctx: VaultContext, policy: DsrPolicy, principal: Principal, request: DsrRequest
) -> int:
    """New codes for the request's expired or unused ones (the old ones stop working), sent
    again to the contacts they went to; attempts start again. Returns the codes sent."""
    if request.status != "received":
        raise Conflict(f"a request that is {request.status} needs no new code", field="status")
    given, key = await opened(session, request), await request_key(session, request)
    q = select(DsrVerification).where(
        col(DsrVerification.request_id) == request.id, col(DsrVerification.state).in_(("pending", "expired"))
    )
    rows = list((await session.execute(q)).scalars())
    if given is None or key is None or not rows:
        raise Conflict("this request has no code to send again", field="status")
    data = Intake(request.kind, request.regulation, given["identifiers"], field=request.field)
    matched = await _matches(session, ctx, data)
    await purge(session, request.id, "code")
    expires = datetime.now(UTC) + timedelta(minutes=policy.code_ttl_minutes)
    by_contact: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        contact = _contact(data, matched.get(row.profile_id, set()) if row.profile_id else None)
        if contact is None:
            continue
        code = _code(policy)
        row.code_hash, row.expires_at, row.attempts, row.state = (
            code_hash(ctx.keys.index_key, row.id, code),
            expires,
            0,
            "pending",
        )
        by_contact[contact].append(code)
    for contact, codes in by_contact.items():
        await channel().deliver(
            session, key, "code", {"to": contact, "codes": codes, "due_at": request.due_at.isoformat()}
        )
    sent = sum(len(c) for c in by_contact.values())
    await audit(session, principal, "dsr.codes_resent", request, [r.profile_id for r in rows], {"codes": sent})
    return sent


async def _wrong_code(
    session: AsyncSession, policy: DsrPolicy, request: DsrRequest, live: list[DsrVerification]
) -> bool:
    """Count a wrong code against every open code; lock them (and deny the request) at the limit."""
    ids = [r.id for r in live]
    await session.execute(
        update(DsrVerification).where(col(DsrVerification.id).in_(ids)).values(attempts=DsrVerification.attempts + 1)
    )
    attempts = max(r.attempts for r in live) + 1
    locked = attempts >= policy.max_attempts
    if locked:
        await session.execute(update(DsrVerification).where(col(DsrVerification.id).in_(ids)).values(state="locked"))
        await purge(session, request.id, "code")
        if request.status == "received":
            await move(session, PUBLIC, request, "denied", "identity not verified: too many wrong codes")
    await audit(session, PUBLIC, "dsr.code_wrong", request, [None], {"attempts": attempts, "locked": locked})
    return locked


async def verified_profiles(session: AsyncSession, request_id: str) -> list[str]:
    """The profiles a request may act on: verified (or needing no verification) one by one."""
    q = select(col(DsrVerification.profile_id)).where(
        col(DsrVerification.request_id) == request_id,
        col(DsrVerification.state).in_(("verified", "not_required")),
        col(DsrVerification.profile_id).is_not(None),
    )
    return sorted({pid for pid in (await session.execute(q)).scalars() if pid})


__all__ = [
    "LEGAL_BASIS",
    "PURPOSE",
    "Intake",
    "Received",
    "check_intake",
    "receive",
    "verified_profiles",
    "verify_code",
]
