"""Segments: the basketball-shoes count on a generated population, with and without the
consent engine, a preview's counts by reason, and a full materialisation — in one run.

    .venv/bin/python scripts/bench/segments.py [--people 1000000] [--events 10] [--repeat 5]
        [--database-url postgresql://postgres@127.0.0.1:5432/bench_seg]
        [--sqlite-file /tmp/seg.db] [--reuse] [--baseline-tree /tmp/seg-base] [--rounds 2]

A fresh database each run (a new SQLite file, or the ``public`` schema of a PostgreSQL
database named ``bench*`` dropped and re-created), migrated, then ``--people`` profiles
(plain traits, regions, consent states, flags: ``scripts/bench/decisions.py``'s
generator) and about ``--events`` events a person (seeded; 3% of people bought basketball
shoes in the last 90 days), inserted in bulk, then ``ANALYZE`` (``VACUUM ANALYZE`` on
PostgreSQL, as autovacuum does after a bulk load: index-only scans need the visibility map).

Measured, medians of ``--repeat`` runs, alternating:
  baseline  the count of surviving profiles in one region (no segment, no consent);
  segment   the segment's count without consent (the tree compiled to SQL);
  preview   the segment's counts by denial reason for marketing (``decide_population``
            narrowed to the tree: what ``POST /v1/segments/preview`` runs);
  preview+sample  what ``POST /v1/segments/preview`` does (``preview``: the counts, a
            sample of 20 usable people, the ledger entries), but for reading the sample's
            masked views (the generated people have no keys to read them with);
  members   a full materialisation of the saved segment (first save, then a refresh);
With ``--reuse`` a database that already holds ``--people`` profiles (a kept
``--sqlite-file``, or the PostgreSQL database) is migrated and measured as it is, without
generating again; every measurement is rolled back, so it can be reused. With
``--baseline-tree PATH`` (a checkout of another commit, e.g. ``git worktree add
/tmp/seg-base HEAD``) the measurements run for that tree's ``app`` and for this one,
alternating for ``--rounds`` rounds, on the same database, each in its own process.

  +index    (``--with-index``) segment and preview again after ``CREATE INDEX … ON event (name,
            occurred_at)``, an index the event table does not have.
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
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
M = "marketing.advertising.first_party.targeted"
NOW = datetime.now(UTC)
TREE = {
    "all": [
        {"event": "Order Completed", "where": {"category": {"eq": "basketball shoes"}}, "within": {"days": 90}},
        {"not": {"trait": "plan", "eq": "vip"}},
    ]
}
EVENT_COLS = (
    "id", "profile_id", "origin_id", "source", "message_id", "type", "name",
    "occurred_at", "received_at", "properties", "traits", "key_version", "sealed",
)  # fmt: skip
NAMES = ["Page Viewed"] * 6 + ["Product Viewed"] * 3 + ["Order Completed"]
CATEGORIES = ["running shoes", "socks", "shirts", "basketballs", "hats", "bags"]


def profiles(n: int) -> dict[str, list[tuple[Any, ...]]]:
    """decisions.py's population, with a plan trait (5% vip)."""
    from scripts.bench.decisions import rows

    rng = random.Random(5)
    data = rows(n)
    data["profile"] = [
        (*r[:3], json.dumps({"plan": "vip" if rng.random() < 0.05 else "basic"}), *r[4:]) for r in data["profile"]
    ]
    return data


def events(n: int, per_person: int, seed: int = 7) -> Iterator[list[tuple[Any, ...]]]:
    """Chunks of event rows: about ``per_person`` events a person over 400 days."""
    from scripts.bench.decisions import pid

    rng = random.Random(seed)
    chunk: list[tuple[Any, ...]] = []
    for i in range(n):
        p = pid(i)
        shoes = rng.random() < 0.03
        for k in range(rng.randrange(per_person * 2 + 1)):
            name = NAMES[rng.randrange(len(NAMES))]
            props: dict[str, Any] = {}
            if name != "Page Viewed":
                props = {"category": rng.choice(CATEGORIES), "price": rng.randrange(5, 300)}
            at = NOW - timedelta(minutes=rng.randrange(400 * 24 * 60))
            if shoes and k == 0:
                name, props = "Order Completed", {"category": "basketball shoes", "price": 120}
                at = NOW - timedelta(days=rng.randrange(80))
            chunk.append(
                (
                    str(uuid.UUID(int=rng.getrandbits(128))),
                    p,
                    p,
                    "bench",
                    f"m{i}-{k}",
                    "track",
                    name,
                    at,
                    at,
                    json.dumps(props),
                    "{}",
                    1,
                    b"x",
                )
            )
        if len(chunk) >= 50_000:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def populate(n: int, per_person: int, postgres: bool) -> dict[str, int]:
    from sqlalchemy import text

    from app.db import create_sync_engine
    from scripts.bench.decisions import COLUMNS

    counts: dict[str, int] = {}
    engine = create_sync_engine()
    try:
        with engine.begin() as conn:
            data = profiles(n)
            for table, cols in COLUMNS.items():
                _insert(conn, table, cols, data[table], postgres)
                counts[table] = len(data[table])
            del data
            counts["event"] = 0
            for chunk in events(n, per_person):
                _insert(conn, "event", EVENT_COLS, chunk, postgres)
                counts["event"] += len(chunk)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE" if postgres else "ANALYZE"))  # as autovacuum would, after a bulk load
    finally:
        engine.dispose()
    return counts


