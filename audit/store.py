"""The ledger's tables and the one way to append to them.

Appends lock the single ``audit_head`` row first (an UPDATE, which takes a row lock on
PostgreSQL and the write lock on SQLite), so concurrent requests and processes queue
up instead of forking the chain. Call ``append`` inside the transaction that changes
the personal data, so the data change and its record commit or fail together.

The head row also keeps the Merkle tree's frontier (``audit.merkle``), updated with
each append at an amortised cost of one node hash, so a signed tree head needs no
pass over old entries. Each entry's ``entry_hash`` is its RFC 9162 leaf hash.
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
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from audit import merkle
from audit.chain import GENESIS_HASH, Entry, canonical_json, seal, subjects_digest, utc_timestamp
from audit.checkpoint import Checkpoint, TreeHead

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

audit_subject = Table(
    "audit_subject",
    metadata,
    Column("subject_id", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
)
"""The subjects of group entries (one entry for a batch of thousands of people), so every
entry about a person is found by their id; each group entry's ``details["subjects"]``
carries a digest of its rows here, which the verifier checks."""

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("head_hash", String(64), nullable=False),
    Column("frontier", Text, nullable=False, server_default=""),
    # roots of the perfect subtrees of the first ``seq`` leaves, largest first, as hex
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
    Column("root_hash", String(64), nullable=True),
    # the Merkle root of a signed tree head; NULL on checkpoints made before tree heads
)

HEAD_ROW = {"id": 1, "seq": 0, "head_hash": GENESIS_HASH}
"""The row a new ledger starts from (inserted by the migration; ``frontier`` defaults to empty)."""

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


_LOCK_HEAD = (
    update(audit_head)
    .where(audit_head.c.id == 1)
    .values(seq=audit_head.c.seq)
    .returning(audit_head.c.seq, audit_head.c.head_hash, audit_head.c.frontier)
)
"""Lock the head row (a row lock on PostgreSQL, the write lock on SQLite) and read it."""


def _chain(head: Any, records: Sequence[dict[str, Any]]) -> tuple[list[Entry], list[dict[str, Any]], dict[str, Any]]:
    """The entries for ``records`` chained after ``head``, their subject index rows, and the
    head row's new values."""
    seq, prev = int(head.seq), head.head_hash
    frontier = merkle.decode_frontier(head.frontier)
    now = utc_timestamp()
    entries: list[Entry] = []
    subjects: list[dict[str, Any]] = []
    for rec in records:
        seq += 1
        details = dict(rec.get("details") or {})
        if rec.get("subject_ids") is not None:
            ids = sorted(set(rec["subject_ids"]))
            details["subjects"] = subjects_digest(ids)
            subjects += [{"subject_id": sid, "seq": seq} for sid in ids]
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
                details=details,
                prev_hash=prev,
            )
        )
        entries.append(entry)
        merkle.push(frontier, seq - 1, bytes.fromhex(entry.entry_hash))
        prev = entry.entry_hash
    return entries, subjects, {"seq": seq, "head_hash": prev, "frontier": merkle.encode_frontier(frontier)}


async def append_many(db: Executor, records: Sequence[dict[str, Any]]) -> list[Entry]:
    """Append records (actor_id, actor_role, action, subject_id, purpose, legal_basis,
    request_id, details, and optionally ``subject_ids`` for a group entry) in order,
    chained to the current head; returns the entries."""
    if not records:
        return []
    entries, subjects, head = _chain((await db.execute(_LOCK_HEAD)).one(), records)
    await db.execute(insert(audit_entry), [_entry_row(e) for e in entries])
    if subjects:
        await _insert_subjects(db, subjects)
    await db.execute(update(audit_head).where(audit_head.c.id == 1).values(**head))
    return entries


COPY_FROM = 1000
"""Subject index rows from which they are written as plain values: COPY on PostgreSQL, one
driver-level executemany on SQLite (a group of 100,000 people took seconds of per-row
parameter processing as an executemany of the table's insert)."""


