"""Profiles: the person's row and traits. The one writer of ``profile`` and ``profile_field``.

Plain traits live in ``profile.traits`` (JSON); personal ones are ``profile_field`` rows
sealed under the key of the profile they were observed for (``origin_id``). After merges
a person may hold several rows for one trait (one per origin); the one shown is chosen by
``takes_precedence``, the same rule that decides whether a new observation is kept.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any, NamedTuple, TypeVar

import phonenumbers
from sqlalchemy import ColumnElement, Select, and_, bindparam, delete, exists, false, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.access.service import Principal
from app.consent.gate import Decision, authorize
from app.consent.policy import PolicySet, TraitRule, load_policies, normal_name
from app.consent.records import MINOR_AGES, birthday_at, flags_clause, set_minor_flags
from app.db import insert_rows, table_of
from app.errors import IntegrityFailure, InvalidField, NotFound
from app.inventory import Person
from app.ledger.service import record
from app.profiles.masking import mask_value
from app.profiles.models import Profile, ProfileField
from app.profiles.precedence import Stamp, stamp_entry, stamp_of, takes_precedence
from app.settings import Settings, get_settings
from app.vault.blind_index import blind_index
from app.vault.cipher import open_field, seal_field
from app.vault.keyring import KeyMaterial, key_material
from app.vault.normalize import normalize_date, normalize_email, normalize_phone, normalize_text
from app.vault.service import DataKey, ids_bound, subject_key, subject_keys

MAX_TRAITS = 200
F = TypeVar("F")


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


class Observation(NamedTuple):
    """One observed trait value for a person: personal (``category`` set) or plain; ``None``
    removes (a named tuple: a group of imported customers makes several per row)."""

    profile_id: str
    name: str
    category: str | None
    value: Any
    stamp: Stamp
    correction: bool = False
    """A staff correction (the profile API): replaces the value whatever precedence says."""


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
    """Separate personal-data traits (normalised) from plain ones; ``None`` values delete.

    Names are decided by policy after normalising case and separators, and a plain name's
    value still passes the PII detectors (``app.pii.fields``): unknown names are sealed as
    ``user.unknown``, so only names declared non-personal stay plain."""
    from app.pii.fields import split_traits_by_policy
    from app.pii.review import cached_field_policy

    if len(traits) > MAX_TRAITS:
        raise InvalidField(f"at most {MAX_TRAITS} traits", field="traits")
    for raw_name in traits:
        if len(raw_name) > 64 and ctx.policies.trait(raw_name) is None:
            raise InvalidField("trait names are at most 64 characters", field="traits")
    fp = cached_field_policy(ctx.policies, ctx.keys.index_key)
    split = split_traits_by_policy(
        fp, traits, lambda rule, value, where: normalize_trait(rule, value, ctx.region, where)
    )
    return split.personal, split.plain


# --- the person's row -------------------------------------------------------------------


def new_profile_row(profile_id: str, now: datetime) -> dict[str, Any]:
    return {"id": profile_id, "created_at": now, "updated_at": now, "traits": {}, "trait_sources": {}}


async def create_profiles(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert new profile rows (from ``new_profile_row``) in one statement."""
    if rows:
        await insert_rows(session, table_of(Profile), rows)


async def lock_profiles(session: AsyncSession, profile_ids: Collection[str]) -> dict[str, Profile]:
    """Lock these profiles' rows (``FOR UPDATE`` in id order, so lockers never deadlock on
    one batch) and return them as they are once locked."""
    if not profile_ids:
        return {}
    q = select(Profile).where(col(Profile.id).in_(sorted(profile_ids))).order_by(col(Profile.id))
    q = q.with_for_update().execution_options(populate_existing=True)
    return {p.id: p for p in (await session.execute(q)).scalars()}


