"""Recording consent: append to the history, and move the current state only when the new
choice is the newest one — except that a withdrawal or a denial always applies.

Order is the time the person chose (the event's skew-corrected time), then the server's
receipt time. A grant older than the current state never overrides it (a delayed or
replayed grant stays in history and changes nothing); when in doubt the more restrictive
state wins.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, delete, exists, func, insert, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.consent.models import FLAGS, METHODS, STATES, ConsentRecord, ConsentState, PrivacyFlag
from app.db import table_of
from app.errors import InvalidField

When = datetime | ColumnElement[Any]
"""A time for the SQL clauses: a value, or a bound parameter or column standing for one."""


@dataclass(frozen=True)
class Choice:
    """A consent choice to record for a person (``profile_id`` is the surviving profile)."""

    profile_id: str
    purpose: str
    state: str
    method: str
    source: str
    decided_at: datetime
    legal_basis: str | None = None
    jurisdiction: str | None = None
    notice_version: str | None = None
    expires_at: datetime | None = None
    client_id: str | None = None

    def check(self, purposes: Iterable[str], field: str = "") -> None:
        if self.state not in STATES:
            raise InvalidField(f"must be one of {', '.join(STATES)}", field=f"{field}state")
        if self.method not in METHODS:
            raise InvalidField(f"must be one of {', '.join(METHODS)}", field=f"{field}method")
        if self.purpose not in set(purposes) and not self.purpose.startswith(("sensitive:", "cross_border:")):
            raise InvalidField("is not a purpose in policies/purposes.yaml", field=f"{field}purpose")


def restrictive(state: str) -> bool:
    return state in ("denied", "withdrawn")


async def record_choices(session: AsyncSession, choices: list[Choice]) -> list[ConsentRecord]:
    """Append the choices (idempotent by ``(source, client_id)``) and update current states
    in the same transaction. Returns the records stored now (replays are skipped).

    A fixed number of statements whatever the number of choices: one read of the current
    states, one of the client ids already stored, one insert of the records, and the new
    states (the last one applied per person and purpose) in one upsert."""
    if not choices:
        return []
    now = datetime.now(UTC)
    table = table_of(ConsentRecord)
    states = await _current(session, {(c.profile_id, c.purpose) for c in choices})
    seen = await _stored_client_ids(session, choices)
    rows: list[dict[str, Any]] = []
    for c in choices:
        if c.client_id is not None:
            if (c.source, c.client_id) in seen:
                continue  # the same client id from the same source: stored once
            seen.add((c.source, c.client_id))
        rows.append(_record_row(c, now))
    new_states = _apply(rows, states)
    inserted = await _insert_records(session, table, rows)
    if len(inserted) < len(rows):  # a concurrent request stored some of the same client ids first
        rows = [r for r in rows if r["id"] in inserted]
        was = {r["id"]: r["applied"] for r in rows}
        new_states = _apply(rows, states)
        changed = [{"rid": r["id"], "now_applied": r["applied"]} for r in rows if r["applied"] != was[r["id"]]]
        if changed:
            stmt = update(table).where(table.c.id == bindparam("rid")).values(applied=bindparam("now_applied"))
            await session.execute(stmt, changed)
    await _put_states(session, list(new_states.values()), states)
    return [ConsentRecord.model_construct(**row) for row in rows]  # the rows are built here: no validation


def _apply(
    rows: list[dict[str, Any]], states: Mapping[tuple[str, str], Mapping[str, Any]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """Set each record row's ``applied`` in order; the last state applied per (person, purpose)."""
    new_states: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["profile_id"], row["purpose"])
        row["applied"] = _wins(row, new_states.get(key) or states.get(key))
        if row["applied"]:
            new_states[key] = _state_row(row)
    return new_states