def _insert(conn: Any, table: str, cols: tuple[str, ...], data: list[tuple[Any, ...]], postgres: bool) -> None:
    from sqlalchemy import text

    if postgres:
        cur = conn.connection.driver_connection.cursor()
        with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
            for r in data:
                copy.write_row(r)
        return
    marks = ", ".join(f":{c}" for c in cols)
    conn.execute(
        text(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})"),
        [dict(zip(cols, r, strict=True)) for r in data],
    )


async def measure(repeat: int, with_index: bool) -> dict[str, Any]:
    from sqlalchemy import func, select

    from app.access.service import Principal
    from app.db import dispose_engines, session_maker
    from app.decisions.engine import Ask
    from app.decisions.service import decide_population
    from app.profiles.service import population
    from app.segments import service
    from app.segments.models import Segment
    from app.segments.service import matching, materialise, parse_tree, preview

    marketer = Principal(key_id="bench", role="marketer", name="bench")

    async def ids_only(_s: Any, _p: Any, ids: list[str], _purpose: str) -> list[dict[str, Any]]:
        return [{"id": i} for i in ids]

    service.views = ids_only  # type: ignore[assignment]  # no keys for generated people
    table, _person, region, live = population()
    out: dict[str, Any] = {"values": {}}
    times: dict[str, list[float]] = {"baseline": [], "segment": [], "preview": [], "preview+sample": []}
    async with session_maker()() as s:
        node = (await parse_tree(s, TREE)).node
        where = matching(node, NOW)
        baseline = select(func.count()).select_from(table).where(live, region == "DE")
        segment = select(func.count()).select_from(table).where(where)

        async def run(name: str) -> Any:
            if name == "preview+sample":  # POST /v1/segments/preview: counts and 20 people (views stubbed)
                async with session_maker()() as own:  # its ledger entry in its own transaction, undone
                    p = await preview(own, marketer, TREE, M, 20)
                    await own.rollback()
                return {"usable": p["usable"], "sample": len(p["sample"])}
            if name == "preview":
                v = await decide_population(s, marketer, Ask(M), NOW, within=where)
                return {"total": v.total, "usable": v.allowed, "denied": v.denied}
            return int((await s.execute(baseline if name == "baseline" else segment)).scalar() or 0)

        for name in times:  # warm once
            out["values"][name] = await run(name)
        for _ in range(repeat):
            for name in times:
                t0 = time.perf_counter()
                await run(name)
                times[name].append(time.perf_counter() - t0)
        if with_index:  # the index ingestion does not have yet: events by name and time
            from sqlalchemy import text

            await s.execute(text("CREATE INDEX ix_bench_event_name_time ON event (name, occurred_at)"))
            await s.execute(text("ANALYZE event"))
            for name in ("segment", "preview"):
                times[f"{name} +index"] = []
                out["values"][f"{name} +index"] = await run(name)
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    await run(name)
                    times[f"{name} +index"].append(time.perf_counter() - t0)
        seg = Segment(
            id=str(uuid.uuid4()),
            name="bench",
            purpose=M,
            tree=TREE,
            owner_key_id="bench",
            created_at=NOW,
            updated_at=NOW,
        )
        s.add(seg)
        await s.flush()
        for label in ("materialise (first)", "materialise (refresh)"):
            t0 = time.perf_counter()
            out["values"][label] = await materialise(s, seg, node, datetime.now(UTC))
            times[label] = [time.perf_counter() - t0]
        await s.rollback()  # the database stays as generated (--reuse)
    await dispose_engines()
    out["times"] = {k: statistics.median(v) for k, v in times.items()}
    return out


