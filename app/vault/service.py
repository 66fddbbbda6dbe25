"""Data keys per subject: create, unwrap, shred, and re-wrap under a new master key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ARRAY, ColumnElement, Select, String, any_, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import insert_rows, table_of
from app.errors import SubjectErased
from app.vault.cipher import new_data_key, unwrap_key, wrap_key
from app.vault.keyring import MasterKeyring
from app.vault.models import SubjectKey, WrappedSecret


@dataclass(frozen=True)
class DataKey:
    profile_id: str
    version: int
    key: bytes


def new_subject_key(ring: MasterKeyring, profile_id: str) -> tuple[DataKey, dict[str, Any]]:
    """A fresh data key for a new subject and its ``subject_key`` row (wrapped with the active master key)."""
    mv, master = ring.current()
    dk = new_data_key()
    row = {
        "profile_id": profile_id,
        "key_version": 1,
        "master_version": mv,
        "wrapped_key": wrap_key(master, mv, profile_id, 1, dk),
        "created_at": datetime.now(UTC),
    }
    return DataKey(profile_id, 1, dk), row


async def store_subject_keys(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert new key rows (from ``new_subject_key``) in one statement."""
    if rows:  # through the driver (COPY on PostgreSQL): thousands of rows per processor group
        await insert_rows(session, table_of(SubjectKey), rows)


def ids_bound(column: Any, dialect: str = "") -> ColumnElement[bool]:
    """``column`` is one of the ids bound at execution as ``ids`` (a list): one array
    parameter on PostgreSQL (``= ANY``), which it parses and plans faster than an IN list of
    thousands of parameters; an expanding IN elsewhere. Compiled once whatever the number."""
    if dialect == "postgresql":
        return column == any_(bindparam("ids", type_=ARRAY(String())))
    return column.in_(bindparam("ids", expanding=True))  # type: ignore[no-any-return]


def wrapped_keys_query(dialect: str = "") -> Select[Any]:
    """The wrapped subject keys (profile_id, master_version, key_version, wrapped_key) of the
    people bound as ``ids`` (``ids_bound``); a shredded subject has no row."""
    k = table_of(SubjectKey)
    cols = (k.c.profile_id, k.c.master_version, k.c.key_version, k.c.wrapped_key)
    return select(*cols).where(ids_bound(k.c.profile_id, dialect))


def _unwrap(ring: MasterKeyring, row: Any) -> DataKey:
    """``row``: a ``subject_key`` row or ``SubjectKey``."""
    dk = unwrap_key(ring.get(row.master_version), row.master_version, row.profile_id, row.key_version, row.wrapped_key)
    return DataKey(row.profile_id, row.key_version, dk)


async def subject_keys(session: AsyncSession, ring: MasterKeyring, profile_ids: list[str]) -> dict[str, DataKey]:
    """Unwrapped keys for the given subjects; shredded subjects are absent from the result."""
    if not profile_ids:
        return {}
    table = table_of(SubjectKey)  # rows, not ORM objects: half the time for many subjects
    rows = (await session.execute(select(table).where(table.c.profile_id.in_(profile_ids)))).all()
    return {row.profile_id: _unwrap(ring, row) for row in rows}


async def subject_key(session: AsyncSession, ring: MasterKeyring, profile_id: str) -> DataKey:
    """The subject's key; ``SubjectErased`` if it was shredded."""
    keys = await subject_keys(session, ring, [profile_id])
    if profile_id not in keys:
        raise SubjectErased("this subject's personal data was erased", field="profile_id")
    return keys[profile_id]


async def shred_subject_key(session: AsyncSession, profile_id: str) -> bool:
    """Destroy the subject's data key: every ciphertext under it becomes unreadable."""
    result = await session.execute(delete(SubjectKey).where(SubjectKey.profile_id == profile_id))  # type: ignore[arg-type]
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def rewrap_batch(session: AsyncSession, ring: MasterKeyring, batch: int = 500) -> int:
    """Re-wrap up to ``batch`` data keys still under an older master key; returns how many.

    Data is not re-encrypted: only the wrapped key changes, in place, so readers see
    either the old wrapping (old master still in the ring) or the new one. The service's
    own secrets (``service_secret``) are re-wrapped too, and not counted.
    """
    active, master = ring.current()
    await _rewrap_secrets(session, ring, active, master)
    q = select(SubjectKey).where(SubjectKey.master_version != active).limit(batch)  # type: ignore[arg-type]
    rows = list((await session.execute(q)).scalars())
    for row in rows:
        dk = _unwrap(ring, row)
        row.wrapped_key = wrap_key(master, active, row.profile_id, row.key_version, dk.key)
        row.master_version = active
    await session.flush()
    return len(rows)


def _secret_owner(name: str) -> str:
    """What a service secret's wrapping is bound to (never a profile id)."""
    return f"secret:{name}"


async def service_secret(session: AsyncSession, ring: MasterKeyring, name: str, *, create: bool) -> bytes | None:
    """The service's own key ``name``, unwrapped; when missing, made (once, whichever
    transaction comes first) if ``create``, else None."""
    t = table_of(WrappedSecret)
    q = select(t).where(t.c.name == name)
    row = (await session.execute(q)).first()
    if row is None and create:
        mv, master = ring.current()
        key = new_data_key()
        values = {
            "name": name,
            "master_version": mv,
            "wrapped_key": wrap_key(master, mv, _secret_owner(name), 1, key),
            "created_at": datetime.now(UTC),
        }
        dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
        make = postgresql.insert if dialect == "postgresql" else sqlite.insert
        await session.execute(make(t).values(values).on_conflict_do_nothing(index_elements=["name"]))
        row = (await session.execute(q)).first()
    if row is None:
        return None
    return unwrap_key(ring.get(row.master_version), row.master_version, _secret_owner(name), 1, row.wrapped_key)


async def _rewrap_secrets(session: AsyncSession, ring: MasterKeyring, active: int, master: bytes) -> None:
    t = table_of(WrappedSecret)
    for row in (await session.execute(select(t).where(t.c.master_version != active))).all():
        key = unwrap_key(ring.get(row.master_version), row.master_version, _secret_owner(row.name), 1, row.wrapped_key)
        wrapped = wrap_key(master, active, _secret_owner(row.name), 1, key)
        stmt = update(t).where(t.c.name == row.name).values(master_version=active, wrapped_key=wrapped)
        await session.execute(stmt)
