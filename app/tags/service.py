"""Tags: given by hand (bulk, audited), by rule or by threshold, kept with their history.

This domain sits below segments (segments test tags with ``tag_clause``); the job that
evaluates rule and threshold tags lives in the segments domain and hands this one the SQL
condition to apply (``apply_condition``). No person passes through Python there.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, insert, literal, not_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.consent.gate import authorize, decide
from app.consent.records import flag_clause
from app.db import UtcDateTime, table_of
from app.errors import InvalidField, NotFound
from app.ingest.outbox import publish
from app.ledger.service import record_group
from app.profiles.service import population, resolve_many
from app.settings import get_settings
from app.tags.models import TagAssignment, TagHistory
from app.tags.taxonomy import TagSpec, load_taxonomy

REFUSED = "profiling_refused"
HISTORY = ["tag", "origin_id", "source", "at", "change", "profile_id"]


def tag_clause(person: Any, name: str) -> ColumnElement[bool]:
    """SQL: the person (a column holding the surviving profile id) carries the tag (any source)."""
    t = table_of(TagAssignment)
    return select(t.c.tag).where(t.c.tag == name, t.c.profile_id == person).correlate_except(t).exists()


def known_tag(name: str, field: str = "tag") -> TagSpec:
    spec = load_taxonomy().tags.get(name)
    if spec is None:
        raise NotFound("no such tag in policies/tags.yaml", field=field)
    return spec


def _history(t: Any, now: datetime, change: str) -> list[Any]:
    return [
        t.c.tag,
        t.c.origin_id,
        t.c.source,
        literal(now, UtcDateTime()).label("at"),
        literal(change).label("change"),
        t.c.profile_id,
    ]


def _count(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def _remove(session: AsyncSession, where: ColumnElement[bool], now: datetime) -> int:
    """Take away the assignments ``where`` selects, each recorded as lost at ``now``."""
    t, h = table_of(TagAssignment), table_of(TagHistory)
    lost = _count(await session.execute(insert(h).from_select(HISTORY, select(*_history(t, now, "lost")).where(where))))
    just = select(h.c.tag).where(
        h.c.tag == t.c.tag,
        h.c.origin_id == t.c.origin_id,
        h.c.source == t.c.source,
        h.c.at == now,
        h.c.change == "lost",
    )
    await session.execute(delete(t).where(just.exists()))
    return lost


async def apply_condition(
    session: AsyncSession, spec: TagSpec, source: str, match: ColumnElement[bool], now: datetime
) -> dict[str, int]:
    """Bring the tag's ``source`` rows in line with ``match`` (SQL over ``population()``):
    surviving profiles it selects gain the tag, the others lose it. A profiling tag never
    goes to people who refused profiling, and is taken from them whatever its source."""
    _table, person, _region, live = population()
    t = table_of(TagAssignment)
    if spec.profiling:
        match = and_(match, not_(flag_clause(person, REFUSED, now)))
    mine = and_(t.c.tag == spec.name, t.c.source == source)
    holds = select(person).where(person == t.c.profile_id, live, match).exists()
    lost = await _remove(session, and_(mine, not_(holds)), now)
    if spec.profiling:
        refused = and_(t.c.tag == spec.name, flag_clause(t.c.profile_id, REFUSED, now))
        lost += await _remove(session, refused, now)
    has = select(t.c.tag).where(mine, t.c.profile_id == person).exists()
    at = literal(now, UtcDateTime())
    new = select(literal(spec.name), person, literal(source), at, literal("gained"), person).where(
        live, match, not_(has)
    )
    gained = _count(await session.execute(insert(table_of(TagHistory)).from_select(HISTORY, new)))
    new = select(literal(spec.name), person, literal(source), person, at).where(live, match, not_(has))
    await session.execute(insert(t).from_select(["tag", "origin_id", "source", "profile_id", "assigned_at"], new))
    if gained or lost:  # saved segments testing the tag follow at once (the outbox)
        h = table_of(TagHistory)
        changed = select(h.c.profile_id).where(h.c.tag == spec.name, h.c.source == source, h.c.at == now).distinct()
        await publish(session, (await session.execute(changed)).scalars(), "tag")
    return {"gained": gained, "lost": lost}


async def _refused(session: AsyncSession, roots: Collection[str], now: datetime) -> set[str]:
    _table, person, _region, _live = population()
    q = select(person).where(person.in_(sorted(roots)), flag_clause(person, REFUSED, now))
    return set((await session.execute(q)).scalars())


async def tag_by_hand(
    session: AsyncSession,
    principal: Principal,
    name: str,
    add: list[str],
    remove: list[str],
    purpose: str | None = None,
) -> dict[str, Any]:
    """Give the tag to people (``add``) or take the hand-given tag away (``remove``), by
    profile id (merged-away ids count for their survivor). Unknown ids are counted, not
    stored; a profiling tag is not given to people who refused profiling. One ledger entry
    lists everyone changed."""
    spec = known_tag(name)
    if set(add) & set(remove):
        raise InvalidField("an id is both in add and remove", field="remove")
    decision = await authorize(session, principal, "tag.apply", [], purpose, details={"tag": name})
    now = datetime.now(UTC)
    found = await resolve_many(session, [*add, *remove])
    adding = {found[i] for i in add if i in found}
    refused = await _refused(session, adding, now) if spec.profiling and adding else set()
    adding -= refused
    t = table_of(TagAssignment)
    mine = and_(t.c.tag == name, t.c.source == "manual")
    held = set(
        (await session.execute(select(t.c.profile_id).where(mine, t.c.profile_id.in_(sorted(adding))))).scalars()
    )
    new = sorted(adding - held)
    rows = [{"tag": name, "origin_id": p, "source": "manual", "profile_id": p, "assigned_at": now} for p in new]
    if rows:
        await session.execute(insert(t), rows)
        history = [{**r, "at": now, "change": "gained"} for r in rows]
        await session.execute(insert(table_of(TagHistory)), [{k: r[k] for k in HISTORY} for r in history])
    dropping = sorted({found[i] for i in remove if i in found})
    removed = await _remove(session, and_(mine, t.c.profile_id.in_(dropping)), now) if dropping else 0
    changed = sorted({*new, *dropping})
    await publish(session, changed, "tag")
    out = {
        "tag": name,
        "added": len(rows),
        "removed": removed,
        "unchanged": len(held),
        "refused_profiling": len(refused),
        "unknown": len({*add, *remove} - set(found)),
    }
    await record_group(
        session,
        principal,
        "tag.apply",
        changed,
        purpose=decision.purpose,
        legal_basis=decision.legal_basis,
        details=out,
    )
    return out


async def person_tags(session: AsyncSession, profile_id: str) -> list[dict[str, Any]]:
    """The tags a surviving profile carries: names, group, sources, since when."""
    t = table_of(TagAssignment)
    rows = (await session.execute(select(t).where(t.c.profile_id == profile_id).order_by(t.c.tag))).all()
    tags = load_taxonomy().tags
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        spec = tags.get(r.tag)
        entry = out.setdefault(
            r.tag,
            {
                "tag": r.tag,
                "group": spec.group if spec else r.tag.split(".")[0],
                "en": spec.en if spec else None,
                "zh": spec.zh if spec else None,
                "profiling": spec.profiling if spec else None,
                "sources": [],
                "since": r.assigned_at.isoformat(),
            },
        )
        if r.source not in entry["sources"]:
            entry["sources"].append(r.source)
        entry["since"] = min(entry["since"], r.assigned_at.isoformat())
    return list(out.values())


async def person_tag_history(session: AsyncSession, profile_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """When the person gained or lost tags, newest first."""
    h = table_of(TagHistory)
    q = select(h).where(h.c.profile_id == profile_id).order_by(h.c.at.desc(), h.c.tag).limit(limit)
    return [
        {"tag": r.tag, "source": r.source, "change": r.change, "at": r.at.isoformat()}
        for r in (await session.execute(q)).all()
    ]


async def taxonomy_view(session: AsyncSession, principal: Principal) -> list[dict[str, Any]]:
    """Every group and tag of the taxonomy, with how many surviving people carry each tag
    (below the segment threshold shown as ``<N`` to roles that see masked values)."""
    tax = load_taxonomy()
    table, person, _region, live = population()
    t = table_of(TagAssignment)
    q = (
        select(t.c.tag, func.count(func.distinct(t.c.profile_id)))
        .join(table, person == t.c.profile_id)
        .where(live)
        .group_by(t.c.tag)
    )
    counts: dict[str, int] = {tag: int(n) for tag, n in (await session.execute(q)).all()}
    floor = get_settings().segment_min_count
    masked = decide(principal, None).reveal != "plain"

    def shown(n: int) -> int | str:
        return f"<{floor}" if masked and n < floor else n

    return [
        {
            "group": g,
            "en": en,
            "zh": zh,
            "tags": [
                {
                    "tag": s.name,
                    "en": s.en,
                    "zh": s.zh,
                    "profiling": s.profiling,
                    "applied_by": ["manual", *(["rule"] if s.rule else []), *(["threshold"] if s.threshold else [])],
                    "people": shown(int(counts.get(s.name, 0))),
                }
                for s in tax.tags.values()
                if s.group == g
            ],
        }
        for g, (en, zh) in tax.groups.items()
    ]
