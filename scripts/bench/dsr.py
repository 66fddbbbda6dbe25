"""Data-subject requests: erase one person with 10,000 events and build their access package
on a large population, against a person with about 20 rows in the same run.

    .venv/bin/python scripts/bench/dsr.py [--people 1000000] [--events 10] [--subject-events 10000]
        [--repeat 3] [--database-url postgresql://postgres@127.0.0.1:5432/bench_dsr]
        [--sqlite-file /tmp/seg.db] [--reuse] [--baseline-tree /tmp/dsr-base]

A fresh database (a new SQLite file, or the ``public`` schema of a PostgreSQL database named
``bench*`` dropped and re-created), migrated; the background population is
``scripts/bench/segments.py``'s (``--people`` profiles with consent states and flags, about
``--events`` events each, inserted in bulk). Then ``--repeat`` heavy subjects (an identify
with email and phone, ``--subject-events`` events, a consent, a free text) and as many small
ones (an identify, 15 events, a consent, a text: about 20 rows) go through the real ingestion
code, so their rows are sealed, indexed and recorded as in production.

Measured (median over the subjects; each erasure is of another subject):
  access    ``build_access_package``: every holder's export, decrypted, the Art. 15
            information, JSON + CSV, zipped and written, registered, recorded;
  erasure   ``erase_subject``: locks, deletion notices, suppression entries, key shredding,
            every holder's forget, the ledger entry, the commit, SQLite's WAL truncate;
  residue   ``residue_scan`` once after the last erasure (whole database file / every table).
With ``--reuse`` the database (``--database-url``, or ``--sqlite-file``) already holds the
population (e.g. a copy of the shared 1M/10M set): it is migrated, not regenerated; subjects
get fresh names each run, so earlier runs' suppression entries never refuse them. Keep its
keys with ``--key-dir`` (an erasure wraps the suppression list's key under the master key). With
``--baseline-tree PATH`` (an export of another commit) each round measures one subject set
with that tree's code and one with this tree's, alternating, on the same database.
The machine's two cores are shared with other work: figures are noisy.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, os.environ.get("CONSENTRY_BENCH_TREE", str(ROOT)))  # the code measured
M = "marketing.advertising.first_party.targeted"


async def _subject(name: str, events: int) -> str:
    """Ingest one person through the pipeline; returns their profile id."""
    from app.access.service import Principal
    from app.consent.records import Choice, record_choices
    from app.db import unit_of_work
    from app.ingest.service import ingest_messages
    from app.profiles.service import VaultContext
    from app.texts.service import TextIn, ingest_texts

    ctx = VaultContext.from_settings()
    who = Principal(key_id="bench", role="ingest", name="bench", source="bench", trust="server")
    for attempt in range(50):  # an earlier run's erased person may have had this phone: suppressed, dropped
        phone = f"+1415555{int(uuid.uuid5(uuid.NAMESPACE_URL, f'{name}/{attempt}')) % 10_000:04d}"
        traits = {"email": f"{name}@example.com", "phone": phone, "firstName": name.title(), "country": "DE"}
        async with unit_of_work() as s:
            r = await ingest_messages(s, ctx, who, [{"type": "identify", "userId": name, "traits": traits}])
        if r.profile_ids[0] is not None:
            pid = str(r.profile_ids[0])
            break
    else:
        raise SystemExit(f"{name}: every phone tried is suppressed by an earlier run's erasure")
    start = datetime.now(UTC) - timedelta(days=300)
    for first in range(0, events, 1000):
        batch = [
            {
                "type": "track",
                "userId": name,
                "event": "Product Viewed" if k % 3 else "Order Completed",
                "properties": {"sku": f"sku-{k % 97}", "price": k % 200},
                "timestamp": (start + timedelta(minutes=k)).isoformat(),
                "messageId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/{k}")),  # names nobody
            }
            for k in range(first, min(events, first + 1000))
        ]
        async with unit_of_work() as s:
            await ingest_messages(s, ctx, who, batch)
    async with unit_of_work() as s:
        await record_choices(s, [Choice(pid, M, "granted", "form", "bench", datetime.now(UTC))])
        note = f"Hi, this is {name.title()}, call me on {phone} or mail {name}@example.com"
        await ingest_texts(s, ctx, who, [TextIn(note, "chat", None, {"user_id": name}, None)])
    return pid


async def _timed_access(pid: str, request_id: str) -> float:
    from app.access.service import Principal
    from app.db import unit_of_work
    from app.dsr.access_package import build_access_package

    officer = Principal(key_id="bench-officer", role="compliance", name="officer")
    t0 = time.perf_counter()
    async with unit_of_work() as s:
        await build_access_package(s, officer, pid, request_id)
    return time.perf_counter() - t0


async def _timed_erasure(pid: str, request_id: str) -> tuple[float, dict[str, Any]]:
    from app.access.service import Principal
    from app.db import unit_of_work
    from app.dsr.erasure import erase_subject

    officer = Principal(key_id="bench-officer", role="compliance", name="officer")
    t0 = time.perf_counter()
    async with unit_of_work() as s:
        report = await erase_subject(s, officer, pid, request_id)
    return time.perf_counter() - t0, report.to_json()


async def _residue(pid: str, name: str) -> tuple[float, dict[str, Any]]:
    from app.db import unit_of_work
    from app.dsr.residue import residue_scan

    t0 = time.perf_counter()
    ids = [("email", f"{name}@example.com"), ("user_id", name)]
    async with unit_of_work() as s:
        result = await residue_scan(s, ids, (pid,))
    return time.perf_counter() - t0, result.to_json()


async def measure(repeat: int, subject_events: int, residue: bool = True) -> dict[str, Any]:
    from app.db import dispose_engines

    t0 = time.perf_counter()
    run = uuid.uuid4().hex[:6]  # fresh people each run: earlier runs' erasures suppressed theirs
    heavy = [await _subject(f"heavy{run}{k}", subject_events) for k in range(repeat)]
    small = [await _subject(f"small{run}{k}", 15) for k in range(repeat)]
    made = time.perf_counter() - t0
    times: dict[str, list[float]] = {"access small": [], "access heavy": [], "erase small": [], "erase heavy": []}
    for k in range(repeat):  # alternating, so load on the machine falls on both alike
        times["access small"].append(await _timed_access(small[k], f"a-s{k}"))
        times["access heavy"].append(await _timed_access(heavy[k], f"a-h{k}"))
    found: dict[str, Any] = {}
    for k in range(repeat):
        took, found["small"] = await _timed_erasure(small[k], f"e-s{k}")
        times["erase small"].append(took)
        took, found["heavy"] = await _timed_erasure(heavy[k], f"e-h{k}")
        times["erase heavy"].append(took)
    scan, scanned = await _residue(heavy[-1], f"heavy{run}{repeat - 1}") if residue else (0.0, {})
    await dispose_engines()
    return {"made_s": made, "times": times, "found": found, "residue_s": scan, "residue": scanned}


def populate(people: int, events: int, postgres: bool) -> dict[str, int]:
    from scripts.bench.segments import populate as bulk

    return bulk(people, events, postgres)


def _measure_in(tree: Path, args: argparse.Namespace, environ: dict[str, str]) -> dict[str, Any]:
    """One round measured with ``tree``'s code (a subprocess), as JSON."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure-only"]
    cmd += ["--repeat", str(args.repeat), "--subject-events", str(args.subject_events)]
    env = {**environ, "CONSENTRY_BENCH_TREE": str(tree.resolve())}
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"measuring in {tree} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _print(result: dict[str, Any], label: str = "") -> None:
    for name, xs in result["times"].items():
        print(f"  {label}{name:<14} median {statistics.median(xs):7.3f} s   runs {', '.join(f'{x:.3f}' for x in xs)}")


