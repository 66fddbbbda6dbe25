"""Segments: parse and check trees, preview through the consent engine, save, materialise.

Every count and member list passes the decision engine (``app/decisions/service.py``):
counts by denial reason come from ``decide_population`` narrowed to the segment, member
lists and samples from ``population_predicate``, and values are read through
``read_profiles`` (role and purpose gate, masked per role, each read in the ledger).
Membership is materialised when a segment is saved and by the ``segments.refresh`` job.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, func, insert, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.access.service import Principal
from app.consent.gate import authorize, decide
from app.consent.policy import load_policies
from app.db import UtcDateTime, table_of
from app.decisions.engine import Ask
from app.decisions.service import current_rules, decide_population, population_predicate
from app.errors import Conflict, InvalidField, NotFound, PolicyDenied
from app.ledger.service import record
from app.pii.review import current_field_policy
from app.profiles.service import VaultContext, population, read_profiles
from app.segments.grammar import Node, Parser
from app.segments.models import Segment, SegmentHistory, SegmentMember, SegmentSize, SegmentVersion
from app.segments.sql import Compiler
from app.settings import get_settings
from app.vault.keyring import key_material

MAX_SAMPLE = 20


@dataclass(frozen=True)
class Parsed:
    node: Node
    segments: frozenset[str]
    """Saved segments the tree refers to."""


async def parse_tree(session: AsyncSession, tree: Any, path: str = "tree") -> Parsed:
    """Check a tree against the grammar and the allow-list (422 naming the path, never the value)."""
    settings = get_settings()
    fp = await current_field_policy(session, load_policies(settings.policy_dir), key_material(settings).index_key)

    def check(name: str) -> str | None:
        kind = fp.decide(name).kind
        if kind == "plain":
            return None
        if kind == "trait":
            return "is personal data, kept encrypted: segments cannot compare its value"
        return "is not declared non-personal (data_categories.yaml non_personal, or a field review)"

    parser = Parser(check, fp.label, frozenset(current_rules().purposes))
    node = parser.parse(tree, path)
    await _check_refs(session, parser.segments, path)
    return Parsed(node, frozenset(parser.segments))


async def _check_refs(session: AsyncSession, refs: Iterable[str], path: str, self_id: str | None = None) -> None:
    """Referred segments exist, and following references never leads back to ``self_id``."""
    seen: set[str] = set()
    todo = list(refs)
    while todo:
        sid = todo.pop()
        if sid == self_id:
            raise InvalidField("segment references form a cycle", field=path)
        if sid in seen:
            continue
        seen.add(sid)
        seg = await session.get(Segment, sid)
        if seg is None or seg.deleted_at is not None:
            raise InvalidField("refers to a segment that does not exist", field=path)
        todo += refs_of(seg.tree)


def refs_of(tree: Any) -> list[str]:
    """Segment ids a stored tree refers to."""
    if isinstance(tree, dict):
        own = [tree["segment"]] if isinstance(tree.get("segment"), str) else []
        return own + [r for v in tree.values() for r in refs_of(v)]
    if isinstance(tree, list):
        return [r for v in tree for r in refs_of(v)]
    return []


def matching(node: Node, now: datetime, few: bool = False) -> ColumnElement[bool]:
    """SQL: a surviving profile matches the tree (over ``population()``'s table); ``few``:
    the caller names a few people (``Compiler``)."""
    table, person, _region, live = population()
    return live & Compiler(person, table.c.traits, now, few)(node)


def shown(n: int, masked: bool) -> int | str:
    """A count as a role sees it: below the threshold, ``<N`` for roles that see masked values."""
    floor = get_settings().segment_min_count
    return f"<{floor}" if masked and n < floor else n


def _purpose(principal: Principal, purpose: str | None) -> str:
    chosen = purpose or load_policies(get_settings().policy_dir).role_defaults.get(principal.role, "")
    if chosen not in current_rules().purposes:
        raise InvalidField("is not a purpose in policies/purposes.yaml", field="purpose")
    return chosen


def _tree_hash(tree: Any) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


async def counts(
    session: AsyncSession,
    principal: Principal,
    purpose: str,
    within: ColumnElement[bool],
    now: datetime,
    sample: int = 0,
) -> dict[str, Any]:
    """Total, usable and denied by reason over the people ``within`` selects (decided and
    recorded by the decision engine), as the role may see them; with ``sample``, ``_sample``
    holds the ids of the first that many usable people in id order, decided in the same pass."""
    verdict = await decide_population(session, principal, Ask(purpose), now, within=within, sample=sample)
    masked = decide(principal, purpose).reveal != "plain"
    out: dict[str, Any] = {
        "total": shown(verdict.total, masked),
        "usable": shown(verdict.allowed, masked),
        "denied": {r: shown(n, masked) for r, n in sorted(verdict.denied.items())},
        "policy_version": verdict.policy_version,
        "_allowed": verdict.allowed,
    }
    if sample:
        out["_sample"] = verdict.sample
    return out


async def usable_people(
    session: AsyncSession, purpose: str, within: ColumnElement[bool], now: datetime, after: str, limit: int
) -> list[str]:
    """Ids of people ``within`` selects who may be used for the purpose, in id order after ``after``."""
    _table, person, region, live = population()
    q = (
        select(person)
        .where(live, within, population_predicate(Ask(purpose), person, region, now), person > after)
        .order_by(person)
        .limit(limit)
    )
    return [str(r) for r in (await session.execute(q)).scalars()]


async def views(session: AsyncSession, principal: Principal, ids: list[str], purpose: str) -> list[dict[str, Any]]:
    """People as the role may see them for the purpose (masked or plain; every read audited)."""
    if not ids:
        return []
    found = await read_profiles(session, VaultContext.from_settings(), principal, ids, purpose)
    return [{"id": v.id, "traits": v.traits} for v in found]


async def preview(
    session: AsyncSession, principal: Principal, tree: Any, purpose: str | None, sample: int
) -> dict[str, Any]:
    """How many people match, how many may be used for the purpose (with counts by denial
    reason) and a small sample as the role may see it. A narrow segment shows no sample to
    roles that see masked values. The tree is evaluated once: counts and sample come from
    the same pass of the decision engine."""
    use = _purpose(principal, purpose)
    parsed = await parse_tree(session, tree)
    now = datetime.now(UTC)
    within = matching(parsed.node, now)
    out = await counts(session, principal, use, within, now, sample=min(sample, MAX_SAMPLE))
    allowed, first = out.pop("_allowed"), out.pop("_sample", [])
    gate = decide(principal, use)
    may_list = gate.allowed and not (gate.reveal != "plain" and allowed < get_settings().segment_min_count)
    ids = first if may_list else []
    await record(
        session,
        principal,
        "segment.preview",
        purpose=use,
        details={"tree": _tree_hash(tree), "total": out["total"], "usable": out["usable"]},
    )
    return {"purpose": use, **out, "sample": await views(session, principal, ids, use)}


# --- saved segments ----------------------------------------------------------------------


async def get_segment(session: AsyncSession, segment_id: str) -> Segment:
    seg = await session.get(Segment, segment_id)
    if seg is None or seg.deleted_at is not None:
        raise NotFound("no segment with this id", field="segment_id")
    return seg


def _may_change(principal: Principal, seg: Segment) -> None:
    if principal.role != "admin" and principal.key_id != seg.owner_key_id:
        raise PolicyDenied("only the segment's owner (or an admin) may change it", field="segment_id")


async def _may_use(session: AsyncSession, principal: Principal, purpose: str) -> None:
    """The role may use the purpose (a refusal is a 403 recorded in the ledger)."""
    await authorize(session, principal, "segment.use", [], purpose)


async def create_segment(
    session: AsyncSession, principal: Principal, name: str, purpose: str | None, tree: Any
) -> Segment:
    """Save a segment (version 1), materialise its members, record the change."""
    use = _purpose(principal, purpose)
    await _may_use(session, principal, use)
    parsed = await parse_tree(session, tree)
    now = datetime.now(UTC)
    seg = Segment(
        id=str(uuid.uuid4()),
        name=name,
        purpose=use,
        tree=tree,
        owner_key_id=principal.key_id,
        created_at=now,
        updated_at=now,
    )
    session.add(seg)
    await _saved(session, principal, seg, parsed, "segment.create", now)
    return seg


async def update_segment(
    session: AsyncSession, principal: Principal, segment_id: str, name: str, purpose: str | None, tree: Any
) -> Segment:
    """A new version of the definition; members are materialised again."""
    seg = await get_segment(session, segment_id)
    _may_change(principal, seg)
    use = _purpose(principal, purpose or seg.purpose)
    await _may_use(session, principal, use)
    parsed = await parse_tree(session, tree)
    await _check_refs(session, parsed.segments, "tree", self_id=seg.id)
    now = datetime.now(UTC)
    seg.name, seg.purpose, seg.tree, seg.version, seg.updated_at = name, use, tree, seg.version + 1, now
    await _saved(session, principal, seg, parsed, "segment.update", now)
    return seg


async def _saved(
    session: AsyncSession, principal: Principal, seg: Segment, parsed: Parsed, action: str, now: datetime
) -> None:
    session.add(
        SegmentVersion(
            segment_id=seg.id,
            version=seg.version,
            name=seg.name,
            purpose=seg.purpose,
            tree=seg.tree,
            changed_by=principal.key_id,
            changed_at=now,
        )
    )
    await session.flush()
    size = await materialise(session, seg, parsed.node, now)
    await record(
        session,
        principal,
        action,
        purpose=seg.purpose,
        details={"segment_id": seg.id, "version": seg.version, "tree": _tree_hash(seg.tree), **size},
    )


async def delete_segment(session: AsyncSession, principal: Principal, segment_id: str) -> None:
    """Retire a segment: its definition history stays, its memberships are removed."""
    seg = await get_segment(session, segment_id)
    _may_change(principal, seg)
    live = (
        await session.execute(select(col(Segment.id), col(Segment.tree)).where(col(Segment.deleted_at).is_(None)))
    ).all()
    if any(seg.id in refs_of(tree) for sid, tree in live if sid != seg.id):
        raise Conflict("another segment refers to this one", field="segment_id")
    seg.deleted_at = seg.updated_at = datetime.now(UTC)
    for t in (table_of(SegmentMember), table_of(SegmentHistory)):
        await session.execute(delete(t).where(t.c.segment_id == seg.id))
    await record(session, principal, "segment.delete", purpose=seg.purpose, details={"segment_id": seg.id})


async def materialise(session: AsyncSession, seg: Segment, node: Node, now: datetime) -> dict[str, int]:
    """Bring ``segment_member`` in line with the tree: who left and who entered go to the
    history, the size to ``segment_size``. All in SQL (no person passes through Python)."""
    _table, person, _region, _live = population()
    m, h = table_of(SegmentMember), table_of(SegmentHistory)
    match = select(person).where(person == m.c.profile_id, matching(node, now)).exists()
    mine = m.c.segment_id == seg.id
    gone = select(*_history_row(seg, m, now, "left")).where(mine, ~match)
    cols = ["segment_id", "origin_id", "at", "profile_id", "change"]
    left = _count(await session.execute(insert(h).from_select(cols, gone)))
    just = select(h.c.profile_id).where(h.c.segment_id == seg.id, h.c.at == now, h.c.change == "left")
    await session.execute(delete(m).where(mine, m.c.profile_id.in_(just)))
    member = select(m.c.profile_id).where(mine, m.c.profile_id == person).exists()
    new = select(literal(seg.id), person, literal(now, UtcDateTime())).where(matching(node, now), ~member)
    entered = _count(await session.execute(insert(m).from_select(["segment_id", "profile_id", "entered_at"], new)))
    came = select(*_history_row(seg, m, now, "entered")).where(mine, m.c.entered_at == now)
    await session.execute(insert(h).from_select(cols, came))
    members = int((await session.execute(select(func.count()).select_from(m).where(mine))).scalar() or 0)
    usable = await _usable_members(session, seg, now)
    session.add(
        SegmentSize(
            segment_id=seg.id, at=now, version=seg.version, members=members, usable=usable, entered=entered, left=left
        )
    )
    seg.refreshed_at = now
    return {"members": members, "usable": usable, "entered": entered, "left": left}


def _history_row(seg: Segment, m: Any, now: datetime, change: str) -> list[Any]:
    return [
        literal(seg.id).label("segment_id"),
        m.c.profile_id.label("origin_id"),
        literal(now, UtcDateTime()).label("at"),
        m.c.profile_id.label("profile_id"),
        literal(change).label("change"),
    ]


def members_query(segment_id: str) -> Select[Any]:
    """The segment's current members' profile ids (one column), for other domains to read
    membership without this domain's models (activation's recipients)."""
    m = table_of(SegmentMember)
    return select(m.c.profile_id).where(m.c.segment_id == segment_id)


def member_of(segment_id: str) -> ColumnElement[bool]:
    """SQL over the population table: the person is a current member of the segment."""
    _table, person, _region, _live = population()
    m = table_of(SegmentMember)
    return select(m.c.profile_id).where(m.c.segment_id == segment_id, m.c.profile_id == person).exists()


async def _usable_members(session: AsyncSession, seg: Segment, now: datetime) -> int:
    table, person, region, live = population()
    allowed = population_predicate(Ask(seg.purpose), person, region, now)
    q = select(func.count()).select_from(table).where(live, member_of(seg.id), allowed)
    return int((await session.execute(q)).scalar() or 0)


def _count(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def refresh(session: AsyncSession, seg: Segment, now: datetime | None = None) -> dict[str, int]:
    """Materialise one saved segment now (its stored tree, checked again against policy)."""
    parsed = await parse_tree(session, seg.tree)
    return await materialise(session, seg, parsed.node, now or datetime.now(UTC))


async def live_segments(session: AsyncSession) -> list[Segment]:
    """Saved segments, each after the segments it refers to (refresh order)."""
    found = {
        s.id: s for s in (await session.execute(select(Segment).where(col(Segment.deleted_at).is_(None)))).scalars()
    }
    out: list[Segment] = []
    done: set[str] = set()

    def visit(sid: str, path: frozenset[str]) -> None:
        if sid in done or sid in path or sid not in found:
            return
        for ref in refs_of(found[sid].tree):
            visit(ref, path | {sid})
        done.add(sid)
        out.append(found[sid])

    for sid in sorted(found):
        visit(sid, frozenset())
    return out


async def members_page(
    session: AsyncSession, principal: Principal, segment_id: str, after: str, limit: int
) -> dict[str, Any]:
    """A page of a segment's members who may be used for its purpose, as the role may see
    them, with the counts (by denial reason) over all its members."""
    seg = await get_segment(session, segment_id)
    await _may_use(session, principal, seg.purpose)
    now = datetime.now(UTC)
    within = member_of(seg.id)
    out = await counts(session, principal, seg.purpose, within, now)
    out.pop("_allowed")
    ids = await usable_people(session, seg.purpose, within, now, after, limit)
    people = await views(session, principal, ids, seg.purpose)
    nxt = ids[-1] if len(ids) == limit else None
    return {"segment_id": seg.id, "purpose": seg.purpose, **out, "members": people, "next": nxt}


async def sizes(session: AsyncSession, principal: Principal, segment_id: str, limit: int) -> list[dict[str, Any]]:
    """The segment's size at each refresh, newest first (masked below the threshold)."""
    seg = await get_segment(session, segment_id)
    await _may_use(session, principal, seg.purpose)
    masked = decide(principal, seg.purpose).reveal != "plain"
    q = (
        select(SegmentSize)
        .where(col(SegmentSize.segment_id) == seg.id)
        .order_by(col(SegmentSize.at).desc())
        .limit(limit)
    )
    return [
        {
            "at": s.at.isoformat(),
            "version": s.version,
            "members": shown(s.members, masked),
            "usable": shown(s.usable, masked),
            "entered": shown(s.entered, masked),
            "left": shown(s.left, masked),
        }
        for s in (await session.execute(q)).scalars()
    ]


async def versions(session: AsyncSession, segment_id: str) -> list[dict[str, Any]]:
    q = select(SegmentVersion).where(col(SegmentVersion.segment_id) == segment_id).order_by(col(SegmentVersion.version))
    return [
        {
            "version": v.version,
            "name": v.name,
            "purpose": v.purpose,
            "tree": v.tree,
            "changed_at": v.changed_at.isoformat(),
        }
        for v in (await session.execute(q)).scalars()
    ]


async def latest_size(session: AsyncSession, segment_id: str) -> SegmentSize | None:
    q = (
        select(SegmentSize)
        .where(col(SegmentSize.segment_id) == segment_id)
        .order_by(col(SegmentSize.at).desc())
        .limit(1)
    )
    return (await session.execute(q)).scalars().first()
