"""The auditor's view of the ledger: filtered pages of entries, counts that link to them, and
the stream the in-browser verifier (``static/verify.js``) recomputes the ledger from.

Reads only (``audit.store`` is the ledger's one writer). Filters name columns, plus the
``reason`` and ``policy_version`` a decision entry carries in its details: those are found
with a LIKE on the stored canonical JSON and then checked on the parsed details, so a
filter never matches a nested key or a lookalike string.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import operator
from collections import Counter
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.db import create_sync_engine, session_maker
from app.errors import InvalidField
from app.ledger.service import record
from app.settings import get_settings
from app.vault.keyring import key_material
from audit import store
from audit.chain import HASHED_FIELDS, canonical_json
from audit.checkpoint import TreeHead, key_id, public_key_bytes
from audit.witness import WitnessError, read_witness

E = store.audit_entry
PAGE = 10000
"""Entries (or subject lists) a line while streaming the ledger to the verifier."""
DETAIL_FILTERS = ("reason", "policy_version")
STREAM_COLUMNS = (*HASHED_FIELDS, "entry_hash")
"""An entry's columns in the verifier's stream, in ``verify.js``'s ``COLUMNS`` order."""


@dataclass(frozen=True)
class LedgerFilter:
    """What the auditor narrows the ledger to; every field optional. Times are ISO 8601 in UTC."""

    since: str | None = None
    until: str | None = None
    actor: str | None = None
    actor_role: str | None = None
    action: str | None = None
    subject: str | None = None
    request_id: str | None = None
    purpose: str | None = None
    reason: str | None = None
    policy_version: str | None = None

    def query(self, exclude_subject: bool = False) -> dict[str, str]:
        """The filters as query parameters (the subject, a person's id, is never put in a URL)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}
        if exclude_subject:
            out.pop("subject", None)
        return out


FILTER_NAMES = tuple(f.name for f in fields(LedgerFilter))


def ledger_time(value: str | None, name: str) -> str | None:
    """An ISO time (a ``datetime-local`` input's value counts as UTC) in the ledger's format."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidField("must be an ISO 8601 time such as 2026-11-26T10:00", field=name) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_filter(values: dict[str, Any]) -> LedgerFilter:
    """A filter from form or query values; blank fields are ignored, over-long ones refused."""
    clean: dict[str, str | None] = {}
    for name in FILTER_NAMES:
        raw = values.get(name)
        text = raw.strip() if isinstance(raw, str) else None
        if text and len(text) > 200:
            raise InvalidField("is longer than 200 characters", field=name)
        clean[name] = text or None
    clean["since"] = ledger_time(clean["since"], "since")
    clean["until"] = ledger_time(clean["until"], "until")
    return LedgerFilter(**clean)


def _where(q: Any, flt: LedgerFilter) -> Any:
    for col, value in (
        (E.c.actor_id, flt.actor),
        (E.c.actor_role, flt.actor_role),
        (E.c.action, flt.action),
        (E.c.request_id, flt.request_id),
        (E.c.purpose, flt.purpose),
    ):
        if value is not None:
            q = q.where(col == value)
    if flt.subject is not None:
        q = q.where(store.about_subjects([flt.subject]))
    if flt.since is not None:
        q = q.where(E.c.recorded_at >= flt.since)
    if flt.until is not None:
        q = q.where(E.c.recorded_at < flt.until)
    for name in DETAIL_FILTERS:
        value = getattr(flt, name)
        if value is not None:
            q = q.where(E.c.details.contains(f"{json.dumps(name)}:{canonical_json(value)}", autoescape=True))
    return q


def _details(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _detail_match(details: dict[str, Any], flt: LedgerFilter) -> bool:
    return all(getattr(flt, n) is None or details.get(n) == getattr(flt, n) for n in DETAIL_FILTERS)


@dataclass
class Row:
    """One entry as the ledger page shows it."""

    seq: int
    recorded_at: str
    actor_id: str
    actor_role: str
    action: str
    subject_id: str | None
    purpose: str | None
    legal_basis: str | None
    request_id: str | None
    reason: str | None
    policy_version: str | None
    details: str
    """The other details, as compact JSON."""
    entry_hash: str


def _row(r: Any) -> tuple[Row, dict[str, Any]]:
    m = r._mapping
    details = _details(m["details"])
    rest = {k: v for k, v in details.items() if k not in DETAIL_FILTERS}
    reason, version = details.get("reason"), details.get("policy_version")
    row = Row(
        int(m["seq"]),
        m["recorded_at"],
        m["actor_id"],
        m["actor_role"],
        m["action"],
        m["subject_id"],
        m["purpose"],
        m["legal_basis"],
        m["request_id"],
        reason if isinstance(reason, str) else None,
        version if isinstance(version, str) else None,
        canonical_json(rest) if rest else "",
        m["entry_hash"],
    )
    return row, details


async def entries(
    session: AsyncSession, flt: LedgerFilter, *, before: int | None = None, limit: int = 50
) -> tuple[list[Row], int | None]:
    """The newest entries matching ``flt`` (older than ``before``), and the ``before`` of the next page."""
    out: list[Row] = []
    cursor = before
    while len(out) < limit:
        q = _where(select(E), flt)
        if cursor is not None:
            q = q.where(E.c.seq < cursor)
        rows = (await session.execute(q.order_by(E.c.seq.desc()).limit(limit))).all()
        for r in rows:
            row, details = _row(r)
            if _detail_match(details, flt) and len(out) < limit:
                out.append(row)
        if len(rows) < limit:
            return out, None
        cursor = int(rows[-1]._mapping["seq"])
    return out, out[-1].seq if out else None


async def count(session: AsyncSession, flt: LedgerFilter) -> int:
    """How many entries match ``flt``."""
    if all(getattr(flt, n) is None for n in DETAIL_FILTERS):
        return int((await session.execute(_where(select(func.count()).select_from(E), flt))).scalar() or 0)
    rows = (await session.execute(_where(select(E.c.details), flt))).scalars()
    return sum(1 for text in rows if _detail_match(_details(text), flt))


@dataclass
class Figure:
    """One number on the activity report and the filter that lists the entries behind it."""

    label: str
    count: int
    filter: LedgerFilter


async def activity(session: AsyncSession, since: str | None, until: str | None) -> dict[str, list[Figure]]:
    """What happened in the ledger between two times: entries by action, by role, by purpose,
    and denied decisions by purpose, reason and policy version. Each figure's filter lists
    exactly the entries it counts."""
    window = LedgerFilter(since=since, until=until)
    out: dict[str, list[Figure]] = {}
    for name, col, key in (
        ("action", E.c.action, "action"),
        ("actor_role", E.c.actor_role, "actor_role"),
        ("purpose", E.c.purpose, "purpose"),
    ):
        q = _where(select(col, func.count()).select_from(E), window).where(col.is_not(None)).group_by(col)
        rows = sorted((await session.execute(q)).all(), key=lambda r: (-int(r[1]), str(r[0])))
        out[name] = [Figure(str(v), int(n), LedgerFilter(since=since, until=until, **{key: str(v)})) for v, n in rows]
    denials: Counter[tuple[str, str, str]] = Counter()
    q = _where(select(E.c.purpose, E.c.details), LedgerFilter(since=since, until=until, action="decision.denied"))
    for purpose, text in (await session.execute(q)).all():
        d = _details(text)
        reason, version = d.get("reason"), d.get("policy_version")
        if purpose and isinstance(reason, str) and isinstance(version, str):
            denials[(purpose, reason, version)] += 1
    out["denials"] = [
        Figure(
            f"{p} · {r} · {v}",
            n,
            LedgerFilter(since=since, until=until, action="decision.denied", purpose=p, reason=r, policy_version=v),
        )
        for (p, r, v), n in sorted(denials.items(), key=lambda item: (-item[1], item[0]))
    ]
    return out


# ---- the verifier's stream


def public_key() -> tuple[str, str]:
    """(base64 public key, key id) the ledger's tree heads are signed with."""
    pub = key_material(get_settings()).signing_key.public_key()
    return base64.b64encode(public_key_bytes(pub)).decode(), key_id(pub)


def _witness() -> tuple[list[TreeHead], str]:
    path = get_settings().audit_witness
    if not path.exists():
        return [], "missing"
    try:
        return read_witness(path), "read"
    except (OSError, WitnessError):
        return [], "unreadable"


def _line(value: Any) -> bytes:
    return msgspec.json.encode(value) + b"\n"


def _subject_lines(cursor: Any, size: int) -> Iterator[bytes]:
    """The group entries' subjects as [seq, ids] pairs, PAGE pairs a line (a plain DB-API
    cursor: half a million index rows through SQLAlchemy's rows cost seconds)."""
    cursor.execute(f"SELECT seq, subject_id FROM audit_subject WHERE seq <= {int(size)} ORDER BY seq, subject_id")
    items: list[tuple[int, list[str]]] = []
    while rows := cursor.fetchmany(PAGE * 10):
        for seq, ids in itertools.groupby(rows, key=operator.itemgetter(0)):
            names = [sid for _, sid in ids]
            if items and items[-1][0] == seq:
                items[-1][1].extend(names)
            else:
                items.append((int(seq), names))
        if len(items) > PAGE:
            last = items.pop()  # may continue in the next rows
            yield _line({"kind": "subjects", "items": items})
            items = [last]
    if items:
        yield _line({"kind": "subjects", "items": items})


def _entry_lines(cursor: Any, size: int) -> Iterator[bytes]:
    """Entries 1..size in order, PAGE entries a line."""
    names = ", ".join(STREAM_COLUMNS)
    cursor.execute(f"SELECT {names} FROM audit_entry WHERE seq <= {int(size)} ORDER BY seq")
    while rows := cursor.fetchmany(PAGE):
        yield _line(rows)


def _ledger_reader() -> Generator[bytes, None, None]:
    """The stream's lines after the ``meta`` line is known, read through a blocking
    connection (a generator stepped in a worker thread: an asyncio driver spends most of a
    100,000-entry read hopping threads row batch by row batch)."""
    witness, state = _witness()
    key, kid = public_key()
    engine = create_sync_engine(pool_pre_ping=False)
    try:
        with engine.connect() as conn:
            heads = [
                TreeHead.from_json(dict(r._mapping))
                for r in conn.execute(select(store.audit_checkpoint).order_by(store.audit_checkpoint.c.size))
            ]
            size = int(conn.execute(select(store.audit_head.c.seq).where(store.audit_head.c.id == 1)).scalar_one())
            yield _line({"kind": "meta", "size": size, "witness": state, "public_key": key, "key_id": kid})
            yield b"".join(_line({"kind": "witness", **h.to_json()}) for h in witness)
            yield b"".join(_line({"kind": "head", **h.to_json()}) for h in heads)
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                yield from _subject_lines(cursor, size)
                yield from _entry_lines(cursor, size)
            finally:
                cursor.close()
    finally:
        engine.dispose()


async def verification_stream(principal: Principal) -> AsyncIterator[bytes]:
    """The ledger as the verifier reads it, one JSON line each: a ``meta`` line (size, key,
    witness state), the witness file's heads, the database's heads, the group entries'
    subjects (``items``: [seq, ids] pairs, a page a line), then pages of entries, each line an
    array of entries, each entry an array in ``verify.js``'s ``COLUMNS`` order (details as
    stored). Read in the order ``python -m audit verify-db`` reads, and cut at the size read
    after the heads, so every head and subject list is covered by the entries sent."""
    async with session_maker()() as session:
        await record(
            session,
            principal,
            "audit.export",
            purpose="audit.review",
            legal_basis="legal_obligation",
            details={"via": "console.verify"},
        )
        await session.commit()
    reader = _ledger_reader()
    done = object()
    try:
        while (chunk := await asyncio.to_thread(next, reader, done)) is not done:
            yield chunk  # type: ignore[misc]
    finally:
        await asyncio.to_thread(reader.close)
