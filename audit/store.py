"""The ledger's tables and the one way to append to them.

Appends lock the single ``audit_head`` row first (an UPDATE, which takes a row lock on
PostgreSQL and the write lock on SQLite), so concurrent requests and processes queue
up instead of forking the chain. Call ``append`` inside the transaction that changes
the personal data, so the data change and its record commit or fail together.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from audit.chain import GENESIS_HASH, Entry, canonical_json, seal, utc_timestamp
from audit.checkpoint import Checkpoint

metadata = MetaData()

audit_entry = Table(
    "audit_entry",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("recorded_at", String(32), nullable=False, index=True),
    Column("actor_id", String(64), nullable=False, index=True),
    Column("actor_role", String(32), nullable=False),
    Column("action", String(64), nullable=False, index=True),
    Column("subject_id", String(64), nullable=True, index=True),
    Column("purpose", String(128), nullable=True),
    Column("legal_basis", String(64), nullable=True),
    Column("request_id", String(64), nullable=True, index=True),
    Column("details", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("head_hash", String(64), nullable=False),
)

audit_checkpoint = Table(
    "audit_checkpoint",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("origin", String(128), nullable=False),
    Column("head_hash", String(64), nullable=False),
    Column("signed_at", String(32), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("signature", String(128), nullable=False),
)

HEAD_ROW = {"id": 1, "seq": 0, "head_hash": GENESIS_HASH}
"""The row a new ledger starts from (inserted by the migration)."""

Executor = AsyncSession | AsyncConnection


def _row_to_entry(row: Any) -> Entry:
    m = row._mapping
    return Entry(
        seq=int(m["seq"]),
        recorded_at=m["recorded_at"],
        actor_id=m["actor_id"],
        actor_role=m["actor_role"],
        action=m["action"],
        subject_id=m["subject_id"],
        purpose=m["purpose"],
        legal_basis=m["legal_basis"],
        request_id=m["request_id"],
        details=json.loads(m["details"]),
        prev_hash=m["prev_hash"],
        entry_hash=m["entry_hash"],
    )


def _entry_row(entry: Entry) -> dict[str, Any]:
    row = entry.to_json()
    row["details"] = canonical_json(entry.details)
    return row


async def append_many(db: Executor, records: Sequence[dict[str, Any]]) -> list[Entry]:
    """Append records (actor_id, actor_role, action, subject_id, purpose, legal_basis,
    request_id, details) in order, chained to the current head; returns the entries."""
    if not records:
        return []
    lock = (
        update(audit_head)
        .where(audit_head.c.id == 1)
        .values(seq=audit_head.c.seq)
        .returning(audit_head.c.seq, audit_head.c.head_hash)
    )
    head = (await db.execute(lock)).one()
    seq, prev = int(head.seq), head.head_hash
    now = utc_timestamp()
    entries: list[Entry] = []
    for rec in records:
        seq += 1
        entry = seal(
            Entry(
                seq=seq,
                recorded_at=now,
                actor_id=rec["actor_id"],
                actor_role=rec["actor_role"],
                action=rec["action"],
                subject_id=rec.get("subject_id"),
                purpose=rec.get("purpose"),
                legal_basis=rec.get("legal_basis"),
                request_id=rec.get("request_id"),
                details=dict(rec.get("details") or {}),
                prev_hash=prev,
            )
        )
        entries.append(entry)
        prev = entry.entry_hash
    await db.execute(insert(audit_entry), [_entry_row(e) for e in entries])
    await db.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=seq, head_hash=prev))
    return entries


async def append(db: Executor, **record: Any) -> Entry:
    """Append one record; see ``append_many``."""
    return (await append_many(db, [record]))[0]


async def head(db: Executor) -> tuple[int, str]:
    row = (await db.execute(select(audit_head.c.seq, audit_head.c.head_hash).where(audit_head.c.id == 1))).one()
    return int(row.seq), row.head_hash


async def create_checkpoint(db: Executor, key: Ed25519PrivateKey, origin: str) -> Checkpoint:
    """Sign the current head; signing the same size twice returns the stored checkpoint."""
    size, head_hash = await head(db)
    existing = (await db.execute(select(audit_checkpoint).where(audit_checkpoint.c.size == size))).first()
    if existing is not None:
        return Checkpoint.from_json(dict(existing._mapping))
    cp = Checkpoint.sign(origin, size, head_hash, utc_timestamp(), key)
    await db.execute(insert(audit_checkpoint).values(**cp.to_json()))
    return cp


async def list_entries(
    db: Executor,
    *,
    after_seq: int = 0,
    limit: int = 100,
    actor_id: str | None = None,
    action: str | None = None,
    subject_id: str | None = None,
    request_id: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> list[Entry]:
    """Entries in sequence order after ``after_seq`` matching every filter given."""
    q = select(audit_entry).where(audit_entry.c.seq > after_seq)
    for col, value in (
        (audit_entry.c.actor_id, actor_id),
        (audit_entry.c.action, action),
        (audit_entry.c.subject_id, subject_id),
        (audit_entry.c.request_id, request_id),
    ):
        if value is not None:
            q = q.where(col == value)
    if since is not None:
        q = q.where(audit_entry.c.recorded_at >= since)
    if until is not None:
        q = q.where(audit_entry.c.recorded_at < until)
    rows = (await db.execute(q.order_by(audit_entry.c.seq).limit(limit))).all()
    return [_row_to_entry(r) for r in rows]


async def stream_entries(db: Executor, page: int = 1000) -> AsyncIterator[Entry]:
    """Every entry in order, read page by page."""
    after = 0
    while True:
        batch = await list_entries(db, after_seq=after, limit=page)
        if not batch:
            return
        for entry in batch:
            yield entry
        after = batch[-1].seq


async def list_checkpoints(db: Executor) -> list[Checkpoint]:
    rows = (await db.execute(select(audit_checkpoint).order_by(audit_checkpoint.c.size))).all()
    return [Checkpoint.from_json(dict(r._mapping)) for r in rows]


def read_all_sync(conn: Connection, page: int = 5000) -> tuple[Iterator[Entry], list[Checkpoint]]:
    """Entries and checkpoints through a blocking connection (for an auditor's script)."""

    def entries() -> Iterator[Entry]:
        after = 0
        while True:
            q = select(audit_entry).where(audit_entry.c.seq > after).order_by(audit_entry.c.seq).limit(page)
            rows = conn.execute(q).all()
            if not rows:
                return
            for r in rows:
                yield _row_to_entry(r)
            after = int(rows[-1]._mapping["seq"])

    cps = [Checkpoint.from_json(dict(r._mapping)) for r in conn.execute(select(audit_checkpoint)).all()]
    return entries(), cps