async def lock_profile_rows(session: AsyncSession, profile_ids: Select[Any]) -> dict[str, Any]:
    """Like ``lock_profiles`` for a subquery of ids, as plain rows (id, created_at, merged_into):
    the hot path of identity resolution needs no ORM objects."""
    t = table_of(Profile)
    q = select(t.c.id, t.c.created_at, t.c.merged_into).where(t.c.id.in_(profile_ids)).order_by(t.c.id)
    return {row.id: row for row in (await session.execute(q.with_for_update())).all()}


async def resolve_merged(session: AsyncSession, profile_id: str) -> str:
    """The surviving profile id for an id that may have been merged away (404 if unknown)."""
    row = (await session.execute(sa_select(col(Profile.merged_into)).where(col(Profile.id) == profile_id))).first()
    if row is None:
        raise NotFound("no profile with this id", field="profile_id")
    return row[0] or profile_id


async def resolve_many(session: AsyncSession, profile_ids: Collection[str]) -> dict[str, str]:
    """``resolve_merged`` for many ids in one query: id → surviving id (unknown ids are absent)."""
    t = table_of(Profile)
    out: dict[str, str] = {}
    ids = sorted(set(profile_ids))
    for start in range(0, len(ids), 1000):
        q = select(t.c.id, t.c.merged_into).where(t.c.id.in_(ids[start : start + 1000]))
        out.update({pid: merged or pid for pid, merged in (await session.execute(q)).all()})
    return out


async def person_of(session: AsyncSession, root: str) -> Person:
    """The person whose surviving profile is ``root``: it and every profile merged into it."""
    q = sa_select(col(Profile.id)).where(col(Profile.merged_into) == root).order_by(col(Profile.id))
    return Person(root, (root, *(await session.execute(q)).scalars()))


async def fold_profile(
    session: AsyncSession, winner: str, loser: str, authority: Mapping[str, frozenset[str]]
) -> dict[str, Any]:
    """Mark ``loser`` (and what was folded into it) as merged into ``winner`` and fold its
    plain traits in by precedence. The loser's own row keeps its traits (for an unmerge);
    returns the winner's values the loser's replaced, as ``{name: [value, source entry]}``."""
    rows = await lock_profiles(session, [winner, loser])
    wp, lp = rows[winner], rows[loser]
    traits, sources = dict(wp.traits), dict(wp.trait_sources)
    displaced: dict[str, Any] = {}
    for name, value in lp.traits.items():
        entry = lp.trait_sources.get(name) or {}
        new = stamp_of(entry) or Stamp(None, "server", lp.updated_at)
        if name in traits and not takes_precedence(name, new, stamp_of(sources.get(name)), authority):
            continue
        if name in traits:
            displaced[name] = [traits[name], sources.get(name)]
        traits[name] = value
        sources[name] = {**stamp_entry(new, loser), "origin": entry.get("origin", loser)}
    wp.traits, wp.trait_sources, wp.updated_at = traits, sources, datetime.now(UTC)
    lp.merged_into = winner
    await session.execute(
        update(Profile)
        .where(col(Profile.merged_into) == loser)
        .values(merged_into=winner)
        .execution_options(synchronize_session=False)
    )
    await session.flush()
    return displaced


async def unfold_profile(
    session: AsyncSession, root: str, restored: str, origins: Collection[str], displaced: Mapping[str, Any]
) -> None:
    """Undo ``fold_profile``: ``restored`` (and the profiles in ``origins``) stand alone again;
    the root's plain traits that came from them go back to what they displaced."""
    rows = await lock_profiles(session, [root, restored])
    rp = rows[root]
    traits, sources = dict(rp.traits), dict(rp.trait_sources)
    for name, entry in list(sources.items()):
        if (entry or {}).get("origin") not in origins:
            continue
        if name in displaced:
            traits[name], sources[name] = displaced[name][0], displaced[name][1]
        else:
            traits.pop(name, None)
            sources.pop(name, None)
    rp.traits, rp.trait_sources, rp.updated_at = traits, sources, datetime.now(UTC)
    rows[restored].merged_into = None
    others = [o for o in origins if o != restored]
    if others:
        await session.execute(
            update(Profile)
            .where(col(Profile.id).in_(others))
            .values(merged_into=restored)
            .execution_options(synchronize_session=False)
        )
    await session.flush()


