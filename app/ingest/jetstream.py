"""The inbox as a NATS JetStream stream (``CONSENTRY_INBOX_URL=nats://…``), for a fleet of
service processes on many machines; the database inbox (``app.ingest.inbox``) is the default.

A message is what an inbox row is: the accepted messages sealed as one blob under the inbox
key, bound (AAD) to the clear fields beside it (who sent it, when, how many), packed as a
small msgpack envelope ``{"c": clear fields, "v": key version, "s": blob}``; nothing
personal is in the clear. ``publish`` returns only once JetStream acknowledged the message
(PubAck), so the request is answered only when the stream has it.

Processors share one durable pull consumer with explicit acks. A group's events, and a
marker per stream sequence (in ``ingested_message``, under the source ``MARKER_PREFIX +
stream@created``), are written in one database transaction; the messages are acked after it
commits. So a processor killed mid-group leaves its messages unacked and they are
redelivered, and a message redelivered after its group committed (killed between commit and
ack, or acked too late) finds its marker and is only acked: stored exactly once. A message
that fails ``MAX_ATTEMPTS`` deliveries is set aside as a failed row of the database inbox,
with its reason (``GET /v1/ingest/status``; an admin's retry queues it in the database inbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import weakref
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.access.service import Principal
from app.db import retry_conflicts, session_maker, table_of
from app.errors import DomainError
from app.ingest.inbox import MAX_ATTEMPTS, PURPOSE, Claimed, _binding, sealed_batch
from app.ingest.models import InboxBatch
from app.ingest.service import _new_message_ids
from app.profiles.service import VaultContext
from app.settings import get_settings
from app.vault.blobs import open_blob

log = structlog.get_logger("consentry.ingest")
MARKER_PREFIX = "jetstream:"
CONSUMER = "processor"
FETCH = 200
"""Messages fetched at once (``CONSENTRY_INBOX_FETCH``); processed in groups of one sender, up to the group's events."""


class InboxUnavailable(DomainError):
    """The stream did not acknowledge a batch: the sender should send it again later."""

    status = 503
    title = "Inbox unavailable"
    type_slug = "inbox-unavailable"


def enabled() -> bool:
    return get_settings().inbox_url.startswith("nats://")


def _stream() -> str:
    return get_settings().inbox_stream


def _subject() -> str:
    return f"{_stream()}.batches"


class _Link:
    """One connection per event loop (a connection belongs to the loop it was made in)."""

    def __init__(self, nc: NATS, js: JetStreamContext, marker: str) -> None:
        self.nc, self.js = nc, js
        self.marker = marker
        """Source of the stream's markers in ``ingested_message``: its name and creation time, so
        a stream deleted and made again (its sequences restart at 1) never meets old markers."""
        self.sub: JetStreamContext.PullSubscription | None = None


_links: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Link] = weakref.WeakKeyDictionary()


async def _link() -> _Link:
    loop = asyncio.get_running_loop()
    link = _links.get(loop)
    if link is not None and not link.nc.is_closed:  # reconnecting by itself if the server went away
        return link
    nc = NATS()

    async def quiet(exc: Exception) -> None:  # the client's own handler prints whole tracebacks
        log.warning("inbox_stream_connection", reason=type(exc).__name__)

    try:
        await asyncio.wait_for(
            nc.connect(
                get_settings().inbox_url,
                connect_timeout=2,
                max_reconnect_attempts=3,  # then closed: the next call connects afresh
                reconnect_time_wait=1,
                error_cb=quiet,
            ),
            10,
        )
        js = nc.jetstream()
        info = await js.add_stream(
            name=_stream(),
            subjects=[_subject()],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
        )
        if info.created is None:
            info = await js.stream_info(_stream())
    except Exception as exc:
        with contextlib.suppress(Exception):
            await nc.close()
        raise InboxUnavailable("the inbox stream cannot be reached") from exc
    created = info.created.timestamp() if info.created else 0.0
    link = _Link(nc, js, f"{MARKER_PREFIX}{_stream()}@{created:.6f}")
    _links[loop] = link
    return link


async def close() -> None:
    """Close this event loop's connection (if any)."""
    link = _links.pop(asyncio.get_running_loop(), None)
    if link is not None:
        with contextlib.suppress(Exception):
            await link.nc.close()


def _ack_wait() -> float:
    return float(os.environ.get("CONSENTRY_INBOX_ACK_WAIT", "30"))


