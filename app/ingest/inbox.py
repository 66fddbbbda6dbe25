"""The durable inbox: accept a request in one write, process it later in large groups.

``accept_messages`` authenticates nothing itself (the route did), checks each message's
shape and content as the pipeline will, registers the fresh message ids (so a replay is a
duplicate at once, and the answer's counts are final) and appends the accepted messages as
one sealed row, all in the caller's transaction: nothing is acknowledged before it is
durable. The processor (``app.ingest.processor``) claims rows, stores their events and
deletes them in one transaction.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.access.service import Principal
from app.consent.gate import authorize, decide
from app.db import table_of
from app.errors import NotFound
from app.ingest.models import InboxBatch
from app.ingest.service import BatchResult, _new_message_ids, checked_messages
from app.ingest.spec import Message
from app.pii.review import current_field_policy
from app.profiles.service import VaultContext
from app.vault.blobs import open_blob, seal_blob

PURPOSE = "ingest-inbox"
MAX_ATTEMPTS = 3
"""A batch that fails this many times is set aside (``status='failed'``) with its reason."""


@dataclass
class Accepted:
    """What ``accept_messages`` answers: the counts and rejects, and the inbox row (None: nothing to store)."""

    result: BatchResult
    batch_id: int | None


@dataclass
class Claimed:
    """An inbox row opened for processing."""

    id: int
    principal: Principal
    received_at: datetime
    kind: str | None
    gpc: bool
    messages: list[Any]
    defaults: dict[str, Any]
    require_ids: bool = True


async def accept_messages(
    session: AsyncSession,
    ctx: VaultContext,
    principal: Principal,
    raw_messages: list[Any],
    *,
    defaults: dict[str, Any] | None = None,
    gpc: bool = False,
    expected_type: str | None = None,
    require_ids: bool = True,
) -> Accepted:
    """Check the messages, register fresh ids and append the accepted ones as one sealed row.
    ``require_ids=False`` (imports): a message may come without userId/anonymousId."""
    now = datetime.now(UTC)
    if not decide(principal, None).allowed:
        await authorize(session, principal, "ingest.events", [], None)
    result = BatchResult()
    fp = await current_field_policy(session, ctx.policies, ctx.keys.index_key)
    valid = checked_messages(ctx, raw_messages, result, defaults, expected_type, require_ids, now, fp)
    unique: dict[str, Message] = {}
    for m in valid:
        unique.setdefault(m.message_id, m)
    source = principal.source or principal.name
    fresh = await _new_message_ids(session, source, list(unique), now)
    keep = [m for mid, m in unique.items() if mid in fresh]
    result.accepted, result.duplicates = len(keep), len(valid) - len(keep)
    if not keep:
        return Accepted(result, None)
    messages = [{**raw_messages[m.index], "messageId": m.message_id} for m in keep]
    body = {"m": messages, "d": defaults or {}, "r": require_ids}
    batch_id = await append(session, ctx, principal, now, body, len(messages), expected_type, gpc)
    return Accepted(result, batch_id)


async def append(
    session: AsyncSession,
    ctx: VaultContext,
    principal: Principal,
    received_at: datetime,
    body: dict[str, Any],
    events: int,
    kind: str | None,
    gpc: bool,
) -> int:
    """One inbox row holding ``body`` (messages ``m``, batch defaults ``d``, ids required ``r``)
    sealed as one blob; returns its id (with ``CONSENTRY_INBOX_URL=nats://…``: published to
    the JetStream inbox instead, once the stream acknowledged it; returns its stream sequence)."""
    from app.ingest import jetstream

    if jetstream.enabled():
        return await jetstream.publish(ctx, principal, received_at, body, events, kind, gpc)
    row, version, sealed = sealed_batch(ctx, principal, received_at, body, events, kind, gpc)
    row.update(key_version=version, sealed=sealed, status="queued", attempts=0)
    t = table_of(InboxBatch)
    return int((await session.execute(insert(t).returning(t.c.id), row)).scalar_one())


def _sqlite(session: AsyncSession) -> bool:
    return session.bind is not None and session.bind.dialect.name == "sqlite"


async def claim(session: AsyncSession, max_events: int, scan: int = 200) -> list[Any]:
    """The oldest queued rows of one sender, up to ``max_events`` events (at least one row).

    PostgreSQL: locked ``FOR UPDATE SKIP LOCKED``, so several workers share the inbox and
    never take the same row. SQLite: only read (the expensive preparation then runs without
    the database's write lock, so accepting requests are not held up); ``hold`` takes the
    lock and checks that the rows are still queued."""
    t = table_of(InboxBatch)
    q = select(t.c.id, t.c.key_id, t.c.events).where(t.c.status == "queued").order_by(t.c.id).limit(scan)
    if not _sqlite(session):
        q = q.with_for_update(skip_locked=True)
    heads = (await session.execute(q)).all()
    chosen: list[int] = []
    total = 0
    for row in heads:
        if chosen and (row.key_id != heads[0].key_id or total + row.events > max_events):
            break
        chosen.append(row.id)
        total += row.events
    if not chosen:
        return []
    return list((await session.execute(select(t).where(t.c.id.in_(chosen)).order_by(t.c.id))).all())


async def hold(session: AsyncSession, ids: list[int]) -> bool:
    """Before writing a claimed group: on SQLite end the read, take the write lock and check
    that no other processor stored these rows meanwhile (False: it did). PostgreSQL's claim
    holds row locks already."""
    if not _sqlite(session):
        return True
    await session.rollback()
    await session.execute(text("UPDATE ingest_inbox SET attempts = attempts WHERE id = -1"))
    t = table_of(InboxBatch)
    q = select(func.count()).select_from(t).where(t.c.id.in_(ids), t.c.status == "queued")
    return int((await session.execute(q)).scalar() or 0) == len(ids)


BOUND = ("received_at", "key_id", "role", "name", "source", "trust", "events", "kind", "gpc")
"""What an inbox row says in the clear about its blob, bound to the blob (its AAD)."""


def sealed_batch(
    ctx: VaultContext,
    principal: Principal,
    received_at: datetime,
    body: dict[str, Any],
    events: int,
    kind: str | None,
    gpc: bool,
) -> tuple[dict[str, Any], int, bytes]:
    """(the clear fields, key version, blob): ``body`` sealed and bound to the clear fields —
    what the database inbox stores as a row and the JetStream inbox publishes."""
    clear: dict[str, Any] = {
        "received_at": received_at,
        "key_id": principal.key_id,
        "role": principal.role,
        "name": principal.name,
        "source": principal.source,
        "trust": principal.trust,
        "events": events,
        "kind": kind,
        "gpc": gpc,
    }
    version, sealed = seal_blob(ctx.keys.master, PURPOSE, msgspec.json.encode(body), _binding(clear))
    return clear, version, sealed


def _binding(row: Any) -> bytes:
    """The row's clear fields in a fixed form (times as UTC ISO strings)."""
    values = {k: row[k] for k in BOUND}
    at = values["received_at"]
    values["received_at"] = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    values["gpc"] = bool(values["gpc"])
    return msgspec.json.encode(values)


def opened(ctx: VaultContext, r: Any) -> Claimed:
    """A claimed row's messages, decrypted (``IntegrityFailure`` if the seal was altered)."""
    body = msgspec.json.decode(open_blob(ctx.keys.master, PURPOSE, r.key_version, r.sealed, _binding(r._mapping)))
    principal = Principal(key_id=r.key_id, role=r.role, name=r.name, source=r.source, trust=r.trust)
    return Claimed(r.id, principal, r.received_at, r.kind, r.gpc, body["m"], body["d"], body.get("r", True))


async def remove(session: AsyncSession, ids: list[int]) -> None:
    """Delete processed rows (in the transaction that stored their events)."""
    t = table_of(InboxBatch)
    await session.execute(delete(t).where(t.c.id.in_(ids)))


async def record_failure(session: AsyncSession, batch_id: int, reason: str) -> bool:
    """Count a failed attempt; set the batch aside once it failed ``MAX_ATTEMPTS`` times.
    Returns True when it was set aside."""
    t = table_of(InboxBatch)
    row = (await session.execute(select(t.c.attempts).where(t.c.id == batch_id))).first()
    if row is None:
        return False
    attempts = row.attempts + 1
    failed = attempts >= MAX_ATTEMPTS
    await session.execute(
        update(t)
        .where(t.c.id == batch_id)
        .values(attempts=attempts, error=reason[:200], status="failed" if failed else "queued")
    )
    return failed


async def requeue(session: AsyncSession, batch_id: int) -> int:
    """Put a set-aside batch back in the queue (after fixing what made it fail); returns its
    number of events, or ``NotFound`` if no batch with this id was set aside."""
    t = table_of(InboxBatch)
    row = (await session.execute(select(t.c.events).where(t.c.id == batch_id, t.c.status == "failed"))).first()
    if row is None:
        raise NotFound("no set-aside batch with this id", field="batch_id")
    await session.execute(update(t).where(t.c.id == batch_id).values(status="queued", attempts=0, error=None))
    return int(row.events)


async def status(session: AsyncSession, failures: int = 50) -> dict[str, Any]:
    """Inbox depth (batches, events), the age of the oldest queued batch, and the set-aside ones."""
    t = table_of(InboxBatch)
    q = select(t.c.status, func.count(), func.coalesce(func.sum(t.c.events), 0), func.min(t.c.received_at))
    by_status = {s: (int(n), int(e), oldest) for s, n, e, oldest in (await session.execute(q.group_by(t.c.status)))}
    queued = by_status.get("queued", (0, 0, None))
    failed = by_status.get("failed", (0, 0, None))
    oldest = queued[2]
    lag = max(0.0, (datetime.now(UTC) - oldest).total_seconds()) if oldest else 0.0
    rows = (
        await session.execute(
            select(t.c.id, t.c.received_at, t.c.source, t.c.events, t.c.attempts, t.c.error)
            .where(t.c.status == "failed")
            .order_by(t.c.id.desc())
            .limit(failures)
        )
    ).all()
    return {
        "queued_batches": queued[0],
        "queued_events": queued[1],
        "lag_seconds": round(lag, 3),
        "failed_batches": failed[0],
        "failed_events": failed[1],
        "failures": [
            {
                "id": r.id,
                "received_at": r.received_at.isoformat(),
                "source": r.source,
                "events": r.events,
                "attempts": r.attempts,
                "reason": r.error,
            }
            for r in rows
        ],
    }


async def wait_processed(
    maker: async_sessionmaker[AsyncSession], batch_id: int, timeout: float, poll: float = 0.005
) -> bool:
    """Wait until the batch left the queue (processed, or set aside); False on timeout."""
    t = table_of(InboxBatch)
    deadline = time.monotonic() + timeout
    while True:
        async with maker() as session:
            row = (await session.execute(select(t.c.status).where(t.c.id == batch_id))).first()
        if row is None or row.status != "queued":
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll)
