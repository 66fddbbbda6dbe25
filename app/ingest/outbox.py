"""The outbox: which people an ingest transaction (or a merge, an unmerge, a consent change)
touched, written in that same transaction, so a consumer reading it after commit misses
nobody across a crash.

Ingestion is the one writer of ``ingest_outbox``. Consumers (the segments' incremental
membership, ``app.segments.incremental``) keep their own cursor and only read here. Rows
name a person, so the table is in the ingest holder (exported, forgotten with the person);
retention removes rows older than ``KEEP`` (consumers read them within seconds, and the
scheduled full refresh of segments catches up with anything a consumer never read).

PostgreSQL allocates ids before commit, so rows commit out of id order: each row carries
its transaction's id (``xid``) and ``horizon()`` says below which transaction id nothing
can commit any more (the oldest transaction still running)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, ColumnElement, String, cast, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import insert_rows, table_of
from app.ingest.models import OutboxEntry

KEEP = timedelta(days=1)
"""How long rows are kept for a consumer that fell behind (retention removes older ones)."""


def _postgres(session: AsyncSession) -> bool:
    return bool(session.bind and session.bind.dialect.name == "postgresql")


def _xid8(fn: str) -> ColumnElement[int]:
    return cast(cast(getattr(func, fn)(), String), BigInteger)


async def publish(session: AsyncSession, profile_ids: Iterable[str], reason: str) -> int:
    """Note, in the caller's transaction, that these people changed."""
    ids = sorted({p for p in profile_ids if p})
    if not ids:
        return 0
    xid = None
    if _postgres(session):
        xid = (await session.execute(select(_xid8("pg_current_xact_id")))).scalar()
    now = datetime.now(UTC)
    rows = [{"profile_id": p, "xid": xid, "reason": reason, "at": now} for p in ids]
    await insert_rows(session, table_of(OutboxEntry), rows)
    return len(ids)


async def horizon(session: AsyncSession) -> int | None:
    """PostgreSQL: the oldest transaction id still running; every transaction below it has
    committed or rolled back, so no outbox row with a lower ``xid`` can appear later.
    None on SQLite (one writer at a time: ids commit in order)."""
    if not _postgres(session):
        return None
    q = select(cast(cast(func.pg_snapshot_xmin(func.pg_current_snapshot()), String), BigInteger))
    return int((await session.execute(q)).scalar() or 0)


async def pending(session: AsyncSession, since_xid: int | None, after_id: int, limit: int) -> list[tuple[int, str]]:
    """(id, profile id) of committed rows after ``after_id`` in id order; on PostgreSQL only
    those written by transactions at or above ``since_xid``."""
    t = table_of(OutboxEntry)
    q = select(t.c.id, t.c.profile_id).where(t.c.id > after_id).order_by(t.c.id).limit(limit)
    if since_xid is not None:
        q = q.where(t.c.xid >= since_xid)
    return [(int(i), str(p)) for i, p in (await session.execute(q)).all()]


async def prune(session: AsyncSession, before: datetime) -> int:
    """Remove rows written before ``before`` (retention; see ``KEEP``)."""
    t = table_of(OutboxEntry)
    result = await session.execute(delete(t).where(t.c.at < before))
    return int(getattr(result, "rowcount", 0) or 0)
