"""The traits domain's part of the personal-data inventory: computed trait values.

Values are derived (recomputed at every refresh), so a merge drops the merged-away
profile's rows instead of moving them (the survivor's values are recomputed at the next
refresh, with both profiles' events), an unmerge leaves them until then, and retention
needs no rule of its own: once the events a value came from expire, the next refresh no
longer produces it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import table_of
from app.inventory import Person, TableHolder, register
from app.traits.models import TraitValue
from app.vault.service import DataKey


class TraitHolder(TableHolder):
    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        (values,) = [await self.rows(session, t, person) for t in self.tables]
        return {
            "computed_traits": [
                {"name": r["name"], "value": (r["value"] or {}).get("v"), "computed_at": r["computed_at"].isoformat()}
                for r in values
            ]
        }

    async def rekey(self, session: AsyncSession, from_id: str, to_id: str, origins: Collection[str]) -> int:
        if from_id not in origins:
            return 0  # an unmerge: the survivor keeps its values until the next refresh
        t = table_of(TraitValue)
        result = await session.execute(delete(t).where(t.c.profile_id == from_id))
        return int(getattr(result, "rowcount", 0) or 0)


HOLDER = register(TraitHolder("traits", (table_of(TraitValue),)))
