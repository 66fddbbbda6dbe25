"""The durable inbox: accept a request in one write, process it later in large groups.

``accept_messages`` authenticates nothing itself (the route did), checks each message's
shape and content as the pipeline will, registers the fresh message ids (so a replay is a
duplicate at once, and the answer's counts are final) and appends the accepted messages as
one sealed row, all in the caller's transaction: nothing is acknowledged before it is
durable. The processor (``app.ingest.processor``) claims rows, stores their events and
deletes them in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import structlog
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.access.service import Principal
from app.consent.gate import authorize, decide
from app.db import private_path, table_of
from app.errors import InvalidField, NotFound
from app.identity.service import is_blocked_value
from app.ingest.models import InboxBatch
from app.ingest.service import BatchResult, _new_message_ids, checked_messages
from app.ingest.spec import (
    MAX_EVENT_BYTES,
    MAX_ID_LEN,
    MAX_JSON_DEPTH,
    MAX_MESSAGE_ID_LEN,
    TYPES,
    Invalid,
    event_time,
    json_depth,
    parse_time,
)
from app.pii.fields import FieldPolicy
from app.pii.review import current_field_policy
from app.profiles.service import VaultContext, normalize_trait
from app.settings import get_settings
from app.vault.blobs import open_blob, seal_blob

PURPOSE = "ingest-inbox"
log = structlog.get_logger("consentry.ingest")
RAW = b"\x00raw-batch\n"
"""Prefix of a blob holding a ``/v1/batch`` body exactly as received (every message accepted,
each with its own id); without it a blob is ``{"m": messages, "d": defaults, "r": ids required}``."""
MAX_ATTEMPTS = 3
"""A batch that fails this many times is set aside (``status='failed'``) with its reason."""


@dataclass
class Accepted:
    """What ``accept_messages`` answers: the counts and rejects, and the inbox row (None: nothing to store)."""

    result: BatchResult
    batch_id: int | None


@dataclass
class Claimed:
    """An inbox row opened for processing."""

    id: int
    principal: Principal
    received_at: datetime
    kind: str | None
    gpc: bool
    messages: list[Any]
    defaults: dict[str, Any]
    require_ids: bool = True


async def accept_messages(
    session: AsyncSession,
    ctx: VaultContext,
    principal: Principal,
    raw_messages: list[Any],
    *,
    defaults: dict[str, Any] | None = None,
    gpc: bool = False,
    expected_type: str | None = None,
    require_ids: bool = True,
    encoded: list[bytes] | None = None,
    body: bytes | None = None,
) -> Accepted:
    """Check the messages, register fresh ids and append the accepted ones as one sealed row.
    ``require_ids=False`` (imports): a message may come without userId/anonymousId.
    ``encoded``: each message's JSON as received (its size and nesting are read from it);
    ``body``: the request body holding them, sealed as it is when every message is accepted."""
    req = await checked_request(
        session,
        ctx,
        principal,
        raw_messages,
        defaults=defaults,
        gpc=gpc,
        expected_type=expected_type,
        require_ids=require_ids,
        encoded=encoded,
        body=body,
    )
    return await accept_checked(session, req)


@dataclass
class AcceptRequest:
    """A request's messages checked (CPU only, nothing written yet): its rejects, and the
    message ids to register with the index of the message each names."""

    ctx: VaultContext
    principal: Principal
    now: datetime
    result: BatchResult
    unique: dict[str, int]
    """Message id → index of its first message, in the batch's order."""
    valid: int
    """Messages that passed the checks (a repeated id counts each time)."""
    raw_messages: list[Any]
    defaults: dict[str, Any]
    require_ids: bool
    expected_type: str | None
    gpc: bool
    raw_body: bytes | None
    """The body as received, when it can be sealed as it is (every message accepted)."""

    @property
    def source(self) -> str:
        return self.principal.source or self.principal.name

    def outcome(self, fresh: list[tuple[str, int]]) -> BatchResult:
        """The answer once ``fresh`` (id, index) were registered by this request."""
        self.result.accepted, self.result.duplicates = len(fresh), self.valid - len(fresh)
        return self.result

    def blob(self, keep: list[tuple[str, int]]) -> dict[str, Any] | bytes:
        """What the inbox row holds for the kept messages: the body as received when it is all
        of them, else the kept messages with their ids."""
        if self.raw_body is not None and len(keep) == len(self.raw_messages):
            return RAW + self.raw_body
        messages = [{**self.raw_messages[index], "messageId": mid} for mid, index in keep]
        return {"m": messages, "d": self.defaults, "r": self.require_ids}

    def sealed(self, keep: list[tuple[str, int]]) -> tuple[dict[str, Any], int, bytes]:
        return sealed_batch(
            self.ctx, self.principal, self.now, self.blob(keep), len(keep), self.expected_type, self.gpc
        )


async def checked_request(
    session: AsyncSession,
    ctx: VaultContext,
    principal: Principal,
    raw_messages: list[Any],
    *,
    defaults: dict[str, Any] | None = None,
    gpc: bool = False,
    expected_type: str | None = None,
    require_ids: bool = True,
    encoded: list[bytes] | None = None,
    body: bytes | None = None,
) -> AcceptRequest:
    """Authorize and check a request's messages (``session`` is only read, or written by a
    refused authorization): what ``accept_checked`` or the accept writer then stores."""
    now = datetime.now(UTC)
    if not decide(principal, None).allowed:
        await authorize(session, principal, "ingest.events", [], None)
    result = BatchResult()
    fp = await current_field_policy(session, ctx.policies, ctx.keys.index_key)
    check = Check(ctx, fp, defaults or {}, expected_type, require_ids, now)
    valid = check.messages(raw_messages, encoded, result)
    unique: dict[str, int] = {}
    for index, mid in valid:
        unique.setdefault(mid, index)
    whole = body is not None and len(unique) == len(raw_messages) and not check.made_ids
    return AcceptRequest(
        ctx,
        principal,
        now,
        result,
        unique,
        len(valid),
        raw_messages,
        defaults or {},
        require_ids,
        expected_type,
        gpc,
        body if whole else None,
    )


