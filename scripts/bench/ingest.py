"""Ingestion throughput: HTTP ``/v1/batch`` and ``consentry import``, with encryption and
identity resolution on; optionally against a baseline tree in the same run.

    .venv/bin/python scripts/bench/ingest.py [--batches 300] [--import-rows 1000000]
        [--database-url postgresql://postgres@127.0.0.1:5432/bench_pg] [--workers 1]
    .venv/bin/python scripts/bench/ingest.py --baseline-tree /work/bench-base [--rounds 2]
        [--batches 150] [--import-rows 20000] [--database-url …]
    .venv/bin/python scripts/bench/ingest.py --stored-events 5000000   # on a store holding 5 M events
    .venv/bin/python scripts/bench/ingest.py --baseline-tree /tmp/same-commit \
        --stored-events 5000000 --baseline-stored-events 0   # 0 vs 5 M stored, same code

HTTP: 100-event batches (20% identify with traits, 55% track, 25% page) over 50,000
distinct people, sent to a real ``consentry serve`` with 8 concurrent connections by wrk
(``--client wrk``, the default when installed: ``ingest_wrk.lua`` makes each request's
batch with fresh message ids, for ``--seconds``) or by a Python httpx client process
(``--client httpx``, ``--batches``). The load generator's own CPU and the service's
(with its processor child) are reported as % of one core, so a client that saturates
is seen. The store-only ceiling is measured on the same database in the same run: decode
each batch and write its events with one ``executemany`` and one commit per batch, nothing
else. "accepted" is how fast the answers come back; "processed" how
fast the events are stored in profiles (the inbox drained: first send to last event
visible; for a tree without an inbox the two are the same). Lag: once the service has
settled after the burst (its CPU under 5% of a core for 2 s running: the followers' backlog
done), a client paced at ``--lag-rate`` events/s for ``--lag-seconds``; for each batch, the time from its planned
send to its events being visible (p50, p95 in ms); the inbox is processed in order, so a
batch is visible once the event count covers it. Also the same kind of batches through the pipeline in-process
(no HTTP), which shows what the HTTP layer costs. Import: rows/s for a generated CSV of
customers through the CLI, start-up of the command included.

With ``--baseline-tree PATH`` (a checkout of another commit, for instance
``git worktree add /work/bench-base origin/main``, outside this repository) every figure
is measured for the baseline tree and for this tree, alternating (baseline, current,
baseline, current, …) for ``--rounds`` rounds so that machine noise hits both; the
table shows the median of the rounds and the change. Both trees run with this
interpreter; each side's code runs with ``cwd`` and ``PYTHONPATH`` set to its tree, and
the script checks that ``app`` and ``audit`` are imported from that tree. Every
measurement starts on a fresh database migrated by its own tree's ``consentry db
upgrade``: a new SQLite file, or, for PostgreSQL, its ``public`` schema dropped and
re-created (so the database name must start with ``bench``; never point this at a
database that anything else uses).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from scripts.bench.population import reset_postgres  # noqa: E402  (other benches import it from here)

SCRIPT = Path(__file__).resolve()
PEOPLE = 50_000
RESULT = "BENCH-RESULT"
# settings that name a place on disk or a tree: set per measurement, never inherited
OWN_SETTINGS = (
    *("DATABASE_URL", "KEY_DIR", "IMPORT_DIR", "NLP_DIR", "POLICY_DIR", "LOG_FILE", "LOG_LEVEL", "SCHEDULER"),
    "RATE_LIMIT",
)
FIGURES = {
    "ceiling": "store-only ceiling, events/s",
    "inprocess": "pipeline in-process, events/s",
    "accept_cpu": "accept CPU in-process, µs/event",
    "http": "HTTP /v1/batch accepted, events/s",
    "processed": "HTTP → stored (end to end), events/s",
    "lag_p50": "lag p50 at --lag-rate, ms",
    "lag_p95": "lag p95 at --lag-rate, ms",
    "import": "consentry import accepted, rows/s",
    "import_processed": "consentry import processed, rows/s",
    "client_cpu": "load generator CPU, % of a core",
    "server_cpu": "service process CPU, % of a core",
}
LOWER_IS_BETTER = ("lag_p50", "lag_p95", "client_cpu", "accept_cpu")
KEYS_CREATE = [sys.executable, "-m", "app", "keys", "create", "--role", "ingest", "--name"]
WRK_SCRIPT = Path(__file__).resolve().with_name("ingest_wrk.lua")


class BenchError(Exception):
    """One side could not be measured (it failed to migrate, start or run)."""


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


# --- child processes ------------------------------------------------------------------


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
    """Runs in its own process so that the client's CPU is not the server's; prints the
    wall-clock start and the elapsed seconds."""
    batches = make_batches(n, seed)
    start = time.time()
    print(RESULT, start, asyncio.run(_send(base, key, batches, concurrency)))


async def _paced(base: str, key: str, batches: list[bytes], per_second: float) -> list[float]:
    """Send batch i at start + i / per_second (8 connections); returns the planned send times."""
    import httpx

    start = time.time() + 0.5
    planned = [start + i / per_second for i in range(len(batches))]
    sem = asyncio.Semaphore(8)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        await asyncio.sleep(max(0.0, planned[i] - time.time()))
        async with sem:
            r = await client.post(
                "/v1/batch", content=batches[i], auth=(key, ""), headers={"Content-Type": "application/json"}
            )
        if r.status_code != 200:
            raise SystemExit(f"batch failed: {r.status_code}")

    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        await asyncio.gather(*(one(client, i) for i in range(len(batches))))
    return planned


def paced_main(base: str, key: str, n: int, seed: int, per_second: float) -> None:
    batches = make_batches(n, seed)
    print(RESULT, json.dumps(asyncio.run(_paced(base, key, batches, per_second))))


def import_tree(tree: Path) -> None:
    """Put ``tree`` first on the path and check that ``app`` and ``audit`` come from it."""
    sys.path.insert(0, str(tree))
    import app
    import audit

    for module in (app, audit):
        where = Path(module.__file__ or "").resolve()
        if not where.is_relative_to(tree):
            raise SystemExit(f"{module.__name__} was imported from {where}, not from {tree}")


async def _inprocess(n: int) -> float:
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


async def _asgi_post(app: Any, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """One request straight into the ASGI app (no server, no client): what the service itself spends."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent, status, chunks = False, [0], []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status[0], b"".join(chunks)


