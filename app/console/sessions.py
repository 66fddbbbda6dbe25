"""Server-side console sessions: started at sign-in, ended at sign-out, by the key's
revocation or by age (expired rows are purged at the next sign-in or when read)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.console.models import ConsoleSession


async def start_session(db: AsyncSession, key_id: str, seconds: int) -> str:
    """A new session for the key (valid ``seconds``); returns its id. Purges expired ones."""
    now = datetime.now(UTC)
    await db.execute(delete(ConsoleSession).where(col(ConsoleSession.expires_at) <= now))
    sid = secrets.token_urlsafe(32)
    db.add(ConsoleSession(id=sid, key_id=key_id, created_at=now, expires_at=now + timedelta(seconds=seconds)))
    await db.flush()
    return sid


async def session_is_live(db: AsyncSession, sid: str, key_id: str) -> bool:
    """Whether the session exists, belongs to the key and has not expired (an expired one is deleted)."""
    row = await db.get(ConsoleSession, sid)
    if row is None or row.key_id != key_id:
        return False
    if row.expires_at <= datetime.now(UTC):
        await end_session(db, sid)
        return False
    return True


async def end_session(db: AsyncSession, sid: str) -> None:
    """Sign-out: the session's cookie no longer opens anything, wherever it was copied."""
    await db.execute(delete(ConsoleSession).where(col(ConsoleSession.id) == sid))


async def end_sessions_of_key(db: AsyncSession, key_id: str) -> None:
    """A revoked (or deleted) key: every session it opened ends."""
    await db.execute(delete(ConsoleSession).where(col(ConsoleSession.key_id) == key_id))
