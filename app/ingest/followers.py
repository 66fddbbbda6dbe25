"""The outbox followers (consumers of ``ingest_outbox``, e.g. the segments' membership) run
after the processor stores: inside its loop (``Processor``: the in-service loop, a
standalone ``consentry worker``) or in a process of their own (``consentry worker
--followers-only``, which the service starts beside its processor child), so that on
SQLite their work takes neither the processor's core nor its event loop.

Followers are idempotent and keep their own cursor: a run cut short (a crash, a kill with
the parent) replays rows, never skips them."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

log = structlog.get_logger("consentry.ingest")
Follower = Callable[[], Awaitable[Any]]
BEHIND_S = 1.0
"""The processor is behind when the oldest queued batch has waited longer than this."""


async def run_followers(followers: list[Follower]) -> None:
    """Each follower once, in order; a failure is logged and retried at the next run."""
    for follower in followers:
        try:
            await follower()
        except Exception as exc:  # a consumer's failure never stops ingestion; it retries next time
            log.error("outbox_consumer_error", reason=f"{type(exc).__name__}: {str(exc)[:200]}")


def die_with(parent: int) -> None:
    """Ask Linux to end this process when its parent ends, even by ``kill -9`` (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the request was made
        os._exit(1)


async def inbox_behind() -> bool:
    """Has the oldest batch in the database inbox waited more than ``BEHIND_S`` (a backlog)?"""
    from sqlalchemy import select

    from app.db import table_of, unit_of_work
    from app.ingest.models import InboxBatch

    t = table_of(InboxBatch)
    q = select(t.c.received_at).where(t.c.status == "queued").order_by(t.c.id).limit(1)
    async with unit_of_work() as session:
        oldest = (await session.execute(q)).scalar()
    return oldest is not None and (datetime.now(UTC) - oldest).total_seconds() > BEHIND_S


def next_run(started: float, took: float, every: float, rest: float) -> float:
    """When the followers run again after a run that began at ``started`` (monotonic) and
    took ``took`` seconds: ``every`` after it began, or ``rest * took`` after it ended if later."""
    return started + max(every, (1 + rest) * took)


@dataclass
class FollowerLoop:
    """Run the followers every ``every`` seconds until ``parent`` is gone. A run that took
    ``t`` seconds is followed by a pause of at least ``rest * t``: idle, the outbox is applied
    within ``every``; under a sustained load the followers take at most 1 / (1 + rest) of a
    core (the processor's CPU on a small machine) and apply more rows per run (each run has
    a fixed cost: the segments' and traits' statements are built again)."""

    followers: list[Follower]
    every: float = 0.5
    rest: float = 1.0
    behind: Callable[[], Awaitable[bool]] | None = None
    """While this says the processor is behind, the followers run at most every ``busy_every``
    seconds: on SQLite their transactions hold the one write lock the processor waits for."""
    busy_every: float = 5.0

    async def run(self, parent: int | None = None) -> None:
        started = -self.busy_every
        while parent is None or os.getppid() == parent:
            if time.monotonic() - started < self.busy_every and await self._behind():
                await asyncio.sleep(self.every)
                continue
            started = time.monotonic()
            await run_followers(self.followers)
            due = next_run(started, time.monotonic() - started, self.every, self.rest)
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def _behind(self) -> bool:
        try:
            return self.behind is not None and await self.behind()
        except Exception as exc:  # the database went away: run as if idle (the run logs it)
            log.warning("inbox_depth_unknown", reason=type(exc).__name__)
            return False
