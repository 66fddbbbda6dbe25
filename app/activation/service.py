"""Activation runs: who may be sent, what of them, delivery, and the proof of it.

Who: the people asked for (a segment's members, or a journey's list) ∩ allowed for the
destination's purpose, categories and border by the decision engine — evaluated now, at
send time — ∩ not restricted ∩ not suppressed ∩ (when the segment's or destination's purpose
profiles people) not refusing profiling. What: only their fields whose data category the
destination declared and the purpose may receive, decrypted through the profiles service.

Each run writes one ledger entry naming the recipients (a group entry) with the counts by
reason, the policy version and an RFC 9162 Merkle root over salted per-recipient leaves;
the recipient rows (``activation_recipient``) let an access request prove where a person's
data went and an erasure tell every destination that received it.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import structlog
from sqlalchemy import case, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.access.service import Principal
from app.activation import delivery, proof
from app.activation.audiences import MIN_AUDIENCE
from app.activation.delivery import Delivered, Outbound
from app.activation.destinations import get_destination
from app.activation.models import (
    ActivationFile,
    ActivationRecipient,
    ActivationRun,
    DeadLetter,
    Destination,
)
from app.consent.gate import authorize, decide
from app.consent.policy import load_policies
from app.db import table_of, unit_of_work
from app.decisions.engine import Ask, ExistsFacts, JoinedFacts, allowed_categories, reason_expr
from app.decisions.service import current_rules
from app.errors import InvalidField, NotFound
from app.ledger.service import record_group
from app.profiles.service import VaultContext, open_fields, population, resolve_many
from app.segments.service import get_segment
from app.settings import get_settings
from app.vault.blind_index import blind_index
from app.vault.keyring import key_material
from audit.merkle import root

log = structlog.get_logger("consentry.activation")
NEEDS = {"sms": ("phone",), "ad_audience": ("email", "phone")}
"""Fields a kind cannot send without (any one of them)."""


@dataclass
class SendResult:
    """What a send did: who was sent, who was excluded and why, who failed (dead letter)."""

    run_id: str
    status: str
    sent: list[str] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    """Profile id → reason (the decision engine's, ``unknown person`` or missing contact data)."""
    failed: list[str] = field(default_factory=list)
    refusal: str | None = None
    duplicate: bool = False
    """The idempotency key was seen before: nothing was sent again; this is the first answer."""


def ask_for(dest: Destination) -> Ask:
    return Ask(dest.purpose, tuple(dest.categories), dest.cross_border)


def person_ref(dest_id: str, profile_id: str, index_key: bytes | None = None) -> str:
    """The person's pseudonym at one destination (keyed: unlinkable across destinations)."""
    key = index_key if index_key is not None else key_material(get_settings()).index_key
    return blind_index(key, f"activation:{dest_id}", profile_id)


_leaf = proof.leaf


# --- who may be sent ---------------------------------------------------------------------


async def screen(
    session: AsyncSession, ask: Ask, profiling: bool, now: datetime, where: Any, among: Any = None
) -> tuple[list[str], dict[str, str]]:
    """(allowed ids in id order, excluded id → reason) over the surviving people ``where``
    selects (and, given ``among``, a query of candidate ids such as a segment's members, only
    those: the population is joined to them, and their facts alone are read): the decision
    engine's reason, with restriction, suppression and (``profiling``) a refusal of profiling
    checked whatever the purpose's regime."""
    allowed: list[str] = []
    excluded: dict[str, str] = {}
    q = screen_query(session, ask, profiling, now, where, among)
    for pid, why in sorted((await session.execute(q)).all(), key=itemgetter(0)):  # ids are unique
        if why == "allowed":
            allowed.append(pid)
        else:
            excluded[pid] = str(why)
    return allowed, excluded


def screen_query(session: AsyncSession, ask: Ask, profiling: bool, now: datetime, where: Any, among: Any = None) -> Any:
    """``screen``'s statement: (id, reason) of the people it is about (in id order on
    PostgreSQL; SQLite's are sorted by the caller)."""
    rules = current_rules()
    table, person, region, live = population()
    joined = session.get_bind().dialect.name == "postgresql" or among is not None
    facts: JoinedFacts | ExistsFacts = JoinedFacts(now) if joined else ExistsFacts(person, now)
    reason = reason_expr(rules, ask, person, region, now, facts)
    checks = [(facts.flag("restricted"), "restricted"), (facts.flag("suppressed"), "suppressed")]
    if profiling:
        checks.append((facts.flag("profiling_refused"), "profiling refused"))
    verdict = case(*checks, else_=reason).label("reason")
    source = table
    if among is not None:  # the candidates first: their people are looked up, not everyone scanned
        candidates = among.subquery("candidates")
        source = candidates.join(table, candidates.c.profile_id == person)
    if isinstance(facts, JoinedFacts):
        source = facts.joined(source, person, among)
    q = select(person, verdict).select_from(source).where(live, where)
    if among is None or session.get_bind().dialect.name == "postgresql":
        q = q.order_by(person)  # SQLite would scan every profile in id order for it: sorted by the caller
    return q


def counts(excluded: dict[str, str]) -> dict[str, int]:
    """Excluded people counted by reason."""
    return dict(Counter(excluded.values()))


def trait_authority() -> Mapping[str, frozenset[str]]:
    """Sources whose values win for a trait (policies/identity.yaml), for field precedence."""
    return load_policies(get_settings().policy_dir).identity.trait_authority


def _profiling(*purposes: str | None) -> bool:
    rules = current_rules()
    return any(p is not None and p in rules.purposes and rules.purposes[p].profiling for p in purposes)


async def outbound(
    session: AsyncSession, dest: Destination, run_id: str, ids: list[str]
) -> tuple[list[Outbound], dict[str, str]]:
    """The people as the destination receives them (allowed categories only), and those
    left out because the data the kind needs is missing."""
    cats = allowed_categories(current_rules(), ask_for(dest))
    values = await open_fields(session, VaultContext.from_settings(), ids, cats)
    needs = NEEDS.get(dest.kind)
    index_key = key_material(get_settings()).index_key
    people, missing = [], {}
    for pid in ids:
        fields = values.get(pid, {})
        if needs and not any(fields.get(n) for n in needs):
            missing[pid] = f"no {' or '.join(needs)}"
            continue
        ref = person_ref(dest.id, pid, index_key)
        people.append(Outbound(pid, ref, delivery.message_id(run_id, ref), fields))
    return people, missing


# --- one run -----------------------------------------------------------------------------


@dataclass
class Plan:
    """A run decided and ready to deliver (nothing written yet)."""

    run: ActivationRun
    dest: Destination
    people: list[Outbound]
    excluded: dict[str, str]
    policy_version: str


async def plan(session: AsyncSession, run: ActivationRun, dest: Destination, where: Any, profiling: bool) -> Plan:
    now = datetime.now(UTC)
    allowed, excluded = await screen(session, ask_for(dest), profiling, now, where)
    people, missing = await outbound(session, dest, run.id, allowed)
    return Plan(run, dest, people, {**excluded, **missing}, current_rules().version)


def _refusal(p: Plan) -> str | None:
    if p.dest.kind != "ad_audience":
        return None
    floor = int(p.dest.config.get("min_audience", MIN_AUDIENCE))
    if len(p.people) < floor:
        return f"audience below the destination's minimum size ({len(p.people)} < {floor})"
    return None


async def deliver(p: Plan, progress: delivery.Progress | None = None) -> Delivered:
    if not p.people:
        return Delivered()
    if p.dest.kind in ("file", "ad_audience"):
        return delivery.write_file(p.dest, p.run.id, p.people, get_settings().default_region)
    return await delivery.send_batches(p.dest, p.run.id, p.people, progress)


def _progress(run_id: str, every_s: float = 1.0) -> delivery.Progress:
    """Writes a running run's counts (at most every ``every_s``) so the API shows progress."""
    last = [0.0]

    async def tell(sent: int, failed: int) -> None:
        now = time.monotonic()
        if now - last[0] < every_s:
            return
        last[0] = now
        await _set(run_id, sent=sent, failed=failed)

    return tell


async def _set(run_id: str, **values: Any) -> int:
    """Update a run's row in its own transaction; returns rows changed."""
    t = table_of(ActivationRun)
    where = [t.c.id == run_id, *([t.c.status == values.pop("_from")] if "_from" in values else [])]
    async with unit_of_work() as session:
        result = await session.execute(update(t).where(*where).values(**values))
    return int(getattr(result, "rowcount", 0) or 0)


async def conclude(
    session: AsyncSession, principal: Principal, p: Plan, done: Delivered, refusal: str | None
) -> SendResult:
    """Write what happened: recipients, leaves, files, dead letters, the run's report and one
    ledger entry (in ``session``'s transaction)."""
    run, dest, now = p.run, p.dest, datetime.now(UTC)
    got = proof.Recipients(run.id, dest.id)
    rows: list[tuple[Any, ...]] = []
    for person in p.people:
        status = "sent" if person.profile_id in done.sent else "failed" if person.profile_id in done.failed else ""
        if status:
            file_id, line = done.line_of.get(person.profile_id, (None, None))
            batch = done.batch_of.get(person.profile_id, 0)
            rows += got.rows([person], status, batch, now, file_id, line)
    for f in done.files:
        session.add(ActivationFile(run_id=run.id, destination_id=dest.id, created_at=now, **f))
    for d in done.dead:
        session.add(DeadLetter(id=str(uuid.uuid4()), run_id=run.id, destination_id=dest.id, created_at=now, **d))
    await session.flush()
    await proof.insert_recipients(session, rows)
    sent, failed, leaves = got.sent, got.failed_ids, got.leaves
    run.status = "refused" if refusal else "done" if not failed else "failed" if not sent else "done"
    run.refusal, run.finished_at, run.policy_version = refusal, now, p.policy_version
    run.total = len(p.people) + len(p.excluded)
    run.sent, run.failed = len(sent), len(failed)
    run.excluded = counts(p.excluded)
    run.merkle_root = root(leaves).hex() if leaves else None
    if leaves:
        await proof.store_leaves(session, run.id, b"".join(leaves))
    entry = await record_group(
        session,
        principal,
        "activation.run",
        sent,
        purpose=run.purpose,
        legal_basis=decide(principal, run.purpose).legal_basis,
        details=_ledger_details(run, dest, sorted(got.fields)),
    )
    run.ledger_seq = entry.seq
    await session.flush()
    return SendResult(run.id, run.status, sent, dict(p.excluded), failed, refusal)


def _ledger_details(run: ActivationRun, dest: Destination, fields: list[str]) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "destination_id": dest.id,
        "destination_kind": dest.kind,
        "segment_id": run.segment_id,
        "trigger": run.trigger,
        "reason": run.reason,
        "status": run.status,
        "refusal": run.refusal,
        "total": run.total,
        "sent": run.sent,
        "failed": run.failed,
        "excluded_by_reason": run.excluded,
        "fields": fields,
        "cross_border": dest.cross_border,
        "policy_version": run.policy_version,
        "merkle_root": run.merkle_root,
    }


