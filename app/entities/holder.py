"""The entities domain's part of the personal-data inventory: account memberships and the
products each person's events were about. Product rows expire with the events they came
from (``user.behavior``); memberships stay until erasure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import table_of
from app.entities.models import AccountMember, EventProduct
from app.inventory import Person, TableHolder, register
from app.vault.service import DataKey


class EntityHolder(TableHolder):
    async def expire(self, session: AsyncSession, cutoffs: Mapping[str, datetime], dry_run: bool) -> dict[str, int]:
        """Product links older than the events' cutoff (tables with nothing to remove left out)."""
        return {t: n for t, n in (await super().expire(session, cutoffs, dry_run)).items() if n}

    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        members, products = [await self.rows(session, t, person) for t in self.tables]
        return {
            "accounts": [
                {"account_id": r["account_id"], "since": r["joined_at"].isoformat(), "seen": r["seen_at"].isoformat()}
                for r in members
            ],
            "event_products": [
                {"event_id": r["event_id"], "product_id": r["product_id"], "at": r["occurred_at"].isoformat()}
                for r in products
            ],
        }


HOLDER = register(
    EntityHolder(
        "entities",
        (table_of(AccountMember), table_of(EventProduct)),
        expires_by={"event_product": ("occurred_at", "user.behavior")},
    )
)
