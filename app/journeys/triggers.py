"""Turning events and dates into timers, and due timers into sends.

Events reach journeys by a range read of the event table by ``received_at`` (the time its
request was accepted; indexed with the id) with our own cursor, not a hook in ingestion: a batch is stored a little
after it is accepted (the inbox), so each scan reads again the last ``OVERLAP`` before the
cursor, and timers are keyed by occasion (``uq_journey_timer_occasion``) so reading an
event twice changes nothing. While the database inbox has a backlog, the cursor stays at
its oldest queued batch. An event stored more than ``OVERLAP`` after it was accepted
otherwise (a batch set aside and retried much later, a backlog in the JetStream inbox)
starts no timer; an event that occurred more than ``STALE`` before its timer would be due
(imported history) starts none either.

Birthdays are planned from the birth month-day blind index (never decrypting the date) for
the days around today, in the person's zone (a plain ``timezone`` trait) or the journey's.

At fire time, for each journey's due people: already handled or erased → dropped; inside
quiet hours → moved to their end; the kind's condition and the journey's condition are
evaluated in memory (``app/segments/evaluate.py``) on the person's traits and events;
frequency caps; then consent through the decision engine and delivery through the
destination (which decides again). Every outcome is a ``journey_send`` row; the sends go
to the ledger as one group entry per batch.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Table, and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.access.service import Principal
from app.db import table_of
from app.decisions.engine import Ask, reason_expr
from app.decisions.service import current_rules
from app.errors import DomainError, InvalidField
from app.ingest.inbox import status as inbox_status
from app.journeys.delivery import Sender
from app.journeys.models import Journey, JourneyCursor, JourneySend, JourneyTimer
from app.journeys.rules import CART_ADDED, CART_BOUGHT, SIGNED_UP, Cap, Rules, read_rules, zone_or_none
from app.ledger.service import record_group
from app.profiles.service import birthday_clause, population
from app.segments.evaluate import Fact, Facts, matches
from app.segments.grammar import Age, All, BirthdayToday, Consent, Event, InSegment, Node, Not, Step, Window, walk
from app.segments.service import parse_tree
from app.segments.sql import events_table

OVERLAP = timedelta(seconds=120)
STALE = timedelta(days=1)
NEW_PROFILE = timedelta(minutes=1)
PLAN_EVERY = timedelta(minutes=10)
LOOKBACK = timedelta(days=90)
BATCH = 500
EVENT_PAGE = 5000
EVENT_KINDS = ("welcome", "abandoned_cart", "reengagement")


def journey_principal(j: Journey) -> Principal:
    """Whom a journey's sends are made as: its owner's key and role."""
    return Principal(key_id=j.owner_key_id, role=j.owner_role, name=f"journey {j.id}")


async def active_journeys(session: AsyncSession, kinds: Iterable[str]) -> list[Journey]:
    q = select(Journey).where(
        col(Journey.active).is_(True), col(Journey.deleted_at).is_(None), col(Journey.kind).in_(list(kinds))
    )
    return list((await session.execute(q)).scalars())


async def _cursor(session: AsyncSession, name: str) -> JourneyCursor | None:
    return await session.get(JourneyCursor, name)


async def _move(session: AsyncSession, name: str, at: datetime) -> None:
    found = await _cursor(session, name)
    if found is None:
        session.add(JourneyCursor(name=name, at=at))
    else:
        found.at = max(found.at, at)


async def start_cursor(session: AsyncSession, now: datetime) -> None:
    """Events accepted from now on start timers (a first journey does not read all history)."""
    if await _cursor(session, "events") is None:
        session.add(JourneyCursor(name="events", at=now))


# --- timers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Due:
    journey_id: str
    profile_id: str
    origin_id: str
    key: str
    due_at: datetime
    anchor_at: datetime


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


async def put_timers(session: AsyncSession, timers: Iterable[Due], now: datetime, later: bool) -> int:
    """Insert timers; for an occasion already pending, ``later`` moves it to the later due
    time and anchor (a cart added to again, new activity), else the pending one stays."""
    merged: dict[tuple[str, str, str], Due] = {}
    for d in timers:
        k = (d.journey_id, d.origin_id, d.key)
        old = merged.get(k)
        merged[k] = d if old is None or (later and d.due_at > old.due_at) else old
    rows = [{"id": str(uuid.uuid4()), "created_at": now, **d.__dict__} for d in merged.values()]
    if not rows:
        return 0
    t = table_of(JourneyTimer)
    pg = _dialect(session) == "postgresql"
    ins = (pg_insert if pg else sqlite_insert)(t)
    occasion = ["journey_id", "origin_id", "key"]
    if later:
        most = func.greatest if pg else func.max
        latest = {
            "due_at": most(t.c.due_at, ins.excluded.due_at),
            "anchor_at": most(t.c.anchor_at, ins.excluded.anchor_at),
        }
        stmt = ins.on_conflict_do_update(index_elements=occasion, set_=latest)
    else:
        stmt = ins.on_conflict_do_nothing(index_elements=occasion)
    for start in range(0, len(rows), BATCH):
        await session.execute(stmt, rows[start : start + BATCH])  # executemany: compiled once, cached
    return len(rows)


async def _stored_until(session: AsyncSession, now: datetime) -> datetime:
    """Up to when every accepted event is stored: ``now``, or held back to the oldest batch
    still queued in the database inbox (so a backlog is read once it is stored)."""
    waiting = await inbox_status(session, failures=0)
    if not waiting["queued_batches"]:
        return now
    return min(now, datetime.now(UTC) - timedelta(seconds=float(waiting["lag_seconds"])))


def _timers_for(j: Journey, rules: Rules, ev: Any, new: set[str]) -> Due | None:
    """The timer one event starts for one journey, if any (an ``identify`` welcomes only the
    ``new`` profiles it created)."""
    at = ev.occurred_at
    if j.kind == "welcome" and (ev.name == SIGNED_UP or (ev.type == "identify" and ev.profile_id in new)):
        return Due(j.id, ev.profile_id, ev.origin_id, "welcome", at + timedelta(minutes=rules.delay_minutes), at)
    if j.kind == "abandoned_cart" and ev.name == CART_ADDED:
        return Due(j.id, ev.profile_id, ev.origin_id, "cart", at + timedelta(hours=rules.hours), at)
    if j.kind == "reengagement":
        return Due(j.id, ev.profile_id, ev.origin_id, "reengage", at + timedelta(days=rules.days), at)
    return None


async def _created_by(session: AsyncSession, identifies: Sequence[Any]) -> set[str]:
    """Profiles these ``identify`` events created (made within a minute of the event's arrival)."""
    if not identifies:
        return set()
    table, person, _region, _live = population()
    arrived = {r.profile_id: r.received_at for r in identifies}
    q = select(person, table.c.created_at).where(person.in_(sorted(arrived)))
    return {pid for pid, made in (await session.execute(q)).all() if made >= arrived[pid] - NEW_PROFILE}


async def scan_events(session: AsyncSession, now: datetime) -> int:
    """Timers for the events accepted since the last scan (and ``OVERLAP`` before it)."""
    journeys = await active_journeys(session, EVENT_KINDS)
    cursor = await _cursor(session, "events")
    since = (cursor.at if cursor else now) - OVERLAP
    await _move(session, "events", await _stored_until(session, now))
    if not journeys:
        return 0
    rules = {j.id: read_rules(j.definition) for j in journeys}
    ev = events_table()
    q = select(ev.c.id, ev.c.profile_id, ev.c.origin_id, ev.c.type, ev.c.name, ev.c.occurred_at, ev.c.received_at)
    q = q.where(ev.c.received_at > since, ev.c.received_at <= now)
    if not any(j.kind == "reengagement" for j in journeys):
        names = {CART_ADDED} if any(j.kind == "abandoned_cart" for j in journeys) else set()
        welcome = any(j.kind == "welcome" for j in journeys)
        names |= {SIGNED_UP} if welcome else set()
        q = q.where(or_(ev.c.name.in_(sorted(names)), ev.c.type == "identify") if welcome else ev.c.name.in_(names))
    made, after = 0, (since, "")
    while True:
        rows = (await session.execute(event_page(q, after))).all()
        if not rows:
            return made
        first: list[Due] = []
        grow: list[Due] = []
        new = await _created_by(session, [r for r in rows if r.type == "identify"])
        for row in rows:
            for j in journeys:
                due = _timers_for(j, rules[j.id], row, new)
                if due is not None and due.due_at >= now - STALE:
                    (first if j.kind == "welcome" else grow).append(due)
        made += await put_timers(session, first, now, later=False) + await put_timers(session, grow, now, later=True)
        after = (rows[-1].received_at, rows[-1].id)


def event_page(q: Any, after: tuple[datetime, str]) -> Any:
    """The next page of ``q`` (events) after ``after`` (received at, id), in that order: a
    range read of the index on ``(received_at, id)`` (migration 0024), not a scan of every event."""
    ev = events_table()
    page = q.where(or_(ev.c.received_at > after[0], and_(ev.c.received_at == after[0], ev.c.id > after[1])))
    return page.order_by(ev.c.received_at, ev.c.id).limit(EVENT_PAGE)


# --- birthdays ---------------------------------------------------------------------------


def _born_on(person: Any, day: date) -> Any:
    """SQL: the person's birthday falls on ``day`` (29 February counts on the 28th in other years)."""
    clause = birthday_clause(person, day)
    leap = day.month == 2 and day.day == 28 and (day + timedelta(days=1)).month == 3
    return or_(clause, birthday_clause(person, date(2000, 2, 29))) if leap else clause


def person_zone(traits: Mapping[str, Any], rules: Rules) -> ZoneInfo:
    """The person's zone (their ``timezone`` trait when it names one), else the journey's."""
    return zone_or_none(traits.get("timezone")) or ZoneInfo(rules.zone)


async def plan_birthdays(session: AsyncSession, now: datetime, force: bool = False) -> int:
    """Timers for birthdays today or tomorrow in each person's zone, sent at ``send_at``
    local time (at once when that has passed today). Runs every ``PLAN_EVERY``."""
    cursor = await _cursor(session, "birthdays")
    if cursor is not None and not force and now - cursor.at < PLAN_EVERY:
        return 0
    await _move(session, "birthdays", now)
    table, person, _region, live = population()
    sends = table_of(JourneySend)
    made = 0
    for j in await active_journeys(session, ["birthday"]):
        rules, timers = read_rules(j.definition), []
        for offset in (-1, 0, 1, 2):
            day = (now + timedelta(days=offset)).date()
            key = f"birthday:{day.isoformat()}"
            mine = (sends.c.journey_id == j.id, sends.c.profile_id == person, sends.c.key == key)
            done = select(sends.c.id).where(*mine)
            q = select(person, table.c.traits).where(live, _born_on(person, day), ~done.exists())
            for pid, traits in (await session.execute(q)).all():
                zone = person_zone(traits or {}, rules)
                local_today = now.astimezone(zone).date()
                if local_today not in (day - timedelta(days=1), day):
                    continue
                due = max(datetime.combine(day, rules.send_at, zone).astimezone(UTC), now)
                start = datetime.combine(day, time(0), zone).astimezone(UTC)
                timers.append(Due(j.id, pid, pid, key, due, start))
        made += await put_timers(session, timers, now, later=False)
    return made


# --- firing ------------------------------------------------------------------------------


def in_quiet(local: time, quiet: tuple[time, time]) -> bool:
    start, end = quiet
    return start <= local < end if start < end else local >= start or local < end


def quiet_end(at: datetime, zone: ZoneInfo, quiet: tuple[time, time]) -> datetime:
    """When the quiet hours ``at`` falls in end (in ``zone``)."""
    local = at.astimezone(zone)
    end = datetime.combine(local.date(), quiet[1], zone)
    if end <= local:
        end = datetime.combine(local.date() + timedelta(days=1), quiet[1], zone)
    return end.astimezone(UTC)


@dataclass
class Recipient:
    timer: Any
    root: str
    traits: Mapping[str, Any]


async def _people(session: AsyncSession, timers: Sequence[Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Timer profile id → (surviving profile id, plain traits); erased people are absent."""
    table, person, _region, _live = population()
    ids = sorted({t.profile_id for t in timers})
    rows = (await session.execute(select(person, table.c.merged_into).where(person.in_(ids)))).all()
    roots = {pid: merged or pid for pid, merged in rows}
    found = (await session.execute(select(person, table.c.traits).where(person.in_(set(roots.values()))))).all()
    traits = {pid: dict(t or {}) for pid, t in found}
    return {pid: (root, traits[root]) for pid, root in roots.items() if root in traits}


async def _facts(
    session: AsyncSession, roots: Sequence[str], since: datetime, names: Sequence[str] | None
) -> dict[str, list[Fact]]:
    """The people's events since ``since`` (only ``names`` when given), as evaluator facts."""
    ev = events_table()
    q = select(ev.c.profile_id, ev.c.name, ev.c.occurred_at, ev.c.properties)
    q = q.where(ev.c.profile_id.in_(list(roots)), ev.c.occurred_at >= since, ev.c.name.is_not(None))
    if names is not None:
        q = q.where(ev.c.name.in_(list(names)))
    out: dict[str, list[Fact]] = defaultdict(list)
    for pid, name, at, props in (await session.execute(q)).all():
        out[pid].append(Fact(name, at, props or {}))
    return out


def kind_node(kind: str, anchor: datetime, now: datetime) -> Node | None:
    """The kind's own condition at send time: a cart is abandoned while no order followed it."""
    if kind == "abandoned_cart":
        return Not(Event(Step(CART_BOUGHT), window=Window(start=anchor, end=now + timedelta(seconds=1))))
    return None


async def _sent_counts(
    session: AsyncSession, roots: Sequence[str], cap: Cap, now: datetime, journey: str | None
) -> dict[str, int]:
    s = table_of(JourneySend)
    q = select(s.c.profile_id, func.count()).where(
        s.c.profile_id.in_(list(roots)), s.c.outcome == "sent", s.c.at > now - timedelta(hours=cap.hours)
    )
    if journey is not None:
        q = q.where(s.c.journey_id == journey)
    return {pid: int(n) for pid, n in (await session.execute(q.group_by(s.c.profile_id))).all()}


async def _handled(session: AsyncSession, j: Journey, roots: Sequence[str]) -> set[tuple[str, str]]:
    s = table_of(JourneySend)
    q = select(s.c.profile_id, s.c.key).where(s.c.journey_id == j.id, s.c.profile_id.in_(list(roots)))
    return {(p, k) for p, k in (await session.execute(q)).all()}


@dataclass
class Firing:
    """One journey's due people, as they pass the checks."""

    journey: Journey
    rules: Rules
    now: datetime
    outcomes: dict[str, tuple[Recipient, str, str | None]]
    """Root → (person, outcome, reason) for everyone decided."""
    waiting: list[Recipient]
    """People still to be sent to."""

    def settle(self, p: Recipient, outcome: str, reason: str | None = None) -> None:
        self.outcomes[p.root] = (p, outcome, reason)
        self.waiting = [w for w in self.waiting if w.root != p.root]


async def fire_journey(
    session: AsyncSession, j: Journey, timers: Sequence[Any], now: datetime, sender: Sender
) -> dict[str, int]:
    """Decide and send one journey's due timers; the timers are consumed (or moved past
    quiet hours). Returns counts by outcome."""
    t = table_of(JourneyTimer)
    ids = [x.id for x in timers]
    if not j.active or j.deleted_at is not None:
        await session.execute(delete(t).where(t.c.id.in_(ids)))
        return {"dropped": len(ids)}
    people = await _people(session, timers)
    handled = await _handled(session, j, sorted({r for r, _ in people.values()}))
    f = Firing(j, read_rules(j.definition), now, {}, [])
    seen: set[str] = set()
    for x in timers:
        if x.profile_id not in people:
            continue  # erased: nobody to send to
        root, traits = people[x.profile_id]
        if root in seen or (root, _occasion(x)) in handled:
            continue
        seen.add(root)
        f.waiting.append(Recipient(x, root, traits))
    moved = await _quiet(session, f)
    await _conditions(session, f)
    await _caps(session, f)
    await _consent(session, f)
    await _deliver(session, f, sender)
    await session.execute(delete(t).where(t.c.id.in_(ids), t.c.id.not_in([p.timer.id for p in moved])))
    await _write(session, f)
    counts: dict[str, int] = defaultdict(int)
    for _p, outcome, _r in f.outcomes.values():
        counts[outcome] += 1
    counts["delayed"] = len(moved)
    return dict(counts)


def _occasion(x: Any) -> str:
    """The key a send is recorded under: the timer's, with the anchor for recurring occasions."""
    return x.key if x.key == "welcome" or x.key.startswith("birthday:") else f"{x.key}:{x.anchor_at.isoformat()}"


async def _quiet(session: AsyncSession, f: Firing) -> list[Recipient]:
    """People whose local time is inside quiet hours: their timer moves to the end."""
    if f.rules.quiet is None:
        return []
    moved = []
    t = table_of(JourneyTimer)
    for p in list(f.waiting):
        zone = person_zone(p.traits, f.rules)
        if in_quiet(f.now.astimezone(zone).time(), f.rules.quiet):
            end = quiet_end(f.now, zone, f.rules.quiet)
            await session.execute(update(t).where(t.c.id == p.timer.id).values(due_at=end))
            f.waiting.remove(p)
            moved.append(p)
    return moved


async def _conditions(session: AsyncSession, f: Firing) -> None:
    extra = await _condition_node(session, f.rules)
    kinds = {p.root: kind_node(f.journey.kind, p.timer.anchor_at, f.now) for p in f.waiting}
    if extra is None and not any(kinds.values()):
        return
    since = min(p.timer.anchor_at for p in f.waiting) if f.waiting else f.now
    names = None if extra is not None else [CART_BOUGHT]
    start = since if extra is None else min(since, f.now - LOOKBACK)
    events = await _facts(session, [p.root for p in f.waiting], start, names)
    for p in list(f.waiting):
        node = All(tuple(n for n in (kinds[p.root], extra) if n is not None))
        if not matches(node, Facts(traits=p.traits, events=events.get(p.root, [])), f.now):
            f.settle(p, "condition")


UNSUPPORTED = (Consent, InSegment, Age, BirthdayToday)
"""Conditions a journey cannot use: consent is decided by the engine at send time; segment
membership and age are not among the facts read per person."""


async def parse_condition(session: AsyncSession, tree: Any, path: str = "definition.condition") -> Node:
    """A journey condition checked like a segment tree (allow-listed fields), traits and
    events only."""
    node = (await parse_tree(session, tree, path)).node
    if any(isinstance(n, UNSUPPORTED) for n in walk(node)):
        raise InvalidField("journey conditions use traits and events only", field=path)
    return node


async def _condition_node(session: AsyncSession, rules: Rules) -> Node | None:
    return None if rules.condition is None else await parse_condition(session, rules.condition)


async def _caps(session: AsyncSession, f: Firing) -> None:
    roots = [p.root for p in f.waiting]
    for cap, journey in ((f.rules.person_cap, None), (f.rules.journey_cap, f.journey.id)):
        if cap is None or not roots:
            continue
        counts = await _sent_counts(session, roots, cap, f.now, journey)
        for p in list(f.waiting):
            if counts.get(p.root, 0) >= cap.count:
                f.settle(p, "capped", "person" if journey is None else "journey")


async def _consent(session: AsyncSession, f: Firing) -> None:
    """Consent now, by the decision engine's reason for each person (one statement); the
    refusals go to the ledger as one group entry with counts by reason."""
    if not f.waiting:
        return
    _table, person, region, _live = population()
    rules, ask = current_rules(), Ask(f.journey.purpose)
    reason = reason_expr(rules, ask, person, region, f.now)
    q = select(person, reason).where(person.in_([p.root for p in f.waiting]))
    reasons = {pid: str(r) for pid, r in (await session.execute(q)).all()}
    refused: dict[str, int] = defaultdict(int)
    for p in list(f.waiting):
        why = reasons.get(p.root, "unknown person")
        if why != "allowed":
            f.settle(p, "refused", why)
            refused[why] += 1
    if refused:
        await record_group(
            session,
            journey_principal(f.journey),
            "journey.refused",
            sorted(r for r, (_p, o, _w) in f.outcomes.items() if o == "refused"),
            purpose=f.journey.purpose,
            details={"journey_id": f.journey.id, "reasons": dict(refused), "policy_version": rules.version},
        )


async def _deliver(session: AsyncSession, f: Firing, sender: Sender) -> None:
    if not f.waiting:
        return
    roots = sorted(p.root for p in f.waiting)
    key = hashlib.sha256(",".join(sorted(p.timer.id for p in f.waiting)).encode()).hexdigest()[:32]
    try:
        async with session.begin_nested():
            result = await sender(
                session,
                journey_principal(f.journey),
                f.journey.destination_id,
                roots,
                f.journey.purpose,
                reason=f"journey:{f.journey.id}",
                idempotency_key=f"journey:{key}",
            )
    except DomainError as exc:  # the destination is gone or refuses the purpose: recorded, not retried
        why = f"{type(exc).__name__}: {exc.field or ''}"[:128]
        for p in list(f.waiting):
            f.settle(p, "failed", why)
        return
    for p in list(f.waiting):
        if p.root in result.sent:
            f.settle(p, "sent")
        elif p.root in result.refused:
            f.settle(p, "refused", result.refused[p.root][:128])
        else:
            f.settle(p, "failed")


async def _write(session: AsyncSession, f: Firing) -> None:
    """A send row per outcome, and one ledger entry for the people sent to."""
    j = f.journey
    rows = [
        {
            "id": str(uuid.uuid4()),
            "journey_id": j.id,
            "profile_id": root,
            "origin_id": p.timer.origin_id,
            "key": _occasion(p.timer),
            "due_at": p.timer.due_at,
            "at": f.now,
            "destination_id": j.destination_id,
            "outcome": outcome,
            "reason": reason,
        }
        for root, (p, outcome, reason) in sorted(f.outcomes.items())
    ]
    if rows:
        await session.execute(insert(table_of(JourneySend)), rows)
    sent = [r["profile_id"] for r in rows if r["outcome"] == "sent"]
    if sent:
        by: dict[str, int] = defaultdict(int)
        for r in rows:
            by[r["outcome"]] += 1
        await record_group(
            session,
            journey_principal(j),
            "journey.send",
            sent,
            purpose=j.purpose,
            details={"journey_id": j.id, "destination_id": j.destination_id, "outcomes": dict(by)},
        )


async def fire_due(session: AsyncSession, now: datetime, sender: Sender, limit: int = BATCH) -> dict[str, int]:
    """Fire up to ``limit`` due timers (rows locked with SKIP LOCKED on PostgreSQL, so two
    processes never take the same timer). Returns counts by outcome, ``due`` the timers taken."""
    t = table_of(JourneyTimer)
    q = select(t).where(t.c.due_at <= now).order_by(t.c.due_at).limit(limit)
    if _dialect(session) == "postgresql":
        q = q.with_for_update(skip_locked=True)
    timers = (await session.execute(q)).all()
    by_journey: dict[str, list[Any]] = defaultdict(list)
    for x in timers:
        by_journey[x.journey_id].append(x)
    out: dict[str, int] = defaultdict(int)
    out["due"] = len(timers)
    for jid, xs in sorted(by_journey.items()):
        j = await session.get(Journey, jid)
        if j is None:
            await session.execute(delete(t).where(t.c.id.in_([x.id for x in xs])))
            continue
        for k, n in (await fire_journey(session, j, xs, now, sender)).items():
            out[k] += n
    return dict(out)


def timers_table() -> Table:
    return table_of(JourneyTimer)