async def accept_checked(session: AsyncSession, req: AcceptRequest) -> Accepted:
    """Register a checked request's fresh ids and append its row, in the caller's transaction."""
    # registered in one order whatever the batch's: two PostgreSQL requests sharing ids wait for
    # each other instead of deadlocking (each holds the ids it inserted until it commits)
    fresh = await _new_message_ids(session, req.source, sorted(req.unique), req.now)
    keep = [(mid, index) for mid, index in req.unique.items() if mid in fresh]
    result = req.outcome(keep)
    if not keep:
        return Accepted(result, None)
    batch_id = await append(
        session, req.ctx, req.principal, req.now, req.blob(keep), len(keep), req.expected_type, req.gpc
    )
    return Accepted(result, batch_id)


QUICK_BYTES = MAX_EVENT_BYTES // 5
"""Messages up to this size as received are within the size limit once re-encoded (a number
such as ``1e15`` grows at most 4.5 times); larger ones are measured by the full check."""
_PLAIN = (bool, int, float, str)


@dataclass
class Check:
    """The accept-time checks of a batch's messages: the usual message passes a quick check
    that takes what ``validate`` and ``_refusal`` would conclude without building a
    ``Message``; any message it is unsure of (anything unusual, anything refused) goes
    through the full check, which gives the reject by index."""

    ctx: VaultContext
    fp: FieldPolicy
    defaults: dict[str, Any]
    expected_type: str | None
    require_ids: bool
    now: datetime
    made_ids: bool = False
    """Was a message id generated for a message that came without one?"""
    _times: dict[Any, datetime | None] = field(default_factory=dict)
    _names: dict[str, bool] = field(default_factory=dict)
    _valid: set[tuple[str, str]] = field(default_factory=set)
    """(normal form, value) of the batch's trait values found valid (a phone number costs ~50 µs
    to parse); kept for this batch only, as personal data is never kept past its request."""

    def messages(
        self, raw_messages: list[Any], encoded: list[bytes] | None, result: BatchResult
    ) -> list[tuple[int, str]]:
        """(index, message id) of each acceptable message; the others' rejects go to ``result``."""
        out: list[tuple[int, str]] = []
        quick = self._defaults_usual()
        for i, raw in enumerate(raw_messages):
            mid = self.quick(raw, None if encoded is None else encoded[i]) if quick else None
            if mid is None:
                mid = self._full(raw, i, result)
            if mid is not None:
                out.append((i, mid))
        return out

    def _full(self, raw: Any, index: int, result: BatchResult) -> str | None:
        found = BatchResult()
        args = (self.defaults, self.expected_type, self.require_ids, self.now, self.fp)
        checked = checked_messages(self.ctx, [raw], found, *args)
        for r in found.rejected:
            r.index = index
            result.rejected.append(r)
        if not checked:
            return None
        if checked[0].message_id.startswith("auto-") and checked[0].message_id != _own_id(raw):
            self.made_ids = True
        return checked[0].message_id

    def _defaults_usual(self) -> bool:
        dctx = self.defaults.get("context")
        return dctx is None or (type(dctx) is dict and b"\\u0000" not in msgspec.json.encode(dctx))

    def quick(self, raw: Any, encoded: bytes | None) -> str | None:
        """The message id of a usual, acceptable message; None: ask the full check."""
        if type(raw) is not dict:
            return None
        if encoded is None:
            encoded = msgspec.json.encode(raw)
        if len(encoded) > QUICK_BYTES or b"\\u0000" in encoded or json_depth(encoded) > MAX_JSON_DEPTH:
            return None
        mtype = raw.get("type") or self.expected_type
        if mtype not in TYPES or (self.expected_type and mtype != self.expected_type):
            return None
        user_id, anon = _usual_id(raw.get("userId")), _usual_id(raw.get("anonymousId"))
        mid = _usual_id(raw.get("messageId"), MAX_MESSAGE_ID_LEN)
        if user_id is False or anon is False or mid is False:
            return None
        context = self._context(raw)
        if context is None or "tcf" in context or "gpp" in context or not self._timed(raw):
            return None
        traits = self._shaped(raw, mtype, context, user_id)
        if traits is None or not self._identified(user_id, anon, context, traits):
            return None
        if not self._traits_normalise(traits):
            return None
        if isinstance(mid, str):
            return mid
        self.made_ids = True
        return f"auto-{uuid.uuid4()}"

    def _context(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        own = raw.get("context")
        if own is not None and type(own) is not dict:
            return None
        base = self.defaults.get("context")
        return {**base, **(own or {})} if base else (own or {})

    def _time(self, value: Any, name: str) -> datetime | bool | None:
        if value is not None and type(value) is not str:
            return False
        key = (name, value)
        if key not in self._times:
            try:
                self._times[key] = parse_time(value, name)
            except Invalid:
                return False
        return self._times[key]

    def _timed(self, raw: dict[str, Any]) -> bool:
        timestamp = self._time(raw.get("timestamp") or raw.get("originalTimestamp"), "timestamp")
        sent_at = self._time(raw.get("sentAt") or self.defaults.get("sentAt"), "sentAt")
        if timestamp is False or sent_at is False:
            return False
        try:
            event_time(timestamp, sent_at, self.now)  # type: ignore[arg-type]
        except Invalid:
            return False
        return True

    def _shaped(self, raw: dict[str, Any], mtype: str, context: dict[str, Any], user_id: Any) -> dict[str, Any] | None:
        """The traits storing would check (``{}`` for most types); None: not a usual message."""
        if mtype in ("track", "page", "screen"):
            props = raw.get("properties")
            name = raw.get("event" if mtype == "track" else "name")
            if (props is not None and type(props) is not dict) or not self._name_ok(name, mtype == "track"):
                return None
            return {}
        if mtype == "identify":
            traits = raw.get("traits")
            if traits is not None and type(traits) is not dict:
                return None
            if not traits:
                traits = context.get("traits")
                if traits is not None and type(traits) is not dict:
                    return None
            return traits or {}
        if mtype == "group":
            traits = raw.get("traits")
            if not _usual_id(raw.get("groupId")) or (traits is not None and type(traits) is not dict):
                return None
            return traits or {}
        if not _usual_id(raw.get("previousId")) or not user_id:  # alias
            return None
        return {}

    def _name_ok(self, name: Any, required: bool) -> bool:
        """An event or page name that ``_text`` takes and that does not look like personal data."""
        if name is None:
            return not required
        if type(name) is not str or len(name) > 200 or (required and not name.strip()):
            return False
        if not name.strip():
            return True
        ok = self._names.get(name)
        if ok is None:
            ok = self._names[name] = self.fp.value_category(name.strip()) is None
        return ok

    def _identified(self, user_id: Any, anon: Any, context: dict[str, Any], traits: dict[str, Any]) -> bool:
        """Does the message carry an identifier that identity resolution takes? (Unsure: False.)"""
        policy = self.ctx.policies.identity
        if (user_id and not is_blocked_value(policy, user_id)) or (anon and not is_blocked_value(policy, anon)):
            return True
        if user_id is None and anon is None and self.require_ids:
            return False
        external = context.get("externalIds")
        for item in external if type(external) is list else ():
            if type(item) is dict and type(item.get("type")) is str and len(item["type"]) <= 32:
                value = item.get("id")
                if type(value) in (str, int) and not is_blocked_value(policy, str(value).strip()):
                    return True
        return False

    def _traits_normalise(self, traits: dict[str, Any]) -> bool:
        """Would ``split_traits_by_policy`` take these traits without an error? (Unsure: False.)"""
        taken: set[str] = set()
        region = self.ctx.region
        for name, value in traits.items():
            if type(name) is not str:
                return False
            if value is None:
                continue
            d = self.fp.decide(name)
            if d.kind != "trait":
                if not d.personal and not isinstance(value, _PLAIN):
                    return False  # nested plain values: the full check's detectors
                continue
            assert d.rule is not None
            if d.rule.name in taken:
                return False
            taken.add(d.rule.name)
            key = (d.rule.normalize or "", value) if type(value) is str else None
            if key is not None and key in self._valid:
                continue
            try:
                normalize_trait(d.rule, value, region, f"traits.{name}")
            except InvalidField:
                return False
            if key is not None:
                self._valid.add(key)
        return True


def _usual_id(value: Any, limit: int = MAX_ID_LEN) -> str | bool | None:
    """An id as ``_ident`` reads it (stripped, blank is None) when it is a usual string; False otherwise."""
    if value is None:
        return None
    if type(value) is not str or len(value) > limit:
        return False
    return value.strip() or None


def _own_id(raw: Any) -> Any:
    mid = raw.get("messageId") if isinstance(raw, dict) else None
    return str(mid).strip() if mid is not None else None


async def append(
    session: AsyncSession,
    ctx: VaultContext,
    principal: Principal,
    received_at: datetime,
    body: dict[str, Any] | bytes,
    events: int,
    kind: str | None,
    gpc: bool,
) -> int:
    """One inbox row holding ``body`` (messages ``m``, batch defaults ``d``, ids required ``r``;
    or ``RAW`` + a ``/v1/batch`` body as received) sealed as one blob; returns its id (with
    ``CONSENTRY_INBOX_URL=nats://…``: published to the JetStream inbox instead, once the
    stream acknowledged it; returns its stream sequence)."""
    from app.ingest import jetstream

    if jetstream.enabled():
        if isinstance(body, bytes):
            body = _batch_of(body)
        return await jetstream.publish(ctx, principal, received_at, body, events, kind, gpc)
    row, version, sealed = sealed_batch(ctx, principal, received_at, body, events, kind, gpc)
    row.update(key_version=version, sealed=sealed, status="queued", attempts=0)
    t = table_of(InboxBatch)
    return int((await session.execute(insert(t).returning(t.c.id), row)).scalar_one())


def _batch_of(plain: bytes) -> dict[str, Any]:
    """A blob's plaintext as ``{"m": messages, "d": defaults, "r": ids required}``, whichever form it has."""
    if not plain.startswith(RAW):
        return dict(msgspec.json.decode(plain))
    data = msgspec.json.decode(plain[len(RAW) :])
    defaults = {k: data[k] for k in ("context", "sentAt", "integrations") if k in data}
    return {"m": data["batch"], "d": defaults, "r": True}


def _sqlite(session: AsyncSession) -> bool:
    return session.bind is not None and session.bind.dialect.name == "sqlite"


async def claim(session: AsyncSession, max_events: int, scan: int = 200) -> list[Any]:
    """The oldest queued rows of one sender, up to ``max_events`` events (at least one row).

    PostgreSQL: locked ``FOR UPDATE SKIP LOCKED``, so several workers share the inbox and
    never take the same row. SQLite: only read (the expensive preparation then runs without
    the database's write lock, so accepting requests are not held up); ``hold`` takes the
    lock and checks that the rows are still queued."""
    t = table_of(InboxBatch)
    q = select(t.c.id, t.c.key_id, t.c.events).where(t.c.status == "queued").order_by(t.c.id).limit(scan)
    if not _sqlite(session):
        q = q.with_for_update(skip_locked=True)
    heads = (await session.execute(q)).all()
    chosen: list[int] = []
    total = 0
    for row in heads:
        if chosen and (row.key_id != heads[0].key_id or total + row.events > max_events):
            break
        chosen.append(row.id)
        total += row.events
    if not chosen:
        return []
    return list((await session.execute(select(t).where(t.c.id.in_(chosen)).order_by(t.c.id))).all())


async def hold(session: AsyncSession, ids: list[int]) -> bool:
    """Before writing a claimed group: on SQLite end the read, take the write lock and check
    that no other processor stored these rows meanwhile (False: it did). PostgreSQL's claim
    holds row locks already."""
    if not _sqlite(session):
        return True
    await session.rollback()
    await session.execute(text("UPDATE ingest_inbox SET attempts = attempts WHERE id = -1"))
    t = table_of(InboxBatch)
    q = select(func.count()).select_from(t).where(t.c.id.in_(ids), t.c.status == "queued")
    return int((await session.execute(q)).scalar() or 0) == len(ids)


BOUND = ("received_at", "key_id", "role", "name", "source", "trust", "events", "kind", "gpc")
"""What an inbox row says in the clear about its blob, bound to the blob (its AAD)."""


def sealed_batch(
    ctx: VaultContext,
    principal: Principal,
    received_at: datetime,
    body: dict[str, Any] | bytes,
    events: int,
    kind: str | None,
    gpc: bool,
) -> tuple[dict[str, Any], int, bytes]:
    """(the clear fields, key version, blob): ``body`` sealed and bound to the clear fields —
    what the database inbox stores as a row and the JetStream inbox publishes."""
    clear: dict[str, Any] = {
        "received_at": received_at,
        "key_id": principal.key_id,
        "role": principal.role,
        "name": principal.name,
        "source": principal.source,
        "trust": principal.trust,
        "events": events,
        "kind": kind,
        "gpc": gpc,
    }
    plain = body if isinstance(body, bytes) else msgspec.json.encode(body)
    version, sealed = seal_blob(ctx.keys.master, PURPOSE, plain, _binding(clear))
    return clear, version, sealed


def _binding(row: Any) -> bytes:
    """The row's clear fields in a fixed form (times as UTC ISO strings)."""
    values = {k: row[k] for k in BOUND}
    at = values["received_at"]
    values["received_at"] = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    values["gpc"] = bool(values["gpc"])
    return msgspec.json.encode(values)


def opened(ctx: VaultContext, r: Any) -> Claimed:
    """A claimed row's messages, decrypted (``IntegrityFailure`` if the seal was altered)."""
    body = _batch_of(open_blob(ctx.keys.master, PURPOSE, r.key_version, r.sealed, _binding(r._mapping)))
    principal = Principal(key_id=r.key_id, role=r.role, name=r.name, source=r.source, trust=r.trust)
    return Claimed(r.id, principal, r.received_at, r.kind, r.gpc, body["m"], body["d"], body.get("r", True))


async def remove(session: AsyncSession, ids: list[int]) -> None:
    """Delete processed rows (in the transaction that stored their events)."""
    t = table_of(InboxBatch)
    await session.execute(delete(t).where(t.c.id.in_(ids)))


async def record_failure(session: AsyncSession, batch_id: int, reason: str) -> bool:
    """Count a failed attempt; set the batch aside once it failed ``MAX_ATTEMPTS`` times.
    Returns True when it was set aside."""
    t = table_of(InboxBatch)
    row = (await session.execute(select(t.c.attempts).where(t.c.id == batch_id))).first()
    if row is None:
        return False
    attempts = row.attempts + 1
    failed = attempts >= MAX_ATTEMPTS
    await session.execute(
        update(t)
        .where(t.c.id == batch_id)
        .values(attempts=attempts, error=reason[:200], status="failed" if failed else "queued")
    )
    return failed


async def requeue(session: AsyncSession, batch_id: int) -> int:
    """Put a set-aside batch back in the queue (after fixing what made it fail); returns its
    number of events, or ``NotFound`` if no batch with this id was set aside."""
    t = table_of(InboxBatch)
    row = (await session.execute(select(t.c.events).where(t.c.id == batch_id, t.c.status == "failed"))).first()
    if row is None:
        raise NotFound("no set-aside batch with this id", field="batch_id")
    await session.execute(update(t).where(t.c.id == batch_id).values(status="queued", attempts=0, error=None))
    return int(row.events)


async def status(session: AsyncSession, failures: int = 50) -> dict[str, Any]:
    """Inbox depth (batches, events), the age of the oldest queued batch, and the set-aside ones."""
    t = table_of(InboxBatch)
    q = select(t.c.status, func.count(), func.coalesce(func.sum(t.c.events), 0), func.min(t.c.received_at))
    by_status = {s: (int(n), int(e), oldest) for s, n, e, oldest in (await session.execute(q.group_by(t.c.status)))}
    queued = by_status.get("queued", (0, 0, None))
    failed = by_status.get("failed", (0, 0, None))
    oldest = queued[2]
    bind = session.bind
    database = bind.url.database if isinstance(bind, AsyncEngine) and bind.dialect.name == "sqlite" else None
    if database and database != ":memory:":  # accepted batches waiting in the spool count as queued
        spooled, events, first = spool_status(database)
        if spooled:
            oldest = min(oldest, first) if oldest and first else (oldest or first)
            queued = (queued[0] + spooled, queued[1] + events, oldest)
    lag = max(0.0, (datetime.now(UTC) - oldest).total_seconds()) if oldest else 0.0
    rows = (
        await session.execute(
            select(t.c.id, t.c.received_at, t.c.source, t.c.events, t.c.attempts, t.c.error)
            .where(t.c.status == "failed")
            .order_by(t.c.id.desc())
            .limit(failures)
        )
    ).all()
    return {
        "queued_batches": queued[0],
        "queued_events": queued[1],
        "lag_seconds": round(lag, 3),
        "failed_batches": failed[0],
        "failed_events": failed[1],
        "failures": [
            {
                "id": r.id,
                "received_at": r.received_at.isoformat(),
                "source": r.source,
                "events": r.events,
                "attempts": r.attempts,
                "reason": r.error,
            }
            for r in rows
        ],
    }


async def wait_processed(
    maker: async_sessionmaker[AsyncSession], batch_id: int, timeout: float, poll: float = 0.005
) -> bool:
    """Wait until the batch left the queue (processed, or set aside); False on timeout."""
    t = table_of(InboxBatch)
    deadline = time.monotonic() + timeout
    while True:
        async with maker() as session:
            row = (await session.execute(select(t.c.status).where(t.c.id == batch_id))).first()
        if row is None or row.status != "queued":
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll)


