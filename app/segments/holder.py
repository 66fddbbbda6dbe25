"""The segments domain's part of the personal-data inventory: who is in which segment now
and when they entered or left. Current membership is derived (recomputed at every refresh):
a merge drops the merged-away profile's rows instead of moving them; the history moves."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import table_of
from app.inventory import Person, TableHolder, register
from app.segments.models import SegmentHistory, SegmentMember
from app.vault.service import DataKey


class SegmentHolder(TableHolder):
    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        members, history = [await self.rows(session, t, person) for t in self.tables]
        return {
            "segments": [{"segment_id": r["segment_id"], "since": r["entered_at"].isoformat()} for r in members],
            "segment_history": [
                {"segment_id": r["segment_id"], "change": r["change"], "at": r["at"].isoformat()} for r in history
            ],
        }

    async def rekey(self, session: AsyncSession, from_id: str, to_id: str, origins: Collection[str]) -> int:
        moved = await super().rekey(session, from_id, to_id, origins)
        if from_id not in origins:
            return moved  # an unmerge: the survivor keeps its memberships until the next refresh
        m = table_of(SegmentMember)
        result = await session.execute(delete(m).where(m.c.profile_id == from_id))
        return moved + int(getattr(result, "rowcount", 0) or 0)


HOLDER = register(SegmentHolder("segments", (table_of(SegmentMember), table_of(SegmentHistory))))
