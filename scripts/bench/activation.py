"""Activation: a run of a segment to a file and to a local webhook receiver, with the consent
filter on, against baselines in the same run.

    .venv/bin/python scripts/bench/activation.py [--people 1000000] [--segment 250000]
        [--repeat 3] [--database-url postgresql://…/bench_act --allow-drop]
        [--data DIR --reuse] [--baseline-tree /tmp/base --rounds 2] [--only file,webhook]

A fresh database (a temporary SQLite file, or the ``public`` schema of the PostgreSQL
database given, dropped and re-created: the name must start with ``bench`` unless
``--allow-drop``), migrated, then ``--people`` profiles with regions, consent states and flags
(``scripts/bench/decisions.py``'s generator, as the segments benchmark uses), then a saved
segment of the first ``--segment`` people with, for each of them, a data key and sealed
``email``, ``name`` and ``phone`` fields (what a run decrypts). About 40% of them may be
used for marketing (the generator's consent states), so 250,000 members give about 100,000
people sent. The receiver is another process (``http.server``, counting people).

``--reuse`` keeps a population the database (or ``--data``'s SQLite file) already holds: the
benchmark's own, or a copy of the segments benchmark's (same people, same ids): the saved
segment, data keys and sealed fields are then added to it once (keys under ``--data``: keep
it for the next run). ``--baseline-tree`` measures another checkout's ``app`` (the baseline
commit) and this one alternately, ``--rounds`` times each, every run in its own process on
the same database, and prints both medians side by side.

Measured (medians of ``--repeat``):
  file            ``execute_run`` to a CSV file destination: consent decided now for every
                  member, fields of the allowed categories decrypted, file written, recipients
                  and leaves stored, one ledger entry (group, people indexed);
  file, no consent  the same run with the consent filter replaced by "every member";
  raw file write  writing the CSV of the people the run sent, alone (no database);
  webhook         ``execute_run`` to a webhook destination (batches of 500, signed);
  webhook, no consent  the same without the consent filter;
  raw POSTs       the batches of the people the run sent, POSTed alone (signed, no database).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
M = "marketing.advertising.first_party.targeted"
ADDED = ("subject_key", "profile_field", "segment", "segment_member")
SECRET = "whsec_YmVuY2gtc2lnbmluZy1rZXktb2YtMzItYnl0ZXMhIQ=="


# --- the receiver (its own process) ------------------------------------------------------


def receive(port_file: Path) -> None:
    """Answer every POST with 200 and count the people in it (a line per batch on stdout)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            people = len(json.loads(body).get("people", []))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()
            print(people, flush=True)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_file.write_text(str(server.server_address[1]))
    server.serve_forever()


# --- the population ----------------------------------------------------------------------


def populate(people: int, members: int, postgres: bool) -> dict[str, int]:
    from app.db import create_sync_engine
    from scripts.bench.decisions import COLUMNS, rows
    from scripts.bench.segments import _insert

    engine = create_sync_engine()
    counts: dict[str, int] = {}
    try:
        with engine.begin() as conn:
            data = rows(people)
            for table, cols in COLUMNS.items():
                _insert(conn, table, cols, data[table], postgres)
                counts[table] = len(data[table])
            del data
        counts.update(add_segment(engine, members, postgres))
    finally:
        engine.dispose()
    return counts


def add_segment(engine: Any, members: int, postgres: bool) -> dict[str, int]:
    """The saved segment of the first ``members`` people, with a data key and sealed fields
    for each of them, added to a population (then ANALYZE)."""
    from sqlalchemy import text

    from scripts.bench.decisions import pid
    from scripts.bench.segments import _insert

    with engine.begin() as conn:
        keys, fields = sealed([pid(i) for i in range(members)])
        _insert(conn, "subject_key", tuple(keys[0]), [tuple(r.values()) for r in keys], postgres)
        _insert(conn, "profile_field", tuple(fields[0]), [tuple(r.values()) for r in fields], postgres)
        now = datetime.now(UTC)
        seg = ("bench-seg", "bench", M, json.dumps({"trait": "plan", "eq": "basic"}), 1, "bench", now, now)
        cols = ("id", "name", "purpose", "tree", "version", "owner_key_id", "created_at", "updated_at")
        _insert(conn, "segment", cols, [seg], postgres)
        member_rows = [("bench-seg", pid(i), now) for i in range(members)]
        _insert(conn, "segment_member", ("segment_id", "profile_id", "entered_at"), member_rows, postgres)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("profile", "consent_state", "privacy_flag", "identifier", *ADDED):
            conn.execute(text(f"{'VACUUM ANALYZE' if postgres else 'ANALYZE'} {table}"))
    return {"subject_key": len(keys), "profile_field": len(fields), "segment_member": members}


