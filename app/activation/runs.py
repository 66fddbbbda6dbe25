"""Segment runs, streamed and resumable.

A run selects its people from the segment's materialised members (``segment_member``) with
the decision engine's population predicate joined on (consent decided now, restricted,
suppressed and profiling refusals excluded), then streams them in chunks: the sealed fields
of the allowed categories are read for a chunk while the previous ones are opened (in worker
processes for a large run, ``unseal``) and delivered. A webhook's batches go out a few at a
time over kept-alive connections; as each batch is answered its recipient rows are written
(``RowWriter``: whatever batches were answered meanwhile, in one transaction), so a run
knows at every moment whom it sent. A file is written as the chunks come and renamed into
place when complete; its recipient rows are written with the run's report.

Resuming: the process carrying a run out holds it (``owner``) and shows it is alive every
``BEAT`` seconds (``heartbeat_at``). A run silent for ``STALE`` (its process died) is taken
over by ``resume_stale`` (the activation job, every minute): the people it already sent are
skipped, the rest are decided again and sent — each person keeps the delivery id of the run,
and batches of a later attempt have ids of their own — and the run ends with one Merkle root
and one ledger entry over everyone it sent. A process that lost its run writes nothing more.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, delete, exists, func, or_, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.activation import delivery, egress, proof, service, unseal
from app.activation.audiences import MIN_AUDIENCE
from app.activation.delivery import Outbound
from app.activation.destinations import get_destination, secret_of
from app.activation.models import ActivationFile, ActivationRecipient, ActivationRun, DeadLetter, Destination
from app.activation.proof import Recipients
from app.activation.sinks import FileSink
from app.consent.gate import decide
from app.db import table_of, unit_of_work
from app.decisions.engine import allowed_categories
from app.decisions.service import current_rules
from app.errors import DomainError
from app.ledger.service import record_group
from app.logs import scrub_text
from app.segments.service import get_segment, members_query
from app.settings import get_settings
from app.vault.keyring import key_material
from audit.merkle import root

log = structlog.get_logger("consentry.activation")
CHUNK = 2000
"""People read, opened and handed to delivery at a time."""
AHEAD = 4
"""Chunks being read and opened ahead of delivery (two per worker)."""
SCREEN_ROWS = 10_000
"""Rows of a streamed screen fetched at a time."""
BEAT = 15.0
"""Seconds between a running run's heartbeats."""
STALE = timedelta(minutes=2)
"""A running run without a heartbeat for this long lost its process: it is taken over."""
MAX_ATTEMPTS = 3
"""A run taken this many times without finishing is marked failed instead."""
FILE_KINDS = ("file", "ad_audience")
STATUS = proof.COLUMNS.index("status")


class LeaseLost(Exception):
    """Another process took the run over: this one stops and writes nothing more."""


@dataclass
class Lease:
    run_id: str
    owner: str
    attempt: int
    lost: bool = False
    progress: dict[str, int] = field(default_factory=dict)
    """Counts the next heartbeat shows (a file run's people so far, before its rows are written)."""

    async def beat(self, **values: Any) -> None:
        """Heartbeat (and ``values``) in its own transaction; ``LeaseLost`` if the run is not ours."""
        async with unit_of_work() as session:
            await self.beat_in(session, **values)

    async def beat_in(self, session: AsyncSession, **values: Any) -> None:
        t = table_of(ActivationRun)
        q = update(t).where(t.c.id == self.run_id, t.c.owner == self.owner, t.c.status == "running")
        result = await session.execute(q.values(heartbeat_at=datetime.now(UTC), **values))
        if not getattr(result, "rowcount", 0):
            self.lost = True
            raise LeaseLost(self.run_id)


# --- starting and resuming ---------------------------------------------------------------


async def execute_run(run_id: str) -> service.SendResult | None:
    """Carry out a queued run (None when another process took it, or it is not queued)."""
    lease = Lease(run_id, secrets.token_hex(16), 1)
    now = datetime.now(UTC)
    taken = await service._set(
        run_id, _from="queued", status="running", started_at=now, heartbeat_at=now, owner=lease.owner, attempts=1
    )
    return await carry(lease) if taken else None


