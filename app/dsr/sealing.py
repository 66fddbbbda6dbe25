"""A request's own data key: what the requester gave is sealed under it, so erasing the
requester shreds it and leaves the minimal record."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.dsr.models import DsrRequest
from app.settings import get_settings
from app.vault.cipher import open_field
from app.vault.keyring import key_material
from app.vault.service import DataKey, subject_keys

IDENTIFIERS_FIELD = "dsr:identifiers"


async def request_key(session: AsyncSession, request: DsrRequest) -> DataKey | None:
    """The request's key (None once the requester was erased)."""
    ring = key_material(get_settings()).master
    return (await subject_keys(session, ring, [request.id])).get(request.id)


async def opened(session: AsyncSession, request: DsrRequest) -> dict[str, Any] | None:
    """What the requester gave (identifiers, details), or None once it was erased."""
    key = await request_key(session, request)
    if key is None or request.sealed is None:
        return None
    value: dict[str, Any] = open_field(
        key.key, request.id, IDENTIFIERS_FIELD, request.key_version or key.version, request.sealed
    )
    return value
