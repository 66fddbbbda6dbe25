"""The recipients of a run as rows and Merkle leaves, and writing them in bulk.

A recipient row names the person sent (or whose batch failed), the fields' names, the batch
or the file line, and a random salt; a sent person's leaf is the RFC 9162 leaf hash of
``{"person","run","salt"}`` (sorted compact JSON), numbered in the order they were recorded.
Rows are written with COPY on PostgreSQL and one executemany on SQLite.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.activation.delivery import Outbound
from app.activation.models import ActivationLeaves, ActivationRecipient
from app.db import table_of
from audit.merkle import leaf_hash

COLUMNS = (
    "run_id",
    "origin_id",
    "profile_id",
    "destination_id",
    "leaf_index",
    "salt",
    "fields",
    "status",
    "batch",
    "file_id",
    "line",
    "sent_at",
)
FIELDS = COLUMNS.index("fields")
SENT_AT = COLUMNS.index("sent_at")


def leaf(run_id: str, profile_id: str, salt: str) -> bytes:
    """RFC 9162 leaf hash of ``{"person","run","salt"}`` as sorted compact JSON (written out:
    ids and salts are plain ASCII, so this is what ``json.dumps`` would give, at a tenth of the cost)."""
    return leaf_hash(f'{{"person":"{profile_id}","run":"{run_id}","salt":"{salt}"}}'.encode())


@dataclass
class Recipients:
    """The rows of one run's recipients as they are recorded, with the leaves of those sent."""

    run_id: str
    destination_id: str
    next_leaf: int = 0
    sent: list[str] = field(default_factory=list)
    leaves: list[bytes] = field(default_factory=list)
    failed_ids: list[str] = field(default_factory=list)
    fields: set[str] = field(default_factory=set)
    file: dict[str, Any] | None = None
    """The file written: id, path, format, rows."""

    @property
    def failed(self) -> int:
        return len(self.failed_ids)

    def rows(
        self,
        people: list[Outbound],
        status: str,
        batch: int,
        now: datetime,
        file_id: str | None = None,
        first_line: int | None = None,
    ) -> list[tuple[Any, ...]]:
        """Rows for these people (``sent`` people get the next leaves)."""
        out = []
        sorted_names: dict[tuple[str, ...], list[str]] = {}
        for n, p in enumerate(people):
            salt = p.salt or secrets.token_hex(16)
            keys = tuple(p.fields)
            names = sorted_names.get(keys)
            if names is None:
                names = sorted_names[keys] = sorted(keys)
                self.fields.update(names)
            index = -1
            if status == "sent":
                index = self.next_leaf
                self.next_leaf += 1
                self.sent.append(p.profile_id)
                self.leaves.append(p.leaf if p.salt else leaf(self.run_id, p.profile_id, salt))
            else:
                self.failed_ids.append(p.profile_id)
            line = first_line + n if first_line is not None else None
            pid = p.profile_id
            out.append(
                (self.run_id, pid, pid, self.destination_id, index, salt, names, status, batch, file_id, line, now)
            )
        return out


async def insert_recipients(session: AsyncSession, rows: list[tuple[Any, ...]]) -> None:
    """Write recipient rows (``COLUMNS`` order) in the session's transaction, in bulk."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        raw = await (await session.connection()).get_raw_connection()
        driver: Any = raw.driver_connection
        names = json_of(None, None)
        records = [(*r[:FIELDS], names(r[FIELDS]), *r[FIELDS + 1 :]) for r in rows]
        await driver.copy_records_to_table("activation_recipient", records=records, columns=list(COLUMNS))
        return
    # SQLite: one executemany of plain values (the JSON and the time encoded as the column types do)
    conn = await session.connection()
    t = table_of(ActivationRecipient)
    names = json_of(t, conn.dialect)
    times = {r[SENT_AT] for r in rows}
    stamp = t.c.sent_at.type.bind_processor(conn.dialect)
    at = {v: stamp(v) if stamp else v for v in times}
    marks = ", ".join("?" for _ in COLUMNS)
    values = [(*r[:FIELDS], names(r[FIELDS]), *r[FIELDS + 1 : SENT_AT], at[r[SENT_AT]]) for r in rows]
    await conn.exec_driver_sql(f"INSERT INTO activation_recipient ({', '.join(COLUMNS)}) VALUES ({marks})", values)


def json_of(t: Any, dialect: Any) -> Any:
    """The JSON column's encoding of a list of names (cached per list; ``json.dumps`` without
    a table, as COPY takes it)."""
    encode = (t.c.fields.type.bind_processor(dialect) if t is not None else None) or json.dumps
    cache: dict[tuple[str, ...], Any] = {}

    def one(names: list[str]) -> Any:
        key = tuple(names)
        if key not in cache:
            cache[key] = encode(names)
        return cache[key]

    return one


async def store_leaves(session: AsyncSession, run_id: str, blob: bytes) -> None:
    await session.merge(ActivationLeaves(run_id=run_id, leaves=blob))
