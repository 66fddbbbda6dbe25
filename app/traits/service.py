"""Computed traits: refresh the values (set-based SQL per trait), read them, list definitions.

Values are stored plain in ``trait_value``, keyed by the surviving profile id. They are
derived only from events' non-personal properties (the ones ingestion keeps queryable; a
definition naming any other property is skipped) and segment conditions must compare them
in SQL, which sealed values would not allow. They are still personal data about the person
(a score is an evaluation of them): the traits holder exports, forgets, drops on merge and
expires them with the events they come from, and they are read through the profile view's
purpose gate.

Traits marked ``profiling`` are neither computed nor kept for a person carrying the
``profiling_refused`` privacy flag (PIPL Art. 24 refusal, GDPR Art. 21 objection), wherever
they live: stricter than the decision engine, which applies the flag to profiling purposes
only in jurisdictions with ``profiling_refusal``. A refusal takes effect at the next refresh
of the person (the scheduled full refresh at the latest); reads hide such values at once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import ColumnElement, and_, delete, exists, func, insert, literal, not_, select, text, union
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import SYSTEM, Principal
from app.consent.policy import load_policies
from app.consent.records import flag_clause
from app.db import UtcDateTime, table_of
from app.ingest.event_reads import events_table
from app.ledger.service import record
from app.pii.review import current_field_policy
from app.profiles.service import population
from app.settings import get_settings
from app.traits.catalog import Catalog, TraitDef, catalog
from app.traits.models import TraitPair, TraitRefresh, TraitValue
from app.traits.sql import TraitQuery
from app.vault.keyring import key_material

log = structlog.get_logger("consentry.traits")
CHUNK = 2_000
"""People refreshed per statement when a caller names them (bound-parameter limits)."""
WORK_MEM = "64MB"
"""PostgreSQL's memory per sort or hash during a full refresh (this transaction only)."""
REFUSED = "profiling_refused"
FULL_EVERY = timedelta(days=1)
"""The scheduled refresh computes every trait for everyone at least this often."""
DAY = timedelta(days=1)
PURPOSE = "analytics.reporting"
"""The purpose the refresh is recorded under in the ledger."""


def refused(person: Any, now: datetime) -> ColumnElement[bool]:
    """SQL: the person refuses profiling (a standing ``profiling_refused`` flag)."""
    return flag_clause(person, REFUSED, now)


def value_clause(person: Any, name: str, test: Callable[[Any], ColumnElement[bool]]) -> ColumnElement[bool]:
    """SQL: the person (a column holding the surviving profile id) has a value of trait
    ``name`` for which ``test`` (given the ``{"v": value}`` JSON column) holds."""
    t = table_of(TraitValue)
    return exists().where(t.c.profile_id == person, t.c.name == name, test(t.c.value)).correlate_except(t)


async def usable_traits(session: AsyncSession, cat: Catalog | None = None) -> tuple[list[TraitDef], list[str]]:
    """The traits whose every property is non-personal by policy now, and the names of
    those skipped (they read a property that is personal or not yet reviewed)."""
    settings = get_settings()
    fp = await current_field_policy(session, load_policies(settings.policy_dir), key_material(settings).index_key)
    ok: list[TraitDef] = []
    skipped: list[TraitDef] = []
    for t in (cat or catalog()).traits.values():
        (ok if all(fp.decide(n).kind == "plain" for n in t.names_read()) else skipped).append(t)
    return ok, sorted(t.name for t in skipped)


async def refresh_traits(
    session: AsyncSession,
    profile_ids: Collection[str] | None = None,
    now: datetime | None = None,
    actor: Principal = SYSTEM,
) -> dict[str, int]:
    """Compute the traits again for these people (None: everyone), in the caller's
    transaction: their old values go, the new ones are inserted by one statement per trait
    (and per chunk of people). Merged-away ids lose their values and get none.

    Population-wide traits (RFM quintiles: a person's rank depends on everyone's orders)
    are computed by the full refresh only; a refresh of named people keeps their values,
    except for a merged-away id or, for profiling traits, a refusal. Bought-together scores
    come from the item-to-item table the full refresh keeps (``trait_pair``). Returns the
    values written per trait (``skipped``: definitions reading a personal property)."""
    now = now or datetime.now(UTC)
    traits, skipped = await usable_traits(session)
    if profile_ids is None and session.get_bind().dialect.name == "postgresql":
        await session.execute(text(f"SET LOCAL work_mem = '{WORK_MEM}'"))  # sorts of a full refresh in memory
    kept: list[TraitDef] = []
    if profile_ids is not None:
        kept = [t for t in traits if t.population_wide]
        traits = [t for t in traits if not t.population_wide]
    counts = {t.name: 0 for t in traits}
    chunks = [None] if profile_ids is None else _chunks(sorted(set(profile_ids)))
    for chunk in chunks:
        await _clear(session, chunk, [k.name for k in kept])
        if chunk is None:
            for t in traits:
                counts[t.name] += await _compute(session, t, None, now)
            continue
        alive, scored = await _scopes(session, chunk, now)
        await _drop_kept(session, chunk, kept, alive, scored)
        for t in traits:
            counts[t.name] += await _compute_named(session, t, scored if t.profiling else alive, now)
    await record(
        session,
        actor,
        "traits.refresh",
        purpose=PURPOSE,
        details={"people": "all" if profile_ids is None else len(set(profile_ids)), "values": counts},
    )
    if skipped:
        log.warning("traits_skipped", traits=skipped, reason="reads a property not declared non-personal")
    return {**counts, "skipped": len(skipped)}