# --- group commit --------------------------------------------------------------------------
#
# Each service process accepts through one writer: the requests that wait while a group is
# being written are written together as the next group, in one transaction (their message ids
# registered with one statement per source, one inbox row each, one commit), and each is then
# answered. Accepts never wait for each other in SQLite's busy handler (which sleeps 1..100 ms
# between tries) and share their commits.


class StoreBusy(Exception):
    """The store did not take a group's write in time (SQLite's write lock held by another
    process for ``BUSY_WAIT_S``; PostgreSQL deadlocks each time): answer 503, retry later."""


BUSY_WAIT_S = 30.0
"""How long a group waits for SQLite's write lock (the service's busy timeout is also 30 s)."""
BUSY_POLL_S = 0.001
"""How often a waiting group tries SQLite's write lock again (the busy handler's sleeps grow to 100 ms)."""
MAX_GROUP = 64
"""Requests written in one transaction at most."""
_INSERT_COLUMNS = (*BOUND, "key_version", "sealed", "status", "attempts")
_SQL = {
    "sqlite": (
        "INSERT INTO ingested_message (source, message_id, received_at) SELECT ?, value, ? "
        "FROM json_each(?) WHERE true ON CONFLICT DO NOTHING RETURNING message_id",
        f"INSERT INTO ingest_inbox ({', '.join(_INSERT_COLUMNS)}) VALUES ({', '.join('?' for _ in _INSERT_COLUMNS)})",
    ),
    "postgresql": (
        "INSERT INTO ingested_message (source, message_id, received_at) SELECT $1, m, $2 "
        "FROM unnest($3::text[]) AS m ON CONFLICT DO NOTHING RETURNING message_id",
        f"INSERT INTO ingest_inbox ({', '.join(_INSERT_COLUMNS)}) "
        f"VALUES ({', '.join(f'${i}' for i in range(1, len(_INSERT_COLUMNS) + 1))}) RETURNING id",
    ),
}


