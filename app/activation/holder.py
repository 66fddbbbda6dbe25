"""The activation domain's part of the personal-data inventory: who each run sent to
(``activation_recipient``). An access request exports every send with its Merkle proof; a
merge moves the rows to the survivor; erasure removes them (after ``notify_erasure`` has
told the destinations). Sending is no activity of the person's: ``last_seen`` ignores it.
Retention removes the rows older than the retention period of their run's purpose
(``policies/retention.yaml`` ``purposes``; a purpose without one keeps them); the run's
leaves stay, and without the row's salt a leaf names no one."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.activation.models import ActivationRecipient, ActivationRun
from app.activation.recipients import recipients_of
from app.db import table_of
from app.inventory import Person, TableHolder, register, remove_rows
from app.vault.service import DataKey

PURPOSE_PERIOD = "purpose retention"
"""What the retention report counts recipients under (they expire by purpose, not category)."""


class ActivationHolder(TableHolder):
    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        return {"activations": await recipients_of(session, person)}

    async def expire(self, session: AsyncSession, cutoffs: Mapping[str, datetime], dry_run: bool) -> dict[str, int]:
        """Recipients sent longer ago than their run's purpose keeps them."""
        r, runs = table_of(ActivationRecipient), table_of(ActivationRun)
        purposes = (await session.execute(select(runs.c.purpose).distinct())).scalars().all()
        removed = 0
        for purpose in purposes:
            cutoff = cutoffs.get(purpose)
            if cutoff is not None:
                of_purpose = r.c.run_id.in_(select(runs.c.id).where(runs.c.purpose == purpose))
                removed += await remove_rows(session, r, and_(r.c.sent_at < cutoff, of_purpose), dry_run)
        return {r.name: removed} if removed else {}

    def expiry_category(self, table: str) -> str | None:
        return PURPOSE_PERIOD if table == "activation_recipient" else super().expiry_category(table)


HOLDER = register(ActivationHolder("activation", (table_of(ActivationRecipient),)))
