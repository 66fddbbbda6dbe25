"""The identity domain's part of the personal-data inventory: identifiers, claims, merges."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import table_of
from app.identity.models import Identifier, IdentityClaim, ProfileMerge, identifier_aad_name
from app.inventory import Person, TableHolder, register
from app.vault.cipher import open_field
from app.vault.service import DataKey


class IdentityHolder(TableHolder):
    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        def opened(row: dict[str, Any], aad: str) -> Any:
            dk = keys.get(row["origin_id"])
            if dk is None or row.get("sealed") is None:
                return None
            return open_field(dk.key, row["origin_id"], aad, row["key_version"] or 1, row["sealed"])

        ids, claims, merges = [await self.rows(session, t, person) for t in self.tables]
        return {
            "identifiers": [
                {
                    "kind": r["kind"],
                    "value": opened(r, identifier_aad_name(r["kind"])),
                    "source": r["source"],
                    "trust": r["trust"],
                    "first_seen": r["first_seen"].isoformat(),
                }
                for r in ids
            ],
            "unverified_claims": [
                {
                    "kind": r["kind"],
                    "value": opened(r, f"claim:{r['kind']}"),
                    "source": r["source"],
                    "rule": r["rule"],
                    "claimed_at": r["claimed_at"].isoformat(),
                }
                for r in claims
            ],
            "merges": [
                {
                    "profile_id": r["profile_id"],
                    "merged_id": r["merged_id"],
                    "via": r["via_kind"],
                    "merged_at": r["merged_at"].isoformat(),
                    "unmerged_at": r["unmerged_at"].isoformat() if r["unmerged_at"] else None,
                }
                for r in merges
            ],
        }


HOLDER = register(IdentityHolder("identity", (table_of(Identifier), table_of(IdentityClaim), table_of(ProfileMerge))))
