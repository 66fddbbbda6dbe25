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
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.access.service import Principal
from app.consent.gate import authorize, decide
from app.db import table_of
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
from app.vault.blobs import open_blob, seal_blob

PURPOSE = "ingest-inbox"
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
    source = principal.source or principal.name
    # registered in one order whatever the batch's: two PostgreSQL requests sharing ids wait for
    # each other instead of deadlocking (each holds the ids it inserted until it commits)
    fresh = await _new_message_ids(session, source, sorted(unique), now)
    keep = [(mid, index) for mid, index in unique.items() if mid in fresh]
    result.accepted, result.duplicates = len(keep), len(valid) - len(keep)
    if not keep:
        return Accepted(result, None)
    if body is not None and len(keep) == len(raw_messages) and not check.made_ids:
        return Accepted(result, await append(session, ctx, principal, now, RAW + body, len(keep), expected_type, gpc))
    messages = [{**raw_messages[index], "messageId": mid} for mid, index in keep]
    batch = {"m": messages, "d": defaults or {}, "r": require_ids}
    return Accepted(result, await append(session, ctx, principal, now, batch, len(keep), expected_type, gpc))


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