async def refresh_due(session: AsyncSession, now: datetime | None = None) -> dict[str, Any]:
    """The scheduled refresh, incremental by default: only the people whose values time alone
    has changed since the last run (an event left a trait's window, or churn's days since
    the latest event grew: ``due_people``) are computed again, as a refresh of named people.
    People whose events, merges or consent changed are refreshed as that happens (the
    segments outbox consumer). Everything is computed again (``refresh_traits`` for
    everyone: RFM ranks, the bought-together table, anything missed) when the last full
    refresh is ``FULL_EVERY`` old, or the last run more than a day ago."""
    now = now or datetime.now(UTC)
    marks = {r.kind: r.at for r in (await session.execute(select(table_of(TraitRefresh)))).all()}
    full, since = marks.get("full"), marks.get("due")
    if full is None or since is None or not (now - FULL_EVERY < full <= now and now - DAY < since <= now):
        counts = await refresh_traits(session, now=now)
        await _mark(session, now, "full", "due")
        return {"mode": "full", **counts}
    people = await due_people(session, since, now)
    counts = await refresh_traits(session, people, now=now) if people else {}
    await _mark(session, now, "due")
    return {"mode": "due", "people": len(people), **counts}


async def due_people(session: AsyncSession, since: datetime, now: datetime) -> list[str]:
    """Profile ids with an event that reached, between ``since`` and ``now``, an age (in days)
    at which some trait's value changes by time alone (``TraitDef.ages``): for each age, the
    events of one short time range per event name, found through the index on event (name,
    occurred_at) (migration 0025)."""
    traits, _skipped = await usable_traits(session)
    ages = sorted({d for t in traits for d in t.ages()})
    if not ages:
        return []
    e = events_table()
    names = await _event_names(session)
    parts = []
    for d in ages:
        reached = e.c.occurred_at.between(since - timedelta(days=d), now - timedelta(days=d))
        parts.append(select(e.c.profile_id).where(e.c.name.is_(None), reached))
        if names:
            parts.append(select(e.c.profile_id).where(e.c.name.in_(names), reached))
    return [str(p) for p in (await session.execute(union(*parts))).scalars()]


async def _event_names(session: AsyncSession) -> list[str]:
    """The distinct event names, one index seek each (no scan of the events)."""
    e = events_table()
    names: list[str] = []
    while True:
        q = select(func.min(e.c.name))
        if names:
            q = q.where(e.c.name > names[-1])
        name = (await session.execute(q)).scalar()
        if name is None:
            return names
        names.append(str(name))


async def _mark(session: AsyncSession, at: datetime, *kinds: str) -> None:
    t = table_of(TraitRefresh)
    await session.execute(delete(t).where(t.c.kind.in_(kinds)))
    await session.execute(insert(t), [{"kind": k, "at": at} for k in kinds])


def _chunks(ids: list[str]) -> list[list[str] | None]:
    return [ids[n : n + CHUNK] for n in range(0, len(ids), CHUNK)]


async def _clear(session: AsyncSession, chunk: Collection[str] | None, kept: Collection[str] = ()) -> None:
    """Delete the values of ``chunk`` (None: everyone's), but for the traits ``kept``."""
    t = table_of(TraitValue)
    stmt = delete(t) if chunk is None else delete(t).where(t.c.profile_id.in_(list(chunk)))
    if kept:
        stmt = stmt.where(t.c.name.not_in(list(kept)))
    await session.execute(stmt)


async def _drop_kept(
    session: AsyncSession, chunk: Collection[str], kept: list[TraitDef], alive: list[str], scored: list[str]
) -> None:
    """Of the values kept for ``chunk``, delete those of merged-away ids (not in ``alive``) and
    the profiling ones of people refusing profiling (alive, not ``scored``): by key, and
    only when there are such people."""
    if not kept:
        return
    t = table_of(TraitValue)
    gone = sorted(set(chunk) - set(alive))
    if gone:
        await session.execute(delete(t).where(t.c.profile_id.in_(gone)))
    refusing = sorted(set(alive) - set(scored))
    profiling = [k.name for k in kept if k.profiling]
    if refusing and profiling:
        await session.execute(delete(t).where(t.c.profile_id.in_(refusing), t.c.name.in_(profiling)))