async def resume_stale(now: datetime) -> dict[str, int]:
    """Take over and finish every run whose process stopped (running and silent for ``STALE``,
    or queued and never started); a run taken ``MAX_ATTEMPTS`` times is marked failed."""
    t = table_of(ActivationRun)
    silent = or_(t.c.heartbeat_at < now - STALE, and_(t.c.heartbeat_at.is_(None), t.c.created_at < now - STALE))
    stale = or_(and_(t.c.status == "running", silent), and_(t.c.status == "queued", t.c.created_at < now - STALE))
    async with unit_of_work() as session:
        found = (await session.execute(select(t.c.id, t.c.status, t.c.attempts).where(stale))).all()
    out = {"resumed": 0, "failed": 0}
    for run_id, status, attempts in found:
        taken = update(t).where(t.c.id == run_id, t.c.status == status, t.c.attempts == attempts)
        if attempts >= MAX_ATTEMPTS:
            message = f"interrupted: the run's process stopped {attempts} times"
            async with unit_of_work() as session:
                done = await session.execute(
                    taken.values(status="failed", refusal=message, finished_at=datetime.now(UTC))
                )
            out["failed"] += int(getattr(done, "rowcount", 0) or 0)
            continue
        lease = Lease(run_id, secrets.token_hex(16), attempts + 1)
        beat = datetime.now(UTC)
        values: dict[str, Any] = {"status": "running", "owner": lease.owner, "heartbeat_at": beat}
        async with unit_of_work() as session:
            result = await session.execute(taken.values(attempts=attempts + 1, **values))
        if getattr(result, "rowcount", 0):
            if status == "queued":
                await service._set(run_id, started_at=beat)
            log.warning("activation_resumed", run=run_id, attempt=lease.attempt)
            await carry(lease)
            out["resumed"] += 1
    return out


async def carry(lease: Lease) -> service.SendResult | None:
    """Run it while showing it is alive; a failure marks the run failed with the error's type
    (or a domain error's text); a lost lease leaves the run to its new owner."""
    beating = asyncio.create_task(_beating(lease))
    try:
        return await _run(lease)
    except LeaseLost:
        log.warning("activation_taken_over", run=lease.run_id)
        return None
    except Exception as exc:  # the run must end in a state the API shows
        message = scrub_text(exc.detail if isinstance(exc, DomainError) else type(exc).__name__)[:300]
        log.error("activation_failed", run=lease.run_id, error=message)
        t = table_of(ActivationRun)
        async with unit_of_work() as session:
            await session.execute(
                update(t)
                .where(t.c.id == lease.run_id, t.c.owner == lease.owner)
                .values(status="failed", refusal=message, finished_at=datetime.now(UTC))
            )
        return None
    finally:
        beating.cancel()


async def _beating(lease: Lease) -> None:
    while not lease.lost:
        await asyncio.sleep(BEAT)
        try:
            await lease.beat(**lease.progress)
        except LeaseLost:
            return
        except Exception as exc:  # a missed heartbeat is retried at the next one
            log.warning("activation_heartbeat_failed", run=lease.run_id, error=type(exc).__name__)


# --- one run -----------------------------------------------------------------------------


@dataclass
class Earlier:
    """What earlier attempts of the run recorded (nothing for a first attempt)."""

    sent: list[str] = field(default_factory=list)
    leaves: list[bytes] = field(default_factory=list)
    failed: int = 0
    fields: set[str] = field(default_factory=set)
    next_batch: int = 0


async def _earlier(session: AsyncSession, run_id: str) -> Earlier:
    r = table_of(ActivationRecipient)
    q = select(r.c.origin_id, r.c.salt, r.c.leaf_index, r.c.status, r.c.fields, r.c.batch).where(r.c.run_id == run_id)
    out = Earlier()
    for origin, salt, leaf, status, names, batch in sorted((await session.execute(q)).all(), key=lambda x: x[2]):
        out.next_batch = max(out.next_batch, batch + 1)
        out.fields.update(names)
        if status == "sent" and leaf >= 0:
            out.sent.append(origin)
            out.leaves.append(proof.leaf(run_id, origin, salt))
        elif status == "failed":
            out.failed += 1
    return out


