"""Recording actions on personal data in the hash-chained ledger (``audit/``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.request_context import current_request_id
from audit import store
from audit.chain import Entry


def _record(
    principal: Principal,
    action: str,
    subject_id: str | None,
    purpose: str | None,
    legal_basis: str | None,
    details: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "actor_id": principal.key_id,
        "actor_role": principal.role,
        "action": action,
        "subject_id": subject_id,
        "purpose": purpose,
        "legal_basis": legal_basis,
        "request_id": current_request_id(),
        "details": details or {},
    }


async def record(
    session: AsyncSession,
    principal: Principal,
    action: str,
    *,
    subject_id: str | None = None,
    purpose: str | None = None,
    legal_basis: str | None = None,
    details: dict[str, Any] | None = None,
) -> Entry:
    """Append one entry in the caller's transaction. ``details`` must hold no personal data."""
    return await store.append(session, **_record(principal, action, subject_id, purpose, legal_basis, details))


async def record_many(
    session: AsyncSession,
    principal: Principal,
    action: str,
    subject_ids: Sequence[str],
    *,
    purpose: str | None = None,
    legal_basis: str | None = None,
    details: dict[str, Any] | None = None,
) -> list[Entry]:
    """One entry per subject, appended under a single lock."""
    return await store.append_many(
        session, [_record(principal, action, sid, purpose, legal_basis, details) for sid in subject_ids]
    )


async def record_each(
    session: AsyncSession,
    principal: Principal,
    action: str,
    items: Sequence[tuple[str, dict[str, Any]]],
    *,
    purpose: str | None = None,
    legal_basis: str | None = None,
) -> list[Entry]:
    """One entry per (subject id, details) pair, appended under a single lock."""
    return await store.append_many(
        session, [_record(principal, action, sid, purpose, legal_basis, details) for sid, details in items]
    )