@dataclass
class _Item:
    req: AcceptRequest
    future: asyncio.Future[Accepted]
    whole: tuple[dict[str, Any], int, bytes] | None = None
    """The row sealed for the usual case, every id of the request fresh (sealed before the
    transaction, so the write lock is held for the statements only)."""


def _registrations(items: list[_Item]) -> list[tuple[str, list[str], datetime]]:
    """(source, its ids in sorted order, the earliest request's time) of a group: one
    registration statement per source. Sorted, so two PostgreSQL groups sharing ids wait
    for each other instead of deadlocking."""
    by_source: dict[str, tuple[set[str], datetime]] = {}
    for item in items:
        ids, at = by_source.get(item.req.source, (set(), item.req.now))
        ids.update(item.req.unique)
        by_source[item.req.source] = (ids, min(at, item.req.now))
    return [(source, sorted(ids), at) for source, (ids, at) in by_source.items()]


Sealed = tuple[dict[str, Any], int, bytes]


def _rows(items: list[_Item], fresh: dict[str, set[str]]) -> list[tuple[list[str], Sealed | None]]:
    """Each request's counts (an id fresh in the store goes to the group's first request naming
    it; the others count it a duplicate), and its kept ids and row (None: nothing new to store)."""
    taken: dict[str, set[str]] = {}
    out: list[tuple[list[str], Sealed | None]] = []
    for item in items:
        req, own = item.req, taken.setdefault(item.req.source, set())
        new = fresh.get(req.source, set())
        keep = [(mid, index) for mid, index in req.unique.items() if mid in new and mid not in own]
        own.update(mid for mid, _ in keep)
        req.outcome(keep)
        kept = [mid for mid, _ in keep]
        if not keep:
            out.append((kept, None))
        elif len(keep) == len(req.unique) and item.whole is not None:
            out.append((kept, item.whole))
        else:
            out.append((kept, req.sealed(keep)))
    return out


