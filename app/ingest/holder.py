"""The ingestion domain's part of the personal-data inventory: events, consent signals, and
the inbox of accepted batches not yet processed.

Inbox rows name nobody (whom a message is about is decided by processing it); they are
sealed under the inbox key and normally live for seconds. Retention removes the ones set
aside after failing (``status='failed'``) once they are older than the events' cutoff
(``user.behavior``), so a poison batch never outlives the events it would have become.

Outbox rows (``app.ingest.outbox``: who an ingest transaction touched, for the segments'
incremental membership) are read by their consumers within seconds; retention removes
those older than ``outbox.KEEP`` (a day) and erasure removes a person's."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import Text, cast, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import table_of
from app.ingest import outbox
from app.ingest.models import ConsentSignal, Event, InboxBatch, OutboxEntry
from app.ingest.timeline import event_record
from app.inventory import Person, TableHolder, cutoff_for, register, remove_rows
from app.vault.cipher import FieldOpener
from app.vault.service import DataKey

INBOX_CATEGORY = "user.behavior"
OUTBOX_CATEGORY = "outbox (kept one day)"


class IngestHolder(TableHolder):
    async def expire(self, session: AsyncSession, cutoffs: Mapping[str, datetime], dry_run: bool) -> dict[str, int]:
        """Events by age; and inbox batches older than the events' cutoff (set-aside ones, in practice)."""
        out = await super().expire(session, cutoffs, dry_run)
        cutoff = cutoff_for(cutoffs, INBOX_CATEGORY)
        if cutoff is not None:
            inbox = table_of(InboxBatch)
            removed = await remove_rows(session, inbox, inbox.c.received_at < cutoff, dry_run)
            if removed:
                out[inbox.name] = removed
        box = table_of(OutboxEntry)
        gone = await remove_rows(session, box, box.c.at < datetime.now(UTC) - outbox.KEEP, dry_run)
        if gone:
            out[box.name] = gone
        return out

    def expiry_category(self, table: str) -> str | None:
        if table == "ingest_outbox":
            return OUTBOX_CATEGORY
        return INBOX_CATEGORY if table == "ingest_inbox" else super().expiry_category(table)

    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        _events, signals, _outbox = self.tables
        return {
            "events": await self.events(session, keys, person),
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

    async def events(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> list[dict[str, Any]]:
        """The person's events as ``open_event`` makes them, read as rows with their JSON
        columns as text (decoded by msgspec) and opened with one AES-GCM object per origin's
        key: an access package holds tens of thousands of them."""
        t = self.tables[0]
        columns = [c for c in t.c if c.name not in ("properties", "traits")]
        q = select(*columns, cast(t.c.properties, Text).label("properties"), cast(t.c.traits, Text).label("traits"))
        openers = {origin: FieldOpener(dk.key, origin, "event") for origin, dk in keys.items()}
        out = []
        for r in (await session.execute(q.where(self.about(t, person)))).all():
            opener = openers.get(r.origin_id)
            sealed = opener.open(r.key_version, r.sealed) if opener is not None else None
            out.append(event_record(r, _decoded(r.properties), _decoded(r.traits), sealed))
        return out


def _decoded(text: str | None) -> dict[str, Any]:
    """A JSON column read as text: what the column type would have returned, as a new dict."""
    if text is None:
        return {}
    try:
        return dict(msgspec.json.decode(text))
    except msgspec.DecodeError:
        return dict(json.loads(text))  # what msgspec refuses (NaN, 1e400), as the column type read it


HOLDER = register(
    IngestHolder(
        "ingest",
        (table_of(Event), table_of(ConsentSignal), table_of(OutboxEntry)),
        expires_by={"event": ("occurred_at", "user.behavior")},
        seen_by={"event": "occurred_at"},
    )
)
