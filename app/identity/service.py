"""Identifiers: normalised values, their blind indexes, lookups and the identities view.

The identity domain is the one writer of ``identifier``, ``identity_claim`` and
``profile_merge``; linking and merging happen in ``resolver.py`` and ``merges.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, String, and_, bindparam, delete, exists, func, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.access.service import identity_secret
from app.consent.policy import IdentityPolicy
from app.db import table_of
from app.errors import Conflict, InvalidField
from app.identity.models import Identifier, identifier_aad_name
from app.profiles.masking import mask_value
from app.profiles.service import VaultContext, normalize_trait
from app.vault.blind_index import blind_index
from app.vault.cipher import open_field, seal_field
from app.vault.normalize import normalize_text
from app.vault.service import DataKey

Key = tuple[str, str]
"""(kind, digest)"""

KIND_CATEGORY = {"email": "user.contact.email", "phone": "user.contact.phone_number"}
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def new_id() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` (the same text from the
    same random bytes) but without building a ``UUID`` object: a group makes one per event
    and per new person."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


class Ident:
    """One normalised identifier of an event: its kind, value and blind index. Immutable by
    convention; compared and hashed by (kind, value, digest). A plain slotted class, not a
    frozen dataclass: a group makes tens of thousands of them."""

    __slots__ = ("digest", "key", "kind", "value")

    def __init__(self, kind: str, value: str, digest: str) -> None:
        self.kind = kind
        self.value = value
        self.digest = digest
        self.key: Key = (kind, digest)
        """``(kind, digest)``, made once (the resolver asks for it many times per event)."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ident):
            return NotImplemented
        return self.key == other.key and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Ident(kind={self.kind!r}, digest={self.digest!r})"  # never the value


def make_ident(ctx: VaultContext, kind: str, value: str) -> Ident:
    return Ident(kind, value, blind_index(ctx.keys.index_key, kind, value))


def is_blocked_value(policy: IdentityPolicy, value: str | None) -> bool:
    """Junk values (``null``, ``anonymous``, ``0``…) that identify nobody."""
    return value is None or value.strip().lower() in policy.blocked_values


def user_hash_valid(ctx: VaultContext, key_id: str, user_id: str | None, given: Any) -> bool:
    """Does ``given`` equal HMAC-SHA256(identity secret, user id), hex (Intercom-style)?"""
    if not user_id or not isinstance(given, str):
        return False
    secret = identity_secret(ctx.keys.index_key, key_id).encode()
    expected = hmac.new(secret, user_id.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given.strip().lower())


def lookup_ident(ctx: VaultContext, kind: str, value: Any) -> Ident:
    """The identifier for a lookup: ``email``, ``phone`` or any identity kind (``user_id``,
    ``anonymous_id``, ``device_id``, ``wechat_unionid``, ``external:crm_id``…)."""
    trait = next((r for r in ctx.policies.traits.values() if r.index == kind), None)
    if trait is not None:
        return make_ident(ctx, kind, normalize_trait(trait, value, ctx.region, kind))
    try:
        ctx.policies.identity.rule(kind)
    except KeyError as exc:
        raise InvalidField("is not a lookup identifier", field="kind") from exc
    return make_ident(ctx, kind, normalize_text(value, "value", 256))


async def profiles_holding(session: AsyncSession, ident: Ident) -> list[str]:
    """Profiles holding this identifier, found by its blind index (never by plaintext)."""
    q = select(col(Identifier.profile_id)).where(
        col(Identifier.kind) == ident.kind, col(Identifier.digest) == ident.digest
    )
    return sorted(set((await session.execute(q)).scalars()))


async def profile_identities(
    session: AsyncSession, keys: dict[str, DataKey], profile_id: str, reveal: str
) -> list[dict[str, Any]]:
    """The identifiers linked to a person, decrypted (``plain``) or masked; ``keys`` by origin."""
    rows = (
        await session.execute(
            select(Identifier).where(col(Identifier.profile_id) == profile_id).order_by(col(Identifier.first_seen))
        )
    ).scalars()
    out = []
    for row in rows:
        value: Any = None
        dk = keys.get(row.origin_id)
        if row.sealed is not None and dk is not None and reveal != "none":
            value = open_field(dk.key, row.origin_id, identifier_aad_name(row.kind), row.key_version or 1, row.sealed)
            if reveal != "plain":
                category = KIND_CATEGORY.get(row.kind, "")
                value = mask_value(category, value) if category else (str(value)[:3] + "***")
        out.append(
            {
                "kind": row.kind,
                "value": value,
                "source": row.source,
                "trust": row.trust,
                "first_seen": row.first_seen.isoformat(),
            }
        )
    return out