def _values(sealed: tuple[dict[str, Any], int, bytes], sqlite: bool) -> tuple[Any, ...]:
    clear, version, blob = sealed
    values = [clear[k] for k in BOUND]
    if sqlite:  # SQLite's storage of UtcDateTime and Boolean
        values[0] = values[0].astimezone(UTC).isoformat(" ", "microseconds")[:26]
        values[BOUND.index("gpc")] = int(values[BOUND.index("gpc")])
    return (*values, version, blob, "queued", 0)


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


SPOOL_SUFFIX = "-spool"
"""The accept spool of an SQLite store: the file beside it (``consentry.db-spool``)."""
_SPOOL_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spool_batch (id INTEGER PRIMARY KEY AUTOINCREMENT, received_at TEXT NOT NULL, "
    "key_id TEXT NOT NULL, role TEXT NOT NULL, name TEXT NOT NULL, source TEXT, trust TEXT NOT NULL, "
    "events INTEGER NOT NULL, kind TEXT, gpc INTEGER NOT NULL, key_version INTEGER NOT NULL, "
    "sealed BLOB NOT NULL, sender TEXT NOT NULL, ids TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS spool_message (source TEXT NOT NULL, message_id TEXT NOT NULL, "
    "PRIMARY KEY (source, message_id)) WITHOUT ROWID",
)
_SPOOL_COLUMNS = (*BOUND, "key_version", "sealed")
_SPOOL_SQL = {
    "pending": "SELECT EXISTS (SELECT 1 FROM spool_batch)",
    "stored": "SELECT message_id FROM ingested_message WHERE source = ? "
    "AND message_id IN (SELECT value FROM json_each(?))",
    "hold": "INSERT INTO spool_message (source, message_id) SELECT ?, value FROM json_each(?) WHERE true "
    "ON CONFLICT DO NOTHING RETURNING message_id",
    "append": f"INSERT INTO spool_batch ({', '.join(_SPOOL_COLUMNS)}, sender, ids) "
    f"VALUES ({', '.join('?' for _ in _SPOOL_COLUMNS)}, ?, ?)",
    "heads": f"SELECT id, {', '.join(_SPOOL_COLUMNS)}, sender, ids FROM spool_batch ORDER BY id LIMIT ?",
    "forget": "DELETE FROM spool_message WHERE source = ? AND message_id IN (SELECT value FROM json_each(?))",
    "moved": "DELETE FROM spool_batch WHERE id <= ?",
}
MOVE_BATCHES = 500
"""Spooled rows moved to the inbox in one transaction at most."""


