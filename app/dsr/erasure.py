"""Erasure of a person, through the personal-data inventory alone.

``erasure_plan`` is the dry run: per store, the rows that would go. ``erase_subject`` does
it in one transaction that holds the identity locks (the same ones ingestion takes, so a
batch for the same person waits for the erasure, then finds its identifiers suppressed):

1. every destination that received their data is sent a deletion notice (or has their
   lines removed from its files), each answer recorded (``app.activation.recipients``);
2. the person's identifiers are opened (while their keys still exist) and keyed hashes of
   every one of them go on the suppression list (``app.identity.suppression``);
3. every origin's data key is shredded (``shred_subject_key``): copies anywhere (backups,
   freed pages) become unreadable once the master-key versions that wrapped it retire;
4. every holder's ``forget`` runs, each store in a savepoint: a store that fails is
   reported and can be retried alone (``erase_in_store``) while the others are done;
5. the fact is recorded in the ledger (which keeps pseudonymous entries, not the person);
6. after the commit: the person's access packages are deleted, and on SQLite, where
   ``secure_delete`` zeroes what is deleted, the WAL is checkpointed and truncated.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.activation.recipients import notify_erasure
from app.identity.resolver import Resolver
from app.identity.service import Ident, make_ident
from app.identity.suppression import suppress
from app.inventory import Person, PersonalDataHolder, holders
from app.ledger.service import record
from app.profiles.service import VaultContext, lock_profiles, person_of, resolve_merged
from app.vault.service import DataKey, shred_subject_key, subject_keys

PURPOSE = "legal.compliance.dsr"
LEGAL_BASIS = "legal_obligation"
KEPT = {
    "ledger": "entries name the person only by pseudonymous profile id and hold no personal data; "
    "kept as the record of processing and of this erasure (GDPR Art. 5(2), 17(3)(b))",
    "suppression list": "keyed hashes under the suppression key, so their identifiers are refused if sent again",
}
"""What erasure keeps, and why (shown in every report and certificate)."""


@dataclass
class ErasureReport:
    """What an erasure found and did, per store; no identifier values, no personal data."""

    request_id: str
    root_id: str
    origins: tuple[str, ...]
    found: dict[str, int]
    """Store → rows found about the person (and removed, unless the store failed); the rows
    per table are ``erasure_plan``'s (the dry run)."""
    removed: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    """Store → the error's class, for a store whose step failed (retry it with ``erase_in_store``)."""
    keys_shredded: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)
    """Identifier kind → suppression entries added."""
    packages_deleted: int = 0
    notices: list[dict[str, Any]] = field(default_factory=list)
    """Each destination that received the person's data: the deletion notice and its answer."""
    sqlite: dict[str, Any] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=lambda: dict(KEPT))
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    completed_at: datetime | None = None

    @property
    def complete(self) -> bool:
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "profiles": len(self.origins),
            "found": self.found,
            "removed": self.removed,
            "failed": self.failed,
            "keys_shredded": self.keys_shredded,
            "suppressed": self.suppressed,
            "packages_deleted": self.packages_deleted,
            "destination_notices": self.notices,
            "sqlite": self.sqlite,
            "kept": self.kept,
            "started_at": self.started_at.isoformat(),
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
        }


def _holder(domain: str) -> PersonalDataHolder:
    for h in holders():
        if h.domain == domain:
            return h
    raise KeyError(domain)


async def plan_for(session: AsyncSession, person: Person) -> dict[str, dict[str, int]]:
    """Per store, the rows held about the person now (what ``forget`` would remove)."""
    return {h.domain: await h.residue(session, person) for h in holders()}


async def erasure_plan(session: AsyncSession, root_id: str) -> dict[str, dict[str, int]]:
    """The dry run: per store (domain), the rows of each table that erasure would remove.
    The ledger shows none: its entries are kept (``KEPT``)."""
    person = await person_of(session, await resolve_merged(session, root_id))
    return await plan_for(session, person)


async def erase_in_store(session: AsyncSession, person: Person, domain: str) -> int:
    """One store's step: that holder's ``forget`` for the person; returns rows removed.
    Runs in the caller's transaction, so a failed store can be retried on its own."""
    await _secure_delete(session)
    return await _holder(domain).forget(session, person)