async def carry_out(
    session: AsyncSession, principal: Principal, run: ActivationRun, where: Any, profiling: bool
) -> SendResult:
    """Decide, deliver (unless refused) and write one run (in ``session``)."""
    dest = await get_destination(session, run.destination_id)
    p = await plan(session, run, dest, where, profiling)
    refusal = _refusal(p)
    done = Delivered() if refusal else await deliver(p)
    return await conclude(session, principal, p, done, refusal)


# --- journeys: a send to a list of people ------------------------------------------------


async def send_to_destination(
    session: AsyncSession,
    principal: Principal,
    destination_id: str,
    profile_ids: list[str],
    purpose: str,
    *,
    reason: str,
    idempotency_key: str,
) -> SendResult:
    """Send these people to a destination now, with the same consent and field filtering and
    delivery as a segment run (one run, one ledger entry), in the caller's transaction. A key
    seen before sends nothing and returns the first answer (``duplicate``). The purpose must
    be the destination's declared one (422 otherwise); the role must be allowed it (403).
    A merged-away id is sent as its survivor (the result names the survivor); an unknown id
    is excluded as ``unknown person``. Delivery happens inside the caller's transaction: on
    SQLite, send before writing anything else in it, or the write lock is held meanwhile."""
    if not 0 < len(idempotency_key) <= 200:
        raise InvalidField("expects 1 to 200 characters", field="idempotency_key")
    seen = (
        await session.execute(select(ActivationRun).where(col(ActivationRun.idempotency_key) == idempotency_key))
    ).scalar_one_or_none()
    if seen is not None:
        return await _result_of(session, seen)
    dest = await get_destination(session, destination_id)
    if purpose != dest.purpose:
        raise InvalidField("is not the purpose the destination is declared for", field="purpose")
    await authorize(session, principal, "activation.send", [], purpose)
    roots = await resolve_many(session, profile_ids)
    _table, person, _region, _live = population()
    run = _new_run(principal, dest, None, "journey", reason[:200], idempotency_key)
    run.status, run.started_at = "running", datetime.now(UTC)
    session.add(run)
    result = await carry_out(session, principal, run, person.in_(sorted(set(roots.values()))), _profiling(purpose))
    for pid in profile_ids:
        if pid not in roots:
            result.excluded[pid] = "unknown person"
    return result


