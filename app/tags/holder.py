"""The tags domain's part of the personal-data inventory: who carries which tag, and when
each was gained or lost. Rows move with merges (by ``origin_id``) and back with unmerges."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import table_of
from app.inventory import Person, TableHolder, register
from app.tags.models import TagAssignment, TagHistory
from app.vault.service import DataKey


class TagHolder(TableHolder):
    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        current, history = [await self.rows(session, t, person) for t in self.tables]
        return {
            "tags": [{"tag": r["tag"], "source": r["source"], "since": r["assigned_at"].isoformat()} for r in current],
            "tag_history": [
                {"tag": r["tag"], "source": r["source"], "change": r["change"], "at": r["at"].isoformat()}
                for r in history
            ],
        }


HOLDER = register(TagHolder("tags", (table_of(TagAssignment), table_of(TagHistory))))