async def publish(
    ctx: VaultContext,
    principal: Principal,
    received_at: datetime,
    body: dict[str, Any],
    events: int,
    kind: str | None,
    gpc: bool,
) -> int:
    """Seal ``body`` as the database inbox does and publish it; returns the stream sequence
    once JetStream acknowledged it (raises otherwise: nothing is acknowledged to the sender)."""
    clear, version, sealed = sealed_batch(ctx, principal, received_at, body, events, kind, gpc)
    clear["received_at"] = received_at.astimezone(UTC).isoformat()
    payload = msgspec.msgpack.encode({"c": clear, "v": version, "s": sealed})
    link = await _link()
    # the same messages published again (a resend after this request failed past the PubAck)
    # are a JetStream duplicate within its window, not a second message
    mids = sorted(str(m.get("messageId")) for m in body["m"])
    dedup = hashlib.sha256(msgspec.json.encode([principal.source or principal.name, mids])).hexdigest()
    try:
        ack = await link.js.publish(_subject(), payload, stream=_stream(), timeout=10, headers={"Nats-Msg-Id": dedup})
    except Exception as exc:  # not acknowledged by the stream: nothing is acknowledged to the sender
        await close()  # the next call connects afresh (and makes the stream again if it was deleted)
        raise InboxUnavailable("the inbox stream did not acknowledge the batch") from exc
    return int(ack.seq)


def _clear(env: dict[str, Any]) -> dict[str, Any]:
    clear = dict(env["c"])
    clear["received_at"] = datetime.fromisoformat(clear["received_at"])
    return clear


def _opened(ctx: VaultContext, seq: int, env: dict[str, Any]) -> Claimed:
    """A message's batch, decrypted (``IntegrityFailure`` if the blob or its clear fields were altered)."""
    c = _clear(env)
    body = msgspec.json.decode(open_blob(ctx.keys.master, PURPOSE, int(env["v"]), env["s"], _binding(c)))
    principal = Principal(key_id=c["key_id"], role=c["role"], name=c["name"], source=c["source"], trust=c["trust"])
    return Claimed(seq, principal, c["received_at"], c["kind"], c["gpc"], body["m"], body["d"], body.get("r", True))


async def _fetch(max_msgs: int, timeout: float) -> list[Msg]:
    link = await _link()
    if link.sub is None:
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.EXPLICIT, ack_wait=_ack_wait(), max_ack_pending=20000, max_deliver=-1
        )
        link.sub = await link.js.pull_subscribe(_subject(), durable=CONSUMER, stream=_stream(), config=config)
    try:
        return await link.sub.fetch(max_msgs, timeout=timeout)
    except TimeoutError:
        return []


async def _marker() -> str:
    return (await _link()).marker


async def _store_group(
    maker: async_sessionmaker[AsyncSession], ctx: VaultContext, items: list[tuple[Msg, Claimed]]
) -> tuple[int, int, int, int]:
    """Store one sender's messages in one transaction with their markers; (batches, events,
    profiles created, updated). Already-marked messages are skipped (stored before)."""
    from app.ingest.processor import _prepare
    from app.ingest.service import store_prepared
    from app.pii.review import record_sightings

    batches = [c for _m, c in items]
    async with maker() as session:
        group, fp = await _prepare(session, ctx, batches)
        await session.rollback()  # SQLite: the marker insert below is the first statement, it takes the write lock
        now = datetime.now(UTC)
        fresh = await _new_message_ids(session, await _marker(), [str(b.id) for b in batches], now)
        todo_ids = {b.id for b in batches if str(b.id) in fresh}
        if not todo_ids:
            await session.rollback()
            return 0, 0, 0, 0
        if len(todo_ids) < len(batches):  # some were stored by an earlier delivery
            batches = [b for b in batches if b.id in todo_ids]
            group, fp = await _prepare(session, ctx, batches)
        principal = batches[0].principal
        stored = await retry_conflicts(session, lambda: store_prepared(session, ctx, principal, group, registered=True))
        sightings: Counter[tuple[str, str]] = Counter()
        for p in group:
            sightings.update(p.unknown)
        await record_sightings(session, fp, sightings)
        await session.commit()
    events = sum(len(b.messages) for b in batches)
    return len(batches), events, stored.profiles_created, stored.profiles_updated