def _environ(args: argparse.Namespace, tmp: Path) -> dict[str, str]:
    url = args.database_url or f"sqlite:///{args.sqlite_file or tmp / 'bench.db'}"
    return {
        "CONSENTRY_DATABASE_URL": url,
        "CONSENTRY_KEY_DIR": str(args.key_dir or tmp / "keys"),
        "CONSENTRY_DSR_EXPORT_DIR": str(tmp / "exports"),
        "CONSENTRY_IMPORT_DIR": str(tmp / "imports"),
        "CONSENTRY_LOG_LEVEL": "WARNING",
        "CONSENTRY_SCHEDULER": "0",
        "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",  # presidio's email recognizer: never fetch
    }


def _compare(args: argparse.Namespace) -> None:
    """Alternate rounds: the baseline tree's code, then this tree's, on the same database."""
    rounds: dict[str, dict[str, list[float]]] = {"baseline": {}, "this": {}}
    for k in range(args.rounds):
        for side, tree in (("baseline", args.baseline_tree), ("this", ROOT)):
            got = _measure_in(tree, args, dict(os.environ))
            for name, xs in got["times"].items():
                rounds[side].setdefault(name, []).extend(xs)
            print(
                f"round {k + 1} {side}: "
                + ", ".join(f"{n} {statistics.median(x):.3f}" for n, x in got["times"].items())
            )
    for side, times in rounds.items():
        print(f"{side} ({args.baseline_tree if side == 'baseline' else ROOT}):")
        _print({"times": times})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10, help="background events a person (about)")
    parser.add_argument("--subject-events", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default="", help="PostgreSQL database named bench* (default: SQLite file)")
    parser.add_argument("--sqlite-file", type=Path, help="SQLite file to use (with --reuse: already populated)")
    parser.add_argument("--reuse", action="store_true", help="the database already holds the population")
    parser.add_argument("--key-dir", type=Path, help="keys of a reused database (kept between runs)")
    parser.add_argument("--baseline-tree", type=Path, help="export of the baseline commit to compare against")
    parser.add_argument("--rounds", type=int, default=2, help="rounds with --baseline-tree")
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_only:  # one side of --baseline-tree: environment set by the caller
        print(json.dumps(asyncio.run(measure(args.repeat, args.subject_events, residue=False)), default=str))
        return
    postgres = bool(args.database_url)
    tmp = Path(tempfile.mkdtemp(prefix="consentry-bench-dsr-"))
    os.environ.update(_environ(args, tmp))
    if postgres and not args.reuse:
        from sqlalchemy.engine import make_url

        if not (make_url(args.database_url).database or "").startswith("bench"):
            parser.error("--database-url: its public schema is dropped; use a database named bench*")
        from scripts.bench.ingest import reset_postgres

        reset_postgres(args.database_url)
    subprocess.run([sys.executable, "-m", "app", "db", "upgrade"], cwd=ROOT, check=True, capture_output=True)
    db = "PostgreSQL" if postgres else "SQLite"
    print(f"dsr benchmark on {db}, {os.cpu_count()} cores (shared: noisy), {args.people:,} people")
    t0 = time.perf_counter()
    if not args.reuse:
        counts = populate(args.people, args.events, postgres)
        print(f"generated in {time.perf_counter() - t0:.0f} s: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    if args.baseline_tree is not None:
        _compare(args)
        return
    result = asyncio.run(measure(args.repeat, args.subject_events))
    made = f"{args.repeat} x {args.subject_events:,} events, {args.repeat} x 15"
    print(f"subjects ingested in {result['made_s']:.0f} s ({made})")
    _print(result)
    heavy = result["found"]["heavy"]
    print(f"  heavy erasure found: {heavy['found']}")
    print(f"  removed: {heavy['removed']}  sqlite: {heavy['sqlite']}")
    if not result["residue"]["clean"]:
        print(f"  residue findings: {result['residue']['findings']} {result['residue']['stores']}")
    print(
        f"  residue scan {result['residue_s']:.1f} s: clean={result['residue']['clean']} {result['residue']['scanned']}"
    )
    if not postgres:
        path = args.sqlite_file or tmp / "bench.db"
        print(f"  database file {path.stat().st_size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