async def set_identifier(
    session: AsyncSession,
    key: DataKey,
    person: str,
    kind: str,
    ident: Ident | None,
    source: str,
    replacing: Ident | None = None,
) -> None:
    """Make ``ident`` the person's identifier of this kind in place of ``replacing`` (a
    correction: only the value corrected goes, the person's other identifiers of the kind
    stay), or remove the kind (``ident`` None). Refused with 409 if another profile holds
    the new identifier."""
    held = await profiles_holding(session, ident) if ident is not None else []
    if any(p != person for p in held):
        raise Conflict("another profile holds this identifier; merge them instead", field=kind)
    if ident is not None and replacing is not None and replacing.key == ident.key:
        return
    gone = [col(Identifier.profile_id) == person, col(Identifier.kind) == kind]
    if ident is not None:  # a correction replaces the one value corrected (if any), never the others
        gone.append(col(Identifier.digest) == (replacing.digest if replacing is not None else ""))
    await session.execute(delete(Identifier).where(*gone).execution_options(synchronize_session=False))
    if ident is not None and person not in held:
        session.add(
            Identifier(
                origin_id=person,
                kind=kind,
                digest=ident.digest,
                profile_id=person,
                first_seen=datetime.now(UTC),
                source=source,
                trust="server",
                key_version=key.version,
                sealed=seal_field(key.key, person, identifier_aad_name(kind), key.version, ident.value),
            )
        )
        await session.flush()


def holders_of(dialect: str, keys: list[Key]) -> Select[Any]:
    """``SELECT profile_id`` of the identifiers with these ``(kind, digest)`` pairs, probed
    through the ``(kind, digest)`` index: the pairs arrive as one parameter, unpacked by
    ``json_each`` (SQLite) or ``unnest`` (PostgreSQL). A ``(kind, digest) IN (VALUES …)``
    list is planned as a scan of the whole table, whose cost grows with the store."""
    t = table_of(Identifier)
    if dialect == "postgresql":
        pairs = (
            func.unnest(
                bindparam("kinds", [k for k, _d in keys], type_=ARRAY(String)),
                bindparam("digests", [d for _k, d in keys], type_=ARRAY(String)),
            )
            .table_valued("kind", "digest")
            .render_derived(name="k")
        )
        on = and_(t.c.kind == pairs.c.kind, t.c.digest == pairs.c.digest)
    else:
        pairs = func.json_each(bindparam("pairs", json.dumps(keys), type_=String)).table_valued("value").alias("k")
        on = and_(
            t.c.kind == func.json_extract(pairs.c.value, "$[0]"),
            t.c.digest == func.json_extract(pairs.c.value, "$[1]"),
        )
    return select(t.c.profile_id).select_from(pairs).join(t, on)


async def mark_gpc(session: AsyncSession, keys: list[Key], at: datetime) -> int:
    """Record a Global Privacy Control signal on the device-level ids (``(kind, digest)``) it
    came with; it then opts out whoever holds those ids, now or after later links and merges.
    One statement run per pair, each found by the ``(kind, digest)`` index."""
    if not keys:
        return 0
    t = table_of(Identifier)
    stmt = (
        update(t)
        .where(t.c.kind == bindparam("k"), t.c.digest == bindparam("d"), t.c.gpc_at.is_(None))
        .values(gpc_at=at)
    )
    result = await session.execute(stmt, [{"k": k, "d": d} for k, d in sorted(set(keys))])
    return int(getattr(result, "rowcount", 0) or 0)


def gpc_per_person(name: str, among: Any = None, person: Any = None) -> Any:
    """A subquery of one row per person who holds an id that sent GPC: ``profile_id`` and
    the newest signal's time ``gpc_at`` (for population decisions, joined); ``among`` (a
    query of profile ids) limits it to those people. With ``person`` (an outer column) it is
    a LATERAL subquery of that person's ``gpc_at`` alone (join it on true)."""
    t = Identifier.__table__  # type: ignore[attr-defined]
    if person is not None:
        newest = func.max(t.c.gpc_at).label("gpc_at")
        return select(newest).where(t.c.profile_id == person, t.c.gpc_at.is_not(None)).lateral(name)
    q = select(t.c.profile_id, func.max(t.c.gpc_at).label("gpc_at")).where(t.c.gpc_at.is_not(None))
    if among is not None:
        q = q.where(t.c.profile_id.in_(among))
    return q.group_by(t.c.profile_id).subquery(name)


def gpc_clause(person: Any, unless: Callable[[Any], ColumnElement[bool]] | None = None) -> ColumnElement[bool]:
    """SQL: a device or browser id the person holds sent GPC; with ``unless`` (given the
    signal's time column), a later explicit choice that overrides it."""
    t = Identifier.__table__  # type: ignore[attr-defined]
    cond = [t.c.profile_id == person, t.c.gpc_at.is_not(None)]
    if unless is not None:
        cond.append(~unless(t.c.gpc_at))
    return exists().where(*cond).correlate_except(t)