# --- observed values --------------------------------------------------------------------


def sealed_fields_queries(categories: Sequence[str], dialect: str = "") -> tuple[Select[Any], Select[Any]]:
    """Two reads of the sealed fields of the given categories (a category or any below it) of
    the people bound as ``ids`` (``ids_bound``: an array on PostgreSQL): the fields, and the
    same with their precedence stamps (for ``current_fields``). Compiled once whatever the
    number of ids."""
    t = table_of(ProfileField)
    within = or_(*(or_(t.c.category == c, t.c.category.startswith(c + ".", autoescape=True)) for c in categories))
    cols = (t.c.profile_id, t.c.name, t.c.origin_id, t.c.key_version, t.c.ciphertext)
    fields = sa_select(*cols).where(ids_bound(t.c.profile_id, dialect), within)
    stamps = sa_select(*cols, t.c.source, t.c.trust, t.c.observed_at, t.c.updated_at).where(
        ids_bound(t.c.profile_id, dialect), within
    )
    return fields, stamps


def current_fields(rows: Iterable[F], authority: Mapping[str, frozenset[str]]) -> dict[tuple[str, str], F]:
    """The row shown for each (person, trait): the one that wins on precedence (rows are
    ``ProfileField`` objects or result rows with the same column names)."""
    best: dict[tuple[str, str], F] = {}
    for f in rows:
        k: tuple[str, str] = (getattr(f, "profile_id"), getattr(f, "name"))  # noqa: B009
        old = best.get(k)
        if old is None or takes_precedence(k[1], _field_stamp(f), _field_stamp(old), authority):
            best[k] = f
    return best


def _field_stamp(f: Any) -> Stamp:
    return Stamp(f.source, f.trust, f.observed_at or f.updated_at)


async def apply_observations(
    session: AsyncSession,
    keys: Mapping[str, DataKey],
    observations: list[Observation],
    authority: Mapping[str, frozenset[str]],
) -> set[str]:
    """Keep each observed value that wins on precedence (``takes_precedence``); personal ones
    sealed under the person's key. Returns the ids of the profiles that changed.

    Used by ingestion, imports and the profile API alike, a few statements per call.
    """
    pids = sorted({o.profile_id for o in observations})
    if not pids:
        return set()
    f = table_of(ProfileField).c
    held = (
        await session.execute(
            sa_select(f.profile_id, f.name, f.origin_id, f.source, f.trust, f.observed_at, f.updated_at).where(
                f.profile_id.in_(pids)
            )
        )
    ).all()
    current = {k: _field_stamp(row) for k, row in current_fields(held, authority).items()}
    profiles = {
        pid: (dict(t), dict(s))
        for pid, t, s in (
            await session.execute(
                sa_select(col(Profile.id), col(Profile.traits), col(Profile.trait_sources)).where(
                    col(Profile.id).in_(pids)
                )
            )
        ).all()
    }
    now = datetime.now(UTC)
    fields: dict[tuple[str, str], dict[str, Any] | None] = {}
    wipe: set[tuple[str, str]] = set()
    changed: set[str] = set()
    for o in observations:
        k = (o.profile_id, o.name)
        if o.category is None:
            traits, sources = profiles[o.profile_id]
            if (
                o.value is None
                or o.correction
                or takes_precedence(o.name, o.stamp, stamp_of(sources.get(o.name)), authority)
            ):
                _set_plain(traits, sources, o)
                changed.add(o.profile_id)
            continue
        if (
            o.value is not None
            and not o.correction
            and not takes_precedence(o.name, o.stamp, current.get(k), authority)
        ):
            continue
        current[k] = o.stamp
        if o.value is None or o.correction:
            wipe.add(k)  # a removal or a correction drops every origin's value, not only the person's own
        fields[k] = None if o.value is None else _field_row(keys[o.profile_id], o, now)
        changed.add(o.profile_id)
    await _write_fields(session, fields, wipe, {(r.origin_id, r.name) for r in held})
    await _write_profiles(
        session, {pid: profiles[pid] for pid in changed if pid in profiles}, _regions(observations), now
    )
    await _write_minor_flags(session, observations)
    return changed


