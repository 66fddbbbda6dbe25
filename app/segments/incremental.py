"""Incremental membership: the people the ingest outbox names are evaluated again against
every saved segment, without a full refresh.

Ingestion writes ``ingest_outbox`` in the transaction that stores the events (and merges,
unmerges and consent changes write it in theirs), so a person touched by a committed
transaction is always in it, crash or not. ``apply_outbox`` reads it after commit and moves
its cursor (``segment_cursor``, written only here) in the same transaction as the membership
changes: a crash between the two replays rows, never skips them, and applying a row twice
changes nothing (membership is evaluated from the current data, not from the row).

PostgreSQL commits ids out of order: a row with a lower id can become visible after a
higher one was read. The cursor is therefore a horizon of transaction ids, not an id: a
pass reads every row at or above the horizon, and when it is done the horizon moves to the
oldest transaction that was still running when the pass began (``outbox.horizon``). Rows of
transactions that were running then are read again by the next pass; a long transaction
(in any database of the cluster: transaction ids are cluster-wide) makes passes read more
rows again, never fewer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import delete, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.access.service import SYSTEM
from app.db import table_of
from app.errors import DomainError
from app.ingest import outbox
from app.ledger.service import record
from app.profiles.service import population
from app.segments.grammar import Node
from app.segments.models import Segment, SegmentCursor, SegmentHistory, SegmentMember
from app.segments.service import live_segments, matching, parse_tree

log = structlog.get_logger("consentry.segments")
CONSUMER = "segments"
BATCH = 2000
"""Outbox rows applied per call (and per transaction)."""


def _upsert(session: AsyncSession, table: Any) -> Any:
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


async def _cursor(session: AsyncSession) -> SegmentCursor | None:
    """The consumer's cursor, locked for this transaction; None while another consumer holds it."""
    q = select(SegmentCursor).where(col(SegmentCursor.consumer) == CONSUMER).with_for_update(skip_locked=True)
    found = (await session.execute(q)).scalars().first()
    if found is None:
        row = {"consumer": CONSUMER, "horizon": 0, "pass_horizon": 0, "after_id": 0, "applied": 0}
        stmt = _upsert(session, table_of(SegmentCursor)).values(**row, updated_at=datetime.now(UTC))
        await session.execute(stmt.on_conflict_do_nothing())
        found = (await session.execute(q)).scalars().first()
    return found


async def apply_outbox(session: AsyncSession, limit: int = BATCH) -> int:
    """Apply up to ``limit`` outbox rows in the caller's transaction: computed traits of the
    people they name are refreshed (when that domain exists) and their membership of every
    live saved segment updated, with history. Returns the rows read (0: nothing waiting or
    another consumer busy)."""
    mark = await outbox.horizon(session)
    cur = await _cursor(session)
    if cur is None:
        return 0
    if mark is not None and cur.after_id == 0:
        cur.pass_horizon = mark
    rows = await outbox.pending(session, cur.horizon if mark is not None else None, cur.after_id, limit)
    now = datetime.now(UTC)
    if rows:
        people = sorted({pid for _id, pid in rows})
        await _refresh_traits(session, people)
        await apply_people(session, people, now)
    if len(rows) < limit and mark is not None:
        cur.horizon, cur.after_id = cur.pass_horizon, 0
    elif rows:
        cur.after_id = rows[-1][0]
    cur.applied += len(rows)
    cur.updated_at = now
    return len(rows)


async def _refresh_traits(session: AsyncSession, profile_ids: list[str]) -> None:
    """Computed traits first (segments may use them), when the traits domain is installed."""
    try:
        from app.traits.service import refresh_traits  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:
        return
    await refresh_traits(session, profile_ids)


async def apply_people(session: AsyncSession, profile_ids: Sequence[str], now: datetime) -> dict[str, int]:
    """Evaluate these people again against every live saved segment (referred segments
    first) and record who entered and who left. Returns entries and exits over all segments."""
    total = {"entered": 0, "left": 0}
    for seg in await live_segments(session):
        try:
            node = (await parse_tree(session, seg.tree)).node
        except DomainError as exc:  # policy no longer allows the tree: the refresh job reports it
            log.warning("segment_incremental_skipped", segment=seg.id, field=exc.field)
            continue
        entered, left = await _update(session, seg, node, profile_ids, now)
        if entered or left:
            details = {"segment_id": seg.id, "entered": entered, "left": left}
            await record(session, SYSTEM, "segment.incremental", purpose=seg.purpose, details=details)
        total["entered"] += entered
        total["left"] += left
    return total


async def _update(
    session: AsyncSession, seg: Segment, node: Node, profile_ids: Sequence[str], now: datetime
) -> tuple[int, int]:
    _table, person, _region, _live = population()
    m, h = table_of(SegmentMember), table_of(SegmentHistory)
    ids = list(profile_ids)
    match = select(person).where(matching(node, now, few=True), person.in_(ids))
    now_in = set((await session.execute(match)).scalars())
    current = select(m.c.profile_id).where(m.c.segment_id == seg.id, m.c.profile_id.in_(ids))
    was_in = set((await session.execute(current)).scalars())
    entered, left = sorted(now_in - was_in), sorted(was_in - now_in)
    if left:
        await session.execute(delete(m).where(m.c.segment_id == seg.id, m.c.profile_id.in_(left)))
    if entered:
        rows = [{"segment_id": seg.id, "profile_id": p, "entered_at": now} for p in entered]
        await session.execute(_upsert(session, m).on_conflict_do_nothing(), rows)
    changes = [(p, "left") for p in left] + [(p, "entered") for p in entered]
    if changes:
        history = [{"segment_id": seg.id, "origin_id": p, "at": now, "profile_id": p, "change": c} for p, c in changes]
        await session.execute(insert(h), history)
    return len(entered), len(left)
