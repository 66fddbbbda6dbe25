"""The profiles domain's part of the personal-data inventory: the profile row and its fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import table_of
from app.inventory import Person, TableHolder, register
from app.profiles.models import Profile, ProfileField
from app.vault.cipher import open_field
from app.vault.service import DataKey


class ProfilesHolder(TableHolder):
    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        profiles, fields = self.tables
        rows = await self.rows(session, profiles, person)
        out_fields = []
        for f in await self.rows(session, fields, person):
            dk = keys.get(f["origin_id"])
            value = open_field(dk.key, f["origin_id"], f["name"], f["key_version"], f["ciphertext"]) if dk else None
            out_fields.append(
                {
                    "name": f["name"],
                    "category": f["category"],
                    "value": value,
                    "source": f["source"],
                    "observed_at": (f["observed_at"] or f["updated_at"]).isoformat(),
                }
            )
        return {
            "profiles": [
                {
                    "id": r["id"],
                    "created_at": r["created_at"].isoformat(),
                    "traits": r["traits"],
                    "merged_into": r["merged_into"],
                }
                for r in rows
            ],
            "personal_fields": out_fields,
        }


HOLDER = register(
    ProfilesHolder(
        "profiles",
        (table_of(Profile), table_of(ProfileField)),
        keyed_by={"profile": ("id", "merged_into")},
    )
)