async def identifier_values(session: AsyncSession, keys: dict[str, DataKey], person: Person) -> list[tuple[str, str]]:
    """Every identifier the person holds as (kind, normalised value), opened with their keys
    (from the identity store's export: the inventory, not its tables)."""
    exported = await _holder("identity").export(session, keys, person)
    return sorted({(i["kind"], str(i["value"])) for i in exported.get("identifiers", []) if i.get("value") is not None})


async def _lock_person(
    session: AsyncSession, ctx: VaultContext, principal: Principal, root: str
) -> tuple[Person, dict[str, DataKey], list[Ident]]:
    """Take the identity locks on the person (those ingestion takes: the identifiers' locks,
    then the profile rows), until what they hold stops changing under us."""
    resolver = Resolver(session, ctx, principal, "dsr")
    seen: tuple[tuple[str, ...], tuple[tuple[str, str], ...]] | None = None
    for _ in range(10):
        person = await person_of(session, root)
        keys = await subject_keys(session, ctx.keys.master, list(person.origins))
        idents = [make_ident(ctx, kind, value) for kind, value in await identifier_values(session, keys, person)]
        now = (person.origins, tuple(i.key for i in idents))
        if now == seen:
            return person, keys, idents
        await resolver.prepare(idents)
        await lock_profiles(session, person.origins)
        seen = now
    return person, keys, idents


async def _secure_delete(session: AsyncSession) -> None:
    """SQLite: deleted content is overwritten with zeros (not left in free pages)."""
    if _dialect(session) == "sqlite":
        await session.execute(text("PRAGMA secure_delete=ON"))


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind is not None else "sqlite"


async def erase_subject(session: AsyncSession, principal: Principal, root_id: str, request_id: str) -> ErasureReport:
    """Erase the person whose surviving profile is ``root_id`` (or who absorbed it), commit,
    and return what was done per store. A store that fails is left for ``erase_in_store``
    and named in ``failed``; everything else is committed."""
    ctx = VaultContext.from_settings()
    root = await resolve_merged(session, root_id)
    await _secure_delete(session)
    person, keys, idents = await _lock_person(session, ctx, principal, root)
    report = ErasureReport(request_id, root, person.origins, {})
    report.notices = await notify_erasure(session, principal, person, request_id)
    report.suppressed = await suppress(session, ctx.keys.master, [(i.kind, i.value) for i in idents], request_id)
    keys.clear()
    for origin in person.origins:
        report.keys_shredded += int(await shred_subject_key(session, origin))
    for h in holders():
        try:
            async with session.begin_nested():
                report.removed[h.domain] = await h.forget(session, person)
        except Exception as exc:  # one store failing leaves the others done; retried alone
            report.failed[h.domain] = type(exc).__name__
    report.removed["vault"] = report.removed.get("vault", 0) + report.keys_shredded
    report.found = {d: n for d, n in report.removed.items() if n}
    await record(
        session,
        principal,
        "dsr.erasure",
        subject_id=root,
        purpose=PURPOSE,
        legal_basis=LEGAL_BASIS,
        details={
            "request_id": request_id,
            "profiles": len(person.origins),
            "removed": report.removed,
            "failed": report.failed,
            "suppressed": report.suppressed,
        },
    )
    await session.commit()
    report.packages_deleted = await _delete_packages(person)
    report.sqlite = await truncate_wal(session)
    report.completed_at = datetime.now(UTC)
    return report


async def _delete_packages(person: Person) -> int:
    from app.dsr.access_package import delete_packages_of

    return await asyncio.to_thread(delete_packages_of, person.origins)


async def truncate_wal(session: AsyncSession, attempts: int = 20) -> dict[str, Any]:
    """SQLite: copy the WAL into the database and truncate it, so no page of before the
    erasure stays in it (retried while readers hold it). Empty on PostgreSQL."""
    if _dialect(session) != "sqlite":
        return {}
    busy = 1
    for _ in range(attempts):
        row = (await session.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))).one()
        await session.commit()
        busy = int(row[0])
        if not busy:
            break
        await asyncio.sleep(0.05)
    return {"secure_delete": True, "wal_truncated": not busy}