async def _accept_cpu(key: str, n: int) -> float:
    """CPU µs per accepted event of ``POST /v1/batch`` through the app in this process, the
    processor off (batches only accepted): the accept path's own cost, whatever the load."""
    import base64

    from app.main import create_app

    app = create_app()
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    life = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
    )
    await outbox.get()
    token = base64.b64encode(f"{key}:".encode()).decode()
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Basic {token}".encode())]
    batches = make_batches(n + 10, seed=17)
    for body in batches[:10]:  # warm-up
        await _asgi_post(app, "/v1/batch", body, headers)
    c0 = time.process_time()
    for body in batches[10:]:
        status, answer = await _asgi_post(app, "/v1/batch", body, headers)
        if status != 200:
            raise SystemExit(f"/v1/batch answered {status}: {answer[:300]!r}")
    cpu = time.process_time() - c0
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    await life
    return cpu / (n * 100) * 1e6


def accept_main(tree: str, key: str, n: int) -> None:
    import_tree(Path(tree).resolve())
    os.environ["CONSENTRY_INGEST_PROCESSOR"] = "off"
    print(RESULT, asyncio.run(_accept_cpu(key, n)))


def ceiling_main(url: str, n: int) -> None:
    """The store-only ceiling: decode each batch and write its events with one ``executemany``
    and one commit per batch (no checks, no sealing, no identity), into a scratch table."""
    import msgspec
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    u = make_url(url)
    sqlite = u.get_backend_name() == "sqlite"
    engine = create_engine(u.set(drivername="sqlite+pysqlite" if sqlite else "postgresql+psycopg"))
    bodies = make_batches(n, seed=13)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS bench_ceiling"))
        conn.execute(text("CREATE TABLE bench_ceiling (message_id TEXT PRIMARY KEY, type TEXT, body TEXT)"))
    raw = engine.raw_connection()
    if sqlite:
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=NORMAL")
    mark = "?" if sqlite else "%s"
    sql = f"INSERT INTO bench_ceiling VALUES ({mark}, {mark}, {mark})"
    t0 = time.perf_counter()
    for body in bodies:
        events = msgspec.json.decode(body)["batch"]
        cur = raw.cursor()
        cur.executemany(sql, [(e["messageId"], e["type"], msgspec.json.encode(e).decode()) for e in events])
        raw.commit()
    elapsed = time.perf_counter() - t0
    raw.close()
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE bench_ceiling"))
    engine.dispose()
    print(RESULT, n * 100 / elapsed)


