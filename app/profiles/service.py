"""Writing and reading profiles: normalise, encrypt, index, authorise, audit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.access.service import Principal
from app.consent.gate import Decision, authorize
from app.consent.policy import PolicySet, TraitRule, load_policies
from app.errors import IntegrityFailure, InvalidField, NotFound
from app.identity.models import Identifier, identifier_aad_name
from app.ledger.service import record
from app.profiles.masking import mask_value
from app.profiles.models import Profile, ProfileField
from app.settings import Settings, get_settings
from app.vault.blind_index import blind_index
from app.vault.cipher import open_field, seal_field
from app.vault.keyring import KeyMaterial, key_material
from app.vault.normalize import normalize_date, normalize_email, normalize_phone, normalize_text
from app.vault.service import DataKey, create_subject_key, subject_key, subject_keys

MAX_TRAITS = 200


@dataclass(frozen=True)
class VaultContext:
    """What profile writes and reads need besides the session: keys, policies, region."""

    keys: KeyMaterial
    policies: PolicySet
    region: str

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> VaultContext:
        s = settings or get_settings()
        return cls(key_material(s), load_policies(s.policy_dir), s.default_region)


@dataclass
class ProfileView:
    id: str
    created_at: datetime
    updated_at: datetime
    reveal: str
    traits: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)
    """Which source set each trait, and when."""


@dataclass
class WriteResult:
    id: str
    created: bool
    fields: list[str]


def normalize_trait(rule: TraitRule, value: Any, region: str, field_name: str) -> Any:
    """The normal form of a personal-data value, or ``InvalidField`` naming the field."""
    if rule.normalize == "email":
        return normalize_email(value, field_name)
    if rule.normalize == "phone":
        return normalize_phone(value, region, field_name)
    if rule.normalize == "date":
        return normalize_date(value, field_name)
    if rule.normalize == "text":
        return normalize_text(value, field_name)
    if value in ("", [], {}):
        raise InvalidField("must not be empty", field=field_name)
    return value


def split_traits(ctx: VaultContext, traits: dict[str, Any]) -> tuple[dict[str, tuple[TraitRule, Any]], dict[str, Any]]:
    """Separate personal-data traits (normalised) from plain ones; ``None`` values delete."""
    if len(traits) > MAX_TRAITS:
        raise InvalidField(f"at most {MAX_TRAITS} traits", field="traits")
    personal: dict[str, tuple[TraitRule, Any]] = {}
    plain: dict[str, Any] = {}
    for raw_name, value in traits.items():
        rule = ctx.policies.trait(raw_name)
        if rule is None:
            if len(raw_name) > 64:
                raise InvalidField("trait names are at most 64 characters", field="traits")
            plain[raw_name] = value
            continue
        name = rule.name
        personal[name] = (
            rule,
            None if value is None else normalize_trait(rule, value, ctx.region, f"traits.{raw_name}"),
        )
    return personal, plain


async def _store_personal(
    session: AsyncSession,
    ctx: VaultContext,
    dk: DataKey,
    personal: dict[str, tuple[TraitRule, Any]],
    now: datetime,
    replace: bool,
    source: str,
) -> None:
    """Encrypt and index personal traits; with ``replace``, first drop the old values."""
    pid = dk.profile_id
    if replace and personal:
        names = list(personal)
        kinds = [rule.index for rule, _ in personal.values() if rule.index]
        await session.execute(
            delete(ProfileField)
            .where(col(ProfileField.profile_id) == pid, col(ProfileField.name).in_(names))
            .execution_options(synchronize_session=False)
        )
        if kinds:
            await session.execute(
                delete(Identifier)
                .where(col(Identifier.profile_id) == pid, col(Identifier.kind).in_(kinds))
                .execution_options(synchronize_session=False)
            )
    for name, (rule, value) in personal.items():
        if value is None:
            continue
        session.add(
            ProfileField(
                profile_id=pid,
                name=name,
                category=rule.category,
                key_version=dk.version,
                ciphertext=seal_field(dk.key, pid, name, dk.version, value),
                updated_at=now,
                source=source,
                observed_at=now,
            )
        )
        if rule.index:
            digest = blind_index(ctx.keys.index_key, rule.index, value)
            sealed = seal_field(dk.key, pid, identifier_aad_name(rule.index), dk.version, value)
            session.add(
                Identifier(
                    profile_id=pid,
                    kind=rule.index,
                    digest=digest,
                    first_seen=now,
                    source=source,
                    key_version=dk.version,
                    sealed=sealed,
                )
            )


async def write_profile(
    session: AsyncSession,
    ctx: VaultContext,
    principal: Principal,
    traits: dict[str, Any],
    profile_id: str | None = None,
    purpose: str | None = None,
) -> WriteResult:
    """Create a profile (no ``profile_id``) or update one; personal traits are encrypted."""
    personal, plain = split_traits(ctx, traits)
    now = datetime.now(UTC)
    created = profile_id is None
    if created:
        profile = Profile(id=str(uuid.uuid4()), created_at=now, updated_at=now, traits={}, trait_sources={})
    else:
        assert profile_id is not None
        found = await session.get(Profile, await resolve_merged(session, profile_id))
        assert found is not None
        profile = found
    names = sorted([*personal, *plain])
    await authorize(
        session,
        principal,
        "profile.create" if created else "profile.update",
        [profile.id],
        purpose,
        details={"fields": names},
    )
    if created:
        session.add(profile)
        dk = await create_subject_key(session, ctx.keys.master, profile.id)
    else:
        dk = await subject_key(session, ctx.keys.master, profile.id)
    merged = {**profile.traits, **plain}
    profile.traits = {k: v for k, v in merged.items() if v is not None}
    profile.updated_at = now
    source = principal.source or f"api:{principal.name}"
    await _store_personal(session, ctx, dk, personal, now, replace=not created, source=source)
    for name in plain:
        profile.trait_sources = {**profile.trait_sources, name: {"source": source, "at": now.isoformat()}}
    await session.flush()
    return WriteResult(profile.id, created, names)


def _decrypt_fields(dk: DataKey, fields: list[ProfileField]) -> dict[str, tuple[str, Any]]:
    return {f.name: (f.category, open_field(dk.key, f.profile_id, f.name, f.key_version, f.ciphertext)) for f in fields}


async def resolve_merged(session: AsyncSession, profile_id: str) -> str:
    """The surviving profile id for an id that may have been merged away (404 if unknown)."""
    for _ in range(20):
        profile = await session.get(Profile, profile_id)
        if profile is None:
            raise NotFound("no profile with this id", field="profile_id")
        if not profile.merged_into:
            return profile.id
        profile_id = profile.merged_into
    raise NotFound("merge chain too long", field="profile_id")


async def read_profiles(
    session: AsyncSession, ctx: VaultContext, principal: Principal, profile_ids: list[str], purpose: str | None = None
) -> list[ProfileView]:
    """Profiles as this principal may see them for this purpose (plain, masked or ids only).

    A shredded subject reads as ``SubjectErased``; a ciphertext that fails its integrity
    check is recorded in the ledger and the read is refused.
    """
    profile_ids = list(dict.fromkeys([await resolve_merged(session, pid) for pid in profile_ids]))
    rows = (await session.execute(select(Profile).where(col(Profile.id).in_(profile_ids)))).scalars()
    profiles = {p.id: p for p in rows}
    decision: Decision = await authorize(session, principal, "profile.read", profile_ids, purpose)
    views = [
        ProfileView(p.id, p.created_at, p.updated_at, decision.reveal, dict(p.traits), dict(p.trait_sources))
        for p in profiles.values()
    ]
    if decision.reveal == "none":
        return views
    keys = await subject_keys(session, ctx.keys.master, profile_ids)
    q = select(ProfileField).where(col(ProfileField.profile_id).in_(profile_ids))
    by_profile: dict[str, list[ProfileField]] = {}
    for f in (await session.execute(q)).scalars():
        by_profile.setdefault(f.profile_id, []).append(f)
    for view in views:
        if view.id not in keys:
            await subject_key(session, ctx.keys.master, view.id)  # raises SubjectErased
        try:
            values = _decrypt_fields(keys[view.id], by_profile.get(view.id, []))
        except IntegrityFailure as exc:
            await record(
                session,
                principal,
                "profile.read.integrity_failure",
                subject_id=view.id,
                purpose=decision.purpose,
                legal_basis=decision.legal_basis,
                details={"field": exc.field},
            )
            await session.commit()
            raise
        for name, (category, value) in values.items():
            view.traits[name] = value if decision.reveal == "plain" else mask_value(category, value)
        for f in by_profile.get(view.id, []):
            view.sources[f.name] = {"source": f.source, "at": (f.observed_at or f.updated_at).isoformat()}
    by_id = {v.id: v for v in views}
    return [by_id[pid] for pid in profile_ids]


async def lookup_profile_ids(session: AsyncSession, ctx: VaultContext, kind: str, value: Any) -> list[str]:
    """Profiles holding this identifier, found by its blind index (never by plaintext).

    ``kind`` is ``email``, ``phone`` or an identity kind (``user_id``, ``anonymous_id``,
    ``device_id``, ``wechat_unionid``, ``external:crm_id``…).
    """
    trait = next((r for r in ctx.policies.traits.values() if r.index == kind), None)
    if trait is not None:
        normalized = normalize_trait(trait, value, ctx.region, kind)
    else:
        try:
            ctx.policies.identity.rule(kind)
        except KeyError as exc:
            raise InvalidField("is not a lookup identifier", field="kind") from exc
        normalized = normalize_text(value, "value", 256)
    digest = blind_index(ctx.keys.index_key, kind, normalized)
    q = select(col(Identifier.profile_id)).where(col(Identifier.kind) == kind, col(Identifier.digest) == digest)
    return sorted(set((await session.execute(q)).scalars()))


async def profile_identities(
    session: AsyncSession, dk: DataKey | None, profile_id: str, reveal: str
) -> list[dict[str, Any]]:
    """The identifiers linked to a profile, decrypted (``plain``) or masked."""
    rows = (
        await session.execute(
            select(Identifier).where(col(Identifier.profile_id) == profile_id).order_by(col(Identifier.first_seen))
        )
    ).scalars()
    out = []
    for row in rows:
        value: Any = None
        if row.sealed is not None and dk is not None and reveal != "none":
            value = open_field(dk.key, profile_id, identifier_aad_name(row.kind), row.key_version or 1, row.sealed)
            if reveal != "plain":
                category = {"email": "user.contact.email", "phone": "user.contact.phone_number"}.get(row.kind, "")
                value = mask_value(category, value) if category else (str(value)[:3] + "***")
        out.append({"kind": row.kind, "value": value, "source": row.source, "first_seen": row.first_seen.isoformat()})
    return out