async def _set_aside(maker: async_sessionmaker[AsyncSession], msg: Msg, reason: str) -> None:
    """A message that failed ``MAX_ATTEMPTS`` deliveries becomes a failed row of the database
    inbox (same blob and clear fields), once; then it is removed from the stream."""
    seq = msg.metadata.sequence.stream
    env = msgspec.msgpack.decode(msg.data)
    async with maker() as session:
        if await _new_message_ids(session, await _marker(), [str(seq)], datetime.now(UTC)):
            row = {**_clear(env), "key_version": int(env["v"]), "sealed": env["s"]}
            row.update(status="failed", attempts=MAX_ATTEMPTS, error=reason[:200])
            await session.execute(insert(table_of(InboxBatch)), row)
        await session.commit()
    await msg.term()


async def process_next(ctx: VaultContext, maker: async_sessionmaker[AsyncSession] | None, max_events: int) -> Any:
    """Fetch what is waiting (up to ``FETCH`` messages), store it in groups of one sender and
    ack each group after its transaction committed. Outcome.batches 0: nothing was waiting."""
    from app.ingest.processor import Outcome, _reason

    maker = maker or session_maker()
    msgs = await _fetch(int(os.environ.get("CONSENTRY_INBOX_FETCH", FETCH)), timeout=0.05)
    out = Outcome()
    if not msgs:
        return out
    opened: list[tuple[Msg, Claimed]] = []
    for m in msgs:
        try:
            opened.append((m, _opened(ctx, m.metadata.sequence.stream, msgspec.msgpack.decode(m.data))))
        except Exception as exc:  # a damaged message: it fails alone
            await _failed(maker, m, exc, out, _reason)
    groups: list[list[tuple[Msg, Claimed]]] = []
    for item in opened:
        last = groups[-1] if groups else None
        if (
            last is not None
            and last[0][1].principal.key_id == item[1].principal.key_id
            and sum(len(c.messages) for _m, c in last) + len(item[1].messages) <= max_events
        ):
            last.append(item)
        else:
            groups.append([item])
    for i, g in enumerate(groups):
        if i:  # still working on them: the ack wait starts again for the messages not stored yet
            for later in groups[i:]:
                for m, _c in later:
                    await m.in_progress()
        try:
            b, e, created, updated = await _store_group(maker, ctx, g)
        except Exception as exc:
            if len(g) == 1:
                await _failed(maker, g[0][0], exc, out, _reason)
                continue
            for item in g:  # one at a time: the poison one fails alone
                try:
                    b, e, created, updated = await _store_group(maker, ctx, [item])
                except Exception as one:
                    await _failed(maker, item[0], one, out, _reason)
                    continue
                await item[0].ack()
                out.add(Outcome(b, e, [], created, updated))
            continue
        for m, _c in g:
            await m.ack()
        out.add(Outcome(b, e, [], created, updated))
    out.batches = max(out.batches, 1)  # something was waiting: the caller looks again
    return out


async def _failed(maker: async_sessionmaker[AsyncSession], msg: Msg, exc: BaseException, out: Any, why: Any) -> None:
    reason = why(exc)
    seq = msg.metadata.sequence.stream
    aside = msg.metadata.num_delivered >= MAX_ATTEMPTS
    if aside:
        await _set_aside(maker, msg, reason)
        out.set_aside.append(seq)
    else:
        await msg.nak(delay=0.2)
    log.error("inbox_message_failed", seq=seq, reason=reason, set_aside=aside)


async def pending() -> int:
    """Messages waiting or being processed (not yet acked)."""
    link = await _link()
    try:
        info = await link.js.consumer_info(_stream(), CONSUMER)
    except Exception:  # no processor consumed yet: everything in the stream waits
        return int((await link.js.stream_info(_stream())).state.messages)
    return int(info.num_pending + info.num_ack_pending)


async def lag_seconds() -> float:
    """Age of the oldest batch still in the stream (0 when empty)."""
    link = await _link()
    state = (await link.js.stream_info(_stream())).state
    if not state.messages:
        return 0.0
    try:
        first = await link.js.get_msg(_stream(), state.first_seq)
    except Exception:  # acked (removed) meanwhile
        return 0.0
    at = _clear(msgspec.msgpack.decode(first.data or b""))["received_at"]
    return max(0.0, (datetime.now(UTC) - at).total_seconds())


async def wait_empty(timeout: float, poll: float = 0.01) -> bool:
    """Wait until nothing waits in the stream (read-your-writes); False on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await pending():
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(poll)
    return True
