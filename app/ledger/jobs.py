"""Periodic ledger work: signed checkpoints."""

from __future__ import annotations

from typing import Any

from app.db import unit_of_work
from app.settings import get_settings
from app.vault.keyring import key_material
from audit import store


async def sign_checkpoint() -> dict[str, Any]:
    """Sign the chain head (a no-op if nothing was appended since the last checkpoint)."""
    s = get_settings()
    async with unit_of_work() as session:
        cp = await store.create_checkpoint(session, key_material(s).signing_key, s.audit_origin)
    return {"size": cp.size}