async def _members(session: AsyncSession, segment_id: str) -> int:
    members = members_query(segment_id).subquery()
    return int((await session.execute(select(func.count()).select_from(members))).scalar() or 0)


def candidates(segment_id: str, run_id: str) -> Any:
    """The segment's current members the run has not recorded yet (all of them, at first)."""
    members, r = members_query(segment_id), table_of(ActivationRecipient)
    recorded = exists().where(r.c.run_id == run_id, r.c.origin_id == members.selected_columns[0])
    return members.where(~recorded)


async def _run(lease: Lease) -> service.SendResult:
    async with unit_of_work() as session:  # reads only: who, and (streamed) what
        run = await service.get_run(session, lease.run_id)
        principal = Principal(key_id=run.actor_key_id, role=run.actor_role, name=f"activation {run.trigger}")
        seg = await get_segment(session, str(run.segment_id))
        dest = await get_destination(session, run.destination_id)
        if dest.kind in FILE_KINDS:  # a file is written whole: an earlier attempt's rows go
            await _forget_earlier(run.id)
        earlier = await _earlier(session, run.id)
        with unseal.Opener(pooled=await _members(session, seg.id) >= unseal.POOL_FROM) as opener:
            opener.begin()  # workers start while the people are decided
            profiling = service._profiling(seg.purpose, run.purpose)
            clock = time.perf_counter()
            ask, now, among = service.ask_for(dest), datetime.now(UTC), candidates(seg.id, run.id)
            excluded: dict[str, str] = {}
            if opener.pool is not None and session.get_bind().dialect.name == "postgresql":
                chunks = _decided(lease, earlier, (ask, profiling, now, among), excluded, clock)
            else:
                await _serial(session)
                allowed, excluded = await service.screen(session, ask, profiling, now, true(), among)
                log.info("activation_screened", run=run.id, allowed=len(allowed), seconds=_since(clock))
                await lease.beat(total=len(earlier.sent) + earlier.failed + len(allowed) + len(excluded))
                chunks = _listed(allowed)
            sink = await _stream(session, lease, dest, earlier, chunks, excluded, opener)
    refusal = _refusal(dest, sink.count() + len(earlier.sent))
    got = await sink.close(refuse=refusal is not None)
    log.info("activation_delivered", run=lease.run_id, seconds=_since(clock))
    async with unit_of_work() as session:  # then write what happened
        run = await service.get_run(session, lease.run_id)
        await lease.beat_in(session)
        return await finish(session, principal, run, dest, earlier, got, excluded, refusal)