async def _result_of(session: AsyncSession, run: ActivationRun) -> SendResult:
    r = table_of(ActivationRecipient)
    rows = (await session.execute(select(r.c.profile_id, r.c.status).where(r.c.run_id == run.id))).all()
    return SendResult(
        run.id,
        run.status,
        [pid for pid, s in rows if s == "sent"],
        {},
        [pid for pid, s in rows if s == "failed"],
        run.refusal,
        duplicate=True,
    )


def _new_run(
    principal: Principal,
    dest: Destination,
    segment_id: str | None,
    trigger: str,
    reason: str | None = None,
    key: str | None = None,
) -> ActivationRun:
    return ActivationRun(
        id=str(uuid.uuid4()),
        destination_id=dest.id,
        segment_id=segment_id,
        purpose=dest.purpose,
        trigger=trigger,
        reason=reason,
        idempotency_key=key,
        status="queued",
        actor_key_id=principal.key_id,
        actor_role=principal.role,
        created_at=datetime.now(UTC),
    )


# --- segment runs ------------------------------------------------------------------------


async def start_run(
    session: AsyncSession, principal: Principal, segment_id: str, destination_id: str, trigger: str = "manual"
) -> ActivationRun:
    """Queue a run of a segment to a destination (the role must be allowed the destination's
    purpose); ``execute_run`` carries it out."""
    await get_segment(session, segment_id)
    dest = await get_destination(session, destination_id)
    await authorize(session, principal, "activation.run", [], dest.purpose)
    run = _new_run(principal, dest, segment_id, trigger)
    session.add(run)
    await session.flush()
    return run


