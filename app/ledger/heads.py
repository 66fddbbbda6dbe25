"""Signed tree heads: made in a transaction, written to the witness file once it commits.

A head is signed in the caller's transaction (so it commits with the entries it
covers, or not at all) and appended to the witness file right after that transaction
commits, never before: the witness only ever holds heads the database also has.
"""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from app.settings import get_settings
from app.vault.keyring import key_material
from audit import store
from audit.checkpoint import TreeHead
from audit.witness import append_head

log = structlog.get_logger("consentry.ledger")
_PENDING = "consentry_pending_tree_heads"


def _write_pending(session: Session) -> None:
    if session.get_nested_transaction() is not None:
        return  # a savepoint was released; the transaction has not committed yet
    pending: list[tuple[TreeHead, Any]] = session.info.pop(_PENDING, [])
    path = get_settings().audit_witness
    for head, _ in pending:
        try:
            append_head(path, head)
        except OSError as exc:  # the head is committed; losing its copy must not fail the request
            log.error("audit_witness_write_failed", size=head.size, error=type(exc).__name__)


def _inside(transaction: Any, ended: Any) -> bool:
    while transaction is not None:
        if transaction is ended:
            return True
        transaction = transaction.parent
    return False


def _drop_rolled_back(session: Session, previous_transaction: Any) -> None:
    """A rollback (of the transaction or of a savepoint) takes the heads signed inside it."""
    pending = session.info.get(_PENDING)
    if pending:
        session.info[_PENDING] = [(h, t) for h, t in pending if not _inside(t, previous_transaction)]


def _witness_after_commit(session: AsyncSession, head: TreeHead) -> None:
    sync = session.sync_session
    if not event.contains(sync, "after_commit", _write_pending):
        event.listen(sync, "after_commit", _write_pending)
        event.listen(sync, "after_soft_rollback", _drop_rolled_back)
    transaction = sync.get_nested_transaction() or sync.get_transaction()
    sync.info.setdefault(_PENDING, []).append((head, transaction))


async def make_tree_head(session: AsyncSession) -> TreeHead:
    """Sign the tree as this transaction sees it (or return the head of that size)."""
    s = get_settings()
    head, created = await store.create_tree_head(session, key_material(s).signing_key, s.audit_origin)
    if created:
        _witness_after_commit(session, head)
    return head


def crosses(before: int, after: int, every: int) -> bool:
    """Did the ledger grow past a multiple of ``every`` going from ``before`` to ``after`` entries?"""
    return every > 0 and after // every > before // every