def _stored_event(rng: random.Random) -> Any:
    """One prefilled person's event maker (population.PersonEvents): shop events over a year."""
    from datetime import UTC, datetime, timedelta

    start = datetime(2025, 11, 1, tzinfo=UTC)
    skus = [f"SKU-{rng.randrange(500)}" for _ in range(3)]

    def event(rng: random.Random, k: int) -> tuple[str, str, Any]:
        name = rng.choice(("Product Viewed", "Order Completed", "Page Viewed"))
        props = json.dumps({"sku": rng.choice(skus), "price": rng.randrange(100, 20000) / 100})
        return name, props, start + timedelta(minutes=rng.randrange(525_600))

    return event


def prefill_main(events: int) -> None:
    """Store ``events`` events (10 a person on average) with their people, identifiers and
    registered message ids, in bulk, before a measurement: the "stored events" of the issue's
    at-0-and-at-5,000,000 figures (``--stored-events``). Runs in the measured tree's environment."""
    from app.db import create_sync_engine
    from scripts.bench import population as pop

    people = max(events // 10, 1)
    engine = create_sync_engine()
    postgres = engine.dialect.name == "postgresql"
    stored = 0
    with engine.begin() as conn:
        data = pop.rows(people, seed=23)
        for table, cols in pop.COLUMNS.items():
            pop.insert(conn, table, cols, data[table], postgres)
        del data
        for chunk in pop.events(people, 10, _stored_event, seed=29):
            pop.insert(conn, "event", pop.EVENT_COLS, chunk, postgres)
            ids = [(row[3], row[4], row[8]) for row in chunk]
            pop.insert(conn, "ingested_message", ("source", "message_id", "received_at"), ids, postgres)
            stored += len(chunk)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE" if postgres else "ANALYZE")
    engine.dispose()
    print(RESULT, stored)


def inprocess_main(tree: str, n: int) -> None:
    """The pipeline without HTTP, in a process of its own that imports ``tree``'s ``app``."""
    import_tree(Path(tree).resolve())
    print(RESULT, asyncio.run(_inprocess(n)))


def probe_main(tree: str) -> None:
    import_tree(Path(tree).resolve())
    import app
    import audit

    print(RESULT, app.__file__, audit.__file__)


# --- the parent -----------------------------------------------------------------------


def _tail(text: str | bytes | None, n: int = 1500) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "").strip()[-n:]


def _result(stdout: str) -> str:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT + " "):
            return line[len(RESULT) + 1 :]
    raise BenchError(f"no result in the output: {_tail(stdout, 500)}")


def run(what: str, cmd: list[str], environ: dict[str, str], cwd: Path) -> str:
    """Run a step of a measurement; its stdout, or ``BenchError`` with the end of its stderr."""
    out = subprocess.run(cmd, env=environ, cwd=cwd, capture_output=True, text=True)
    if out.returncode:
        raise BenchError(f"{what} failed (exit {out.returncode}):\n{_tail(out.stderr) or _tail(out.stdout)}")
    return out.stdout


