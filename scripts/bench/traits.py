"""Computed traits: a full refresh of every trait, each trait's statement on its own, and
incremental refreshes of a few named people — against one full scan of the events as the
baseline, in the same run.

    .venv/bin/python scripts/bench/traits.py [--people 100000] [--events 10] [--repeat 3]
        [--database-url postgresql://postgres@127.0.0.1:5432/bench_traits]
        [--sqlite-file /tmp/traits.db] [--reuse]

A fresh database each run (a new SQLite file, or the ``public`` schema of a PostgreSQL
database named ``bench*`` or ``test_*`` dropped and re-created), migrated, then ``--people``
profiles (``scripts/bench/population.py``'s people: 2% refuse profiling) and about
``--events`` events a person over 400 days (seeded): page and product views, products
added, sign-ups and orders (revenue, category, 1 to 3 of 500 product ids). ``ANALYZE`` after
the load (``VACUUM ANALYZE`` on PostgreSQL).

Measured (medians of ``--repeat``; every refresh is rolled back):
  baseline     ``SELECT count(*), max(occurred_at) FROM event``: one scan of the events;
  full         ``refresh_traits(session)``: every trait for everyone;
  trait NAME   one trait's insert for everyone (once);
  named 100 / named 1000   ``refresh_traits(session, ids)`` for that many random people
               (what the segments outbox consumer calls for touched people);
  due people   ``due_people(session, now - 15 min, now)``: whom time changed since a run
               15 minutes ago (the scheduled refresh's question, through the index on
               event (name, occurred_at));
  due refresh  ``refresh_due(session)`` 15 minutes after the last run: what the scheduled
               ``traits.refresh`` job does between its daily full refreshes.
With ``--skip-full`` the full refresh and the per-trait statements are left out (at
1,000,000 people they take many minutes on a loaded machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from scripts.bench.population import pid, reset_postgres  # noqa: E402
from scripts.bench.population import populate as generate  # noqa: E402

NOW = datetime.now(UTC)
NAMES = ["Page Viewed"] * 4 + ["Product Viewed"] * 3 + ["Product Added", "Order Completed", "Signed Up"]
CATEGORIES = ["basketball shoes", "running shoes", "socks", "shirts", "basketballs", "hats", "bags"]


def _properties(rng: random.Random, name: str) -> dict[str, Any]:
    if name == "Page Viewed" or name == "Signed Up":
        return {}
    category = rng.choice(CATEGORIES)
    if name != "Order Completed":
        return {"category": category, "product_id": f"p{rng.randrange(500)}"}
    items = [{"product_id": f"p{min(rng.randrange(500), rng.randrange(500))}"} for _ in range(rng.randint(1, 3))]
    return {"category": category, "revenue": rng.randrange(5, 400), "products": items}


def buyer(_rng: random.Random) -> Callable[[random.Random, int], tuple[str, str, datetime]]:
    """One person's events over 400 days: views, products added, sign-ups, orders."""

    def event(rng: random.Random, _k: int) -> tuple[str, str, datetime]:
        name = NAMES[rng.randrange(len(NAMES))]
        at = NOW - timedelta(minutes=rng.randrange(400 * 24 * 60))
        return name, json.dumps(_properties(rng, name)), at

    return event


def populate(n: int, per_person: int, postgres: bool) -> dict[str, int]:
    return generate(n, per_person, postgres, buyer)


async def _timed(work: Callable[[Any], Awaitable[Any]]) -> tuple[float, Any]:
    """Seconds ``work(session)`` takes in a transaction that is rolled back."""
    from app.db import session_maker

    async with session_maker()() as session:
        t0 = time.perf_counter()
        out = await work(session)
        seconds = time.perf_counter() - t0
        await session.rollback()
    return seconds, out


