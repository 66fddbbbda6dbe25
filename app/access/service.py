"""Creating, listing, revoking and checking API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.access.models import ROLES, TRUST_LEVELS, ApiKey
from app.errors import InvalidField, NotFound

PREFIX = "csk"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id (never the secret), its role and, for ingest keys, its source."""

    key_id: str
    role: str
    name: str
    source: str | None = None
    trust: str = "server"
    """``client`` for a public write key: identity rules treat what it claims as unverified."""


SYSTEM = Principal(key_id="system", role="admin", name="consentry")
"""The actor for scheduled jobs and CLI maintenance."""


def identity_secret(index_key: bytes, key_id: str) -> str:
    """The secret a source's backend signs user ids with (identity verification), derived
    from the index key so nothing more is stored; shown once when the key is made."""
    return hmac.new(index_key, b"consentry:identity-verification:" + key_id.encode(), hashlib.sha256).hexdigest()


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_api_key(
    session: AsyncSession, role: str, name: str, source: str | None = None, trust: str | None = None
) -> tuple[ApiKey, str]:
    """Store a new key and return it with its one-time plaintext token.

    Ingest keys are ``client`` (public write keys) unless ``trust="server"`` is asked for."""
    if role not in ROLES:
        raise InvalidField(f"must be one of {', '.join(ROLES)}", field="role")
    if trust is not None and (trust not in TRUST_LEVELS or role != "ingest"):
        raise InvalidField(f"ingest keys only, one of {', '.join(TRUST_LEVELS)}", field="trust")
    if not name.strip():
        raise InvalidField("must not be empty", field="name")
    if len(name.strip()) > 128:
        raise InvalidField("is longer than 128 characters", field="name")
    if source is not None and not 0 < len(source) <= 128:
        raise InvalidField("must be 1 to 128 characters", field="source")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    record = ApiKey(
        id=key_id,
        name=name.strip(),
        role=role,
        source=(source or name.strip()) if role == "ingest" else source,
        trust=(trust or "client") if role == "ingest" else "server",
        secret_hash=_hash(secret),
        created_at=datetime.now(UTC),
    )
    session.add(record)
    await session.flush()
    return record, f"{PREFIX}_{key_id}_{secret}"


AUTH_CACHE_SECONDS = 2.0
"""A key that authenticated is believed this long without reading it again (every request of a
busy source otherwise reads its key); a revocation applies at once in the revoking process
and within this many seconds in the service's other processes."""
_recent: dict[str, tuple[float, Principal]] = {}


async def authenticate(session: AsyncSession, token: str) -> Principal | None:
    """The principal for a token, or None if it is unknown, malformed or revoked."""
    digest = _hash(token.strip())
    hit = _recent.get(digest)
    if hit is not None and time.monotonic() < hit[0]:
        return hit[1]
    principal = await _read_key(session, token)
    if principal is not None:
        if len(_recent) >= 10_000:
            _recent.clear()
        _recent[digest] = (time.monotonic() + AUTH_CACHE_SECONDS, principal)
    return principal


async def _read_key(session: AsyncSession, token: str) -> Principal | None:
    parts = token.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or "\x00" in token:  # (PostgreSQL text holds no NUL)
        return None
    record = await session.get(ApiKey, parts[1])
    if record is None or record.revoked_at is not None:
        return None
    if not hmac.compare_digest(record.secret_hash, _hash(parts[2])):
        return None
    return Principal(key_id=record.id, role=record.role, name=record.name, source=record.source, trust=record.trust)


async def principal_for_key(session: AsyncSession, key_id: str) -> Principal | None:
    """The principal of a stored key by its id (a console session holds only the id), or None
    when it is unknown or revoked."""
    record = await session.get(ApiKey, key_id)
    if record is None or record.revoked_at is not None:
        return None
    return Principal(key_id=record.id, role=record.role, name=record.name, source=record.source, trust=record.trust)


async def list_api_keys(session: AsyncSession) -> list[ApiKey]:
    return list((await session.execute(select(ApiKey).order_by(col(ApiKey.created_at)))).scalars())


async def revoke_api_key(session: AsyncSession, key_id: str) -> ApiKey:
    record = await session.get(ApiKey, key_id)
    if record is None:
        raise NotFound("no such API key", field="key_id")
    record.revoked_at = record.revoked_at or datetime.now(UTC)
    await session.flush()
    _recent.clear()
    return record