def born_on(birthday: str) -> date | None:
    """The date of an ISO birthday (None when it is no date)."""
    try:
        return date.fromisoformat(birthday[:10])
    except ValueError:
        return None


async def _write_minor_flags(session: AsyncSession, observations: list[Observation]) -> None:
    """A birthday sets or clears the consent domain's minor flags (under 14, under 16), so
    decisions need no decryption to know a minor needs a guardian's consent. An adult's
    birthday changes nothing for a person who holds no minor flag (read once for all)."""
    born = [
        (o, born_on(o.value) if o.value else None)
        for o in observations
        if o.name == "birthday" and (o.value is None or isinstance(o.value, str))
    ]
    if not born:
        return
    now = datetime.now(UTC)  # before set_minor_flags' own: a minor to us is never an adult to it
    flagged = await _minor_flagged(session, {o.profile_id for o, _b in born})
    for o, day in born:
        minor = day is not None and any(birthday_at(day, age) > now for age in MINOR_AGES.values())
        if minor or o.profile_id in flagged:
            await set_minor_flags(session, o.profile_id, day, o.stamp.source or "profile")
        if minor:
            flagged.add(o.profile_id)
        else:
            flagged.discard(o.profile_id)


async def _minor_flagged(session: AsyncSession, profile_ids: Collection[str]) -> set[str]:
    """The profiles among these that hold a minor flag (lapsed or not)."""
    t = table_of(Profile)
    ids = sorted(profile_ids)
    out: set[str] = set()
    for start in range(0, len(ids), 1000):
        q = sa_select(t.c.id).where(t.c.id.in_(ids[start : start + 1000]), flags_clause(t.c.id, MINOR_AGES))
        out.update((await session.execute(q)).scalars())
    return out


REGION_TRAITS = frozenset({"region", "country", "countrycode"})
_REGION = re.compile(r"^[A-Z]{2}(?:-[A-Z0-9]{1,3})?$")


def region_of(o: Observation) -> str | None:
    """The coarse region an observation tells (an explicit region/country code, or a phone
    number's country), computed while the value is at hand so nothing is decrypted later."""
    if not isinstance(o.value, str):
        return None
    if o.name == "phone":
        return phone_region(o.value)
    if _region_trait(o.name):
        code = o.value.strip().upper()
        return code if _REGION.match(code) else None
    return None


@lru_cache(maxsize=1024)
def _region_trait(name: str) -> bool:
    """Does this trait name an explicit region (``region``, ``country``, ``countryCode``…)?"""
    return normal_name(name) in REGION_TRAITS


def phone_region(e164: str) -> str | None:
    """The main region of an E.164 number's country calling code (``+86…`` → ``CN``), without parsing it."""
    digits = e164[1:4] if e164.startswith("+") else ""
    for n in (1, 2, 3):
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(int(digits[:n])) if digits[:n].isdigit() else None
        if regions:
            return str(regions[0]) if regions[0] != "001" else None
    return None


def _regions(observations: list[Observation]) -> dict[str, str]:
    """The region each profile's ``profile.region`` takes: an explicit region beats one read
    from a phone number, the later observation of the same rank the earlier."""
    regions: dict[str, tuple[int, str]] = {}
    for o in observations:
        region = region_of(o)
        if region is not None:
            rank = 0 if o.name == "phone" else 1
            if o.profile_id not in regions or rank >= regions[o.profile_id][0]:
                regions[o.profile_id] = (rank, region)
    return {pid: r for pid, (_rank, r) in regions.items()}


def _set_plain(traits: dict[str, Any], sources: dict[str, Any], o: Observation) -> None:
    if o.value is None:
        traits.pop(o.name, None)
        sources.pop(o.name, None)
    else:
        traits[o.name] = o.value
        sources[o.name] = stamp_entry(o.stamp, o.profile_id)