def _wins(row: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Does the new choice (a record row) become the current state over ``old`` (a state row)?"""
    if old is None or restrictive(row["state"]):
        return True
    return (row["decided_at"], row["received_at"]) > (old["decided_at"], old["received_at"])


def _record_row(c: Choice, now: datetime) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "profile_id": c.profile_id,
        "origin_id": c.profile_id,
        "purpose": c.purpose,
        "state": c.state,
        "legal_basis": c.legal_basis,
        "jurisdiction": c.jurisdiction,
        "method": c.method,
        "source": c.source,
        "notice_version": c.notice_version,
        "decided_at": c.decided_at,
        "received_at": now,
        "expires_at": c.expires_at,
        "client_id": c.client_id,
        "applied": True,
    }


def _state_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "origin_id": row["profile_id"],
        "purpose": row["purpose"],
        "profile_id": row["profile_id"],
        "state": row["state"],
        "method": row["method"],
        "decided_at": row["decided_at"],
        "received_at": row["received_at"],
        "expires_at": row["expires_at"],
        "record_id": row["id"],
    }


async def _stored_client_ids(session: AsyncSession, choices: list[Choice]) -> set[tuple[str, str]]:
    """(source, client id) pairs of these choices that are already stored."""
    wanted = {(c.source, c.client_id) for c in choices if c.client_id is not None}
    if not wanted:
        return set()
    t = table_of(ConsentRecord)
    found: set[tuple[str, str]] = set()
    for source in {src for src, _ in wanted}:  # (source, client_id) is the unique index: seek, never scan
        ids = {cid for src, cid in wanted if src == source}
        q = select(t.c.source, t.c.client_id).where(t.c.source == source, t.c.client_id.in_(ids))
        found |= {(r.source, r.client_id) for r in (await session.execute(q)).all()}
    return found


async def _insert_records(session: AsyncSession, table: Any, rows: list[dict[str, Any]]) -> set[str]:
    """Insert the records, skipping any whose (source, client id) is stored meanwhile; the ids stored."""
    if not rows:
        return set()
    stmt = _upsert_ignore(session, table).on_conflict_do_nothing()
    result = await session.execute(stmt, rows)
    ids = [r["id"] for r in rows]
    if getattr(result, "rowcount", -1) == len(rows):
        return set(ids)  # the usual case, without the cost of RETURNING on every row
    return set((await session.execute(select(table.c.id).where(table.c.id.in_(ids)))).scalars())


def _upsert_ignore(session: AsyncSession, table: Any) -> Any:
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


async def _current(session: AsyncSession, keys: set[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The newest state per (person, purpose) over every origin merged into the person;
    ``"merged"`` in a value is true when another origin of the person holds a row too."""
    if not keys:
        return {}
    t = table_of(ConsentState)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    origins: dict[tuple[str, str], set[str]] = {}
    for r in (await session.execute(select(t).where(t.c.profile_id.in_({p for p, _ in keys})))).all():
        k, row = (r.profile_id, r.purpose), dict(r._mapping)
        origins.setdefault(k, set()).add(r.origin_id)
        if k not in out or (row["decided_at"], row["received_at"]) > (out[k]["decided_at"], out[k]["received_at"]):
            out[k] = row
    for k, row in out.items():
        row["merged"] = bool(origins[k] - {k[0]})
    return out


async def _put_states(
    session: AsyncSession, new: list[dict[str, Any]], before: Mapping[tuple[str, str], Mapping[str, Any]]
) -> None:
    """The person's own row takes the new state, and so do the rows of profiles merged into
    them: a choice the person makes now applies to the whole person. Only the last state
    applied per (person, purpose) is written (each one overwrote the same rows)."""
    if not new:
        return
    t = table_of(ConsentState)
    fields = ("state", "method", "decided_at", "received_at", "expires_at", "record_id")
    merged = [s for s in new if (before.get((s["profile_id"], s["purpose"])) or {}).get("merged")]
    if merged:
        v: dict[str, Any] = {f: bindparam(f"v_{f}") for f in fields}
        await session.execute(
            update(t)
            .where(t.c.profile_id == bindparam("pid"), t.c.purpose == bindparam("pp"))
            .where(_overrides(t, v["state"], v["decided_at"], v["received_at"]))
            .values(v),
            [{"pid": s["profile_id"], "pp": s["purpose"], **{f"v_{f}": s[f] for f in fields}} for s in merged],
        )
    stmt = _upsert_ignore(session, t)
    ex = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=[t.c.origin_id, t.c.purpose],
        set_={"profile_id": ex.profile_id, **{f: ex[f] for f in fields}},
        where=_overrides(t, ex.state, ex.decided_at, ex.received_at),
    )
    await session.execute(stmt, sorted(new, key=lambda s: (s["origin_id"], s["purpose"])))


def _overrides(t: Any, state: Any, decided_at: Any, received_at: Any) -> ColumnElement[bool]:
    """SQL: a new state replaces the stored one (``_wins`` again, inside the database, so a
    concurrent writer that read the same old state cannot put back a grant the other one's
    withdrawal replaced): a denial or withdrawal always does, a grant only if newer."""
    newer = or_(decided_at > t.c.decided_at, and_(decided_at == t.c.decided_at, received_at > t.c.received_at))
    return or_(state.in_(constants(["denied", "withdrawn"])), newer)


