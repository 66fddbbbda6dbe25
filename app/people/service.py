"""Staff writes and reads of a person, composed from the profiles, identity and vault domains.

Staff (admin, compliance) are a trusted source: identifiers they give go through the
identity resolver with ``server`` trust, so caps and merges apply exactly as for a backend
source, and their trait values are corrections that replace whatever was observed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.consent.gate import authorize, decide
from app.decisions.service import require_consent
from app.errors import PolicyDenied
from app.identity.resolver import Resolver
from app.identity.service import Ident, make_ident, set_identifier
from app.profiles.precedence import Stamp
from app.profiles.service import (
    Observation,
    ProfileView,
    VaultContext,
    apply_observations,
    person_of,
    read_profiles,
    resolve_merged,
    shown_values,
    split_traits,
)
from app.vault.service import DataKey, subject_key, subject_keys


@dataclass
class WriteResult:
    id: str
    created: bool
    fields: list[str]


async def write_profile(
    session: AsyncSession,
    ctx: VaultContext,
    principal: Principal,
    traits: dict[str, Any],
    profile_id: str | None = None,
    purpose: str | None = None,
) -> WriteResult:
    """Create a person (no ``profile_id``) or correct one; personal traits are sealed.

    A create whose email or phone another profile already holds answers that profile
    (``created: false``) with the values applied, as an identify from a server would."""
    personal, plain = split_traits(ctx, traits)
    names = sorted([*personal, *plain])
    source = principal.source or f"api:{principal.name}"
    now = datetime.now(UTC)
    if profile_id is None:
        if not decide(principal, purpose).allowed:  # refused (and recorded) before anything is written
            await authorize(session, principal, "profile.create", [], purpose, details={"fields": names})
        pid, created = await _resolve_new(session, ctx, principal, source, personal, now)
        action = "profile.create" if created else "profile.update"
        await authorize(session, principal, action, [pid], purpose, details={"fields": names})
        key = await subject_key(session, ctx.keys.master, pid)
    else:
        pid, created = await resolve_merged(session, profile_id), False
        await authorize(session, principal, "profile.update", [pid], purpose, details={"fields": names})
        key = await subject_key(session, ctx.keys.master, pid)
        shown = await shown_values(session, ctx, pid, [n for n, (rule, _v) in personal.items() if rule.index])
        for name, (rule, value) in personal.items():
            if rule.index:  # the value corrected is replaced; the person's other ones of the kind stay
                ident = None if value is None else make_ident(ctx, rule.index, value)
                old = make_ident(ctx, rule.index, shown[name]) if name in shown else None
                await set_identifier(session, key, pid, rule.index, ident, source, replacing=old)
    stamp = Stamp(source, "server", now)
    observations = [Observation(pid, n, rule.category, v, stamp, correction=True) for n, (rule, v) in personal.items()]
    observations += [Observation(pid, n, None, v, stamp, correction=True) for n, v in plain.items()]
    await apply_observations(session, {pid: key}, observations, ctx.policies.identity.trait_authority)
    return WriteResult(pid, created, names)


def _indexed(ctx: VaultContext, personal: dict[str, tuple[Any, Any]]) -> dict[str, Ident | None]:
    """Identifier kind → the identifier a personal trait gives (``None`` where it is removed)."""
    return {
        rule.index: (None if value is None else make_ident(ctx, rule.index, value))
        for rule, value in personal.values()
        if rule.index
    }


async def _resolve_new(
    session: AsyncSession,
    ctx: VaultContext,
    principal: Principal,
    source: str,
    personal: dict[str, tuple[Any, Any]],
    now: datetime,
) -> tuple[str, bool]:
    idents = [i for i in _indexed(ctx, personal).values() if i is not None]
    resolver = Resolver(session, ctx, principal, source)
    await resolver.prepare(idents)
    res = await resolver.resolve(idents, now, trusted=True)
    await resolver.finish()
    return resolver.final(res.profile_id), res.created


@dataclass
class OpenedPerson:
    """A person as one principal may see them: the view and, for revealed values, the keys."""

    view: ProfileView
    keys: dict[str, DataKey]
    """Data keys by origin profile id (empty when values are not revealed)."""


async def usable(session: AsyncSession, principal: Principal, profile_ids: list[str], purpose: str | None) -> list[str]:
    """The profiles among these that may be used for the purpose (denials are recorded)."""
    kept = []
    for pid in profile_ids:
        try:
            await require_consent(session, principal, pid, purpose)
        except PolicyDenied:
            continue
        kept.append(pid)
    return kept


async def open_person(
    session: AsyncSession, ctx: VaultContext, principal: Principal, profile_id: str, purpose: str | None
) -> OpenedPerson:
    """Authorise and audit access to one person (following merges), with their keys if values may be shown."""
    await require_consent(session, principal, profile_id, purpose)
    view = (await read_profiles(session, ctx, principal, [profile_id], purpose))[0]
    keys: dict[str, DataKey] = {}
    if view.reveal != "none":
        person = await person_of(session, view.id)
        keys = await subject_keys(session, ctx.keys.master, list(person.origins))
    return OpenedPerson(view, keys)