def populated() -> tuple[int, bool]:
    """(people, whether the benchmark's segment is there) in the database."""
    from sqlalchemy import text

    from app.db import create_sync_engine

    engine = create_sync_engine()
    try:
        with engine.connect() as conn:
            people = int(conn.execute(text("SELECT count(*) FROM profile")).scalar() or 0)
            seg = bool(conn.execute(text("SELECT count(*) FROM segment WHERE id = 'bench-seg'")).scalar())
            return people, seg
    finally:
        engine.dispose()


def prepare(args: argparse.Namespace, postgres: bool) -> None:
    """Generate the population, or keep the one there (``--reuse``), adding the segment."""
    from app.db import create_sync_engine

    people, seg = populated() if args.reuse else (0, False)
    if people and seg:
        print(f"population kept from an earlier run ({people:,} people)")
        return
    t0 = time.perf_counter()
    if people:
        engine = create_sync_engine()
        try:
            counts = add_segment(engine, args.segment, postgres)
        finally:
            engine.dispose()
        print(f"kept {people:,} people; added in {time.perf_counter() - t0:.0f} s: " + _counts(counts))
        return
    counts = populate(args.people, args.segment, postgres)
    print(f"generated in {time.perf_counter() - t0:.0f} s: " + _counts(counts))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items())