def spool_path(database: str) -> str:
    return database + SPOOL_SUFFIX


def _sqlite_time(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(" ", "microseconds")[:26]


def _connect(path: str) -> sqlite3.Connection:
    """An autocommit-mode connection (its owner begins and commits) that never waits in
    SQLite's busy handler: a busy lock raises at once and the owner tries again shortly."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=0"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def _begin(conn: sqlite3.Connection, deadline: float, stop: Callable[[], bool] = lambda: False) -> None:
    """Take the write lock (BEGIN IMMEDIATE), trying every ``BUSY_POLL_S`` until ``deadline``
    (or ``stop()``)."""
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            if time.monotonic() > deadline or stop():
                raise StoreBusy("the event store's write lock stayed taken") from exc
            time.sleep(BUSY_POLL_S)


def _rollback(*conns: sqlite3.Connection) -> None:
    for conn in conns:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


class _SqliteStore:
    """The accept writer's SQLite connections, used from a worker thread by one group at a time.

    A group is written into the inbox (``ingest_inbox``, ``ingested_message``) when its write
    lock is free at once. When another process holds it (the processor stores a group in one
    transaction that can last a second), the group goes to the *spool* instead, a small SQLite
    file beside the store (``SPOOL_SUFFIX``) whose write lock only accepting processes take:
    its ids registered there (fresh: in neither the store nor the spool) and its row appended,
    in one transaction. ``move`` then carries spooled rows into the inbox in the store's
    transaction, registering their ids there, and deletes them from the spool after.

    Exactly once: every accept takes the spool's write lock first and reads both registers
    under it; ``move`` deletes from the spool (under its lock) only after the store committed,
    so an id is always in one of them. A move cut short after the store's commit is done again
    and finds its ids registered: those rows are not appended twice. While the spool holds rows,
    groups go there too, so the inbox keeps the order of acceptance."""

    def __init__(self, path: str, spooling: bool = True) -> None:
        self.path = path
        self.spool = spool_path(path)
        self.spooling = spooling
        """False: a group always waits for the store's lock (read-your-writes: ``INGEST_WAIT``)."""
        self.conns: dict[str, sqlite3.Connection] = {}
        self.mover: asyncio.Task[None] | None = None
        self.closing = False
        """Set at shutdown: a move waiting for a lock gives up (the next start moves the rest)."""

    def _conn(self, name: str) -> sqlite3.Connection:
        conn = self.conns.get(name)
        if conn is None:
            if name.endswith("spool") and not Path(self.spool).exists():
                private_path(Path(self.spool).parent, directory=True)
                Path(self.spool).touch(mode=0o600, exist_ok=True)
            conn = self.conns[name] = _connect(self.spool if name.endswith("spool") else self.path)
            if name.endswith("spool"):
                for ddl in _SPOOL_SCHEMA:
                    conn.execute(ddl)
                for suffix in ("", "-wal", "-shm"):
                    private_path(Path(self.spool + suffix))
        return conn

    def write(self, items: list[_Item]) -> tuple[list[int | None], bool]:
        """One transaction for the group, in the inbox or the spool; (row ids, spooled?)."""
        deadline = time.monotonic() + BUSY_WAIT_S
        spool, store = self._conn("spool"), self._conn("store")
        while True:
            try:
                _begin(spool, deadline)
                try:
                    return self._write(spool, store, items)
                finally:
                    _rollback(store, spool)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                if time.monotonic() > deadline:
                    raise StoreBusy("the event store's write lock stayed taken") from exc
                time.sleep(BUSY_POLL_S)

    def _write(self, spool: sqlite3.Connection, store: sqlite3.Connection, items: list[_Item]) -> Any:
        direct = not spool.execute(_SPOOL_SQL["pending"]).fetchone()[0]
        if direct and not self.spooling:
            _begin(store, time.monotonic() + BUSY_WAIT_S)
        elif direct:
            try:
                store.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                direct = False
        if direct:
            out = self._append(store, items)
            store.execute("COMMIT")
            return out, False
        fresh: dict[str, set[str]] = {}
        for source, ids, _at in _registrations(items):
            listed = msgspec.json.encode(ids).decode()
            stored = {r[0] for r in store.execute(_SPOOL_SQL["stored"], (source, listed))}
            if stored:
                listed = msgspec.json.encode([i for i in ids if i not in stored]).decode()
            fresh[source] = {r[0] for r in spool.execute(_SPOOL_SQL["hold"], (source, listed))}
        if store.in_transaction:  # the read's snapshot
            store.execute("ROLLBACK")
        for item, (kept, sealed) in zip(items, _rows(items, fresh), strict=True):
            if sealed is not None:
                values = (*_values(sealed, True)[: len(_SPOOL_COLUMNS)], item.req.source, msgspec.json.encode(kept))
                spool.execute(_SPOOL_SQL["append"], values)
        spool.execute("COMMIT")
        return [None] * len(items), True

    def _append(self, store: sqlite3.Connection, items: list[_Item]) -> list[int | None]:
        register, append_row = _SQL["sqlite"]
        fresh: dict[str, set[str]] = {}
        for source, ids, at in _registrations(items):
            found = store.execute(register, (source, _sqlite_time(at), msgspec.json.encode(ids).decode())).fetchall()
            fresh[source] = {r[0] for r in found}
        return [
            None if sealed is None else store.execute(append_row, _values(sealed, True)).lastrowid
            for _kept, sealed in _rows(items, fresh)
        ]

    def move(self, ctx: VaultContext) -> int:
        """Carry up to ``MOVE_BATCHES`` spooled rows into the inbox (waiting for the store's
        write lock as long as it takes); the number of rows moved."""
        store, spool = self._conn("mover-store"), self._conn("mover-spool")
        deadline = time.monotonic() + 3600
        try:
            _begin(store, deadline, lambda: self.closing)
            rows = spool.execute(_SPOOL_SQL["heads"], (MOVE_BATCHES,)).fetchall()  # no lock needed to read
            if not rows:
                return 0
            register, append_row = _SQL["sqlite"]
            by_source: dict[str, list[str]] = {}
            first: dict[str, str] = {}  # registered as received (the spooled rows' earliest time)
            for row in rows:
                by_source.setdefault(row[-2], []).extend(msgspec.json.decode(row[-1]))
                first[row[-2]] = min(first.get(row[-2], row[1]), row[1])
            fresh: dict[str, set[str]] = {}
            for source, ids in by_source.items():
                found = store.execute(register, (source, first[source], msgspec.json.encode(sorted(ids)).decode()))
                fresh[source] = {r[0] for r in found}
            for row in rows:
                listed = msgspec.json.decode(row[-1])
                keep = [i for i in listed if i in fresh[row[-2]]]
                if len(keep) == len(listed):
                    store.execute(append_row, (*row[1:-2], "queued", 0))
                elif keep:  # some were registered meanwhile by another way in: the others only
                    store.execute(append_row, _narrowed(ctx, row, set(keep)))
            _begin(spool, deadline)  # held from here to the store's commit only: accepts wait that long at most
            for source, ids in by_source.items():
                spool.execute(_SPOOL_SQL["forget"], (source, msgspec.json.encode(ids).decode()))
            spool.execute(_SPOOL_SQL["moved"], (rows[-1][0],))
            store.execute("COMMIT")
            spool.execute("COMMIT")  # a crash before this: moved again, its ids found registered
            return len(rows)
        finally:
            _rollback(store, spool)

    async def run(self, items: list[_Item]) -> list[int | None]:
        ids, spooled = await asyncio.to_thread(self.write, items)
        if spooled:
            self.start_moving(items[0].req.ctx)
        return ids

    def start_moving(self, ctx: VaultContext) -> None:
        if self.mover is None or self.mover.done():
            self.mover = asyncio.get_running_loop().create_task(self._move(ctx))

    async def _move(self, ctx: VaultContext) -> None:
        """Move until the spool is empty (the store's lock may be held by the processor meanwhile)."""
        try:
            moved = 1
            while moved and not self.closing:
                moved = await asyncio.to_thread(self.move, ctx)
        except Exception as exc:  # tried again after the next spooled group
            if not self.closing:
                log.error("inbox_spool_move_failed", error_type=type(exc).__name__)

    async def close(self) -> None:
        self.closing = True
        if self.mover is not None:  # a move in hand finishes (its thread cannot be cancelled)
            with contextlib.suppress(Exception):
                await asyncio.shield(self.mover)
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


def _narrowed(ctx: VaultContext, row: Any, keep: set[str]) -> tuple[Any, ...]:
    """A spooled row's values with only the messages whose ids are in ``keep``, sealed again."""
    clear = dict(zip(_SPOOL_COLUMNS, row[1:-2], strict=True))
    clear["received_at"] = datetime.fromisoformat(clear["received_at"]).replace(tzinfo=UTC)
    plain = open_blob(ctx.keys.master, PURPOSE, clear["key_version"], clear["sealed"], _binding(clear))
    batch = _batch_of(plain)
    batch["m"] = [m for m in batch["m"] if m.get("messageId") in keep]
    clear["events"] = len(batch["m"])
    version, sealed = seal_blob(ctx.keys.master, PURPOSE, msgspec.json.encode(batch), _binding(clear))
    clear.update(key_version=version, sealed=sealed)
    return (*_values((clear, version, sealed), True)[: len(BOUND)], version, sealed, "queued", 0)


def spool_status(database: str) -> tuple[int, int, datetime | None]:
    """(rows, events, oldest receipt) waiting in an SQLite store's spool."""
    path = spool_path(database)
    if not Path(path).exists():
        return 0, 0, None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        n, events, oldest = conn.execute(
            "SELECT count(*), coalesce(sum(events), 0), min(received_at) FROM spool_batch"
        ).fetchone()
    except sqlite3.OperationalError:  # no table yet
        return 0, 0, None
    finally:
        conn.close()
    return int(n), int(events), datetime.fromisoformat(oldest).replace(tzinfo=UTC) if oldest else None


class _PostgresStore:
    """The writer's own asyncpg connection (reopened after a failure)."""

    RETRIES = 5

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: Any = None

    async def run(self, items: list[_Item]) -> list[int | None]:
        import asyncpg

        for attempt in range(self.RETRIES):
            if self.conn is None:
                self.conn = await asyncpg.connect(self.dsn)
            try:
                return await self._write(self.conn, items)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                if attempt == self.RETRIES - 1:
                    raise StoreBusy("the event store kept deadlocking") from exc
                await asyncio.sleep(0.005 * 2**attempt)
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                await self.close()
                raise
        raise AssertionError("unreachable")

    async def _write(self, conn: Any, items: list[_Item]) -> list[int | None]:
        register, append_row = _SQL["postgresql"]
        async with conn.transaction():
            fresh: dict[str, set[str]] = {}
            for source, ids, at in _registrations(items):
                fresh[source] = {r[0] for r in await conn.fetch(register, source, at, ids)}
            out: list[int | None] = []
            for _kept, sealed in _rows(items, fresh):
                out.append(None if sealed is None else int(await conn.fetchval(append_row, *_values(sealed, False))))
            return out

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)


