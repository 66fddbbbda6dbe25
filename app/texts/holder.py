"""The texts domain's part of the personal-data inventory: redacted texts and their vault."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import table_of
from app.inventory import Person, TableHolder, register, remove_rows
from app.pii.redact import restore
from app.texts.models import TextRecord, TextVaultEntry, vault_field
from app.vault.cipher import open_field
from app.vault.service import DataKey


class TextsHolder(TableHolder):
    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        texts, vault = self.tables
        values: dict[str, dict[str, Any]] = {}
        for e in await self.rows(session, vault, person):
            dk = keys.get(e["origin_id"])
            if dk is not None:
                name = vault_field(e["text_id"], e["placeholder"])
                values.setdefault(e["text_id"], {})[e["placeholder"]] = open_field(
                    dk.key, e["origin_id"], name, e["key_version"], e["sealed"]
                )
        return {
            "texts": [
                {
                    "id": t["id"],
                    "channel": t["channel"],
                    "occurred_at": t["occurred_at"].isoformat(),
                    "text": restore(t["redacted"], values.get(t["id"], {})),
                }
                for t in await self.rows(session, texts, person)
            ]
        }

    def expiry_category(self, table: str) -> str | None:
        # vault entries are parts of their text: they expire with it, under its category
        return super().expiry_category("text_record" if table == "text_vault" else table)

    async def expire(self, session: AsyncSession, cutoffs: Mapping[str, datetime], dry_run: bool) -> dict[str, int]:
        """Expired texts go with their vault entries (removed first: they point at the text)."""
        texts, vault = self.tables
        where = self.expired(texts, cutoffs)
        if where is None:
            return {}
        expired_ids = select(texts.c.id).where(where)
        return {
            vault.name: await remove_rows(session, vault, vault.c.text_id.in_(expired_ids), dry_run),
            texts.name: await remove_rows(session, texts, where, dry_run),
        }


HOLDER = register(
    TextsHolder(
        "texts",
        (table_of(TextRecord), table_of(TextVaultEntry)),
        expires_by={"text_record": ("occurred_at", "user.content")},
        seen_by={"text_record": "occurred_at"},
    )
)