def _field_row(dk: DataKey, o: Observation, now: datetime) -> dict[str, Any]:
    pid = dk.profile_id
    return {
        "origin_id": pid,
        "name": o.name,
        "profile_id": o.profile_id,
        "category": o.category,
        "key_version": dk.version,
        "ciphertext": seal_field(dk.key, pid, o.name, dk.version, o.value),
        "updated_at": now,
        "source": o.stamp.source,
        "trust": o.stamp.trust,
        "observed_at": o.stamp.at,
        **(
            birth_indexes(key_material(get_settings()).index_key, o.name, o.value)
            if o.name == "birthday"
            else _NO_BIRTH
        ),
    }


_NO_BIRTH: dict[str, str | None] = {"birth_year_index": None, "birth_md_index": None}
"""``birth_indexes`` of any trait but a birthday."""


def birth_indexes(index_key: bytes, name: str, value: Any) -> dict[str, str | None]:
    """For a birthday: keyed blind indexes of its year and of its month-day, so segments
    select ages and birthdays without decrypting. Few-valued (about 130 years, 366 days):
    whoever holds the index key can tell every person's birth date from them by trying
    every value; without the key, equal indexes still show who shares a birth year or day."""
    born = _date_of(value) if name == "birthday" else None
    if born is None:
        return {"birth_year_index": None, "birth_md_index": None}
    return {
        "birth_year_index": blind_index(index_key, "birth_year", str(born.year)),
        "birth_md_index": blind_index(index_key, "birth_md", f"{born.month:02d}-{born.day:02d}"),  # %m-%d
    }


def _date_of(value: Any) -> date | None:
    try:
        return date.fromisoformat(value[:10]) if isinstance(value, str) else None
    except ValueError:
        return None


MONTH_DAYS = tuple(f"{m:02d}-{d:02d}" for m in range(1, 13) for d in range(1, 32) if _date_of(f"2000-{m:02d}-{d:02d}"))


def age_clause(person: Any, low: int, high: int, today: date) -> ColumnElement[bool]:
    """SQL: the person (a column holding the surviving profile id) has a birthday row whose
    age on ``today`` is between ``low`` and ``high`` (whole years), by the blind indexes only:
    born on or before today's month-day in years ``today.year - high .. today.year - low``,
    or after it a year earlier."""
    key = key_material(get_settings()).index_key
    t = table_of(ProfileField)
    md = today.strftime("%m-%d")

    def years(first: int, last: int) -> list[str]:
        return [blind_index(key, "birth_year", str(y)) for y in range(first, last + 1)]

    def days(early: bool) -> list[str]:
        return [blind_index(key, "birth_md", d) for d in MONTH_DAYS if (d <= md) == early]

    y = today.year
    on_or_before = and_(t.c.birth_md_index.in_(days(True)), t.c.birth_year_index.in_(years(y - high, y - low)))
    after = and_(t.c.birth_md_index.in_(days(False)), t.c.birth_year_index.in_(years(y - high - 1, y - low - 1)))
    found = exists().where(t.c.profile_id == person, t.c.name == "birthday", or_(on_or_before, after))
    return found.correlate_except(t)


def birthday_clause(person: Any, today: date) -> ColumnElement[bool]:
    """SQL: the person's birthday (month and day) is ``today``, by the blind index only."""
    t = table_of(ProfileField)
    md = blind_index(key_material(get_settings()).index_key, "birth_md", today.strftime("%m-%d"))
    found = exists().where(t.c.profile_id == person, t.c.name == "birthday", t.c.birth_md_index == md)
    return found.correlate_except(t)


