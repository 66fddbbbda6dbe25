"""The web console's speed: p95 page time of the compliance queue with 10,000 requests, and
the other console parts (the auditor's in-browser ledger verification, the marketer's segment
count refresh), each against a baseline measured in the same run.

    .venv/bin/python scripts/bench/console.py [queue|ledger|segments|all] [options of that part]
    .venv/bin/python scripts/bench/console.py queue [--requests 10000] [--calls 60] [--database-url URL]

``queue``: a fresh database (a new SQLite file by default; a PostgreSQL URL must name a
database called ``bench*``, whose ``public`` schema is dropped and made again), migrated,
``--requests`` data-subject requests written in bulk (every kind, regulation and state, one
in ten not verified, deadlines from 20 days overdue to 60 days ahead). Then, in process through
Litestar's test client, signed in as a compliance officer: the queue page
(``GET /console/compliance/requests``) with no filter, each filter alone and all together,
``--calls`` times each, interleaved with the baseline, the JSON API's listing of the same
requests (``GET /v1/dsr`` with the same filters, 100 a page). Printed: p50 and p95 of each,
the ratio, and the machine load. Target: the queue's p95 <= 300 ms. No assertion: a shared
machine is noisy.

Other parts are scripts of their own, run here in a process each (one line per part in
``PARTS``): ``console_ledger.py`` (H3), ``console_segments.py`` (H4).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARTS: dict[str, str] = {
    "queue": "",  # this file
    "ledger": "console_ledger.py",  # the auditor's in-browser verification (H3)
    "segments": "console_segments.py",  # the marketer's segment count refresh (H4)
}
"""A console part and its script in scripts/bench/ (add yours with one line)."""
TARGET_MS = 300.0
FILTERS: list[dict[str, str]] = [
    {},
    {"kind": "erasure"},
    {"regulation": "gdpr"},
    {"status": "in_progress"},
    {"due": "7"},
    {"unverified": "1"},
    {"kind": "access", "regulation": "ccpa", "status": "verified", "due": "30"},
]


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


def _request_rows(n: int) -> list[dict[str, Any]]:
    """``n`` request rows as the DSR domain would hold them (nothing sealed: the queue reads none)."""
    from app.dsr.models import KINDS, REGULATIONS, STATUSES

    rng, now = random.Random(14), datetime.now(UTC)
    rows = []
    for _ in range(n):
        received = now - timedelta(days=rng.uniform(0, 60), hours=rng.uniform(0, 24))
        due = now + timedelta(days=rng.uniform(-20, 60))
        status = rng.choice(STATUSES)
        verified = status not in {"received", "denied"} and rng.random() > 0.1
        rows.append(
            {
                "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "kind": rng.choice(KINDS),
                "regulation": rng.choice(REGULATIONS),
                "channel": rng.choice(["public", "staff"]),
                "status": status,
                "received_at": received,
                "due_at": due,
                "verified_at": received + timedelta(hours=2) if verified else None,
                "waiting_since": now - timedelta(days=2) if status == "waiting" else None,
                "held_status": "verified" if status == "waiting" else None,
                "waited_seconds": 0,
                "closed_at": now if status in {"completed", "denied"} else None,
            }
        )
    return rows


async def _fill(n: int) -> str:
    """The requests and a compliance key; returns the key."""
    from app.access.service import create_api_key
    from app.db import unit_of_work
    from app.dsr.models import DsrRequest

    rows = _request_rows(n)
    async with unit_of_work() as session:
        for i in range(0, n, 1000):
            await session.execute(DsrRequest.__table__.insert(), rows[i : i + 1000])  # type: ignore[attr-defined]
        _, token = await create_api_key(session, "compliance", "bench-officer")
    return token


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p * (len(xs) - 1)))] * 1000


def _timed(call: Any) -> float:
    started = time.perf_counter()
    r = call()
    elapsed = time.perf_counter() - started
    assert r.status_code == 200, (r.status_code, r.text[:300])
    return elapsed


def _api_params(f: dict[str, str]) -> dict[str, str]:
    """The same filter for ``GET /v1/dsr`` (a due filter is a deadline)."""
    out = {k: v for k, v in f.items() if k in {"kind", "regulation", "status"}}
    if "due" in f:
        out["due_before"] = (datetime.now(UTC) + timedelta(days=int(f["due"]))).isoformat()
    return {**out, "limit": "100"}


def queue(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="console.py queue")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-console-"))
    url = _prepare(args.database_url, tmp)
    os.environ.update(
        CONSENTRY_DATABASE_URL=url,
        CONSENTRY_KEY_DIR=str(tmp / "keys"),
        CONSENTRY_SCHEDULER="0",
        CONSENTRY_RATE_LIMIT="off",
        CONSENTRY_LOG_LEVEL="WARNING",
        CONSENTRY_INGEST_PROCESSOR="0",
        CONSENTRY_AUDIT_WITNESS=str(tmp / "audit-witness.jsonl"),
    )
    from litestar.testing import TestClient

    from app.main import create_app
    from app.migrate import upgrade

    upgrade(url)
    started = time.perf_counter()
    token = asyncio.run(_fill(args.requests))
    print(f"{args.requests:,} requests written in {time.perf_counter() - started:.1f} s")
    page_s: list[float] = []
    api_s: list[float] = []
    with TestClient(app=create_app()) as c:
        form = c.get("/console/sign-in").text
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', form)
        assert csrf is not None
        signed = c.post(
            "/console/sign-in", data={"api_key": token, "_csrf_token": csrf.group(1)}, follow_redirects=False
        )
        assert signed.status_code == 303, signed.text
        headers = {"Authorization": f"Bearer {token}"}
        for f in FILTERS:  # warm both
            _timed(lambda f=f: c.get("/console/compliance/requests", params=f))
            _timed(lambda f=f: c.get("/v1/dsr", params=_api_params(f), headers=headers))
        for _ in range(args.calls):
            for f in FILTERS:
                page_s.append(_timed(lambda f=f: c.get("/console/compliance/requests", params=f)))
                api_s.append(_timed(lambda f=f: c.get("/v1/dsr", params=_api_params(f), headers=headers)))
    db = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    load = os.getloadavg()
    print(f"Compliance queue on {db}, {args.requests:,} requests, {len(page_s)} calls each ({len(FILTERS)} filters)")
    print(f"machine load (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    for name, xs in (("queue page (HTML)", page_s), ("baseline GET /v1/dsr", api_s)):
        mean = statistics.mean(xs) * 1000
        print(f"{name:<22} p50 {_pct(xs, 0.5):7.1f} ms  p95 {_pct(xs, 0.95):7.1f} ms  mean {mean:7.1f} ms")
    p95 = _pct(page_s, 0.95)
    print(f"queue p95 / baseline p95: {p95 / _pct(api_s, 0.95):.2f}x   (target p95 <= {TARGET_MS:.0f} ms: "
          f"{'met' if p95 <= TARGET_MS else 'NOT met'})")  # fmt: skip


def main() -> None:
    part = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "queue"
    rest = sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == part else sys.argv[1:]
    if part not in {*PARTS, "all"}:
        raise SystemExit(f"unknown part {part!r}: one of {', '.join(PARTS)} or all")
    for name, script in PARTS.items():
        if part not in {name, "all"}:
            continue
        print(f"== console {name} ==", flush=True)
        if not script:
            queue(rest if part == name else [])
        elif not (HERE / script).exists():
            print(f"(scripts/bench/{script} is not written yet)")
        else:
            subprocess.run([sys.executable, str(HERE / script), *(rest if part == name else [])], check=False)


if __name__ == "__main__":
    main()