def _alive(pid: Any) -> ColumnElement[bool]:
    """SQL: ``pid`` is a surviving profile."""
    profile, person, _region, live = population()
    return select(person).where(person == pid, live).correlate_except(profile).exists()


async def _compute(session: AsyncSession, t: TraitDef, chunk: Collection[str] | None, now: datetime) -> int:
    """Insert one trait's values for the people of ``chunk`` (None: everyone); returns rows."""
    profile, person, _region, live = population()
    query = TraitQuery(now, chunk, session.get_bind().dialect.name, lambda p: _scored(p, t, now))
    if t.kind == "bought_together" and chunk is None:
        await _keep_neighbours(session, t, query)
    q = query(t).subquery("computed")
    where = [live, *([not_(refused(person, now))] if t.profiling else [])]
    rows = (
        select(q.c.pid, literal(t.name), q.c.value, literal(now, UtcDateTime()))
        .select_from(q.join(profile, person == q.c.pid))
        .where(*where)
    )
    tv = table_of(TraitValue)
    result = await session.execute(insert(tv).from_select(["profile_id", "name", "value", "computed_at"], rows))
    n = int(getattr(result, "rowcount", -1))
    if n >= 0:
        return n
    written = select(func.count()).select_from(tv).where(tv.c.name == t.name)  # SQLite: no count after WITH
    if chunk is not None:
        written = written.where(tv.c.profile_id.in_(list(chunk)))
    return int((await session.execute(written)).scalar() or 0)


async def _scopes(session: AsyncSession, chunk: Collection[str], now: datetime) -> tuple[list[str], list[str]]:
    """Of ``chunk``, the surviving ids, and those of them not refusing profiling: looked up
    once per chunk by key, so the trait statements read only the events of these people."""
    _profile, person, _region, live = population()
    q = select(person, refused(person, now)).where(person.in_(list(chunk)), live).order_by(person)
    rows = (await session.execute(q)).all()
    return [str(p) for p, _r in rows], [str(p) for p, r in rows if not r]


async def _compute_named(session: AsyncSession, t: TraitDef, people: list[str], now: datetime) -> int:
    """Insert one trait's values for ``people`` (surviving; for a profiling trait, none
    refusing it: ``_scopes``); returns rows."""
    if not people:
        return 0
    q = TraitQuery(now, people, session.get_bind().dialect.name)(t).subquery("computed")
    rows = select(q.c.pid, literal(t.name), q.c.value, literal(now, UtcDateTime()))
    tv = table_of(TraitValue)
    result = await session.execute(insert(tv).from_select(["profile_id", "name", "value", "computed_at"], rows))
    n = int(getattr(result, "rowcount", -1))
    if n >= 0:
        return n
    written = select(func.count()).select_from(tv).where(tv.c.name == t.name, tv.c.profile_id.in_(people))
    return int((await session.execute(written)).scalar() or 0)


async def _keep_neighbours(session: AsyncSession, t: TraitDef, query: TraitQuery) -> None:
    """Compute the item-to-item table of a bought-together trait again (from every order)."""
    pairs = table_of(TraitPair)
    await session.execute(delete(pairs).where(pairs.c.trait == t.name))
    n = query.neighbours(t).subquery("neighbours")
    rows = select(literal(t.name), n.c.item, n.c.other, n.c.co)
    await session.execute(insert(pairs).from_select(["trait", "item", "other", "co"], rows))


def _scored(pid: Any, t: TraitDef, now: datetime) -> ColumnElement[bool]:
    """SQL: a population-wide score counts this person (surviving; not refusing profiling)."""
    return and_(_alive(pid), not_(refused(pid, now))) if t.profiling else _alive(pid)


async def values_of(session: AsyncSession, profile_id: str, now: datetime | None = None) -> dict[str, Any]:
    """A surviving person's computed traits (name → value); profiling traits are left out
    when the person refuses profiling, even before the next refresh removes them."""
    now = now or datetime.now(UTC)
    tv = table_of(TraitValue)
    q = select(tv.c.name, tv.c.value).where(tv.c.profile_id == profile_id).order_by(tv.c.name)
    rows = (await session.execute(q)).all()
    hidden: set[str] = set()
    if rows and await _refuses(session, profile_id, now):
        hidden = {n for n, p in catalog().profiling().items() if p}
    return {name: (value or {}).get("v") for name, value in rows if name not in hidden}


async def _refuses(session: AsyncSession, profile_id: str, now: datetime) -> bool:
    return bool((await session.execute(select(refused(literal(profile_id), now)))).scalar())


def definitions() -> list[dict[str, Any]]:
    """Every declared trait: name, kind, profiling flag, description and formula."""
    return [
        {
            "name": t.name,
            "kind": t.kind,
            "profiling": t.profiling,
            "description": t.description,
            "formula": t.formula,
            "event": t.event,
            "within_days": t.within_days,
        }
        for t in catalog().traits.values()
    ]
