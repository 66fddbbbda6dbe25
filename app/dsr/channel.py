"""How messages reach a requester: a pluggable channel. The default is the outbox, a table of
messages sealed under the request's key that compliance (and the demo and the tests) read
through ``GET /v1/dsr/{id}/outbox``; a deployment plugs in email or SMS instead. A message is
purged once it was read or its code was used."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.dsr.models import DsrOutbox
from app.vault.cipher import open_field, seal_field
from app.vault.service import DataKey

FIELD = "dsr:message"


class Channel(Protocol):
    async def deliver(self, session: AsyncSession, key: DataKey, topic: str, message: dict[str, Any]) -> None:
        """Send ``message`` (to the contact it names) about request ``key.profile_id``."""
        ...


class OutboxChannel:
    """Messages kept sealed in ``dsr_outbox`` until compliance reads them."""

    async def deliver(self, session: AsyncSession, key: DataKey, topic: str, message: dict[str, Any]) -> None:
        session.add(
            DsrOutbox(
                id=str(uuid.uuid4()),
                request_id=key.profile_id,
                topic=topic,
                created_at=datetime.now(UTC),
                key_version=key.version,
                sealed=seal_field(key.key, key.profile_id, FIELD, key.version, message),
            )
        )


async def read_outbox(session: AsyncSession, key: DataKey | None, request_id: str) -> list[dict[str, Any]]:
    """The request's undelivered messages, opened, oldest first; reading delivers (purges) them.
    Without a key (the requester was erased) the sealed messages are purged unread."""
    q = select(DsrOutbox).where(col(DsrOutbox.request_id) == request_id).order_by(col(DsrOutbox.created_at))
    rows = list((await session.execute(q)).scalars())
    out = []
    for row in rows:
        if key is not None:
            body = open_field(key.key, request_id, FIELD, row.key_version, row.sealed)
            out.append({"topic": row.topic, "created_at": row.created_at, **body})
    await purge(session, request_id)
    return out


async def purge(session: AsyncSession, request_id: str, topic: str | None = None) -> None:
    """Drop the request's messages (of one topic, or all)."""
    stmt = delete(DsrOutbox).where(col(DsrOutbox.request_id) == request_id)
    if topic is not None:
        stmt = stmt.where(col(DsrOutbox.topic) == topic)
    await session.execute(stmt)


CHANNELS: dict[str, Channel] = {"outbox": OutboxChannel()}


def channel(name: str = "outbox") -> Channel:
    """The configured delivery channel (only the outbox ships with the product)."""
    return CHANNELS[name]