async def _write_fields(
    session: AsyncSession,
    fields: Mapping[tuple[str, str], dict[str, Any] | None],
    wipe: set[tuple[str, str]],
    stored: Collection[tuple[str, str]],
) -> None:
    """Replace the person's own row for each kept value; for (person, trait) pairs in ``wipe``
    first drop every origin's row. ``stored``: the (origin, trait) keys of the rows the people
    hold. A row written for the person's own profile replaces one only if it is among them:
    the rows of a surviving profile's origin belong to it (``app.inventory``)."""
    if not fields:
        return
    table = table_of(ProfileField)
    for pid, name in sorted(wipe):
        await session.execute(delete(table).where(table.c.profile_id == pid, table.c.name == name))
    rows = sorted((row for row in fields.values() if row is not None), key=_primary_key)  # the index pages in order
    replaced = [
        {"o": r["origin_id"], "n": r["name"]}
        for r in rows
        if r["origin_id"] != r["profile_id"] or (r["origin_id"], r["name"]) in stored
    ]
    if replaced:
        by_key = delete(table).where(table.c.origin_id == bindparam("o"), table.c.name == bindparam("n"))
        await session.execute(by_key, replaced)  # by primary key
    await insert_rows(session, table, rows)


def _primary_key(row: dict[str, Any]) -> tuple[str, str]:
    return row["origin_id"], row["name"]


async def _write_profiles(
    session: AsyncSession,
    profiles: Mapping[str, tuple[dict[str, Any], dict[str, Any]]],
    regions: Mapping[str, str],
    now: datetime,
) -> None:
    """Update the changed profiles' plain traits (and ``updated_at``) and the profiles' regions,
    one statement for those that take both."""
    table = table_of(Profile)
    by_id = update(table).where(table.c.id == bindparam("pid"))
    plain: dict[str, Any] = {"traits": bindparam("t"), "trait_sources": bindparam("s"), "updated_at": bindparam("u")}
    both = [
        {"pid": pid, "t": t, "s": s, "u": now, "r": regions[pid]}
        for pid, (t, s) in sorted(profiles.items())
        if pid in regions
    ]
    if both:
        await session.execute(by_id.values(**plain, region=bindparam("r")), both)
    only_plain = [
        {"pid": pid, "t": t, "s": s, "u": now} for pid, (t, s) in sorted(profiles.items()) if pid not in regions
    ]
    if only_plain:
        await session.execute(by_id.values(**plain), only_plain)
    only_region = [{"pid": pid, "r": r} for pid, r in sorted(regions.items()) if pid not in profiles]
    if only_region:
        await session.execute(by_id.values(region=bindparam("r")), only_region)


# --- reading ----------------------------------------------------------------------------


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
        ProfileView(p.id, p.created_at, p.updated_at, decision.reveal, dict(p.traits), _plain_sources(p))
        for p in profiles.values()
    ]
    if decision.reveal != "none":
        await _reveal_fields(session, ctx, principal, decision, views)
    by_id = {v.id: v for v in views}
    return [by_id[pid] for pid in profile_ids]


def _plain_sources(p: Profile) -> dict[str, Any]:
    return {k: {"source": v.get("source"), "at": v.get("at")} for k, v in p.trait_sources.items() if v}


async def _reveal_fields(
    session: AsyncSession, ctx: VaultContext, principal: Principal, decision: Decision, views: list[ProfileView]
) -> None:
    q = select(ProfileField).where(col(ProfileField.profile_id).in_([v.id for v in views]))
    shown = current_fields((await session.execute(q)).scalars(), ctx.policies.identity.trait_authority)
    keys = await subject_keys(
        session, ctx.keys.master, sorted({f.origin_id for f in shown.values()} | {v.id for v in views})
    )
    for view in views:
        if view.id not in keys:
            await subject_key(session, ctx.keys.master, view.id)  # raises SubjectErased
        for (pid, name), f in shown.items():
            if pid != view.id:
                continue
            try:
                value = open_field(keys[f.origin_id].key, f.origin_id, f.name, f.key_version, f.ciphertext)
            except (IntegrityFailure, KeyError) as exc:
                await record(
                    session,
                    principal,
                    "profile.read.integrity_failure",
                    subject_id=view.id,
                    purpose=decision.purpose,
                    legal_basis=decision.legal_basis,
                    details={"field": name},
                )
                await session.commit()
                if isinstance(exc, IntegrityFailure):
                    raise
                raise IntegrityFailure(f"field '{name}' has no key to open it", field=name) from exc
            view.traits[name] = value if decision.reveal == "plain" else mask_value(f.category, value)
            view.sources[name] = {"source": f.source, "at": (f.observed_at or f.updated_at).isoformat()}


