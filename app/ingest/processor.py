"""The inbox processor: claims accepted batches in groups of thousands of events, resolves and
seals them with one pass of the ingestion pipeline per group, and deletes them from the
inbox in the same transaction (a crash leaves the group queued, never half-applied).

A group that fails is retried batch by batch, so one poison batch never blocks the others;
a batch that fails ``MAX_ATTEMPTS`` times is set aside with its reason
(``GET /v1/ingest/status``). ``Processor`` runs inside the service (woken after each accept)
or alone as ``consentry worker``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import retry_conflicts, session_maker
from app.errors import DomainError
from app.ingest.followers import Follower, next_run, run_followers
from app.ingest.inbox import Claimed, claim, hold, opened, record_failure, remove
from app.ingest.service import BatchResult, Prepared, _validated, store_prepared
from app.pii.review import current_field_policy, record_sightings
from app.profiles.service import VaultContext
from app.vault.memo import memo_scope

log = structlog.get_logger("consentry.ingest")
GROUP_EVENTS = 5000
"""Events per group: enough that per-statement costs vanish, small enough to keep lag low."""


@dataclass
class Outcome:
    """What one ``process_next`` did."""

    batches: int = 0
    events: int = 0
    set_aside: list[int] = field(default_factory=list)
    profiles_created: int = 0
    profiles_updated: int = 0

    def add(self, other: Outcome) -> None:
        self.batches += other.batches
        self.events += other.events
        self.set_aside += other.set_aside
        self.profiles_created += other.profiles_created
        self.profiles_updated += other.profiles_updated


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection while a group is in hand: its tens of thousands of objects live
    until it commits, and each young collection would walk them all again. What a group
    leaves in cycles is collected when it ends."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _reason(exc: BaseException) -> str:
    """A failure's reason for admins: the error's kind and field, never a value."""
    where = getattr(exc, "field", None) if isinstance(exc, DomainError) else None
    return f"{type(exc).__name__}" + (f" (field {where})" if where else "")


async def _prepare(session: AsyncSession, ctx: VaultContext, batches: list[Claimed]) -> tuple[list[Prepared], Any]:
    """Validate and prepare the claimed messages again, as when they were accepted (CPU only);
    what the field policy decides is checked again (it may have changed since), their size not."""
    fp = await current_field_policy(session, ctx.policies, ctx.keys.index_key)
    principal = batches[0].principal
    group: list[Prepared] = []
    dropped = BatchResult()
    for b in batches:
        args = (b.defaults, b.kind, b.require_ids, b.received_at, fp)
        prepared = _validated(ctx, principal, b.messages, dropped, *args, sized=True)
        for p in prepared:
            p.gpc = b.gpc
        group += prepared
    if dropped.rejected:  # the field policy changed since acceptance: counted, never stored half
        log.warning("inbox_messages_refused_late", count=len(dropped.rejected))
    return group, fp


async def _store(
    session: AsyncSession, ctx: VaultContext, batches: list[Claimed], group: list[Prepared], fp: Any
) -> BatchResult:
    """Store a prepared group (one pass of the pipeline) and remove its batches from the inbox."""
    principal = batches[0].principal
    stored = await retry_conflicts(session, lambda: store_prepared(session, ctx, principal, group, registered=True))
    sightings: Counter[tuple[str, str]] = Counter()
    for p in group:
        sightings.update(p.unknown)
    await record_sightings(session, fp, sightings)
    await remove(session, [b.id for b in batches])
    return stored


async def process_next(
    ctx: VaultContext, maker: async_sessionmaker[AsyncSession] | None = None, max_events: int = GROUP_EVENTS
) -> Outcome:
    """Process one group: from the JetStream inbox when ``CONSENTRY_INBOX_URL`` names one (then
    the database inbox, where an admin's retry of a set-aside batch lands), else from the
    database inbox. Outcome.batches 0: nothing was waiting."""
    from app.ingest import jetstream

    if jetstream.enabled():
        out: Outcome = await jetstream.process_next(ctx, maker, max_events)
        if out.batches:
            return out
    with _collector_paused():  # back on once the group's objects are gone with its frame
        return await _process_inbox(ctx, maker, max_events)


async def _process_inbox(
    ctx: VaultContext, maker: async_sessionmaker[AsyncSession] | None = None, max_events: int = GROUP_EVENTS
) -> Outcome:
    """Claim and process one group; on failure retry its batches one by one. Outcome.batches 0: queue empty."""
    maker = maker or session_maker()
    async with maker() as session:
        rows = await claim(session, max_events)
        if not rows:
            return Outcome()
        try:
            with memo_scope():  # the group's identifiers repeat: each hashed and parsed once
                batches = [opened(ctx, r) for r in rows]
                group, fp = await _prepare(session, ctx, batches)
                if not await hold(session, [b.id for b in batches]):
                    await session.rollback()  # another processor stored them meanwhile
                    return await _process_inbox(ctx, maker, max_events)
                stored = await _store(session, ctx, batches, group, fp)
            await session.commit()
            events = sum(len(b.messages) for b in batches)
            return Outcome(len(batches), events, [], stored.profiles_created, stored.profiles_updated)
        except Exception as exc:  # a poison batch among them: isolate it
            await session.rollback()
            if len(rows) == 1:
                return await _failed(maker, rows[0].id, exc)
    out = Outcome()
    for _row in rows:  # one at a time: the poison one fails alone, the others are stored
        out.add(await _process_inbox(ctx, maker, max_events=1))
    return out


async def _failed(maker: async_sessionmaker[AsyncSession], batch_id: int, exc: BaseException) -> Outcome:
    reason = _reason(exc)
    async with maker() as session:
        aside = await record_failure(session, batch_id, reason)
        await session.commit()
    log.error("inbox_batch_failed", batch=batch_id, reason=reason, set_aside=aside)
    return Outcome(1, 0, [batch_id] if aside else [])


async def drain(ctx: VaultContext | None = None, maker: async_sessionmaker[AsyncSession] | None = None) -> int:
    """Process until the queue is empty (set-aside batches stay); returns events stored."""
    return (await drain_outcome(ctx, maker)).events


async def drain_outcome(
    ctx: VaultContext | None = None, maker: async_sessionmaker[AsyncSession] | None = None
) -> Outcome:
    """Process until the queue is empty; what was done, summed over the groups."""
    ctx = ctx or VaultContext.from_settings()
    total = Outcome()
    while True:
        out = await process_next(ctx, maker)
        if out.batches == 0:
            return total
        total.add(out)


@dataclass
class Processor:
    """The loop that drains the inbox: woken by ``wake()`` after each accept, else every ``idle`` seconds."""

    idle: float = 0.5
    max_events: int = GROUP_EVENTS
    followers: list[Follower] = field(default_factory=list)
    """Run after storing, at most every ``follow_every`` seconds: consumers of the outbox
    (the service and ``consentry worker`` add the segments' one; ingest never imports them)."""
    follow_every: float = 0.5
    follow_rest: float = 1.0
    """A followers' run that took ``t`` seconds is followed by a pause of at least ``rest * t``:
    under a sustained load they take at most half the loop (see ``FollowerLoop``)."""
    _follow_next: float = 0.0
    _following: asyncio.Task[None] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self, grace: float = 10.0) -> None:
        """Finish the group in hand (up to ``grace`` seconds), then stop; a group cut short
        is rolled back and stays queued."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._task, grace)
        except TimeoutError:
            pass
        finally:
            self._task = None

    async def run(self, stop_when_empty: bool = False, parent: int | None = None) -> None:
        """Drain, then wait to be woken; ``parent``: also stop once that process is gone."""
        ctx = VaultContext.from_settings()
        while not self._stopping and (parent is None or os.getppid() == parent):
            self._wake.clear()
            try:
                out = await process_next(ctx, max_events=self.max_events)
            except Exception as exc:  # the database went away: keep the loop alive
                log.error("inbox_processor_error", reason=_reason(exc))
                out = Outcome()
                await asyncio.sleep(self.idle)
            self._follow()
            if out.batches:
                continue
            if stop_when_empty:
                await self._settle(again=True)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.idle)
        await self._settle()  # a consumer's run in hand ends with its transaction

    def _follow(self) -> None:
        """Start the followers, one run at a time, beside processing (a slow consumer never
        holds ingestion up; rows it has not read wait in the outbox)."""
        busy = self._following is not None and not self._following.done()
        if not self.followers or busy or time.monotonic() < self._follow_next:
            return
        self._following = asyncio.get_running_loop().create_task(self._run_followers())

    async def _settle(self, again: bool = False) -> None:
        """Wait for the followers' run in hand; ``again``: then run them once more."""
        if self._following is not None:
            await self._following
            self._following = None
        if again and self.followers:
            await run_followers(self.followers)

    async def _run_followers(self) -> None:
        started = time.monotonic()
        await run_followers(self.followers)
        self._follow_next = next_run(started, time.monotonic() - started, self.follow_every, self.follow_rest)


@dataclass
class ChildProcessor:
    """The service's processor as ``consentry worker`` child processes: one processes the
    inbox (``--no-followers``), one runs the outbox followers (``--followers-only``), so the
    service answers requests and the followers run on one core while the inbox is processed
    on another (in the processor's loop the followers took ~30% of its CPU and event loop).
    The children stop with the service, and by themselves when it is gone (even after ``kill -9``)."""

    idle: float = 0.05
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def wake(self) -> None:
        """The child polls the inbox every ``idle`` seconds."""

    def start(self) -> None:
        worker = [sys.executable, "-m", "app", "worker", "--parent", str(os.getpid())]
        self._procs = [
            subprocess.Popen([*worker, "--idle", str(self.idle), "--no-followers"]),
            subprocess.Popen([*worker, "--followers-only"]),
        ]

    async def stop(self, grace: float = 10.0) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                await asyncio.to_thread(proc.wait, grace)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._procs = []


def service_processor(mode: str) -> Processor | ChildProcessor | None:
    """The processor a service runs for ``CONSENTRY_INGEST_PROCESSOR`` (not started yet)."""
    if mode == "off":
        return None
    return Processor() if mode == "loop" else ChildProcessor()
