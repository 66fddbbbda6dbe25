"""The journeys domain's part of the personal-data inventory: timers due to a person (a
message not yet sent) and what became of each (sends, used for frequency caps).

Erasure deletes both, so an erased person's pending message is never sent; merges move
them to the survivor (each row keeps the profile it was written for, so unmerges move
them back). Sends expire with behavioural data (``user.behavior``); timers never expire
on their own (they are consumed when due)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import table_of
from app.inventory import Person, TableHolder, register
from app.journeys.models import JourneySend, JourneyTimer
from app.vault.service import DataKey


class JourneyHolder(TableHolder):
    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        timers, sends = [await self.rows(session, t, person) for t in self.tables]
        return {
            "journey_timers": [
                {"journey_id": r["journey_id"], "occasion": r["key"], "due_at": r["due_at"].isoformat()} for r in timers
            ],
            "journey_sends": [
                {
                    "journey_id": r["journey_id"],
                    "occasion": r["key"],
                    "at": r["at"].isoformat(),
                    "destination_id": r["destination_id"],
                    "outcome": r["outcome"],
                    "reason": r["reason"],
                }
                for r in sends
            ],
        }


HOLDER = register(
    JourneyHolder(
        "journeys",
        (table_of(JourneyTimer), table_of(JourneySend)),
        expires_by={"journey_send": ("at", "user.behavior")},
    )
)