class AcceptWriter:
    """Writes checked requests in groups, one transaction each (see above)."""

    def __init__(self, store: _SqliteStore | _PostgresStore) -> None:
        self.store = store
        self.queue: list[_Item] = []
        self.task: asyncio.Task[None] | None = None

    async def accept(self, req: AcceptRequest) -> Accepted:
        """Register ``req``'s fresh ids and append its row with the requests waiting beside
        it; answered once committed (``StoreBusy``: nothing of it was stored)."""
        loop = asyncio.get_running_loop()
        item = _Item(req, loop.create_future())
        self.queue.append(item)
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._run())
        return await asyncio.shield(item.future)  # a client gone mid-write leaves the group alone

    async def _run(self) -> None:
        while self.queue:
            group, self.queue = self.queue[:MAX_GROUP], self.queue[MAX_GROUP:]
            try:
                await self._write(group)
            except BaseException as exc:  # (cancelled at shutdown): no request is left waiting
                for item in group:
                    _settle(item, exc=exc if isinstance(exc, Exception) else StoreBusy("shutting down"))
                raise

    async def _write(self, group: list[_Item]) -> None:
        sealed: list[_Item] = []
        for item in group:
            try:
                if item.whole is None and item.req.unique:
                    item.whole = item.req.sealed(list(item.req.unique.items()))
                sealed.append(item)
            except Exception as exc:
                _settle(item, exc=exc)
        group = sealed
        if not group:
            return
        try:
            ids = await self.store.run(group)
        except Exception as exc:
            if len(group) == 1 or isinstance(exc, StoreBusy):
                for item in group:
                    _settle(item, exc=exc)
                return
            for item in group:  # one request's part failed: each alone, the others are stored
                await self._write([item])
            return
        for item, batch_id in zip(group, ids, strict=True):
            _settle(item, Accepted(item.req.result, batch_id))

    async def close(self) -> None:
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task
        await self.store.close()


