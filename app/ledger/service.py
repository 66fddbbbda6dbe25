"""Recording actions on personal data in the hash-chained ledger (``audit/``).

When an append takes the ledger past a multiple of ``CONSENTRY_AUDIT_HEAD_EVERY_ENTRIES``,
a signed tree head is made in the same transaction (and witnessed once it commits), so
under load the unsigned tail stays short even between the scheduled heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from app.ledger.heads import crosses, make_tree_head
from app.request_context import current_request_id
from app.settings import get_settings
from audit import store
from audit.chain import Entry


class Principal(Protocol):
    """Who acts: an API key's id and role (``app.access.service.Principal`` fits)."""

    @property
    def key_id(self) -> str: ...

    @property
    def role(self) -> str: ...


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


async def _appended(session: AsyncSession, entries: list[Entry]) -> list[Entry]:
    if entries and crosses(entries[0].seq - 1, entries[-1].seq, get_settings().audit_head_every_entries):
        await make_tree_head(session)
    return entries


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
    entry = await store.append(session, **_record(principal, action, subject_id, purpose, legal_basis, details))
    return (await _appended(session, [entry]))[0]


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
    return await _appended(
        session,
        await store.append_many(
            session, [_record(principal, action, sid, purpose, legal_basis, details) for sid in subject_ids]
        ),
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
    return await _appended(
        session,
        await store.append_many(
            session, [_record(principal, action, sid, purpose, legal_basis, details) for sid, details in items]
        ),
    )


async def record_group(
    session: AsyncSession,
    principal: Principal,
    action: str,
    subject_ids: Sequence[str],
    *,
    purpose: str | None = None,
    legal_basis: str | None = None,
    details: dict[str, Any] | None = None,
) -> Entry:
    """One entry for a group of subjects (an ingested batch, a bulk write, a population).

    The subjects are indexed (``audit_subject``) so an access or erasure request still finds
    every entry about a person; the entry carries their count and digest, so the verifier
    notices an index that was altered. ``details`` must hold no personal data.
    """
    rec = _record(principal, action, None, purpose, legal_basis, details)
    rec["subject_ids"] = list(subject_ids)
    entries = await store.append_many(session, [rec])
    return (await _appended(session, entries))[0]
