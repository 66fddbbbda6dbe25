"""The ingestion domain's part of the personal-data inventory: events and consent signals."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import table_of
from app.ingest.models import ConsentSignal, Event
from app.ingest.timeline import open_event
from app.inventory import Person, TableHolder, register
from app.vault.service import DataKey


class IngestHolder(TableHolder):
    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        events, signals = self.tables
        out = []
        for r in await self.rows(session, events, person):
            out.append(open_event(Event(**r), keys.get(r["origin_id"])))
        return {
            "events": out,
            "consent_signals": [
                {
                    "kind": r["kind"],
                    "payload": r["payload"],
                    "source": r["source"],
                    "received_at": r["received_at"].isoformat(),
                }
                for r in await self.rows(session, signals, person)
            ],
        }


HOLDER = register(
    IngestHolder(
        "ingest",
        (table_of(Event), table_of(ConsentSignal)),
        expires_by={"event": ("occurred_at", "user.behavior")},
        seen_by={"event": "occurred_at"},
    )
)