async def _serial(session: AsyncSession) -> None:
    """PostgreSQL: this reads-only transaction's statements run in one process. The screen's
    plan joins per-person consent aggregates to a parallel scan of the people: every parallel
    worker computed the whole aggregates again (1,000,000 people, 250,000 members, loaded:
    3.0-3.1 s over three processes -> 1.6-2.2 s in one), and the run's own workers need the cores."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))


async def _listed(allowed: list[str]) -> AsyncGenerator[list[str], None]:
    for chunk in unseal.split(allowed, CHUNK):
        yield chunk


async def _decided(
    lease: Lease, earlier: Earlier, screen: tuple[Any, bool, datetime, Any], excluded: dict[str, str], clock: float
) -> AsyncGenerator[list[str], None]:
    """The allowed people ``CHUNK`` at a time in id order as the screen decides them
    (PostgreSQL, a large run): its statement is streamed through a server-side cursor in a
    reads-only transaction of its own, so the first chunks are read and opened by the workers
    while the rest are still being decided; the excluded go into ``excluded`` meanwhile. The
    order is the database's (``ORDER BY`` the id: for the uuid ids the same as Python's)."""
    ask, profiling, now, among = screen
    allowed, n = [], 0
    async with unit_of_work() as session:
        await _serial(session)
        q = service.screen_query(session, ask, profiling, now, true(), among)
        result = await session.stream(q.execution_options(yield_per=SCREEN_ROWS))
        async for rows in result.partitions():
            for pid, why in rows:
                if why != "allowed":
                    excluded[pid] = str(why)
                    continue
                allowed.append(pid)
                if len(allowed) == CHUNK:
                    n += CHUNK
                    yield allowed
                    allowed = []
    n += len(allowed)
    log.info("activation_screened", run=lease.run_id, allowed=n, seconds=_since(clock))
    await lease.beat(total=len(earlier.sent) + earlier.failed + n + len(excluded))
    if allowed:
        yield allowed


async def _stream(
    session: AsyncSession,
    lease: Lease,
    dest: Destination,
    earlier: Earlier,
    chunks: AsyncGenerator[list[str], None],
    excluded: dict[str, str],
    opener: unseal.Opener,
) -> Any:
    """Hand the allowed people to the destination's sink chunk by chunk (adding to
    ``excluded`` those without the data the kind needs); returns the sink, still open."""
    clock = time.perf_counter()
    spent = {"read": 0.0, "open": 0.0, "deliver": 0.0, "record": 0.0}  # seconds per stage (they overlap)
    writer = RowWriter(lease, dest, lease.run_id, earlier, spent)
    sink = _sink(lease, dest, lease.run_id, earlier, writer)
    async for people, missing in opened(session, dest, lease.run_id, chunks, opener, spent):
        excluded.update(missing)
        began = time.perf_counter()
        await sink.put(people)
        spent["deliver"] += time.perf_counter() - began
        if lease.lost:
            raise LeaseLost(lease.run_id)
    log.info(
        "activation_streamed", run=lease.run_id, seconds=_since(clock), **{k: round(v, 1) for k, v in spent.items()}
    )
    return sink


def _since(clock: float) -> float:
    return round(time.perf_counter() - clock, 2)


def _sink(lease: Lease, dest: Destination, run_id: str, earlier: Earlier, writer: RowWriter) -> Any:
    if dest.kind in FILE_KINDS:
        return FileSink(dest, run_id, get_settings().default_region, writer)
    return WebhookSink(dest, run_id, lease, earlier, writer)


async def _forget_earlier(run_id: str) -> None:
    """Remove what an earlier attempt recorded of a file run (its file was never registered)."""
    r = table_of(ActivationRecipient)
    async with unit_of_work() as session:
        await session.execute(delete(r).where(r.c.run_id == run_id))


def _refusal(dest: Destination, people: int) -> str | None:
    if dest.kind != "ad_audience":
        return None
    floor = int(dest.config.get("min_audience", MIN_AUDIENCE))
    return f"audience below the destination's minimum size ({people} < {floor})" if people < floor else None


async def opened(
    session: AsyncSession,
    dest: Destination,
    run_id: str,
    chunks: AsyncGenerator[list[str], None],
    opener: unseal.Opener,
    spent: dict[str, float],
) -> AsyncIterator[tuple[list[Outbound], dict[str, str]]]:
    """The people chunk by chunk as the destination receives them (allowed categories only),
    with those left out because the data the kind needs is missing. One task takes the id
    chunks as the screen decides them, another has them read and opened (by the workers, for
    a large run) up to ``AHEAD`` chunks ahead of the caller, who delivers them in order."""
    cats = tuple(allowed_categories(current_rules(), service.ask_for(dest)))
    keys = key_material(get_settings())
    needs = service.NEEDS.get(dest.kind)
    authority = dict(service.trait_authority())
    job = unseal.FetchJob([], cats, get_settings().database_url, _masters(keys.master), authority, run_id, dest.id,
                          keys.index_key)  # fmt: skip
    ahead: asyncio.Queue[asyncio.Future[list[Outbound]] | None] = asyncio.Queue()
    slots = asyncio.Semaphore(AHEAD)

    async def submit(ids: list[str]) -> asyncio.Future[list[Outbound]]:
        if opener.pool is not None:  # the worker reads the chunk itself
            return asyncio.ensure_future(opener.fetch(replace(job, people=ids)))
        sealed = await read_sealed(session, ids, cats, keys.master, authority)
        sealed = replace(sealed, run_id=run_id, destination_id=dest.id, index_key=keys.index_key)
        return asyncio.ensure_future(opener.open(sealed))

    decided: asyncio.Queue[list[str] | None] = asyncio.Queue()

    async def pull() -> None:  # the screen runs ahead of the workers (ids only)
        try:
            async for ids in chunks:
                decided.put_nowait(ids)
        finally:
            decided.put_nowait(None)

    async def feed() -> None:
        pulling = asyncio.create_task(pull())
        try:
            while (ids := await decided.get()) is not None:
                await slots.acquire()
                clock = time.perf_counter()
                ahead.put_nowait(await submit(ids))
                spent["read"] += time.perf_counter() - clock
            await pulling  # what stopped the screen (the run was taken over), if anything
        finally:
            pulling.cancel()  # a screen stopped half-way ends its transaction
            await asyncio.gather(pulling, return_exceptions=True)
            ahead.put_nowait(None)

    feeding = asyncio.create_task(feed())
    try:
        while (next_chunk := await ahead.get()) is not None:
            slots.release()
            clock = time.perf_counter()
            got = await next_chunk
            spent["open"] += time.perf_counter() - clock
            people, missing = [], {}
            for p in got:
                if needs and not any(p.fields.get(n) for n in needs):
                    missing[p.profile_id] = f"no {' or '.join(needs)}"
                else:
                    people.append(p)
            yield people, missing
        await feeding  # what stopped the feed (the screen failed, the run was taken over), if anything
    finally:
        feeding.cancel()


def _masters(ring: Any) -> dict[int, bytes]:
    """Every master key version of the ring (a worker unwraps whichever its chunk needs)."""
    ring.current()  # picks up a rotation made by another process
    return {v: ring.get(v) for v in sorted(ring.keys)}


async def read_sealed(
    session: AsyncSession, ids: list[str], categories: Sequence[str], ring: Any, authority: Any
) -> unseal.SealedChunk:
    """The sealed fields precedence shows of these people, of these categories only (no other
    field is read), and the wrapped keys of their origins (``unseal.read_rows``, through the
    session's connection)."""
    fields, keys = await session.run_sync(lambda s: unseal.read_rows(s.connection(), ids, categories, authority))
    masters = {mv: ring.get(mv) for mv in {v[0] for v in keys.values()}}
    return unseal.SealedChunk(ids, fields, keys, masters, "", "", b"")


# --- delivery to a webhook, WeCom or SMS gateway ------------------------------------------


class RowWriter:
    """Writes a run's recipients as their batches are answered: whatever was answered
    meanwhile goes in one transaction, with the run's heartbeat and progress (only while the
    run is still ours)."""

    def __init__(self, lease: Lease, dest: Destination, run_id: str, earlier: Earlier, spent: dict[str, float]) -> None:
        self.lease, self.recipients, self.spent = lease, Recipients(run_id, dest.id, len(earlier.leaves)), spent
        self.sent, self.failed = len(earlier.sent), earlier.failed
        self.pending: list[tuple[Any, ...]] = []
        self.dead: list[dict[str, Any]] = []
        self.wake = asyncio.Event()
        self.closing = False
        self.task = asyncio.create_task(self._loop())

    def add(self, batch: list[Outbound], n: int, ok: bool, dead: dict[str, Any] | None) -> None:
        """A webhook batch answered (``ok``) or given up (its dead letter)."""
        self.push(self.recipients.rows(batch, "sent" if ok else "failed", n, datetime.now(UTC)))
        if dead is not None:
            self.dead.append(dead)
            self.wake.set()

    def progress(self, sent: int) -> None:
        """People handed over so far, before their rows are written (shown by the heartbeat)."""
        self.lease.progress = {"sent": sent}

    def push(self, rows: list[tuple[Any, ...]]) -> None:
        """Rows to write (``proof.COLUMNS`` order)."""
        for row in rows:
            if row[STATUS] == "sent":
                self.sent += 1
            else:
                self.failed += 1
        self.pending += rows
        self.wake.set()

    async def _loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            rows, self.pending = self.pending, []
            dead, self.dead = self.dead, []
            if rows or dead:
                await self._write(rows, dead)
            if self.closing and not self.pending and not self.dead:
                return

    async def _write(self, rows: list[tuple[Any, ...]], dead: list[dict[str, Any]]) -> None:
        clock = time.perf_counter()
        async with unit_of_work() as session:
            await self.lease.beat_in(session, sent=self.sent, failed=self.failed)
            await proof.insert_recipients(session, rows)
            for d in dead:
                session.add(DeadLetter(run_id=self.lease.run_id, **d))
        self.spent["record"] += time.perf_counter() - clock

    def check(self) -> None:
        """Raise what stopped the writer (a lost lease, a database error), if it stopped."""
        if self.task.done():
            self.task.result()

    async def close(self) -> None:
        self.closing = True
        self.wake.set()
        await self.task


class WebhookSink:
    """Batches posted a few at a time over one kept-alive client while later chunks are
    opened; each answer handed to the ``RowWriter``."""

    def __init__(self, dest: Destination, run_id: str, lease: Lease, earlier: Earlier, writer: RowWriter) -> None:
        self.dest, self.run_id, self.lease = dest, run_id, lease
        self.size = int(dest.config.get("batch_size", 500))
        self.secret = secret_of(dest)
        self.client = egress.client(delivery.CONCURRENT_BATCHES)
        self.gate = asyncio.Semaphore(delivery.CONCURRENT_BATCHES)
        self.tasks: set[asyncio.Task[None]] = set()
        self.next = earlier.next_batch
        self.writer = writer
        self.sent_people = 0

    def count(self) -> int:
        return self.sent_people

    async def put(self, people: list[Outbound]) -> None:
        self.writer.check()
        for batch in delivery.batches_of(self.dest, people, self.size):
            await self.gate.acquire()
            task = asyncio.create_task(self._one(self.next, batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            self.next += 1
        self.sent_people += len(people)

    async def _one(self, n: int, batch: list[Outbound]) -> None:
        try:
            mid = self.run_id if self.lease.attempt == 1 else f"{self.run_id}:{self.lease.attempt}"
            body = delivery.body_of(self.dest, self.run_id, n, batch)
            result = await delivery.post(self.client, self.dest, body, delivery.message_id(mid, str(n)), self.secret)
        finally:
            self.gate.release()
        dead = None
        if not result.ok:
            dead = delivery.dead_letter(n, len(batch), result)
            dead.update(destination_id=self.dest.id, created_at=datetime.now(UTC), id=secrets.token_hex(16))
        self.writer.add(batch, n, result.ok, dead)

    async def close(self, refuse: bool = False) -> Recipients:
        try:
            await asyncio.gather(*list(self.tasks))
        finally:
            await self.client.aclose()
        await self.writer.close()
        return self.writer.recipients


# --- the end of a run --------------------------------------------------------------------


async def finish(
    session: AsyncSession,
    principal: Principal,
    run: ActivationRun,
    dest: Destination,
    earlier: Earlier,
    got: Recipients,
    excluded: dict[str, str],
    refusal: str | None,
) -> service.SendResult:
    """Write the run's report, its leaves and one ledger entry over everyone it sent (in
    ``session``'s transaction); a file's recipients and the file itself are recorded here."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    if refusal:  # nothing left: a refused audience was never written
        r = table_of(ActivationRecipient)
        await session.execute(delete(r).where(r.c.run_id == run.id))
        got = Recipients(run.id, dest.id)
    if got.file is not None:
        session.add(ActivationFile(run_id=run.id, destination_id=dest.id, created_at=now, **got.file))
    sent = earlier.sent + got.sent
    leaves = earlier.leaves + got.leaves
    failed = earlier.failed + got.failed
    run.status = "refused" if refusal else "failed" if failed and not sent else "done"
    run.refusal, run.finished_at, run.policy_version = refusal, now, current_rules().version
    run.total = len(sent) + failed + len(excluded)
    run.sent, run.failed = len(sent), failed
    run.excluded = service.counts(excluded)
    run.merkle_root = root(leaves).hex() if leaves else None
    await session.flush()
    if leaves:
        await proof.store_leaves(session, run.id, b"".join(leaves))
    fields = sorted(earlier.fields | got.fields)
    entry = await record_group(
        session,
        principal,
        "activation.run",
        sent,
        purpose=run.purpose,
        legal_basis=decide(principal, run.purpose).legal_basis,
        details=service._ledger_details(run, dest, fields),
    )
    run.ledger_seq = entry.seq
    await session.flush()
    log.info("activation_finished", run=run.id, sent=len(sent), seconds=_since(started))
    return service.SendResult(run.id, run.status, sent, dict(excluded), got.failed_ids, refusal)