async def _insert_subjects(db: Executor, subjects: list[dict[str, Any]]) -> None:
    """The subject index rows of group entries, in bulk, in the transaction's connection."""
    if len(subjects) < COPY_FROM:
        await db.execute(insert(audit_subject), subjects)
        return
    conn = await db.connection() if isinstance(db, AsyncSession) else db
    records = [(s["subject_id"], s["seq"]) for s in subjects]
    if _dialect(db) == "postgresql":
        raw: Any = (await conn.get_raw_connection()).driver_connection
        await raw.copy_records_to_table("audit_subject", records=records, columns=["subject_id", "seq"])
    else:
        await conn.exec_driver_sql("INSERT INTO audit_subject (subject_id, seq) VALUES (?, ?)", records)


def append_many_sync(conn: Connection, records: Sequence[dict[str, Any]]) -> list[Entry]:
    """``append_many`` through a blocking connection: one thread hop for a whole group
    instead of one per statement and fetch (the ledger's group commit)."""
    if not records:
        return []
    entries, subjects, head = _chain(conn.execute(_LOCK_HEAD).one(), records)
    conn.execute(insert(audit_entry), [_entry_row(e) for e in entries])
    if subjects:
        conn.execute(insert(audit_subject), subjects)
    conn.execute(update(audit_head).where(audit_head.c.id == 1).values(**head))
    return entries


async def append(db: Executor, **record: Any) -> Entry:
    """Append one record; see ``append_many``."""
    return (await append_many(db, [record]))[0]


async def head(db: Executor) -> tuple[int, str]:
    row = (await db.execute(select(audit_head.c.seq, audit_head.c.head_hash).where(audit_head.c.id == 1))).one()
    return int(row.seq), row.head_hash


async def tree_state(db: Executor) -> tuple[int, str, str]:
    """(size, chain hash, Merkle root hex) of the ledger as this transaction sees it."""
    q = select(audit_head.c.seq, audit_head.c.head_hash, audit_head.c.frontier).where(audit_head.c.id == 1)
    row = (await db.execute(q)).one()
    return int(row.seq), row.head_hash, merkle.root_of_frontier(merkle.decode_frontier(row.frontier)).hex()


def _head_of(row: Any) -> TreeHead:
    return TreeHead.from_json(dict(row._mapping))


def _dialect(db: Executor) -> str:
    bind = db.get_bind() if isinstance(db, AsyncSession) else db
    return str(bind.dialect.name)


async def create_tree_head(db: Executor, key: Ed25519PrivateKey, origin: str) -> tuple[TreeHead, bool]:
    """Sign the current tree; returns (head, created).

    If a head for this size exists (made by a concurrent request, job or process) it is
    returned with ``created`` False: the insert never conflicts, so callers never 409.
    """
    size, chain_hash, root_hash = await tree_state(db)
    existing = (await db.execute(select(audit_checkpoint).where(audit_checkpoint.c.size == size))).first()
    if existing is not None:
        return _head_of(existing), False
    sth = TreeHead.sign(origin, size, chain_hash, utc_timestamp(), key, root_hash=root_hash)
    from sqlalchemy.dialects import postgresql, sqlite

    dialect_insert = postgresql.insert if _dialect(db) == "postgresql" else sqlite.insert
    stmt = dialect_insert(audit_checkpoint).values(**sth.to_json()).on_conflict_do_nothing(index_elements=["size"])
    result = await db.execute(stmt)
    if getattr(result, "rowcount", 1) == 1:
        return sth, True
    row = (await db.execute(select(audit_checkpoint).where(audit_checkpoint.c.size == size))).one()
    return _head_of(row), False


async def create_checkpoint(db: Executor, key: Ed25519PrivateKey, origin: str) -> Checkpoint:
    """Sign the current tree head (the older name of ``create_tree_head``)."""
    return (await create_tree_head(db, key, origin))[0]


async def latest_tree_head(db: Executor) -> TreeHead | None:
    """The signed tree head of the largest size, if any."""
    q = (
        select(audit_checkpoint)
        .where(audit_checkpoint.c.root_hash.is_not(None))
        .order_by(audit_checkpoint.c.size.desc())
        .limit(1)
    )
    row = (await db.execute(q)).first()
    return _head_of(row) if row is not None else None


