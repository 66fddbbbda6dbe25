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

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Text, cast, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import table_of
from app.ingest import outbox
from app.ingest.models import ConsentSignal, Event, InboxBatch, OutboxEntry
from app.ingest.timeline import EVENT_HEAD, event_record
from app.inventory import Person, TableHolder, cutoff_for, register, remove_rows
from app.vault.cipher import FieldOpener, json_value
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
        q = select(
            *(t.c[name] for name in EVENT_HEAD),
            t.c.origin_id,
            t.c.key_version,
            t.c.sealed,
            cast(t.c.properties, Text),
            cast(t.c.traits, Text),
        ).where(self.about(t, person))
        openers = {origin: FieldOpener(dk.key, origin, "event") for origin, dk in keys.items()}
        out = []
        for *head, origin, key_version, blob, properties, traits in (await session.execute(q)).all():
            opener = openers.get(origin)
            sealed = opener.open(key_version, blob) if opener is not None else None
            out.append(event_record(head, _decoded(properties), _decoded(traits), sealed))
        return out


def _decoded(text: str | None) -> dict[str, Any]:
    """A JSON column read as text: what the column type would have returned, as a new dict."""
    if text is None:
        return {}
    value = json_value(text)  # as the column type read it
    return value if value.__class__ is dict else dict(value)


HOLDER = register(
    IngestHolder(
        "ingest",
        (table_of(Event), table_of(ConsentSignal), table_of(OutboxEntry)),
        expires_by={"event": ("occurred_at", "user.behavior")},
        seen_by={"event": "occurred_at"},
    )
)