def populated(people: int) -> bool:
    """The database already holds the generated population (``--reuse``)."""
    from sqlalchemy import text

    from app.db import create_sync_engine

    engine = create_sync_engine()
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM profile")).scalar() or 0) == people
    except Exception:  # no schema yet
        return False
    finally:
        engine.dispose()


def measured_by(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement with ``tree``'s ``app``, in its own process (the same database)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure-tree", str(tree), "--repeat", str(args.repeat)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{tree}: the measurement failed:\n{done.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def compared(args: argparse.Namespace) -> None:
    """Baseline and this tree, alternating; medians of the rounds side by side."""
    sides = {"baseline": args.baseline_tree.resolve(), "this tree": ROOT}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}
    for n in range(args.rounds):
        for side, tree in sides.items():
            runs[side].append(measured_by(tree, args))
            took = ", ".join(f"{k} {v:.2f}" for k, v in runs[side][-1]["times"].items())
            print(f"  round {n + 1}, {side}: {took}", flush=True)
    print(f"  {'':<22} {'baseline':>9} {'this tree':>10}   values (this tree)")
    for name in runs["this tree"][0]["times"]:
        med = {k: statistics.median(r["times"].get(name, float("nan")) for r in v) for k, v in runs.items()}
        value = runs["this tree"][0]["values"][name]
        print(f"  {name:<22} {med['baseline']:8.3f}s {med['this tree']:9.3f}s   {value}")
        base_value = runs["baseline"][0]["values"].get(name)
        if base_value != value:
            print(f"  {'':<22} baseline's value differs: {base_value}")


async def event_to_membership(samples: int, noise: int) -> dict[str, list[float]]:
    """The delay from an event to the membership change, through the real path: each sample
    is a new person's basketball-shoes order (plus ``noise`` other people's page views in the
    same request) accepted into the ingest inbox and committed; an in-process ``Processor``
    stores it (writing the outbox) and its follower ``apply_outbox_job`` updates the saved
    segment. ``stored``: until the inbox is empty (the baseline: ingestion alone);
    ``member``: until the person is in ``segment_member``; the first half of the samples
    skip the consumer's refresh of computed traits (``member, traits skipped``: what
    membership alone costs). Leaves the people and the segment in the database."""
    from sqlalchemy import func, select

    from app.access.service import Principal
    from app.db import dispose_engines, table_of, unit_of_work
    from app.ingest.inbox import accept_messages
    from app.ingest.models import InboxBatch
    from app.ingest.processor import Processor
    from app.profiles.service import VaultContext
    from app.segments import incremental
    from app.segments.jobs import apply_outbox_job
    from app.segments.models import Segment, SegmentMember
    from app.segments.service import materialise, parse_tree

    ingest = Principal("bench-latency", "ingest", "bench", "bench-latency")
    ctx = VaultContext.from_settings()
    seg = Segment(
        id=str(uuid.uuid4()), name="latency", purpose=M, tree=TREE, owner_key_id="bench", created_at=NOW, updated_at=NOW
    )
    async with unit_of_work() as s:
        s.add(seg)
        await s.flush()
        await materialise(s, seg, (await parse_tree(s, TREE)).node, datetime.now(UTC))
    await apply_outbox_job()
    m, inbox = table_of(SegmentMember), table_of(InboxBatch)
    members = select(func.count()).select_from(m).where(m.c.segment_id == seg.id)
    waiting = select(func.count()).select_from(inbox).where(inbox.c.status == "queued")

    async def scalar(q: Any) -> int:
        async with unit_of_work() as s:
            return int((await s.execute(q)).scalar() or 0)

    run = uuid.uuid4().hex[:8]
    shoes = {"category": "basketball shoes", "price": 120}
    before = await scalar(members)
    out: dict[str, list[float]] = {"stored": [], "member": [], "member, traits skipped": []}
    with_traits = incremental._refresh_traits
    skip = [False]

    async def traits(session: Any, ids: list[str]) -> None:
        if not skip[0]:
            await with_traits(session, ids)

    incremental._refresh_traits = traits  # type: ignore[assignment]
    proc = Processor(idle=0.05, followers=[apply_outbox_job])
    proc.start()
    try:
        for i in range(samples):
            body = [{"type": "track", "userId": f"lat-{run}-{i}", "event": "Order Completed", "properties": shoes}]
            body += [{"type": "page", "userId": f"noise-{run}-{i}-{k}", "name": "Home"} for k in range(noise)]
            skip[0] = i < samples // 2  # first without the traits refresh, then with it
            t0 = time.perf_counter()
            async with unit_of_work() as s:
                await accept_messages(s, ctx, ingest, body)
            proc.wake()
            stored = None
            while True:
                if stored is None and await scalar(waiting) == 0:
                    stored = time.perf_counter() - t0
                if await scalar(members) > before:
                    break
                await asyncio.sleep(0.02)
            took = time.perf_counter() - t0
            out["member, traits skipped" if skip[0] else "member"].append(took)
            out["stored"].append(stored if stored is not None else took)
            before += 1
            await asyncio.sleep(random.Random(i).uniform(0, 0.2))  # not in step with the processor's wake-ups
    finally:
        await proc.stop()
        await dispose_engines()
    return out


