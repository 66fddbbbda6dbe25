"""Recording actions on personal data in the hash-chained ledger (``audit/``).

When an append takes the ledger past a multiple of ``CONSENTRY_AUDIT_HEAD_EVERY_ENTRIES``,
a signed tree head is made in the same transaction (and witnessed once it commits), so
under load the unsigned tail stays short even between the scheduled heads.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import create_sync_engine, unit_of_work
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


class _GroupCommit:
    """Entries that must be recorded in their own transaction (denials), appended together:
    whoever asks while a commit is under way joins the next one, so concurrent requests
    share one lock of the head row and one commit instead of queueing one by one."""

    def __init__(self) -> None:
        self.pending: list[tuple[dict[str, Any], asyncio.Future[Entry]]] = []
        self.flusher: asyncio.Task[None] | None = None

    async def record(self, records: list[dict[str, Any]]) -> list[Entry]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in records]
        self.pending += list(zip(records, futures, strict=True))
        if self.flusher is None or self.flusher.done():
            self.flusher = loop.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, []
            try:
                entries = await asyncio.to_thread(_append_blocking, [r for r, _ in batch])
                async with unit_of_work() as own:  # a signed head when the group crossed a multiple
                    await _appended(own, entries)
            except Exception as exc:  # each waiting request sees the failure
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), entry in zip(batch, entries, strict=True):
                if not fut.done():
                    fut.set_result(entry)


_BLOCKING: dict[str, Engine] = {}


def _append_blocking(records: list[dict[str, Any]]) -> list[Entry]:
    """Append in one transaction through a blocking connection, in a worker thread: one
    hop for the group instead of one per statement (1.6 ms of CPU a group through the
    asyncio SQLite driver)."""
    url = get_settings().database_url
    engine = _BLOCKING.get(url)
    if engine is None:
        for old in _BLOCKING.values():  # one database per process; tests switch between many
            old.dispose()
        _BLOCKING.clear()
        engine = _BLOCKING[url] = create_sync_engine(url, pool_pre_ping=True)
    with engine.begin() as conn:
        return store.append_many_sync(conn, records)


_COMMITTERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _GroupCommit] = weakref.WeakKeyDictionary()


async def record_detached(
    principal: Principal,
    action: str,
    items: Sequence[tuple[str | None, dict[str, Any]]],
    *,
    purpose: str | None = None,
    legal_basis: str | None = None,
) -> list[Entry]:
    """One entry per (subject id, details), committed in the ledger's own transaction (never
    the caller's), grouped with concurrent callers' entries; returns once they are durable."""
    committer = _COMMITTERS.setdefault(asyncio.get_running_loop(), _GroupCommit())
    return await committer.record([_record(principal, action, sid, purpose, legal_basis, d) for sid, d in items])
