"""Journeys: how late due timers are sent, with no load (baseline) and under load, in one run.

    .venv/bin/python scripts/bench/journeys.py [--people 40000] [--timers 10000]
        [--baseline-timers 200] [--window 60] [--ingest-processes 1]
        [--database-url postgresql://postgres@127.0.0.1:5432/bench_journeys]

A fresh database (a temporary SQLite file, or the ``public`` schema of the PostgreSQL
database given, dropped and re-created), migrated, ``--people`` profiles with consent states
(``scripts/bench/decisions.py``'s generator, as the segments benchmark). One abandoned-cart
journey; its timers are written for people the decision engine allows, due uniformly over
``--window`` seconds starting a few seconds after the phase starts. The job is run as the
scheduler runs it (``run_triggers`` every ``TICK_S`` seconds, on the wall clock) until every
timer is consumed; the destination records when each person was sent.

  baseline  ``--baseline-timers`` timers, nothing else running;
  loaded    ``--timers`` timers while ``--ingest-processes`` processes ingest events through
            the pipeline as fast as they can (Segment-spec batches of 100, a fifth of them
            ``Product Added``, so the event scan makes timers too).

Lateness is send time minus due time (p50, p95, max, in seconds). The target is at most
60 s. The job's tick (10 s) is the floor of the figures: a timer due just after a tick waits
for the next one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
M = "marketing.advertising.first_party.targeted"


class Clocked:
    """A destination that only notes when each person was sent."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}

    async def __call__(self, session: Any, principal: Any, destination_id: str, profile_ids: Sequence[str],
                       purpose: str, *, reason: str, idempotency_key: str) -> Any:  # fmt: skip
        from app.journeys.delivery import Delivered

        at = time.time()
        for p in profile_ids:
            self.sent.setdefault(p, at)
        return Delivered(sent=frozenset(profile_ids))


async def _setup(n_timers: int, offset: int, window: float, start: datetime) -> tuple[str, dict[str, float]]:
    """A journey and ``n_timers`` timers for allowed people (from the ``offset``-th on)."""
    from sqlalchemy import insert, select

    from app.access.service import Principal
    from app.db import dispose_engines, table_of, unit_of_work
    from app.decisions.engine import Ask
    from app.decisions.service import population_predicate
    from app.journeys.models import Journey, JourneyTimer
    from app.profiles.service import population

    marketer = Principal(key_id="bench-marketer", role="marketer", name="bench")
    _t, person, region, live = population()
    rng = random.Random(offset)
    async with unit_of_work() as s:
        j = Journey(id=str(uuid.uuid4()), name=f"bench {offset}", kind="abandoned_cart", purpose=M,
                    destination_id="bench", definition={"hours": 1}, owner_key_id=marketer.key_id,
                    owner_role=marketer.role, created_at=start, updated_at=start)  # fmt: skip
        s.add(j)  # written as is: the benchmark's destination is the one below, not a stored one
        q = select(person).where(live, population_predicate(Ask(M), person, region)).order_by(person)
        ids = list((await s.execute(q.offset(offset).limit(n_timers))).scalars())
        due: dict[str, float] = {}
        rows = []
        for pid in ids:
            at = start + timedelta(seconds=rng.uniform(0, window))
            due[pid] = at.timestamp()
            anchor = at - timedelta(hours=1)
            row = {"journey_id": j.id, "profile_id": pid, "origin_id": pid, "key": "cart"}
            rows.append({**row, "id": str(uuid.uuid4()), "due_at": at, "anchor_at": anchor, "created_at": start})
        if rows:
            await s.execute(insert(table_of(JourneyTimer)), rows)
    await dispose_engines()
    return j.id, due


async def _drive(jid: str, due: dict[str, float], tick_s: int, timeout: float) -> tuple[Clocked, list[float]]:
    """Run the job every ``tick_s`` seconds on the wall clock until every timer of the
    phase's journey is consumed (the feeders' carts fall due an hour later)."""
    from sqlalchemy import func, select

    from app.db import dispose_engines, table_of, unit_of_work
    from app.journeys.models import JourneyTimer
    from app.journeys.service import run_triggers

    dest = Clocked()
    rounds: list[float] = []
    deadline = time.time() + timeout
    t = table_of(JourneyTimer)
    last = datetime.fromtimestamp(max(due.values(), default=0), UTC)
    while time.time() < deadline:
        await asyncio.sleep(tick_s - time.time() % tick_s)
        t0 = time.perf_counter()
        await run_triggers(now=datetime.now(UTC), sender=dest)
        rounds.append(time.perf_counter() - t0)
        async with unit_of_work() as s:
            q = select(func.count()).select_from(t).where(t.c.journey_id == jid, t.c.due_at <= last)
            left = int((await s.execute(q)).scalar() or 0)
        if left == 0:
            break
    await dispose_engines()
    return dest, rounds


