"""Ingestion throughput: HTTP ``/v1/batch`` and ``consentry import``, with encryption and
identity resolution on.

    .venv/bin/python scripts/bench/ingest.py [--batches 300] [--import-rows 1000000]
        [--database-url postgresql://postgres@127.0.0.1:5432/test] [--workers 1]

HTTP: 100-event batches (20% identify with traits, 55% track, 25% page) over 50,000
distinct people, sent by a separate client process with 8 concurrent connections to a
real ``consentry serve``. Baseline in the same run: the same batches through the
pipeline in-process (no HTTP), which shows what the HTTP layer costs. Import: rows/s for
a generated CSV of customers through the CLI. Prints the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
PEOPLE = 50_000


def make_batches(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    batches = []
    for b in range(n):
        events: list[dict[str, Any]] = []
        for e in range(100):
            person = rng.randrange(PEOPLE)
            base = {
                "userId": f"user-{person}",
                "anonymousId": f"anon-{person}",
                "messageId": f"m-{seed}-{b}-{e}",
                "timestamp": "2026-11-25T10:00:00Z",
                "context": {
                    "ip": "203.0.113.7",
                    "userAgent": "Mozilla/5.0",
                    "locale": "en-US",
                    "library": {"name": "bench", "version": "1"},
                },
            }
            r = rng.random()
            if r < 0.2:
                events.append(
                    {
                        **base,
                        "type": "identify",
                        "traits": {
                            "email": f"user{person}@example.com",
                            "phone": f"+1415{person:07d}",
                            "firstName": f"First{person}",
                            "plan": rng.choice(["free", "pro"]),
                        },
                    }
                )
            elif r < 0.75:
                events.append(
                    {
                        **base,
                        "type": "track",
                        "event": rng.choice(["Product Viewed", "Order Completed"]),
                        "properties": {"sku": f"SKU-{rng.randrange(500)}", "price": 19.99},
                    }
                )
            else:
                events.append({**base, "type": "page", "name": "Home", "properties": {"path": "/", "title": "Home"}})
        batches.append(json.dumps({"batch": events, "sentAt": "2026-11-25T10:00:01Z"}).encode())
    return batches


async def _send(base: str, key: str, batches: list[bytes], concurrency: int) -> float:
    import httpx

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    errors = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while not queue.empty():
            body = queue.get_nowait()
            r = await client.post(
                "/v1/batch", content=body, auth=(key, ""), headers={"Content-Type": "application/json"}
            )
            if r.status_code != 200:
                errors += 1
                print(r.status_code, r.text[:300], file=sys.stderr)

    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{errors} batches failed")
    return elapsed


def client_main(base: str, key: str, n: int, seed: int, concurrency: int) -> None:
    """Runs in its own process so that the client's CPU is not the server's."""
    batches = make_batches(n, seed)
    print(asyncio.run(_send(base, key, batches, concurrency)))


def http_bench(environ: dict[str, str], n: int, workers: int) -> float:
    import httpx

    key = subprocess.run(
        [sys.executable, "-m", "app", "keys", "create", "--role", "ingest", "--name", "bench"],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = 18000 + random.randrange(1000)
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", str(workers)],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        cmd = [sys.executable, __file__, "--client", base, key]
        subprocess.run([*cmd, "20", "99", "8"], env=environ, check=True, capture_output=True)  # warm-up
        out = subprocess.run([*cmd, str(n), "7", "8"], env=environ, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"client failed: {out.stderr[-2000:]}")
        return n * 100 / float(out.stdout.strip())
    finally:
        server.terminate()
        server.wait(30)


async def inprocess_bench(n: int) -> float:
    from app.access.service import Principal
    from app.db import dispose_engines, unit_of_work
    from app.ingest.service import ingest_messages
    from app.profiles.service import VaultContext

    ctx = VaultContext.from_settings()
    principal = Principal("bench", "ingest", "bench", "bench-inprocess")
    batches = [json.loads(b) for b in make_batches(n, seed=3)]
    t0 = time.perf_counter()
    for body in batches:
        async with unit_of_work() as session:
            await ingest_messages(session, ctx, principal, body["batch"], defaults={"sentAt": body["sentAt"]})
    elapsed = time.perf_counter() - t0
    await dispose_engines()
    return n * 100 / elapsed


def import_bench(environ: dict[str, str], rows: int, tmp: Path) -> float:
    path = tmp / "customers.csv"
    rng = random.Random(5)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["customer_id", "email", "phone", "first_name", "tier"])
        for _ in range(rows):
            p = rng.randrange(rows // 2 or 1)
            w.writerow([f"C{p}", f"c{p}@example.com", f"+1415{p:07d}", f"Name{p}", rng.choice(["gold", "silver"])])
    mapping = tmp / "map.yaml"
    mapping.write_text(
        'identifiers: {customer_id: "external:crm_id", email: email, phone: phone}\n'
        "traits: {first_name: firstName, tier: loyalty_tier}\n"
    )
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "app", "import", str(path), "--source", "crm", "--mapping", str(mapping), "--quiet"],
        env=environ,
        check=True,
        capture_output=True,
    )
    return rows / (time.perf_counter() - t0)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--import-rows", type=int, default=1_000_000)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="consentry-bench-"))
    environ = {
        **os.environ,
        "CONSENTRY_DATABASE_URL": args.database_url or f"sqlite:///{tmp}/bench.db",
        "CONSENTRY_KEY_DIR": str(tmp / "keys"),
        "CONSENTRY_LOG_LEVEL": "WARNING",
        "CONSENTRY_SCHEDULER": "0",
        "PYTHONPATH": str(ROOT),
    }
    os.environ.update(environ)
    if args.database_url and "postgres" in args.database_url:
        from sqlalchemy import text

        from app.db import create_sync_engine

        engine = create_sync_engine(args.database_url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    subprocess.run([sys.executable, "-m", "app", "db", "upgrade"], env=environ, check=True, capture_output=True)
    db = "PostgreSQL" if "postgres" in environ["CONSENTRY_DATABASE_URL"] else "SQLite"
    print(f"ingest benchmark on {db}, {os.cpu_count()} cores")
    inproc = asyncio.run(inprocess_bench(max(args.batches // 3, 10)))
    print(f"  pipeline in-process (baseline, no HTTP): {inproc:>9,.0f} events/s")
    http = http_bench(environ, args.batches, args.workers)
    print(f"  HTTP /v1/batch, {args.workers} worker(s):          {http:>9,.0f} events/s  (target 10,000)")
    if args.import_rows:
        rate = import_bench(environ, args.import_rows, tmp)
        print(f"  consentry import, {args.import_rows:,} CSV rows:  {rate:>9,.0f} rows/s  (target 50,000 on SQLite)")


if __name__ == "__main__":
    main()