def print_latency(out: dict[str, list[float]]) -> None:
    """p50 / p95 / max of each delay (seconds)."""
    for name, values in out.items():
        if not values:
            continue
        v = sorted(values)
        p95 = v[min(len(v) - 1, round(0.95 * (len(v) - 1)))]
        label = "event -> stored (baseline)" if name == "stored" else f"event -> {name}"
        med = statistics.median(v)
        print(f"  {label:<38} p50 {med:6.3f} s   p95 {p95:6.3f} s   max {v[-1]:6.3f} s   (n={len(v)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10, help="events a person, on average")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--with-index", action="store_true", help="then also with an index on event (name, occurred_at)"
    )
    parser.add_argument("--database-url", default="", help="PostgreSQL database named bench* (default: SQLite file)")
    parser.add_argument(
        "--latency", type=int, default=0, help="measure only the event -> membership delay, over this many events"
    )
    parser.add_argument("--latency-noise", type=int, default=20, help="other people's events in each request")
    parser.add_argument("--sqlite-file", type=Path, help="SQLite file to use and keep (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="measure a population already generated (same --people)")
    parser.add_argument("--baseline-tree", type=Path, help="checkout of the baseline commit to compare against")
    parser.add_argument("--rounds", type=int, default=2, help="rounds with --baseline-tree")
    parser.add_argument("--measure-tree", type=Path, help=argparse.SUPPRESS)  # one side of --baseline-tree
    args = parser.parse_args()
    if args.measure_tree:
        sys.path.insert(0, str(args.measure_tree.resolve()))
        print(json.dumps(asyncio.run(measure(args.repeat, False)), default=str))
        return
    postgres = bool(args.database_url)
    sqlite_file = args.sqlite_file.resolve() if args.sqlite_file else None
    tmp = Path(tempfile.mkdtemp(prefix="consentry-bench-seg-"))
    os.environ.update(
        {
            "CONSENTRY_DATABASE_URL": args.database_url or f"sqlite:///{sqlite_file or tmp / 'bench.db'}",
            "CONSENTRY_KEY_DIR": str(tmp / "keys"),
            "CONSENTRY_LOG_LEVEL": "WARNING",
            "CONSENTRY_SCHEDULER": "0",
        }
    )
    reuse = args.reuse and populated(args.people)
    if postgres and not reuse:
        from sqlalchemy.engine import make_url

        if not (make_url(args.database_url).database or "").startswith("bench"):
            parser.error("--database-url: its public schema is dropped; use a database named bench*")
        from scripts.bench.ingest import reset_postgres

        reset_postgres(args.database_url)
    if sqlite_file is not None and not reuse:
        sqlite_file.unlink(missing_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "app", "db", "upgrade"], cwd=ROOT, check=True, capture_output=True)
        db = "PostgreSQL" if postgres else "SQLite"
        print(f"segment benchmark on {db}, {os.cpu_count()} cores, {args.people:,} people")
        if reuse:
            print("reusing the population already generated")
        else:
            t0 = time.perf_counter()
            counts = populate(args.people, args.events, postgres)
            made = ", ".join(f"{k} {v:,}" for k, v in counts.items())
            print(f"generated in {time.perf_counter() - t0:.0f} s: {made}")
        if args.baseline_tree is not None:
            compared(args)
            return
        if args.latency:  # event -> membership through the inbox, processor and outbox (instead of the rest)
            print_latency(asyncio.run(event_to_membership(args.latency, args.latency_noise)))
            return
        result = asyncio.run(measure(args.repeat, args.with_index))
        for name, seconds in result["times"].items():
            print(f"  {name:<22} {seconds:8.3f} s   {result['values'][name]}")
        base = result["times"]["baseline"]
        print(f"  segment / baseline: {result['times']['segment'] / base:.1f}x; preview / segment: "
              f"{result['times']['preview'] / result['times']['segment']:.2f}x")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
