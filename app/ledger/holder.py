"""The ledger's part of the personal-data inventory: entries that name a person by id.

Entries hold a pseudonymous profile id (or, for a group entry, name their subjects in the
``audit_subject`` index) and no personal data (callers must not put any in
``details``). They are kept when a person is erased or their data expires: the record of
who processed their data, and of the erasure itself, is a legal obligation, and rewriting
the ledger would break its proofs. Access requests export them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.inventory import Person, TableHolder, register
from app.vault.service import DataKey
from audit.store import about_subjects, audit_entry, audit_subject


class LedgerHolder(TableHolder):
    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        q = select(audit_entry).where(about_subjects(list(person.origins))).order_by(audit_entry.c.seq)
        rows = [dict(r._mapping) for r in (await session.execute(q)).all()]
        return {
            "processing_records": [
                {
                    "seq": r["seq"],
                    "at": r["recorded_at"],
                    "action": r["action"],
                    "actor_role": r["actor_role"],
                    "purpose": r["purpose"],
                    "legal_basis": r["legal_basis"],
                    "details": json.loads(r["details"]),
                }
                for r in rows
            ]
        }

    async def rekey(self, session: AsyncSession, from_id: str, to_id: str, origins: Any) -> int:
        return 0  # entries are immutable; the merge itself is an entry

    async def forget(self, session: AsyncSession, person: Person) -> int:
        return 0  # kept: see the module docstring

    async def expire(self, session: AsyncSession, cutoffs: Mapping[str, datetime], dry_run: bool) -> dict[str, int]:
        return {}  # kept: see the module docstring

    async def residue(self, session: AsyncSession, person: Person) -> dict[str, int]:
        return {}  # pseudonymous entries without personal data are not residue


HOLDER = register(LedgerHolder("ledger", (audit_entry, audit_subject)))