def _settle(item: _Item, accepted: Accepted | None = None, exc: BaseException | None = None) -> None:
    if item.future.done():
        return
    if accepted is None:
        item.future.set_exception(exc or AssertionError("nothing to answer"))
    else:
        item.future.set_result(accepted)


_writers: dict[tuple[str, int], AcceptWriter] = {}


def accept_writer() -> AcceptWriter | None:
    """This event loop's writer for the configured database; None where requests write in their
    own transaction (the JetStream inbox, an in-memory or URI-named SQLite database)."""
    from app.ingest import jetstream

    if jetstream.enabled():
        return None
    url = get_settings().database_url
    key = (url, id(asyncio.get_running_loop()))
    writer = _writers.get(key)
    if writer is None:
        u = make_url(url)
        if u.get_backend_name() == "sqlite":
            if not u.database or u.database == ":memory:" or u.database.startswith("file:") or u.query:
                return None
            store: _SqliteStore | _PostgresStore = _SqliteStore(u.database, get_settings().ingest_wait_s <= 0)
        else:
            store = _PostgresStore(u.set(drivername="postgresql").render_as_string(hide_password=False))
        writer = _writers[key] = AcceptWriter(store)
    return writer


async def close_writers() -> None:
    """Close this event loop's writers (the service's shutdown)."""
    loop = id(asyncio.get_running_loop())
    for key in [k for k in _writers if k[1] == loop]:
        await _writers.pop(key).close()


async def resume_spool() -> None:
    """At start-up: move what a previous run of the service left in the spool (killed before
    its mover finished), beside the requests."""
    writer = accept_writer()
    if writer is not None and isinstance(writer.store, _SqliteStore) and spool_status(writer.store.path)[0]:
        writer.store.start_moving(VaultContext.from_settings())


async def move_spool() -> int:
    """Move everything waiting in the configured SQLite store's spool into the inbox (``consentry
    worker``: what a stopped service left there); the number of rows moved."""
    u = make_url(get_settings().database_url)
    if u.get_backend_name() != "sqlite" or not u.database or not spool_status(u.database)[0]:
        return 0
    store, ctx, moved = _SqliteStore(u.database), VaultContext.from_settings(), 0
    try:
        while n := await asyncio.to_thread(store.move, ctx):
            moved += n
    finally:
        await store.close()
    return moved