async def set_flags(
    session: AsyncSession,
    profile_id: str,
    flags: Mapping[str, bool],
    source: str,
    until: Mapping[str, datetime | None] | None = None,
) -> None:
    """Set or clear privacy flags on a person (restricted, suppressed, profiling refused, minor…);
    ``until`` gives a flag the time it lapses by itself."""
    t = table_of(PrivacyFlag)
    for flag, on in flags.items():
        if flag not in FLAGS:
            raise InvalidField(f"must be one of {', '.join(FLAGS)}", field=f"flags.{flag}")
        await session.execute(delete(t).where(t.c.profile_id == profile_id, t.c.flag == flag))
        if on:
            row = {"origin_id": profile_id, "flag": flag, "profile_id": profile_id, "source": source}
            lapse = (until or {}).get(flag)
            await session.execute(insert(t).values({**row, "set_at": datetime.now(UTC), "until": lapse}))


MINOR_AGES = {"minor_under_14": 14, "minor_under_16": 16}


def birthday_at(born: date, years: int) -> datetime:
    """The start (UTC) of the day the person turns ``years`` (29 February → 1 March)."""
    try:
        day = born.replace(year=born.year + years)
    except ValueError:
        day = date(born.year + years, 3, 1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def set_minor_flags(session: AsyncSession, profile_id: str, born: date | None, source: str) -> None:
    """The minor flags a birthday implies (under 14, under 16), each lapsing on the birthday
    that ends it, so decisions know without decrypting, and a child grows up on time."""
    now = datetime.now(UTC)
    until = {flag: birthday_at(born, age) if born else None for flag, age in MINOR_AGES.items()}
    flags = {flag: lapse is not None and lapse > now for flag, lapse in until.items()}
    await set_flags(session, profile_id, flags, source, until)


async def consent_view(session: AsyncSession, profile_id: str) -> dict[str, Any]:
    """The person's current state per purpose (most restrictive over merged origins, with a
    ``conflict`` mark where origins disagree), flags, and the full history."""
    s, r, f = table_of(ConsentState), table_of(ConsentRecord), table_of(PrivacyFlag)
    rows = (await session.execute(select(s).where(s.c.profile_id == profile_id))).all()
    current: dict[str, dict[str, Any]] = {}
    for row in rows:
        seen = current.get(row.purpose)
        entry = {"state": row.state, "method": row.method, "decided_at": row.decided_at.isoformat()}
        if seen is None:
            current[row.purpose] = {**entry, "conflict": False}
        else:
            seen["conflict"] = seen["conflict"] or seen["state"] != row.state
            if restrictive(row.state) and not restrictive(seen["state"]):
                current[row.purpose] = {**entry, "conflict": True}
    history = (
        await session.execute(select(r).where(r.c.profile_id == profile_id).order_by(r.c.decided_at, r.c.received_at))
    ).all()
    standing = or_(f.c.until.is_(None), f.c.until > datetime.now(UTC))
    flags = sorted(
        {r.flag for r in (await session.execute(select(f).where(f.c.profile_id == profile_id, standing))).all()}
    )
    return {
        "current": current,
        "flags": flags,
        "history": [
            {
                "id": h.id,
                "purpose": h.purpose,
                "state": h.state,
                "method": h.method,
                "source": h.source,
                "legal_basis": h.legal_basis,
                "jurisdiction": h.jurisdiction,
                "notice_version": h.notice_version,
                "decided_at": h.decided_at.isoformat(),
                "received_at": h.received_at.isoformat(),
                "applied": h.applied,
            }
            for h in history
        ],
    }


def constants(values: Iterable[str]) -> list[Any]:
    """Policy constants for an IN list, each its own bound value: unlike a list of plain
    values (an "expanding" parameter) the statement is not re-rendered at every execution,
    which cost a 10 kB decision statement 1.5 ms a time."""
    return [literal(v) for v in values]


def state_rows(t: Any, purpose: str, states: Iterable[str], now: When) -> ColumnElement[bool]:
    """SQL over ``consent_state`` rows: a state in ``states`` for ``purpose`` that stands at
    ``now`` (grants must not have expired)."""
    cond = [t.c.purpose == purpose, t.c.state.in_(constants(states))]
    if "granted" in states:
        cond.append(or_(t.c.expires_at.is_(None), t.c.expires_at > now))
    return and_(*cond)


def state_clause(person: Any, purpose: str, states: Iterable[str], now: When, after: Any = None) -> ColumnElement[bool]:
    """SQL: the person (a column holding the surviving profile id) has a current state in
    ``states`` for ``purpose`` on any origin (grants must not have expired); with ``after``,
    only states the person chose after that time (a column or value)."""
    t = table_of(ConsentState)
    cond = [t.c.profile_id == person, state_rows(t, purpose, states, now)]
    if after is not None:
        cond.append(t.c.decided_at > after)
    return exists().where(and_(*cond)).correlate_except(t)


def per_person(
    kind: str,
    columns: Mapping[str, Callable[[Any], ColumnElement[Any]]],
    name: str,
    among: Any = None,
    person: Any = None,
) -> Any:
    """A subquery of one row per person (``profile_id``) over ``consent_state`` (kind
    ``"state"``) or ``privacy_flag`` (``"flag"``): each named column is ``max`` of the given
    expression over the person's rows — the facts a population decision joins instead of
    probing every person with EXISTS. ``among`` (a query of profile ids) limits it to those people.
    With ``person`` (a column of the outer query) it is instead a LATERAL subquery of that one
    person's row (no ``profile_id``; join it on true): read through the index per person."""
    t = table_of(ConsentState if kind == "state" else PrivacyFlag)
    cols = [func.max(build(t)).label(name) for name, build in columns.items()]
    if person is not None:
        return select(*cols).where(t.c.profile_id == person).lateral(name)
    q = select(t.c.profile_id, *cols)
    if among is not None:
        q = q.where(t.c.profile_id.in_(among))
    return q.group_by(t.c.profile_id).subquery(name)


def flag_rows(t: Any, flag: str, now: When) -> ColumnElement[bool]:
    """SQL over ``privacy_flag`` rows: this flag, not lapsed at ``now``."""
    return and_(t.c.flag == flag, or_(t.c.until.is_(None), t.c.until > now))


def flag_clause(person: Any, flag: str, now: When) -> ColumnElement[bool]:
    """SQL: the person (a column holding the surviving profile id) carries this privacy flag,
    and it has not lapsed (a minor flag ends on the birthday that ends it)."""
    t = table_of(PrivacyFlag)
    return exists().where(t.c.profile_id == person, flag_rows(t, flag, now)).correlate_except(t)


def flags_clause(person: Any, flags: Iterable[str]) -> ColumnElement[bool]:
    """SQL: the person carries any of these privacy flags (lapsed or not: a cheap first probe)."""
    t = table_of(PrivacyFlag)
    return exists().where(t.c.profile_id == person, t.c.flag.in_(constants(sorted(flags)))).correlate_except(t)


def guardian_rows(t: Any, purpose: str, now: When) -> ColumnElement[bool]:
    """SQL over ``consent_state`` rows: a guardian's grant of ``purpose`` that still stands."""
    return and_(state_rows(t, purpose, ["granted"], now), t.c.method == "guardian")


def guardian_clause(person: Any, purpose: str, now: When) -> ColumnElement[bool]:
    """SQL: a guardian granted this purpose for the person (a minor) and it still stands."""
    t = table_of(ConsentState)
    return exists().where(t.c.profile_id == person, guardian_rows(t, purpose, now)).correlate_except(t)


async def consent_receipt(
    session: AsyncSession, record_id: str, rules: Any, controller: str, descriptions: Mapping[str, str]
) -> dict[str, Any] | None:
    """A consent receipt for one recorded choice, with the fields of the Kantara Initiative
    Consent Receipt Specification v1.1 (the person appears only by pseudonymous id)."""
    r = (
        await session.execute(select(table_of(ConsentRecord)).where(table_of(ConsentRecord).c.id == record_id))
    ).first()
    if r is None:
        return None
    notice = r.notice_version or rules.current_notice
    base = r.purpose.split(":", 1)[-1] if r.purpose.startswith(("sensitive:", "cross_border:")) else r.purpose
    sensitive = r.purpose.startswith("sensitive:")
    use = rules.purposes.get(base)
    return {
        "version": "KI-CR-v1.1.0",
        "jurisdiction": r.jurisdiction or "",
        "consentTimestamp": int(r.decided_at.timestamp()),
        "collectionMethod": r.method,
        "consentReceiptID": r.id,
        "language": "en",
        "piiPrincipalId": r.profile_id,
        "piiControllers": [{"piiController": controller, "onBehalf": False}],
        "policyUrl": rules.notice_urls.get(notice or "", ""),
        "services": [
            {
                "service": base,
                "purposes": [
                    {
                        "purpose": descriptions.get(base, base),
                        "purposeCategory": [r.purpose],
                        "consentType": "EXPLICIT" if r.method != "gpc" else "IMPLICIT",
                        "piiCategory": list(use.categories) if use else [],
                        "primaryPurpose": True,
                        "termination": r.expires_at.isoformat() if r.expires_at else "until withdrawn",
                        "thirdPartyDisclosure": r.purpose.startswith("cross_border:"),
                    }
                ],
            }
        ],
        "sensitive": sensitive,
        "spiCat": [r.purpose.split(":", 1)[1]] if sensitive else [],
        "state": r.state,
        "applied": r.applied,
        "notice": notice,
    }