def tree_environ(tree: Path, tmp: Path, database_url: str, nlp_dir: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k.removeprefix("CONSENTRY_") not in OWN_SETTINGS}
    inherited = os.environ.get("PYTHONPATH")
    environ.update(
        {
            "CONSENTRY_DATABASE_URL": database_url or f"sqlite:///{tmp}/bench.db",
            "CONSENTRY_KEY_DIR": str(tmp / "keys"),
            "CONSENTRY_IMPORT_DIR": str(tmp / "imports"),
            "CONSENTRY_NLP_DIR": str(nlp_dir),
            "CONSENTRY_LOG_LEVEL": "WARNING",
            "CONSENTRY_SCHEDULER": "0",
            "CONSENTRY_RATE_LIMIT": "off",  # the bench measures the service, not its limiter (one key)
            "PYTHONPATH": str(tree) + (os.pathsep + inherited if inherited else ""),
        }
    )
    return environ


def check_tree(tree: Path) -> str:
    """Where ``app`` comes from when run in ``tree``, and which commit ``tree`` is."""
    if not (tree / "app" / "__init__.py").is_file():
        raise SystemExit(f"{tree} has no app/ package")
    environ = {**os.environ, "PYTHONPATH": str(tree)}
    try:
        found = _result(run("importing app", [sys.executable, str(SCRIPT), "--probe", str(tree)], environ, tree))
        found = found.split(" ", 1)[0]
        plain = subprocess.run(
            [sys.executable, "-c", "import app; print(app.__file__)"],
            env=environ,
            cwd=tree,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except BenchError as e:
        found, plain = f"nothing, app is not importable now: {_tail(str(e), 300)}", ""
    if plain and not Path(plain).resolve().is_relative_to(tree):
        raise SystemExit(f"in {tree}, `python -c 'import app'` imports {plain}: PYTHONPATH does not take precedence")
    git = ["git", "-C", str(tree)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "app", "audit", "policies"], capture_output=True, text=True
    )
    changes = " + uncommitted changes" if dirty.stdout.strip() else ""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "app", "audit"], cwd=tree, capture_output=True)
    return f"{tree} (commit {commit or '?'}{changes}); imports {found}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


EVENT_COUNT: dict[str, Any] = {"sql": "SELECT count(*) FROM event", "poll": 0.02}
"""How the stored events are counted while polling; on a prefilled store (``--stored-events``)
SQLite reads ``max(rowid)`` (events are only appended, so it equals the count) and
PostgreSQL counts every 0.25 s, so that polling a 5 M-row table does not load the machine."""


def _event_count(url: str, sql: str | None = None) -> int:
    sql = sql or EVENT_COUNT["sql"]
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    u = make_url(url)
    u = u.set(drivername="postgresql+psycopg" if u.get_backend_name() == "postgresql" else "sqlite+pysqlite")
    engine = _engines.setdefault(str(u), create_engine(u))
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar() or 0)


_engines: dict[str, Any] = {}


def _visible_times(url: str, totals: list[int], proc: subprocess.Popen[str], timeout: float) -> list[float]:
    """Poll the event count; for each of ``totals`` (ascending), when the count first reached it."""
    seen: list[float] = []
    deadline = time.monotonic() + timeout
    while len(seen) < len(totals) and time.monotonic() < deadline:
        if proc.poll() not in (None, 0):
            raise BenchError(f"the process feeding the events exited ({proc.returncode})")
        count, now = _event_count(url), time.time()
        while len(seen) < len(totals) and count >= totals[len(seen)]:
            seen.append(now)
        time.sleep(float(EVENT_COUNT["poll"]))
    if len(seen) < len(totals):
        raise BenchError(f"only {_event_count(url)} of {totals[-1]} events stored after {timeout:.0f} s")
    return seen


