"""The vault's part of the personal-data inventory: each person's data keys.

Forgetting a person deletes their keys (crypto-shredding: every copy of their ciphertext,
backups included, becomes unreadable). Keys are never exported; merges leave them where
they are, since each row stays sealed under the key of the profile it was written for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import table_of
from app.inventory import Person, TableHolder, register
from app.vault.models import SubjectKey
from app.vault.service import DataKey


class VaultHolder(TableHolder):
    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        rows = await self.rows(session, self.tables[0], person)
        return {"data_keys": [{"profile_id": r["profile_id"], "created_at": r["created_at"].isoformat()} for r in rows]}


HOLDER = register(VaultHolder("vault", (table_of(SubjectKey),)))