def sealed(ids: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A data key per person and their sealed email, name and phone (as ingestion writes them)."""
    from app.settings import get_settings
    from app.vault.cipher import seal_field
    from app.vault.keyring import key_material
    from app.vault.service import new_subject_key

    ring = key_material(get_settings()).master
    now = datetime.now(UTC)
    keys, fields = [], []
    for n, p in enumerate(ids):
        dk, row = new_subject_key(ring, p)
        keys.append(row)
        for name, category, value in (
            ("email", "user.contact.email", f"person{n}@example.com"),
            ("name", "user.name", f"Person {n}"),
            ("phone", "user.contact.phone_number", f"+4915{n:09d}"),
        ):
            fields.append(
                {
                    "origin_id": p,
                    "name": name,
                    "profile_id": p,
                    "category": category,
                    "key_version": dk.version,
                    "ciphertext": seal_field(dk.key, p, name, dk.version, value),
                    "updated_at": now,
                    "source": "bench",
                    "trust": "server",
                    "observed_at": now,
                }
            )
    return keys, fields


# --- measuring ---------------------------------------------------------------------------


async def destination(kind: str, url: str) -> str:
    from app.access.service import Principal
    from app.activation.destinations import DestinationIn, create_destination
    from app.db import unit_of_work

    marketer = Principal(key_id="bench", role="marketer", name="bench")
    config: dict[str, Any] = {"url": url, "batch_size": 500} if kind == "webhook" else {"directory": "bench"}
    data = DestinationIn(
        kind, kind, M, ["user.contact.email", "user.name"], False, config, SECRET if kind == "webhook" else None
    )
    async with unit_of_work() as s:
        return (await create_destination(s, marketer, data)).id


async def one_run(dest_id: str) -> tuple[float, dict[str, Any], list[str]]:
    from app.access.service import Principal
    from app.activation.service import execute_run, start_run
    from app.db import unit_of_work

    marketer = Principal(key_id="bench", role="marketer", name="bench")
    async with unit_of_work() as s:
        run_id = (await start_run(s, marketer, "bench-seg", dest_id)).id
    t0 = time.perf_counter()
    result = await execute_run(run_id)
    took = time.perf_counter() - t0
    assert result is not None, "the run failed"
    return took, {"sent": len(result.sent), "excluded": len(result.excluded), "failed": len(result.failed)}, result.sent


async def raw(kind: str, dest_id: str, ids: list[str]) -> tuple[float, dict[str, Any]]:
    """The delivery alone: the same people the run sent (fields decrypted beforehand, not
    timed) written or POSTed."""
    from app.activation import delivery
    from app.activation.destinations import get_destination
    from app.activation.service import outbound
    from app.db import unit_of_work

    async with unit_of_work() as s:
        dest = await get_destination(s, dest_id)
        people, _missing = await outbound(s, dest, "raw", sorted(ids))
    t0 = time.perf_counter()
    if kind == "file":
        done = delivery.write_file(dest, f"raw-{uuid.uuid4()}", people, "DE")
    else:
        done = await delivery.send_batches(dest, f"raw-{uuid.uuid4()}", people)
    return time.perf_counter() - t0, {"sent": len(done.sent)}


async def measure(url: str, members: int, repeat: int, only: set[str]) -> dict[str, Any]:
    import app.activation.service as svc
    from app.db import dispose_engines
    from app.decisions.engine import Ask
    from scripts.bench.decisions import pid

    real, real_query = svc.screen, getattr(svc, "screen_query", None)

    async def no_consent(session: Any, ask: Ask, profiling: bool, now: datetime, where: Any, among: Any = None) -> Any:
        from sqlalchemy import select

        from app.profiles.service import population

        _t, person, _r, live = population()
        q = select(person).where(live, where)
        if among is not None:
            q = q.where(person.in_(among))
        ids = (await session.execute(q.order_by(person))).scalars().all()
        return list(ids), {}

    def no_consent_query(session: Any, ask: Ask, profiling: bool, now: datetime, where: Any, among: Any = None) -> Any:
        """The streamed screen's statement (a large run on PostgreSQL) without the filter."""
        from sqlalchemy import literal, select

        from app.profiles.service import population

        _t, person, _r, live = population()
        q = select(person, literal("allowed")).where(live, where)
        return (q if among is None else q.where(person.in_(among))).order_by(person)

    dests = {kind: await destination(kind, url) for kind in ("file", "webhook")}
    times: dict[str, list[float]] = {}
    values: dict[str, Any] = {}
    for _ in range(repeat):
        for kind in ("file", "webhook"):
            sent: list[str] = []
            for label, filtered in ((kind, True), (f"{kind}, no consent", False)):
                if only and label not in only:
                    continue
                svc.screen = real if filtered else no_consent  # type: ignore[assignment]
                svc.screen_query = real_query if filtered else no_consent_query  # type: ignore[assignment]
                took, values[label], ids = await one_run(dests[kind])
                sent = sent if sent and not filtered else ids
                times.setdefault(label, []).append(took)
            svc.screen, svc.screen_query = real, real_query  # type: ignore[assignment]
            label = "raw file write" if kind == "file" else "raw POSTs"
            if only and label not in only:
                continue
            took, values[label] = await raw(kind, dests[kind], sent or [pid(i) for i in range(members)])
            times.setdefault(label, []).append(took)
    await dispose_engines()
    return {"times": {k: statistics.median(v) for k, v in times.items()}, "values": values}


def measured_by(tree: Path, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement with ``tree``'s ``app``, in its own process (the same database)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure-tree", str(tree), "--url", url,
           "--segment", str(args.segment), "--repeat", str(args.repeat), "--only", args.only]  # fmt: skip
    done = subprocess.run(cmd, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{tree}: the measurement failed:\n{done.stderr[-3000:]}")
    for line in (done.stdout + done.stderr).splitlines():  # the runs' stages, as logged
        if "activation_" in line:
            print(f"    {tree.name}: {line.split('] ', 1)[-1].strip()}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def compared(url: str, args: argparse.Namespace) -> None:
    """Baseline and this tree, alternating; medians of the rounds side by side."""
    sides = {"baseline": args.baseline_tree.resolve(), "this tree": ROOT}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}
    for n in range(args.rounds):
        for side, tree in sides.items():
            runs[side].append(measured_by(tree, url, args))
            took = ", ".join(f"{k} {v:.2f} s" for k, v in runs[side][-1]["times"].items())
            print(f"  round {n + 1}, {side}: {took}   (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"  {'':<22} {'baseline':>9} {'this tree':>10} {'people/s':>9}  values (this tree)")
    for name in runs["this tree"][0]["times"]:
        med = {k: statistics.median(r["times"].get(name, float("nan")) for r in v) for k, v in runs.items()}
        value = runs["this tree"][0]["values"][name]
        rate = value["sent"] / med["this tree"]
        print(f"  {name:<22} {med['baseline']:8.2f}s {med['this tree']:9.2f}s {rate:9,.0f}  {value}")
        if runs["baseline"][0]["values"].get(name) != value:
            print(f"  {'':<22} baseline's value differs: {runs['baseline'][0]['values'].get(name)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--segment", type=int, default=250_000, help="segment members (the first N people)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default="", help="PostgreSQL (default: a temporary SQLite file)")
    parser.add_argument("--allow-drop", action="store_true", help="drop the schema of a database not named bench*")
    parser.add_argument(
        "--data", type=Path, help="keep the SQLite file, keys and files here (default: a temporary folder)"
    )
    parser.add_argument("--reuse", action="store_true", help="keep a population --data (or the database) already holds")
    parser.add_argument("--only", default="", help="comma-separated measurements to run (default: all)")
    parser.add_argument("--baseline-tree", type=Path, help="checkout of the baseline commit to compare against")
    parser.add_argument("--rounds", type=int, default=2, help="rounds with --baseline-tree")
    parser.add_argument("--receive", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure-tree", type=Path, help=argparse.SUPPRESS)  # one side of --baseline-tree
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if args.receive:
        receive(args.receive)
        return
    if args.measure_tree:
        sys.path.insert(0, str(args.measure_tree.resolve()))
        print(json.dumps(asyncio.run(measure(args.url, args.segment, args.repeat, only)), default=str))
        return
    postgres = bool(args.database_url)
    tmp = args.data or Path(tempfile.mkdtemp(prefix="consentry-bench-act-"))
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "CONSENTRY_DATABASE_URL": args.database_url or f"sqlite:///{tmp / 'bench.db'}",
            "CONSENTRY_KEY_DIR": str(tmp / "keys"),
            "CONSENTRY_ACTIVATION_DIR": str(tmp / "out"),
            "CONSENTRY_LOG_LEVEL": "WARNING",
            "CONSENTRY_SCHEDULER": "0",
            "CONSENTRY_ACTIVATION_PRIVATE_NETWORKS": "1",  # the receiver is on 127.0.0.1
        }
    )
    if postgres:
        from sqlalchemy.engine import make_url

        if not (make_url(args.database_url).database or "").startswith("bench") and not args.allow_drop:
            parser.error("--database-url: its public schema is dropped; use a database named bench* or --allow-drop")
        from scripts.bench.ingest import reset_postgres

        if not args.reuse:
            reset_postgres(args.database_url)
    port_file = tmp / "port"
    port_file.unlink(missing_ok=True)
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--receive", str(port_file)], stdout=subprocess.DEVNULL, text=True
    )
    try:
        subprocess.run([sys.executable, "-m", "app", "db", "upgrade"], cwd=ROOT, check=True, capture_output=True)
        print(f"activation benchmark on {'PostgreSQL' if postgres else 'SQLite'}, {os.cpu_count()} cores (shared), "
              f"{args.people:,} people, segment of {args.segment:,}")  # fmt: skip
        prepare(args, postgres)
        while not port_file.exists():
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}/hook"
        if args.baseline_tree is not None:
            compared(url, args)
            return
        result = asyncio.run(measure(url, args.segment, args.repeat, only))
        for name, seconds in result["times"].items():
            sent = result["values"][name]["sent"]
            print(f"  {name:<22} {seconds:8.2f} s  {sent / seconds:10,.0f} people/s   {result['values'][name]}")
    finally:
        receiver.terminate()
        receiver.wait(10)


if __name__ == "__main__":
    main()