async def measure(people: int, repeat: int, full: bool = True) -> dict[str, tuple[float, str]]:
    from sqlalchemy import func, insert, select

    from app.db import dispose_engines, session_maker, table_of
    from app.ingest.event_reads import events_table
    from app.traits.models import TraitRefresh
    from app.traits.service import _compute, due_people, refresh_due, refresh_traits, usable_traits

    e = events_table()
    rng = random.Random(3)
    out: dict[str, tuple[float, str]] = {}
    runs: dict[str, list[float]] = {"baseline": [], "named 100": [], "named 1000": [], "due people": []}
    runs.update({"due refresh": [], **({"full": []} if full else {})})
    shown: dict[str, str] = {}
    last = NOW - timedelta(minutes=15)

    async def scan(s: Any) -> Any:
        return (await s.execute(select(func.count(), func.max(e.c.occurred_at)))).one()[0]

    async def due(s: Any) -> Any:
        marks = [{"kind": "full", "at": NOW - timedelta(hours=1)}, {"kind": "due", "at": last}]
        await s.execute(insert(table_of(TraitRefresh)), marks)
        return await refresh_due(s, NOW)

    def named(n: int) -> Callable[[Any], Awaitable[Any]]:
        return lambda s: refresh_traits(s, [pid(rng.randrange(people)) for _ in range(n)])

    works: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "baseline": scan,
        "named 100": named(100),
        "named 1000": named(1000),
        "due people": lambda s: due_people(s, last, NOW),
        "due refresh": due,
        "full": lambda s: refresh_traits(s),
    }
    for _ in range(repeat):
        for name in runs:
            seconds, result = await _timed(works[name])
            runs[name].append(seconds)
            shown[name] = _shown(name, result)
    for name, times in runs.items():
        out[name] = (statistics.median(times), shown[name])
    if not full:
        await dispose_engines()
        return out
    async with session_maker()() as session:
        traits, _skipped = await usable_traits(session)
    for t in traits:
        seconds, n = await _timed(lambda s, t=t: _compute(s, t, None, NOW))
        out[f"trait {t.name}"] = (seconds, f"{n:,} values")
    await dispose_engines()
    return out


def _shown(name: str, result: Any) -> str:
    if name == "baseline":
        return f"{result:,} events"
    if name == "due people":
        return f"{len(result):,} people"
    values = f"{sum(v for k, v in result.items() if k not in ('mode', 'people')):,} values"
    return f"{values} ({result['mode']}, {result.get('people', 'all')} people)" if "mode" in result else values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=10, help="events a person, on average")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default="", help="PostgreSQL database named bench* or test_* (dropped)")
    parser.add_argument("--sqlite-file", type=Path, help="SQLite file to use and keep (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="measure the population already there")
    parser.add_argument("--skip-full", action="store_true", help="leave out the full refresh and per-trait statements")
    args = parser.parse_args()
    postgres = bool(args.database_url)
    tmp = Path(tempfile.mkdtemp(prefix="consentry-bench-traits-"))
    sqlite_file = args.sqlite_file.resolve() if args.sqlite_file else tmp / "bench.db"
    os.environ.update(
        {
            "CONSENTRY_DATABASE_URL": args.database_url or f"sqlite:///{sqlite_file}",
            "CONSENTRY_KEY_DIR": str(tmp / "keys"),
            "CONSENTRY_LOG_LEVEL": "WARNING",
            "CONSENTRY_SCHEDULER": "0",
        }
    )
    if postgres and not args.reuse:
        from sqlalchemy.engine import make_url

        name = make_url(args.database_url).database or ""
        if not name.startswith(("bench", "test_")):
            parser.error("--database-url: its public schema is dropped; use a database named bench* or test_*")
        reset_postgres(args.database_url)
    if not postgres and not args.reuse:
        sqlite_file.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "app", "db", "upgrade"], cwd=ROOT, check=True, capture_output=True)
    db = "PostgreSQL" if postgres else "SQLite"
    print(f"traits benchmark on {db}, {os.cpu_count()} cores (shared: figures are noisy), {args.people:,} people")
    if not args.reuse:
        t0 = time.perf_counter()
        counts = populate(args.people, args.events, postgres)
        print(f"generated in {time.perf_counter() - t0:.0f} s: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    result = asyncio.run(measure(args.people, args.repeat, not args.skip_full))
    for name, (seconds, what) in result.items():
        print(f"  {name:<30} {seconds:8.3f} s   {what}")
    base = result["baseline"][0]
    full = f"full / baseline: {result['full'][0] / base:.1f}x; " if "full" in result else ""
    print(f"  {full}due refresh / baseline: {result['due refresh'][0] / base:.2f}x")


if __name__ == "__main__":
    main()