async def execute_run(run_id: str) -> SendResult | None:
    """Carry out a queued run: ``app.activation.runs`` streams it and resumes it after a crash."""
    from app.activation.runs import execute_run as stream  # runs builds on this module

    return await stream(run_id)


async def get_run(session: AsyncSession, run_id: str) -> ActivationRun:
    run = await session.get(ActivationRun, run_id)
    if run is None:
        raise NotFound("no activation with this id", field="activation_id")
    return run


async def dead_letters(
    session: AsyncSession, *, destination_id: str | None = None, run_id: str | None = None
) -> list[dict[str, Any]]:
    q = select(DeadLetter).order_by(col(DeadLetter.created_at), col(DeadLetter.batch))
    if destination_id is not None:
        q = q.where(col(DeadLetter.destination_id) == destination_id)
    if run_id is not None:
        q = q.where(col(DeadLetter.run_id) == run_id)
    return [
        {
            "id": d.id,
            "run_id": d.run_id,
            "destination_id": d.destination_id,
            "batch": d.batch,
            "people": d.people,
            "attempts": d.attempts,
            "last_status": d.last_status,
            "last_error": d.last_error,
            "created_at": d.created_at.isoformat(),
        }
        for d in (await session.execute(q)).scalars()
    ]


async def report(session: AsyncSession, principal: Principal, run: ActivationRun) -> dict[str, Any]:
    """A run's status, progress and report (excluded counts below the threshold read ``<N``
    to roles that see masked values, as segment counts do)."""
    from app.segments.service import shown

    masked = decide(principal, run.purpose).reveal != "plain"
    return {
        "id": run.id,
        "segment_id": run.segment_id,
        "destination_id": run.destination_id,
        "purpose": run.purpose,
        "trigger": run.trigger,
        "reason": run.reason,
        "status": run.status,
        "refusal": run.refusal,
        "created_at": run.created_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "report": {
            "total": run.total,
            "sent": run.sent,
            "failed": run.failed,
            "excluded": {r: shown(n, masked) for r, n in sorted(run.excluded.items())},
        },
        "policy_version": run.policy_version,
        "merkle_root": run.merkle_root,
        "ledger_seq": run.ledger_seq,
        "attempts": run.attempts,
        "dead_letters": await dead_letters(session, run_id=run.id),
    }


async def runs(session: AsyncSession, limit: int) -> list[ActivationRun]:
    q = select(ActivationRun).order_by(col(ActivationRun.created_at).desc()).limit(limit)
    return list((await session.execute(q)).scalars())
