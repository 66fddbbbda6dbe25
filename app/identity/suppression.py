"""The suppression list: identifiers of erased people that ingestion refuses from now on.

An entry is a keyed hash of (kind, normalised value) under the *suppression key*, derived
from a master key version and distinct from the blind-index key: it matches the same
identifier arriving again, and nothing else. It cannot be joined to any blind index,
event or profile left in the database (the residue scan skips this table by design).

A message is refused if any of its identifiers is suppressed; the refusal is counted on
the entry. Entries hashed under a master key version that was retired no longer match
(re-hashing needs the plaintext, which is gone): retire a version only after the
suppression period the controller promised.
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

CHUNK = 500


def suppression_key(master: bytes) -> bytes:
    """The suppression key of one master key version (HMAC-derived with its own label)."""
    return hmac.digest(master, b"consentry:suppression-list:v1", "sha256")


def suppression_digest(key: bytes, kind: str, value: str) -> str:
    """The entry for one normalised identifier under one suppression key."""
    return hmac.digest(key, kind.encode() + b"\x00" + value.encode("utf-8"), "sha256").hex()


def _keys(ring: MasterKeyring) -> dict[int, bytes]:
    ring.current()  # picks up a rotation made by another process
    return {v: suppression_key(k) for v, k in sorted(ring.keys.items())}


async def suppress(
    session: AsyncSession, ring: MasterKeyring, identifiers: Iterable[tuple[str, str]], request_id: str | None
) -> dict[str, int]:
    """Add these (kind, normalised value) pairs to the list under the active master version;
    returns the entries added by kind (an identifier already listed counts once)."""
    version, master = ring.current()
    key = suppression_key(master)
    now = datetime.now(UTC)
    rows: dict[str, dict[str, Any]] = {
        suppression_digest(key, kind, value): {
            "digest": suppression_digest(key, kind, value),
            "kind": kind,
            "master_version": version,
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
    each matching entry's refusal counted. One indexed query per 500 identifiers."""
    keys = _keys(ring)
    by_digest: dict[str, Key] = {}
    for ident in idents:
        for key in keys.values():
            by_digest[suppression_digest(key, ident.kind, ident.value)] = ident.key
    t = table_of(SuppressedIdentifier)
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
