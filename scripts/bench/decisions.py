"""Consent decisions: single decisions through the API, bulk consent writes, and a count over
a generated population with and without the consent predicate — all in the same run.

    .venv/bin/python scripts/bench/decisions.py [--people 1000000] [--decisions 4000]
        [--consents 40000] [--batch 1000] [--connections 8] [--workers 1] [--repeat 5]
        [--database-url postgresql://postgres@127.0.0.1:5432/bench_dec]

A fresh database each run (a new SQLite file, or the ``public`` schema of a PostgreSQL
database named ``bench*`` dropped and re-created), migrated with ``consentry db upgrade``,
then ``--people`` profiles are inserted in bulk (executemany on SQLite, COPY on
PostgreSQL) with regions, marketing and analytics consent states, privacy flags and device
ids (some with a GPC signal) in realistic proportions, then ``ANALYZE``.

Measured:
  (a) ``POST /v1/decisions`` for random persons (marketer key) against a real ``consentry
      serve``, from a separate client process with ``--connections`` connections:
      decisions/s, p50 and p99 latency;
  (b) ``POST /v1/consents`` (compliance key) in batches of ``--batch``: records/s;
  (c) the count of surviving profiles in one region (the baseline) and the same count with
      ``population_predicate`` for the marketing purpose, each ``--repeat`` times,
      alternating; medians and the overhead of the predicate.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(ROOT))
from scripts.bench.population import COLUMNS, A, M, insert, pid, reset_postgres, rows  # noqa: E402  (activation.py imports pid and rows from here)

RESULT = "BENCH-RESULT"
OWN_SETTINGS = (
    "DATABASE_URL",
    "KEY_DIR",
    "IMPORT_DIR",
    "NLP_DIR",
    "POLICY_DIR",
    "LOG_FILE",
    "LOG_LEVEL",
    "SCHEDULER",
    "RATE_LIMIT",
)
COUNT_REGION = "DE"


def populate(n: int, postgres: bool) -> dict[str, int]:
    """The shared people (``scripts/bench/population.py``) inserted, then ``ANALYZE``."""
    from sqlalchemy import text

    from app.db import create_sync_engine

    data = rows(n)
    engine = create_sync_engine()
    try:
        with engine.begin() as conn:
            for table, cols in COLUMNS.items():
                insert(conn, table, cols, data[table], postgres)
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()
    return {k: len(v) for k, v in data.items()}


# --- (c) the count ---------------------------------------------------------------------


async def _counts(repeat: int) -> dict[str, Any]:
    from sqlalchemy import func, select

    from app.db import dispose_engines, unit_of_work
    from app.decisions.engine import Ask
    from app.decisions.service import population_predicate
    from app.profiles.service import population

    table, person, region, live = population()
    where = [live, region == COUNT_REGION]
    plain = select(func.count()).select_from(table).where(*where)
    consent = select(func.count()).select_from(table).where(*where, population_predicate(Ask(M), person, region))
    times: dict[str, list[float]] = {"plain": [], "consent": []}
    values: dict[str, int] = {}
    async with unit_of_work() as s:
        for name, q in (("plain", plain), ("consent", consent)):  # warm the caches once
            values[name] = int((await s.execute(q)).scalar() or 0)
        for _ in range(repeat):
            for name, q in (("plain", plain), ("consent", consent)):
                t0 = time.perf_counter()
                await s.execute(q)
                times[name].append(time.perf_counter() - t0)
    await dispose_engines()
    return {
        "values": values,
        "plain": statistics.median(times["plain"]),
        "consent": statistics.median(times["consent"]),
    }


# --- (a), (b) the HTTP client (its own process) ------------------------------------------


async def _decisions(base: str, key: str, n: int, people: int, connections: int, seed: int) -> dict[str, Any]:
    import httpx

    rng = random.Random(seed)
    bodies = [json.dumps({"person": pid(rng.randrange(people)), "purpose": M}).encode() for _ in range(n)]
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    errors = 0
    it = iter(bodies)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for body in it:
            t0 = time.perf_counter()
            r = await client.post("/v1/decisions", content=body, headers={"Content-Type": "application/json"})
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors += 1
                print(r.status_code, r.text[:300], file=sys.stderr)
            else:
                reason = r.json()["reason"]
                outcomes[reason] = outcomes.get(reason, 0) + 1

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits, headers=headers) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(connections)))
        elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{errors} decisions failed")
    latencies.sort()
    return {
        "per_s": n / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "outcomes": outcomes,
    }


async def _consents(base: str, key: str, n: int, batch: int, people: int, connections: int, seed: int) -> float:
    import httpx

    rng = random.Random(seed)
    t = datetime(2026, 10, 1, tzinfo=UTC)
    bodies = []
    for b in range(0, n, batch):
        consents = [
            {
                "profile_id": pid(rng.randrange(people)),
                "purpose": rng.choice([M, M, A]),
                "state": rng.choice(["granted", "granted", "denied", "withdrawn"]),
                "method": "form",
                "decided_at": (t + timedelta(days=rng.randrange(-40, 40), seconds=rng.randrange(86400))).isoformat(),
                "client_id": f"bench-{seed}-{b + k}",
            }
            for k in range(min(batch, n - b))
        ]
        bodies.append(json.dumps({"consents": consents}).encode())
    it = iter(bodies)

    async def worker(client: httpx.AsyncClient) -> None:
        for body in it:
            r = await client.post("/v1/consents", content=body, headers={"Content-Type": "application/json"})
            if r.status_code != 201:
                raise SystemExit(f"POST /v1/consents: {r.status_code} {r.text[:300]}")

    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, timeout=300, headers=headers) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(connections)))
        return n / (time.perf_counter() - t0)


def client_main(argv: list[str]) -> None:
    what, base, key = argv[:3]
    n, people, connections, seed = (int(x) for x in argv[3:7])
    if what == "decisions":
        print(RESULT, json.dumps(asyncio.run(_decisions(base, key, n, people, connections, seed))))
    else:
        batch = int(argv[7])
        print(RESULT, json.dumps(asyncio.run(_consents(base, key, n, batch, people, connections, seed))))


# --- the parent ------------------------------------------------------------------------


def _result(stdout: str) -> Any:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT + " "):
            return json.loads(line[len(RESULT) + 1 :])
    raise SystemExit(f"no result in the output: {stdout[-500:]}")


def run(what: str, cmd: list[str], environ: dict[str, str]) -> str:
    out = subprocess.run(cmd, env=environ, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{what} failed (exit {out.returncode}):\n{(out.stderr or out.stdout)[-2000:]}")
    return out.stdout


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the server process and its workers, from /proc: a cost
    per request that holds when other processes compete for the 2 cores."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree, total = {pid}, 0.0
    for _ in range(3):
        tree |= {p for p, (ppid, _cpu) in stats.items() if ppid in tree}
    for p in tree:
        total += stats.get(p, (0, 0.0))[1]
    return total


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def serve(environ: dict[str, str], workers: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    from scripts.bench.ingest import free_port

    port = free_port()
    with log.open("w") as fh:
        server = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", str(workers)],
            env=environ,
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if server.poll() is not None:
            raise SystemExit(f"consentry serve exited ({server.returncode}):\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return server, base
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"consentry serve not healthy after 180 s:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--decisions", type=int, default=4000)
    parser.add_argument("--consents", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--consent-connections", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", default="", help="PostgreSQL database named bench* (default: SQLite file)")
    parser.add_argument("--skip", default="", help="comma-separated: decisions, consents, count")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    postgres = bool(args.database_url)
    if postgres:
        from sqlalchemy.engine import make_url

        u = make_url(args.database_url)
        if u.get_backend_name() != "postgresql":
            parser.error("--database-url: PostgreSQL only (SQLite uses a temporary file)")
        if not (u.database or "").startswith("bench"):
            parser.error(f"--database-url: the public schema of {u.database!r} is dropped; use a database named bench*")

    sys.path.insert(0, str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="consentry-bench-dec-"))
    environ = {k: v for k, v in os.environ.items() if k.removeprefix("CONSENTRY_") not in OWN_SETTINGS}
    environ.update(
        {
            "CONSENTRY_DATABASE_URL": args.database_url or f"sqlite:///{tmp}/bench.db",
            "CONSENTRY_KEY_DIR": str(tmp / "keys"),
            "CONSENTRY_IMPORT_DIR": str(tmp / "imports"),
            "CONSENTRY_NLP_DIR": str(tmp / "nlp"),
            "CONSENTRY_LOG_LEVEL": "WARNING",
            "CONSENTRY_SCHEDULER": "0",
            "CONSENTRY_RATE_LIMIT": "10000000/minute",  # the bench measures the service, not its limiter
        }
    )
    os.environ.clear()
    os.environ.update(environ)  # this process reads the same database for the count
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "app"], capture_output=True, text=True
    ).stdout.strip()
    db = "PostgreSQL" if postgres else "SQLite"
    print(
        f"decision benchmark on {db}, {os.cpu_count()} cores, commit {commit.stdout.strip()}"
        + (" + uncommitted changes in app/" if dirty else ""),
        flush=True,
    )
    figures: dict[str, Any] = {}
    try:
        if postgres:
            reset_postgres(args.database_url)
        run("consentry db upgrade", [sys.executable, "-m", "app", "db", "upgrade"], environ)
        t0 = time.perf_counter()
        made = populate(args.people, postgres)
        shown = ", ".join(f"{v:,} {k}" for k, v in made.items())
        print(f"  generated {shown} in {time.perf_counter() - t0:.0f} s (load {load()})", flush=True)

        if "count" not in skip:
            c = asyncio.run(_counts(args.repeat))
            figures["count"] = c
            print(
                f"  count in {COUNT_REGION}: {c['values']['plain']:,} profiles in {c['plain'] * 1000:.1f} ms; "
                f"{c['values']['consent']:,} with the consent predicate in {c['consent'] * 1000:.1f} ms "
                f"(load {load()})",
                flush=True,
            )

        keys = {}
        for role in ("marketer", "compliance"):
            out = run(
                "keys create", [sys.executable, "-m", "app", "keys", "create", "--role", role, "--name", role], environ
            )
            keys[role] = out.strip().splitlines()[-1].strip()
        server, base = serve(environ, args.workers, tmp / "serve.log")
        try:
            client = [sys.executable, str(SCRIPT), "--client"]
            if "decisions" not in skip:
                warm = [
                    *client,
                    "decisions",
                    base,
                    keys["marketer"],
                    "200",
                    str(args.people),
                    str(args.connections),
                    "1",
                ]
                run("decisions warm-up", warm, environ)
                cmd = [*client, "decisions", base, keys["marketer"], str(args.decisions), str(args.people)]
                cpu0 = server_cpu(server.pid)
                d = _result(run("decisions", [*cmd, str(args.connections), "2"], environ))
                d["cpu_ms"] = (server_cpu(server.pid) - cpu0) / args.decisions * 1000
                figures["decisions"] = d
                print(
                    f"  decisions: {d['per_s']:,.0f}/s, p50 {d['p50_ms']:.1f} ms, p99 {d['p99_ms']:.1f} ms, "
                    f"server CPU {d['cpu_ms']:.2f} ms per decision, "
                    f"{args.connections} connections (load {load()}); reasons {d['outcomes']}",
                    flush=True,
                )
            if "consents" not in skip:
                cmd = [*client, "consents", base, keys["compliance"]]
                warm = [*cmd, str(args.batch), str(args.people), "1", "3", str(args.batch)]
                run("consents warm-up", warm, environ)
                n, conns = str(args.consents), str(args.consent_connections)
                cpu0 = server_cpu(server.pid)
                per_s = _result(run("consents", [*cmd, n, str(args.people), conns, "4", str(args.batch)], environ))
                cpu_us = (server_cpu(server.pid) - cpu0) / args.consents * 1e6
                figures["consents"] = per_s
                print(
                    f"  consents: {per_s:,.0f} records/s in batches of {args.batch}, "
                    f"server CPU {cpu_us:.0f} µs per record, "
                    f"{args.consent_connections} connections (load {load()})",
                    flush=True,
                )
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"  {'figure':<44} | {'measured':>12} | {'target':>14} | met")
    print(f"  {'-' * 44}-+-{'-' * 12}-+-{'-' * 14}-+----")
    table: list[tuple[str, str, str, bool]] = []
    if "decisions" in figures:
        d = figures["decisions"]
        table.append(("single decisions/s", f"{d['per_s']:,.0f}", ">= 1,000", d["per_s"] >= 1000))
        table.append(("single decision p99, ms", f"{d['p99_ms']:.1f}", "<= 20", d["p99_ms"] <= 20))
    if "consents" in figures:
        c = figures["consents"]
        table.append(("bulk consent writes, records/s", f"{c:,.0f}", ">= 20,000", c >= 20_000))
    if "count" in figures:
        c = figures["count"]
        pct = (c["consent"] - c["plain"]) / c["plain"] * 100
        table.append((f"count in {COUNT_REGION}, ms (no predicate)", f"{c['plain'] * 1000:.1f}", "", True))
        table.append((f"count in {COUNT_REGION}, ms (consent predicate)", f"{c['consent'] * 1000:.1f}", "", True))
        table.append(("predicate overhead, %", f"{pct:+,.0f}", "<= +30", pct <= 30))
    for name, value, target, met in table:
        print(f"  {name:<44} | {value:>12} | {target:>14} | {'yes' if met else 'NO' if target else ''}")
    print(f"  ({args.people:,} profiles; load {load()})")


if __name__ == "__main__":
    main()
