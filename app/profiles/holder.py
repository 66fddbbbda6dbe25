"""The profiles domain's part of the personal-data inventory: the profile row and its fields."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, or_, select
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

    def expired(self, table: Table, cutoffs: Mapping[str, datetime]) -> ColumnElement[bool] | None:
        """Personal fields expire only when they are of the declared category (or under it):
        ``user.unknown`` fields nobody has classified; classified fields stay."""
        where = super().expired(table, cutoffs)
        category = self.expiry_category(table.name)
        if where is None or category is None:
            return where
        c = table.c.category
        return and_(where, or_(c == category, c.startswith(category + ".", autoescape=True)))


async def surviving_profiles(session: AsyncSession, created_before: datetime, after: str, limit: int) -> list[str]:
    """Ids of profiles not merged into another and created before ``created_before``, in id
    order after ``after`` (one page): the people retention checks for inactivity."""
    p = table_of(Profile)
    q = (
        select(p.c.id)
        .where(p.c.merged_into.is_(None), p.c.created_at < created_before, p.c.id > after)
        .order_by(p.c.id)
        .limit(limit)
    )
    return list((await session.execute(q)).scalars())


HOLDER = register(
    ProfilesHolder(
        "profiles",
        (table_of(Profile), table_of(ProfileField)),
        keyed_by={"profile": ("id", "merged_into")},
        expires_by={"profile_field": ("updated_at", "user.unknown")},
        seen_by={"profile": "created_at"},
    )
)
