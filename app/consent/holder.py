"""The consent domain's part of the personal-data inventory: consent history, current
states and privacy flags. A merge moves them like any row; the person's state is the most
restrictive over their origins."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.consent.models import ConsentRecord, ConsentState, PrivacyFlag
from app.db import table_of
from app.inventory import Person, TableHolder, register, remove_rows
from app.vault.service import DataKey


class ConsentHolder(TableHolder):
    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        records, states, flags = [await self.rows(session, t, person) for t in self.tables]
        return {
            "consent_history": [_plain(r) for r in records],
            "consent_now": [_plain(r) for r in states],
            "privacy_flags": [r["flag"] for r in flags],
        }

    async def expire(self, session: AsyncSession, cutoffs: Mapping[str, datetime], dry_run: bool) -> dict[str, int]:
        """Retention by category, and the flags that lapsed (a minor grown up)."""
        out = await super().expire(session, cutoffs, dry_run)
        flags = table_of(PrivacyFlag)
        lapsed = await remove_rows(session, flags, flags.c.until <= datetime.now(UTC), dry_run)
        if lapsed:
            out[flags.name] = out.get(flags.name, 0) + lapsed
        return out

    def expiry_category(self, table: str) -> str | None:
        return "lapsed privacy flags" if table == "privacy_flag" else super().expiry_category(table)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


HOLDER = register(ConsentHolder("consent", (table_of(ConsentRecord), table_of(ConsentState), table_of(PrivacyFlag))))