def _phase(name: str, n: int, offset: int, args: argparse.Namespace) -> dict[str, Any]:
    from app.journeys.jobs import TICK_S

    start = datetime.now(UTC) + timedelta(seconds=5)
    jid, due = asyncio.run(_setup(n, offset, args.window, start))
    feeders = [
        subprocess.Popen([sys.executable, __file__, "--ingest", str(k)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for k in range(args.ingest_processes if name == "loaded" else 0)
    ]
    try:
        dest, rounds = asyncio.run(_drive(jid, due, TICK_S, args.window + 600))
    finally:
        rate = 0.0
        for p in feeders:
            p.terminate()
            out, _ = p.communicate(timeout=60)
            for line in out.splitlines():
                if line.startswith("stored "):
                    rate += int(line.split()[1]) / float(line.split()[2])
    late = sorted(dest.sent[p] - due[p] for p in due if p in dest.sent)
    return {
        "timers": len(due),
        "sent": len(late),
        "p50": statistics.median(late) if late else float("nan"),
        "p95": late[int(0.95 * (len(late) - 1))] if late else float("nan"),
        "max": late[-1] if late else float("nan"),
        "round_max": max(rounds) if rounds else 0.0,
        "ingest_eps": rate,
    }


def _ingest_main(k: int) -> None:
    """A feeder: ingest batches through the pipeline until terminated; prints what it stored."""
    import signal

    from app.access.service import Principal
    from app.db import unit_of_work
    from app.ingest.service import ingest_messages
    from app.profiles.service import VaultContext

    stored = [0]
    began = time.perf_counter()

    def stop(*_a: Any) -> None:
        print("stored", stored[0], time.perf_counter() - began, flush=True)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)

    async def feed() -> None:
        ctx = VaultContext.from_settings()
        principal = Principal("bench", "ingest", "bench", f"bench-{k}")
        rng = random.Random(k)
        b = 0
        while True:
            batch = []
            for e in range(100):
                person = rng.randrange(50_000)
                name = "Product Added" if rng.random() < 0.2 else rng.choice(["Product Viewed", "Page Viewed"])
                props = {"sku": f"SKU-{rng.randrange(500)}"}
                msg = {"type": "track", "event": name, "userId": f"feed-{person}", "properties": props}
                batch.append({**msg, "messageId": f"f{k}-{b}-{e}"})
            async with unit_of_work() as session:
                await ingest_messages(session, ctx, principal, batch)
            stored[0] += len(batch)
            b += 1

    asyncio.run(feed())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=40_000)
    parser.add_argument("--timers", type=int, default=10_000)
    parser.add_argument("--baseline-timers", type=int, default=200)
    parser.add_argument("--window", type=float, default=60.0, help="seconds over which the timers fall due")
    parser.add_argument("--ingest-processes", type=int, default=1)
    parser.add_argument("--database-url", default="", help="PostgreSQL database (its public schema is dropped)")
    parser.add_argument("--ingest", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ingest is not None:
        _ingest_main(args.ingest)
        return
    tmp = Path(tempfile.mkdtemp(prefix="consentry-bench-journeys-"))
    os.environ.update(
        {
            "CONSENTRY_DATABASE_URL": args.database_url or f"sqlite:///{tmp / 'bench.db'}",
            "CONSENTRY_KEY_DIR": str(tmp / "keys"),
            "CONSENTRY_LOG_LEVEL": "WARNING",
            "CONSENTRY_SCHEDULER": "0",
        }
    )
    try:
        if args.database_url:
            from scripts.bench.ingest import reset_postgres

            reset_postgres(args.database_url)
        subprocess.run([sys.executable, "-m", "app", "db", "upgrade"], cwd=ROOT, check=True, capture_output=True)
        from scripts.bench.segments import populate

        t0 = time.perf_counter()
        counts = populate(args.people, 2, bool(args.database_url))
        db = "PostgreSQL" if args.database_url else "SQLite"
        print(f"journeys benchmark on {db}, {os.cpu_count()} cores (shared: figures are noisy)")
        print(f"generated in {time.perf_counter() - t0:.0f} s: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        results = {
            "baseline": _phase("baseline", args.baseline_timers, 0, args),
            "loaded": _phase("loaded", args.timers, args.baseline_timers, args),
        }
        print(f"  {'':<9} {'timers':>7} {'sent':>7} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'round max s':>12} "
              f"{'ingest ev/s':>12}")  # fmt: skip
        for name, r in results.items():
            print(f"  {name:<9} {r['timers']:>7} {r['sent']:>7} {r['p50']:>7.1f} {r['p95']:>7.1f} {r['max']:>7.1f} "
                  f"{r['round_max']:>12.1f} {r['ingest_eps']:>12.0f}")  # fmt: skip
        print(json.dumps(results))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