def _lag(
    url: str, before: int, cmd: list[str], environ: dict[str, str], tree: Path, rate: float, secs: float
) -> tuple[float, float]:
    """p50 and p95 (ms) of planned send → events visible, for a client paced at ``rate`` events/s."""
    n = max(int(rate * secs / 100), 1)
    proc = subprocess.Popen(
        [*cmd, "--paced", str(n), str(rate / 100)], env=environ, cwd=tree, stdout=subprocess.PIPE, text=True
    )
    seen = _visible_times(url, [before + (i + 1) * 100 for i in range(n)], proc, secs + 600)
    out, _ = proc.communicate(timeout=600)
    if proc.returncode:
        raise BenchError(f"paced client failed ({proc.returncode})")
    planned = json.loads(_result(out))
    lags = sorted(max(0.0, s - p) * 1000 for s, p in zip(seen, planned, strict=True))
    return statistics.median(lags), lags[int(0.95 * (len(lags) - 1))]


def settle(pid: int, idle: float = 0.05, limit: float = 600) -> float:
    """Wait until the service (with its processor and followers) uses under ``idle`` of a core
    over two seconds running, at most ``limit`` seconds: the lag is measured at a sustained
    rate on a settled service, not on the followers' backlog left by the throughput burst.
    Returns the seconds waited."""
    t0 = time.monotonic()
    quiet, last = 0, tree_cpu(pid)
    while quiet < 2 and time.monotonic() - t0 < limit:
        time.sleep(1)
        now = tree_cpu(pid)
        quiet = quiet + 1 if now - last < idle else 0
        last = now
    return time.monotonic() - t0


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by a process and its descendants (the service and its processor)."""
    kids: dict[int, list[int]] = {}
    for line in subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.splitlines():
        child, parent = (int(x) for x in line.split())
        kids.setdefault(parent, []).append(child)
    todo, total = [pid], 0.0
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk_send(base: str, key: str, seconds: float, connections: int, seed: int) -> tuple[int, float, float]:
    """wrk posting fresh 100-event batches for ``seconds``: (requests answered 200, wall-clock
    start, elapsed seconds); raises if any answer was not 200."""
    environ = {**os.environ, "WRK_KEY": key, "WRK_SEED": str(seed)}
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "60s", "-s", str(WRK_SCRIPT), base]
    start = time.time()
    out = subprocess.run(cmd, env=environ, capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK-RESULT ")), None)
    if out.returncode or line is None:
        raise BenchError(f"wrk failed ({out.returncode}): {_tail(out.stderr or out.stdout, 500)}")
    requests, failed, elapsed = line.split()[1:4]
    if int(failed):
        raise BenchError(f"{failed} of {requests} wrk requests were not answered 200")
    return int(requests), start, float(elapsed)


def http_bench(tree: Path, environ: dict[str, str], args: argparse.Namespace, log: Path) -> dict[str, float]:
    import httpx

    n, workers = args.batches, args.workers

    out = run("consentry keys create", [*KEYS_CREATE, "bench"], environ, tree)
    key = out.strip().splitlines()[-1].strip()
    port = free_port()
    with log.open("w") as fh:
        server = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", str(workers)],
            env=environ,
            cwd=tree,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise BenchError(f"consentry serve exited ({server.returncode}):\n{_tail(log.read_text())}")
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"consentry serve not healthy after 180 s:\n{_tail(log.read_text())}")
            time.sleep(0.2)
        cmd = [sys.executable, str(SCRIPT), "--sender", base, key]
        url = environ["CONSENTRY_DATABASE_URL"]
        before = _event_count(url)  # the in-process figure's events are in the same database
        run("HTTP warm-up", [*cmd, "20", "99", "8"], environ, tree)
        _visible_times(url, [before + 2000], server, 600)  # warm-up stored before measuring
        cpu0, server0 = children_cpu(), tree_cpu(server.pid)
        if args.client == "wrk":
            requests, start, elapsed = wrk_send(base, key, args.seconds, args.connections, 7)
            client_cpu, server_cpu = children_cpu() - cpu0, tree_cpu(server.pid) - server0
            done = _visible_times(url, [before + 2000 + requests * 100], server, 600)[0]
            events = requests * 100
        else:
            conns = str(args.connections)
            client = [*cmd, str(n), "7", conns]
            proc = subprocess.Popen(client, env=environ, cwd=tree, stdout=subprocess.PIPE, text=True)
            done = _visible_times(url, [before + 2000 + n * 100], proc, 600)[0]
            out, _ = proc.communicate(timeout=600)
            if proc.returncode:
                raise BenchError(f"HTTP client failed ({proc.returncode})")
            start, elapsed = (float(x) for x in _result(out).split())
            client_cpu, server_cpu = children_cpu() - cpu0, tree_cpu(server.pid) - server0
            events = n * 100
        figures = {
            "http": events / elapsed,
            "processed": events / (done - start),
            "client_cpu": client_cpu / elapsed * 100,
            "server_cpu": server_cpu / elapsed * 100,
        }
        if args.lag_rate:
            waited = settle(server.pid)
            print(f"  {tree.name}: service settled {waited:.0f} s after the burst", flush=True)
            before = _event_count(url)
            lag_cmd = [sys.executable, str(SCRIPT), "--sender", base, key]
            try:
                figures["lag_p50"], figures["lag_p95"] = _lag(
                    url, before, lag_cmd, environ, tree, args.lag_rate, args.lag_seconds
                )
            except BenchError as e:  # the other figures still count; the failure is shown
                print(f"  lag not measured: {_tail(str(e), 300)}", flush=True)
        return figures
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def write_csv(path: Path, rows: int) -> None:
    rng = random.Random(5)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["customer_id", "email", "phone", "first_name", "tier"])
        for _ in range(rows):
            p = rng.randrange(rows // 2 or 1)
            w.writerow([f"C{p}", f"c{p}@example.com", f"+1415{p:07d}", f"Name{p}", rng.choice(["gold", "silver"])])


def import_bench(tree: Path, environ: dict[str, str], rows: int, csv_file: Path, tmp: Path) -> tuple[float, float]:
    """(rows/s accepted, rows/s processed) of ``consentry import``, start-up included: accepted
    when every row's message id is registered (polled), processed when the command ends."""
    path = tmp / "customers.csv"  # a link per measurement, so that each writes its own rejects file
    path.symlink_to(csv_file)
    mapping = tmp / "map.yaml"
    mapping.write_text(
        'identifiers: {customer_id: "external:crm_id", email: email, phone: phone}\n'
        "traits: {first_name: firstName, tier: loyalty_tier}\n"
    )
    cmd = [sys.executable, "-m", "app", "import", str(path), "--source", "crm", "--mapping", str(mapping), "--quiet"]
    url, registered = environ["CONSENTRY_DATABASE_URL"], "SELECT count(*) FROM ingested_message WHERE source = 'crm'"
    t0 = time.perf_counter()
    accepted = None
    proc = subprocess.Popen(cmd, env=environ, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if accepted is None and _event_count(url, registered) >= rows:
            accepted = time.perf_counter() - t0
        time.sleep(0.25)
    out, err = proc.communicate()
    if proc.returncode:
        raise BenchError(f"consentry import failed ({proc.returncode}):\n{_tail(err or out)}")
    done = time.perf_counter() - t0
    return rows / (accepted or done), rows / done


def measure(name: str, tree: Path, args: argparse.Namespace, work: Path, csv_file: Path | None) -> dict[str, float]:
    """All figures of one tree, on a fresh database migrated by that tree."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    # spaCy pipelines built at first start: one folder per tree, kept across rounds
    environ = tree_environ(tree, tmp, args.database_url, work / f"nlp-{name}")
    try:
        if args.database_url:
            reset_postgres(args.database_url)
        run("consentry db upgrade", [sys.executable, "-m", "app", "db", "upgrade"], environ, tree)
        figures: dict[str, float] = {}
        stored = args.stored_events if name == "current" else args.baseline_stored_events
        if args.stored_events or args.baseline_stored_events:  # both sides poll alike
            sqlite = not args.database_url
            EVENT_COUNT.update(sql="SELECT max(rowid) FROM event" if sqlite else EVENT_COUNT["sql"])
            EVENT_COUNT.update(poll=0.02 if sqlite else 0.25)
        if stored:
            t0 = time.perf_counter()
            out = run("prefill", [sys.executable, str(SCRIPT), "--prefill", str(stored)], environ, tree)
            print(f"  {name}: {float(_result(out)):,.0f} events stored first ({time.perf_counter() - t0:.0f} s)")
        n = max(args.batches // 3, 10)
        url = environ["CONSENTRY_DATABASE_URL"]
        ceiling = [sys.executable, str(SCRIPT), "--ceiling", url, str(args.batches)]
        out = run("store-only ceiling", ceiling, environ, tree)
        figures["ceiling"] = float(_result(out))
        out = run("in-process pipeline", [sys.executable, str(SCRIPT), "--inprocess", str(tree), str(n)], environ, tree)
        figures["inprocess"] = float(_result(out))
        figures.update(http_bench(tree, environ, args, tmp / "serve.log"))
        if csv_file is not None:
            figures["import"], figures["import_processed"] = import_bench(
                tree, environ, args.import_rows, csv_file, tmp
            )
        out = run("keys for the accept figure", [*KEYS_CREATE, "bench-accept"], environ, tree)
        accept = [sys.executable, str(SCRIPT), "--accept", str(tree), out.strip().splitlines()[-1].strip(), str(n)]
        figures["accept_cpu"] = float(
            _result(run("accept CPU in-process", accept, environ, tree))
        )  # last: leaves a queue
        return figures
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f}" if values else "-"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--sender" and sys.argv[4] == "--paced":
        paced_main(sys.argv[2], sys.argv[3], int(sys.argv[5]), 11, float(sys.argv[6]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--sender":
        client_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--ceiling":
        ceiling_main(sys.argv[2], int(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--inprocess":
        inprocess_main(sys.argv[2], int(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--accept":
        accept_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--prefill":
        prefill_main(int(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        probe_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, help="HTTP batches of 100 events (default 300; 150 with a baseline)")
    parser.add_argument(
        "--import-rows", type=int, help="CSV rows to import, 0 to skip (default 1,000,000; 20,000 with a baseline)"
    )
    parser.add_argument("--database-url", default="", help="PostgreSQL database named bench* (default: SQLite file)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--client",
        choices=("wrk", "httpx"),
        default="wrk" if shutil.which("wrk") else "httpx",
        help="load generator for the accepted figure: wrk (default when installed) or the Python httpx client",
    )
    parser.add_argument("--seconds", type=float, default=15, help="how long wrk sends (--client wrk)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections of the load generator")
    parser.add_argument("--baseline-tree", type=Path, help="checkout of the baseline commit to compare against")
    parser.add_argument("--rounds", type=int, help="rounds (default 2 with --baseline-tree, else 1)")
    parser.add_argument("--lag-rate", type=float, default=5000, help="events/s of the paced lag client (0: skip)")
    parser.add_argument("--lag-seconds", type=float, default=20, help="how long the paced client sends")
    parser.add_argument(
        "--stored-events",
        type=int,
        default=0,
        help="events (10 a person, with identifiers and message ids) stored in bulk before measuring (e.g. 5000000)",
    )
    parser.add_argument(
        "--baseline-stored-events",
        type=int,
        help="the same for the baseline tree (default: --stored-events); with a baseline tree of the same"
        " commit, --stored-events 5000000 --baseline-stored-events 0 measures what a full store costs",
    )
    args = parser.parse_args()
    if args.baseline_stored_events is None:
        args.baseline_stored_events = args.stored_events
    compare = args.baseline_tree is not None
    if args.batches is None:
        args.batches = 150 if compare else 300
    if args.import_rows is None:
        args.import_rows = 20_000 if compare else 1_000_000
    if args.database_url:
        from sqlalchemy.engine import make_url

        u = make_url(args.database_url)
        if u.get_backend_name() != "postgresql":
            parser.error("--database-url: PostgreSQL only (SQLite uses a temporary file)")
        if not (u.database or "").startswith("bench"):
            parser.error(f"--database-url: the public schema of {u.database!r} is dropped; use a database named bench*")

    sides: list[tuple[str, Path]] = [("current", ROOT)]
    if compare:
        base = args.baseline_tree.resolve()
        if base == ROOT:
            parser.error("--baseline-tree is this tree")
        sides.insert(0, ("baseline", base))
    rounds = args.rounds or (2 if compare else 1)

    work = Path(tempfile.mkdtemp(prefix="consentry-bench-"))
    try:
        csv_file = None
        if args.import_rows:
            csv_file = work / "customers.csv"
            write_csv(csv_file, args.import_rows)
        db = "PostgreSQL" if args.database_url else "SQLite"
        print(f"ingest benchmark on {db}, {os.cpu_count()} cores, {sys.executable}")
        for name, tree in sides:
            print(f"  {name}: {check_tree(tree)}")
        print(
            f"  {args.batches} HTTP batches of 100 events ({args.workers} worker(s)), "
            f"{max(args.batches // 3, 10)} in-process batches, {args.import_rows:,} CSV rows"
            + (f"; {rounds} round(s), medians" if rounds > 1 else ""),
            flush=True,
        )
        results: dict[str, dict[str, list[float]]] = {name: {k: [] for k in FIGURES} for name, _ in sides}
        errors: dict[str, list[str]] = {name: [] for name, _ in sides}
        for r in range(1, rounds + 1):
            for name, tree in sides:
                t0 = time.perf_counter()
                try:
                    figures = measure(name, tree, args, work, csv_file)
                except BenchError as e:
                    errors[name].append(str(e))
                    lines = str(e).splitlines()
                    print(f"  round {r} {name:<8}: FAILED: {lines[0]} … {lines[-1]}", flush=True)
                    continue
                for k, v in figures.items():
                    results[name][k].append(v)
                shown = "  ".join(f"{k} {v:,.0f}" for k, v in figures.items())
                print(f"  round {r} {name:<8}: {shown}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    figures_shown = [
        k
        for k in FIGURES
        if (not k.startswith("import") or args.import_rows) and (not k.startswith("lag") or args.lag_rate)
    ]
    print()
    if not compare:
        targets = {
            "http": "  (target 30,000)",
            "processed": "  (target 10,000 on SQLite)",
            "lag_p95": "  (target 2,000 at 5,000 events/s)",
            "import": "  (target 50,000 on SQLite)",
            "import_processed": "  (target 10,000 on SQLite)",
        }
        for k in figures_shown:
            print(f"  {FIGURES[k]:<32} {_fmt(results['current'][k]):>9}{targets.get(k, '')}")
    else:
        width = max(len(FIGURES[k]) for k in figures_shown)
        print(f"  {'figure':<{width}} | {'baseline':>9} | {'current':>9} | {'change %':>8}")
        print(f"  {'-' * width}-+-{'-' * 9}-+-{'-' * 9}-+-{'-' * 8}")
        for k in figures_shown:
            b, c = results["baseline"][k], results["current"][k]
            change = ""
            if b and c and statistics.median(b):
                pct = (statistics.median(c) - statistics.median(b)) / statistics.median(b) * 100
                worse = pct > 10 if k in LOWER_IS_BETTER else pct < -10
                change = f"{pct:+.1f}" + ("  (worse > 10%)" if worse else "")
            print(f"  {FIGURES[k]:<{width}} | {_fmt(b):>9} | {_fmt(c):>9} | {change:>8}")
        counts = ", ".join(f"{name} {len(results[name]['http'])}/{rounds}" for name, _ in sides)
        print(f"  (medians of the rounds that ran: {counts})")
    failed = [name for name, _ in sides if not results[name]["http"]]
    for name in failed:
        print(f"\n{name} could not be measured; last error:\n{errors[name][-1]}", file=sys.stderr)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
