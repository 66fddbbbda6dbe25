"""The suppression list: identifiers of erased people that ingestion refuses from now on.

An entry is a keyed hash of (kind, normalised value) under the *suppression key*: a random
key of its own, distinct from the blind-index key, kept only wrapped under the master keyring
(``wrapped_secret``, made at the first erasure) and re-wrapped by ``consentry keys rotate``.
It matches the same identifier arriving again, and nothing else; it cannot be joined to any
blind index, event or profile left in the database (the residue scan skips this table by
design). Rotating and retiring master versions leaves the list matching.

A message is refused if any of its identifiers is suppressed; the refusal is counted on
the entry. Entries of before this key (``master_version`` ≥ 1: hashed under a key derived
from that master version) still match while their version is in the ring.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import table_of
from app.identity.models import SuppressedIdentifier
from app.identity.service import Ident, Key
from app.vault.keyring import MasterKeyring
from app.vault.memo import memo
from app.vault.service import service_secret

CHUNK = 500
SECRET = "suppression-list"
OWN_KEY = 0
"""``master_version`` of the entries hashed under the suppression key (not a master version)."""


def legacy_key(master: bytes) -> bytes:
    """The key entries were hashed under before the suppression key: derived from one
    master key version (they match while that version is in the ring)."""
    return hmac.digest(master, b"consentry:suppression-list:v1", "sha256")


def suppression_digest(key: bytes, kind: str, value: str) -> str:
    """The entry for one normalised identifier under one suppression key."""
    table = memo("suppression")
    if table is None:
        return _digest(key, kind, value)
    found: str | None = table.get((key, kind, value))
    if found is None:
        found = table[(key, kind, value)] = _digest(key, kind, value)
    return found


def _digest(key: bytes, kind: str, value: str) -> str:
    return hmac.digest(key, kind.encode() + b"\x00" + value.encode("utf-8"), "sha256").hex()


async def _keys(session: AsyncSession, ring: MasterKeyring) -> list[bytes]:
    """Every key an entry may be hashed under: the suppression key (if any erasure made it)
    and the legacy keys of the master versions in the ring."""
    ring.current()  # picks up a rotation made by another process
    own = await service_secret(session, ring, SECRET, create=False)
    return ([own] if own is not None else []) + [legacy_key(k) for _v, k in sorted(ring.keys.items())]


async def suppress(
    session: AsyncSession, ring: MasterKeyring, identifiers: Iterable[tuple[str, str]], request_id: str | None
) -> dict[str, int]:
    """Add these (kind, normalised value) pairs to the list under the suppression key;
    returns the entries added by kind (an identifier already listed counts once)."""
    key = await service_secret(session, ring, SECRET, create=True)
    assert key is not None
    now = datetime.now(UTC)
    rows: dict[str, dict[str, Any]] = {
        suppression_digest(key, kind, value): {
            "digest": suppression_digest(key, kind, value),
            "kind": kind,
            "master_version": OWN_KEY,
            "suppressed_at": now,
            "request_id": request_id,
            "refused": 0,
        }
        for kind, value in identifiers
    }
    t = table_of(SuppressedIdentifier)
    have: set[str] = set()
    digests = sorted(rows)
    for start in range(0, len(digests), CHUNK):
        q = select(t.c.digest).where(t.c.digest.in_(digests[start : start + CHUNK]))
        have |= set((await session.execute(q)).scalars())
    new = [rows[d] for d in digests if d not in have]
    if new:
        await session.execute(insert(t), new)
    out: dict[str, int] = {}
    for r in new:
        kind = str(r["kind"])
        out[kind] = out.get(kind, 0) + 1
    return out


async def refuse_suppressed(session: AsyncSession, ring: MasterKeyring, idents: Iterable[Ident]) -> set[Key]:
    """The (kind, blind index) keys of the identifiers among ``idents`` that are suppressed,
    each matching entry's refusal counted. One indexed query per 500 identifiers; none
    (and no hashing) while nobody was ever erased (the list is empty)."""
    t = table_of(SuppressedIdentifier)
    if (await session.execute(select(t.c.digest).limit(1))).first() is None:
        return set()
    keys = await _keys(session, ring)
    by_digest: dict[str, Key] = {}
    for ident in {i.key: i for i in idents}.values():  # a group repeats its identifiers
        for key in keys:
            by_digest[suppression_digest(key, ident.kind, ident.value)] = ident.key
    hits: list[str] = []
    digests = sorted(by_digest)
    for start in range(0, len(digests), CHUNK):
        q = select(t.c.digest).where(t.c.digest.in_(digests[start : start + CHUNK]))
        hits += list((await session.execute(q)).scalars())
    if hits:
        stmt = (
            update(t)
            .where(t.c.digest == bindparam("d"))
            .values(refused=t.c.refused + 1, last_refused_at=datetime.now(UTC))
        )
        await session.execute(stmt, [{"d": d} for d in sorted(hits)])
    return {by_digest[d] for d in hits}


async def suppression_counts(session: AsyncSession) -> dict[str, int]:
    """Entries and refusals on the list (for status pages and certificates): no values, no ids."""
    t = table_of(SuppressedIdentifier)
    q = select(func.count(), func.coalesce(func.sum(t.c.refused), 0)).select_from(t)
    row = (await session.execute(q)).one()
    return {"entries": int(row[0]), "refused": int(row[1])}
