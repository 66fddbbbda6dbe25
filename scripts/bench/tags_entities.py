"""Tags and entities in segments, each against a baseline answering the same question from
data on the person or the event itself — in one run, on one generated population.

    .venv/bin/python scripts/bench/tags_entities.py [--people 100000] [--orders 5] [--repeat 5]
        [--database-url postgresql://postgres@127.0.0.1:5432/bench_tags]

A fresh database (a temporary SQLite file, or the ``public`` schema of the PostgreSQL
database given, which must be named ``bench*`` or ``test_h2``: it is dropped), migrated, then
``--people`` profiles with about ``--orders`` Order Completed events each (seeded), one
product per order from 400 products (20 brands by 20 categories); the order's properties
also carry the product's brand and category. 30% of people belong to one of 2,000 accounts
(plan copied to the profile's ``plan`` trait too); 10% carry the tag ``value.high`` (and the
trait ``tier: high``). Medians of ``--repeat`` counts (surviving profiles matching, no
consent), alternating:

  product   {"event": "Order Completed", "product": {brand, category}}  vs  baseline: the same
            condition on the event's own properties (``where``);
  account   {"account": {"plan": {"eq": "enterprise"}}}  vs  baseline: {"trait": "plan", …};
  tag       {"tag": "value.high"}  vs  baseline: {"trait": "tier", "eq": "high"};
  rule      the tags.apply job for interests.basketball (a product rule): first run (everyone
            gains) and a second run (nothing changes).
Each pair must give the same count (checked).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
BRANDS = [f"brand{n}" for n in range(19)] + ["Nike"]
CATEGORIES = [f"cat{n}" for n in range(19)] + ["basketball shoes"]
PLANS = ["free", "team", "pro", "enterprise"]
NIKE_HOOPS = {"brand": {"eq": "Nike"}, "category": {"eq": "basketball shoes"}}
PAIRS = {
    "product": (
        {"event": "Order Completed", "product": NIKE_HOOPS},
        {"event": "Order Completed", "where": NIKE_HOOPS},
    ),
    "account": ({"account": {"plan": {"eq": "enterprise"}}}, {"trait": "plan", "eq": "enterprise"}),
    "tag": ({"tag": "value.high"}, {"trait": "tier", "eq": "high"}),
}


def populate(people: int, orders: int) -> dict[str, int]:
    """Insert the population in bulk (Core inserts, chunked)."""
    from sqlalchemy import insert

    from app.db import create_sync_engine, table_of
    from app.entities.models import Account, AccountMember, EventProduct, Product
    from app.ingest.holder import HOLDER
    from app.profiles.models import Profile
    from app.tags.models import TagAssignment

    rnd = random.Random(11)
    now = datetime.now(UTC)
    events = next(t for t in HOLDER.tables if t.name == "event")
    products = [(f"p{b}-{c}", BRANDS[b], CATEGORIES[c]) for b in range(20) for c in range(20)]
    accounts = [(uuid.uuid4().hex, rnd.choice(PLANS)) for _ in range(2000)]
    rows: dict[Any, list[dict[str, Any]]] = {t: [] for t in ("profile", "event", "ep", "member", "tag")}
    counts = {"profile": 0, "event": 0, "event_product": 0, "account_member": 0, "tag_assignment": 0}
    engine = create_sync_engine()

    def flush(conn: Any, force: bool = False) -> None:
        for key, table in (
            ("profile", table_of(Profile)),
            ("event", events),
            ("ep", table_of(EventProduct)),
            ("member", table_of(AccountMember)),
            ("tag", table_of(TagAssignment)),
        ):
            if rows[key] and (force or len(rows[key]) >= 20_000):
                conn.execute(insert(table), rows[key])
                rows[key] = []

    try:
        with engine.begin() as conn:
            conn.execute(
                insert(table_of(Product)),
                [
                    {
                        "id": i,
                        "attributes": {"product_id": i, "brand": b, "category": c},
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i, b, c in products
                ],
            )
            conn.execute(
                insert(table_of(Account)),
                [{"id": a, "traits": {"plan": p}, "created_at": now, "updated_at": now} for a, p in accounts],
            )
            for _ in range(people):
                pid = str(uuid.uuid4())
                traits: dict[str, Any] = {}
                if rnd.random() < 0.3:
                    aid, plan = rnd.choice(accounts)
                    traits["plan"] = plan
                    rows["member"].append(
                        {"account_id": aid, "origin_id": pid, "profile_id": pid, "joined_at": now, "seen_at": now}
                    )
                if rnd.random() < 0.1:
                    traits["tier"] = "high"
                    rows["tag"].append(
                        {
                            "tag": "value.high",
                            "origin_id": pid,
                            "source": "manual",
                            "profile_id": pid,
                            "assigned_at": now,
                        }
                    )
                rows["profile"].append(
                    {
                        "id": pid,
                        "created_at": now,
                        "updated_at": now,
                        "traits": traits,
                        "trait_sources": {},
                        "region": "DE",
                    }
                )
                for _n in range(rnd.randint(0, 2 * orders)):
                    eid, at = str(uuid.uuid4()), now - timedelta(days=rnd.randint(0, 400))
                    prod, brand, category = rnd.choice(products)
                    props = {"product_id": prod, "brand": brand, "category": category}
                    rows["event"].append(
                        {
                            "id": eid,
                            "profile_id": pid,
                            "origin_id": pid,
                            "source": "bench",
                            "message_id": eid,
                            "type": "track",
                            "name": "Order Completed",
                            "occurred_at": at,
                            "received_at": at,
                            "properties": props,
                            "traits": {},
                            "key_version": 1,
                            "sealed": b"x",
                        }
                    )
                    rows["ep"].append(
                        {
                            "event_id": eid,
                            "position": 0,
                            "product_id": prod,
                            "profile_id": pid,
                            "origin_id": pid,
                            "occurred_at": at,
                        }
                    )
                counts["profile"] += 1
                flush(conn)
            flush(conn, force=True)
        with engine.connect() as conn:
            from sqlalchemy import func, select

            for name, table in (
                ("event", events),
                ("event_product", table_of(EventProduct)),
                ("account_member", table_of(AccountMember)),
                ("tag_assignment", table_of(TagAssignment)),
            ):
                counts[name] = int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            from sqlalchemy import text

            conn.execute(text("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"))
    finally:
        engine.dispose()
    return counts


async def measure(repeat: int) -> None:
    from sqlalchemy import func, select

    from app.db import dispose_engines, unit_of_work
    from app.profiles.service import population
    from app.segments.service import matching, parse_tree
    from app.segments.tag_rules import apply_tag
    from app.tags.taxonomy import load_taxonomy

    table, _person, _region, _live = population()

    async def count(tree: dict[str, Any]) -> tuple[int, float]:
        async with unit_of_work() as s:
            node = (await parse_tree(s, tree)).node
            t0 = time.perf_counter()
            n = int(
                (
                    await s.execute(select(func.count()).select_from(table).where(matching(node, datetime.now(UTC))))
                ).scalar()
                or 0
            )
            return n, time.perf_counter() - t0

    for name, (tree, base) in PAIRS.items():
        times: dict[str, list[float]] = {"new": [], "baseline": []}
        found: dict[str, int] = {}
        for _ in range(repeat):
            for side, t in (("new", tree), ("baseline", base)):
                n, dt = await count(t)
                found[side] = n
                times[side].append(dt)
        same = "same count" if found["new"] == found["baseline"] else "COUNTS DIFFER"
        print(
            f"{name:8} {statistics.median(times['new']) * 1000:8.1f} ms   baseline "
            f"{statistics.median(times['baseline']) * 1000:8.1f} ms   ({found['new']:,} people, {same})"
        )
    spec = load_taxonomy().tags["interests.basketball"]
    for run in ("first", "again"):
        t0 = time.perf_counter()
        changed = await apply_tag(spec, datetime.now(UTC))
        print(
            f"rule     {run:5} {time.perf_counter() - t0:8.2f} s"
            f"   gained {changed['gained']:,}, lost {changed['lost']:,}"
        )
    await dispose_engines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--orders", type=int, default=5, help="orders a person, on average")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", default="", help="PostgreSQL database named bench* or test_h2 (dropped)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="consentry-bench-tags-"))
    os.environ.update(
        {
            "CONSENTRY_DATABASE_URL": args.database_url or f"sqlite:///{tmp / 'bench.db'}",
            "CONSENTRY_KEY_DIR": str(tmp / "keys"),
            "CONSENTRY_LOG_LEVEL": "WARNING",
            "CONSENTRY_SCHEDULER": "0",
        }
    )
    if args.database_url:
        from sqlalchemy.engine import make_url

        name = make_url(args.database_url).database or ""
        if not (name.startswith("bench") or name == "test_h2"):
            parser.error("--database-url: its public schema is dropped; use a database named bench* (or test_h2)")
        from scripts.bench.ingest import reset_postgres

        reset_postgres(args.database_url)
    subprocess.run([sys.executable, "-m", "app", "db", "upgrade"], cwd=ROOT, check=True, capture_output=True)
    db = "PostgreSQL" if args.database_url else "SQLite"
    print(
        f"tags and entities benchmark on {db}, {os.cpu_count()} cores (shared: figures are noisy),"
        f" {args.people:,} people"
    )
    t0 = time.perf_counter()
    counts = populate(args.people, args.orders)
    print(f"generated in {time.perf_counter() - t0:.0f} s: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    asyncio.run(measure(args.repeat))


if __name__ == "__main__":
    main()
