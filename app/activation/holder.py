"""The activation domain's part of the personal-data inventory: who each run sent to
(``activation_recipient``). An access request exports every send with its Merkle proof; a
merge moves the rows to the survivor; erasure removes them (after ``notify_erasure`` has
told the destinations). Sending is no activity of the person's: ``last_seen`` ignores it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.activation.models import ActivationRecipient
from app.activation.recipients import recipients_of
from app.db import table_of
from app.inventory import Person, TableHolder, register
from app.vault.service import DataKey


class ActivationHolder(TableHolder):
    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        return {"activations": await recipients_of(session, person)}


HOLDER = register(ActivationHolder("activation", (table_of(ActivationRecipient),)))