async def leaf_hashes(db: Executor, size: int, page: int = 10000) -> list[bytes]:
    """The leaf hashes (``entry_hash``) of entries 1..size, in order."""
    out: list[bytes] = []
    while len(out) < size:
        q = (
            select(audit_entry.c.seq, audit_entry.c.entry_hash)
            .where(audit_entry.c.seq > len(out), audit_entry.c.seq <= size)
            .order_by(audit_entry.c.seq)
            .limit(page)
        )
        rows = (await db.execute(q)).all()
        if not rows:
            break
        for r in rows:
            if int(r.seq) != len(out) + 1:
                raise ValueError(f"entry {len(out) + 1} is missing")
            out.append(bytes.fromhex(r.entry_hash))
    if len(out) != size:
        raise ValueError(f"the ledger holds fewer than {size} entries")
    return out


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
        (audit_entry.c.request_id, request_id),
    ):
        if value is not None:
            q = q.where(col == value)
    if subject_id is not None:
        q = q.where(about_subjects([subject_id]))
    if since is not None:
        q = q.where(audit_entry.c.recorded_at >= since)
    if until is not None:
        q = q.where(audit_entry.c.recorded_at < until)
    rows = (await db.execute(q.order_by(audit_entry.c.seq).limit(limit))).all()
    return [_row_to_entry(r) for r in rows]


def about_subjects(subject_ids: Sequence[str]) -> Any:
    """Entries naming any of these subjects, alone or in a group entry."""
    grouped = select(audit_subject.c.seq).where(audit_subject.c.subject_id.in_(subject_ids))
    return or_(audit_entry.c.subject_id.in_(subject_ids), audit_entry.c.seq.in_(grouped))


_SUBJECTS = select(audit_subject.c.seq, audit_subject.c.subject_id).order_by(
    audit_subject.c.seq, audit_subject.c.subject_id
)


async def subject_lists(db: Executor) -> list[tuple[int, list[str]]]:
    """Every group entry's subjects as (seq, sorted ids), from the index."""
    q = _SUBJECTS
    return _grouped((await db.execute(q)).all())


def _grouped(rows: Sequence[Any]) -> list[tuple[int, list[str]]]:
    out: list[tuple[int, list[str]]] = []
    for seq, sid in rows:
        if out and out[-1][0] == int(seq):
            out[-1][1].append(sid)
        else:
            out.append((int(seq), [sid]))
    return out


def subject_lists_sync(conn: Connection) -> list[tuple[int, list[str]]]:
    """``subject_lists`` through a blocking connection (the standalone verifier)."""
    q = _SUBJECTS
    return _grouped(conn.execute(q).all())


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


async def list_checkpoints(db: Executor, *, max_size: int | None = None) -> list[TreeHead]:
    """Every signed tree head (and older checkpoint) by size, optionally up to ``max_size``."""
    q = select(audit_checkpoint).order_by(audit_checkpoint.c.size)
    if max_size is not None:
        q = q.where(audit_checkpoint.c.size <= max_size)
    return [_head_of(r) for r in (await db.execute(q)).all()]


list_tree_heads = list_checkpoints


def read_all_sync(conn: Connection, page: int = 5000) -> tuple[Iterator[Entry], list[TreeHead]]:
    """Tree heads (read first) and entries through a blocking connection (an auditor's script).

    Heads are read before the entries so every head read is covered by the entries read.
    """
    heads = [_head_of(r) for r in conn.execute(select(audit_checkpoint).order_by(audit_checkpoint.c.size)).all()]

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

    return entries(), heads


async def export_lines(db: Executor) -> AsyncIterator[str]:
    """The ledger as NDJSON lines for ``python -m audit verify``: entries, the subjects of
    group entries, then the signed heads the entries cover."""
    size = 0
    async for entry in stream_entries(db):
        size = entry.seq
        yield json.dumps({"kind": "entry", **entry.to_json()}, ensure_ascii=False) + "\n"
    for seq, ids in await subject_lists(db):
        if seq <= size:
            yield json.dumps({"kind": "subjects", "seq": seq, "subject_ids": ids}) + "\n"
    for head in await list_checkpoints(db, max_size=size):
        kind = "tree_head" if head.is_tree_head else "checkpoint"
        yield json.dumps({"kind": kind, **head.to_json()}) + "\n"
