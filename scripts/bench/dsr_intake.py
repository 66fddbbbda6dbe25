"""Public DSR intake: does a request about someone we know take as long as one about nobody?

    .venv/bin/python scripts/bench/dsr_intake.py [--people 2000] [--calls 200] [--database-url URL]

A fresh database (a new SQLite file by default; a PostgreSQL URL must name a database called
``bench*``, whose ``public`` schema is dropped and made again), migrated, ``--people`` people
ingested through ``/v1/identify``; then ``POST /v1/dsr`` without a key, alternating a known
person (email and phone on file) and an unknown one (neither on file), ``--calls`` of each,
in process through Litestar's test client. ``GET /health`` is measured in the same run as the
floor. Printed: median, p90 and mean per path, the difference of the medians and the spread
of each (noise). No assertion: a shared machine's figures are noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _prepare(url: str | None, tmp: Path) -> str:
    if url is None:
        return f"sqlite:///{tmp / 'bench.db'}"
    if not url.rsplit("/", 1)[-1].startswith("bench"):
        raise SystemExit("--database-url must name a database called bench*")
    from sqlalchemy import create_engine, text

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


def _timed(call: Any) -> float:
    started = time.perf_counter()
    r = call()
    elapsed = time.perf_counter() - started
    assert r.status_code in (200, 202), r.text
    return elapsed


def _line(name: str, xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[int(0.9 * (len(xs) - 1))]
    return (
        f"{name:<10} median {statistics.median(xs) * 1000:7.2f} ms  p90 {p90 * 1000:7.2f} ms  "
        f"mean {statistics.mean(xs) * 1000:7.2f} ms  stdev {statistics.pstdev(xs) * 1000:6.2f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--people", type=int, default=2000)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dsr-"))
    url = _prepare(args.database_url, tmp)
    policies = tmp / "policies"
    import shutil

    shutil.copytree(Path(__file__).resolve().parents[2] / "policies", policies)
    text = (policies / "dsr.yaml").read_text().replace("public_intake_rate: 10/hour", "public_intake_rate: off")
    (policies / "dsr.yaml").write_text(text)
    os.environ.update(
        CONSENTRY_DATABASE_URL=url,
        CONSENTRY_KEY_DIR=str(tmp / "keys"),
        CONSENTRY_POLICY_DIR=str(policies),
        CONSENTRY_SCHEDULER="0",
        CONSENTRY_RATE_LIMIT="off",
        CONSENTRY_LOG_LEVEL="WARNING",
        CONSENTRY_INGEST_WAIT="30",
        CONSENTRY_INGEST_PROCESSOR="0",
    )
    import asyncio

    from litestar.testing import TestClient

    from app.access.service import create_api_key
    from app.db import unit_of_work
    from app.main import create_app
    from app.migrate import upgrade

    upgrade(url)

    async def key() -> str:
        async with unit_of_work() as session:
            _, token = await create_api_key(session, "ingest", "bench", "bench", "server")
        return token

    ingest = asyncio.run(key())
    with TestClient(app=create_app(), raise_server_exceptions=False) as c:
        for start in range(0, args.people, 100):
            batch = [
                {
                    "type": "identify",
                    "userId": f"b-{n}",
                    "traits": {"email": f"p{n}@example.com", "phone": f"+1415555{n:04d}"},
                }
                for n in range(start, min(args.people, start + 100))
            ]
            assert c.post("/v1/batch", json={"batch": batch}, auth=(ingest, "")).status_code == 200
        known: list[float] = []
        unknown: list[float] = []
        health: list[float] = []
        for i in range(args.calls):
            n = i % args.people
            k = {
                "kind": "access",
                "regulation": "GDPR",
                "identifiers": {"email": f"p{n}@example.com", "phone": f"+1415555{n:04d}"},
            }
            u = {
                "kind": "access",
                "regulation": "GDPR",
                "identifiers": {"email": f"x{i}@example.org", "phone": f"+1212555{i % 10000:04d}"},
            }
            pair = [("k", k), ("u", u)] if i % 2 == 0 else [("u", u), ("k", k)]
            for which, body in pair:
                (known if which == "k" else unknown).append(_timed(lambda body=body: c.post("/v1/dsr", json=body)))
            health.append(_timed(lambda: c.get("/health")))
    db = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    print(f"DSR public intake on {db}: {args.people} people, {args.calls} calls per path (alternating)")
    print(_line("health", health))
    print(_line("known", known))
    print(_line("unknown", unknown))
    diff = statistics.median(known) - statistics.median(unknown)
    print(f"median(known) - median(unknown) = {diff * 1000:+.2f} ms")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