def population() -> tuple[Any, Any, Any, ColumnElement[bool]]:
    """The profile table for population queries: (table, person id column, region column,
    condition for surviving profiles). Callers join their predicates onto it."""
    t = table_of(Profile)
    return t, t.c.id, t.c.region, t.c.merged_into.is_(None)


async def open_fields(
    session: AsyncSession, ctx: VaultContext, profile_ids: list[str], categories: Collection[str]
) -> dict[str, dict[str, Any]]:
    """The current personal fields of these surviving profiles whose data category is one of
    ``categories`` or under one, decrypted (no other field is read). For callers that have
    already passed the purpose gate and the decision engine for these people and record the
    use themselves (activation sends them to a destination). Subjects whose key is shredded
    are left out."""
    t = table_of(ProfileField)
    within = or_(
        *(or_(t.c.category == c, t.c.category.startswith(c + ".", autoescape=True)) for c in sorted(categories)),
        false(),
    )
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(profile_ids), 1000):
        chunk = profile_ids[start : start + 1000]
        q = sa_select(
            t.c.origin_id,
            t.c.profile_id,
            t.c.name,
            t.c.category,
            t.c.key_version,
            t.c.ciphertext,
            t.c.source,
            t.c.trust,
            t.c.observed_at,
            t.c.updated_at,
        ).where(t.c.profile_id.in_(chunk), within)
        shown = current_fields((await session.execute(q)).all(), ctx.policies.identity.trait_authority)
        keys = await subject_keys(session, ctx.keys.master, sorted({f.origin_id for f in shown.values()}))
        for (pid, name), f in shown.items():
            if f.origin_id in keys:
                dk = keys[f.origin_id].key
                out.setdefault(pid, {})[name] = open_field(dk, f.origin_id, f.name, f.key_version, f.ciphertext)
    return out


async def shown_values(
    session: AsyncSession, ctx: VaultContext, profile_id: str, names: Collection[str]
) -> dict[str, Any]:
    """The value shown (the one precedence keeps) of each of these personal traits of a
    surviving profile, decrypted; traits it has no value for are absent."""
    t = table_of(ProfileField)
    q = sa_select(t).where(t.c.profile_id == profile_id, t.c.name.in_(sorted(names)))
    shown = current_fields((await session.execute(q)).all(), ctx.policies.identity.trait_authority)
    keys = await subject_keys(session, ctx.keys.master, sorted({f.origin_id for f in shown.values()}))
    return {
        name: open_field(keys[f.origin_id].key, f.origin_id, f.name, f.key_version, f.ciphertext)
        for (_pid, name), f in shown.items()
        if f.origin_id in keys
    }


async def drop_field_value(session: AsyncSession, ctx: VaultContext, profile_id: str, name: str, value: Any) -> int:
    """Delete the person's rows of one trait that hold exactly ``value`` (whichever merged
    profile they came from), leaving their other values: a rectification removes the
    inaccurate value and only it. Returns rows removed."""
    t = table_of(ProfileField)
    rows = (await session.execute(sa_select(t).where(t.c.profile_id == profile_id, t.c.name == name))).all()
    keys = await subject_keys(session, ctx.keys.master, sorted({r.origin_id for r in rows}))
    wrong = [
        r.origin_id
        for r in rows
        if r.origin_id in keys
        and open_field(keys[r.origin_id].key, r.origin_id, r.name, r.key_version, r.ciphertext) == value
    ]
    if wrong:
        await session.execute(delete(t).where(t.c.name == name, t.c.origin_id.in_(wrong)))
    return len(wrong)
