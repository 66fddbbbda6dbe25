"""The DSR domain's part of the inventory: requests are personal data too.

``dsr_request`` names the person it was verified for (``subject_id``) and keeps what the
requester gave sealed under the request's own key; ``dsr_verification`` names each matching
profile. Forgetting a person (their own erasure request included) removes the codes and
messages, shreds the request's key and clears the sealed identifiers and the subject id,
and keeps the **minimal DSR record** the law asks for: kind, regulation, dates, status,
extension and denial reasons (GDPR Art. 5(2) and 12, CCPA regulations § 7101: requests and
how they were answered kept 24 months). That record names nobody.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import table_of
from app.dsr.models import DsrOutbox, DsrRequest, DsrVerification
from app.dsr.sealing import IDENTIFIERS_FIELD
from app.inventory import Person, TableHolder, register
from app.settings import get_settings
from app.vault.cipher import open_field
from app.vault.keyring import key_material
from app.vault.service import DataKey, shred_subject_key, subject_keys

KEPT = (
    "dsr_request: the minimal record of each request (kind, regulation, dates, status, reasons), "
    "without the requester's identifiers or profile id, kept as proof of how it was answered "
    "(GDPR Art. 5(2), CCPA regulations § 7101)"
)

REQUESTS = table_of(DsrRequest)
CODES = table_of(DsrVerification)
OUTBOX = table_of(DsrOutbox)


class DsrHolder(TableHolder):
    async def request_ids(self, session: AsyncSession, person: Person) -> list[str]:
        """Requests about the person: verified for them, or with a code sent for one of their profiles."""
        by_subject = select(REQUESTS.c.id).where(REQUESTS.c.subject_id.in_(person.origins))
        by_code = select(CODES.c.request_id).where(CODES.c.profile_id.in_(person.origins))
        return sorted(set((await session.execute(by_subject.union(by_code))).scalars()))

    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        ids = await self.request_ids(session, person)
        rows = (await session.execute(select(REQUESTS).where(REQUESTS.c.id.in_(ids)))).all() if ids else []
        own = await subject_keys(session, key_material(get_settings()).master, ids)
        out = []
        for r in rows:
            m = r._mapping
            given = None
            if m["sealed"] is not None and m["id"] in own:
                k = own[m["id"]]
                given = open_field(k.key, m["id"], IDENTIFIERS_FIELD, m["key_version"] or k.version, m["sealed"])
            out.append(
                {
                    "id": m["id"],
                    "kind": m["kind"],
                    "regulation": m["regulation"],
                    "status": m["status"],
                    "received_at": m["received_at"].isoformat(),
                    "due_at": m["due_at"].isoformat(),
                    "closed_at": m["closed_at"].isoformat() if m["closed_at"] else None,
                    "given": given,
                }
            )
        return {"requests": out}

    async def forget(self, session: AsyncSession, person: Person) -> int:
        """Codes and messages go, the requests' keys are shredded; the minimal record stays."""
        ids = await self.request_ids(session, person)
        if not ids:
            return 0
        removed = 0
        for table in (CODES, OUTBOX):
            result = await session.execute(delete(table).where(table.c.request_id.in_(ids)))
            removed += int(getattr(result, "rowcount", 0) or 0)
        for rid in ids:
            removed += int(await shred_subject_key(session, rid))
        await session.execute(
            update(REQUESTS)
            .where(REQUESTS.c.id.in_(ids))
            .values(sealed=None, key_version=None, subject_id=None)
            .execution_options(synchronize_session=False)
        )
        return removed

    async def residue(self, session: AsyncSession, person: Person) -> dict[str, int]:
        out = {}
        for table, column in ((REQUESTS, "subject_id"), (CODES, "profile_id")):
            q = select(table.c[column]).where(table.c[column].in_(person.origins))
            n = len(list((await session.execute(q)).scalars()))
            if n:
                out[table.name] = n
        return out

    async def rekey(self, session: AsyncSession, from_id: str, to_id: str, origins: Collection[str]) -> int:
        """Nothing moves: a request names the profile it was verified for, and a person's
        origins (every profile merged into them) find it after a merge or an unmerge."""
        return 0


HOLDER = register(
    DsrHolder(
        "dsr",
        (REQUESTS, CODES, OUTBOX),
        keyed_by={"dsr_request": ("subject_id",), "dsr_verification": ("profile_id",)},
    )
)
