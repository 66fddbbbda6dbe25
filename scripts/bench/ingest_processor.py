"""Inbox processing alone (issue 9): fill an inbox with accepted batches, the processor off,
then time draining it in fresh processes (one or several workers), for a baseline tree and
this one, alternating, on a fresh database each time.

    .venv/bin/python scripts/bench/ingest_processor.py --baseline-tree /work/bench-base
    .venv/bin/python scripts/bench/ingest_processor.py --workers 2 \
        --database-url postgresql://postgres@127.0.0.1:5432/bench_p
    .venv/bin/python scripts/bench/ingest_processor.py --same-rows --baseline-tree /work/bench-base

The batches are ``make_batches`` of ``scripts/bench/ingest.py`` (100 events each: 20% identify
with traits, 55% track, 25% page, over 50,000 people), accepted through ``POST /v1/batch`` in
process (seed 17; ``--warm N``: first N batches of seed 5, drained untimed, so the measured
ones meet people already known). Each worker process imports its tree, tunes the garbage
collector as ``consentry worker`` does, waits for the others, then runs the drain loop
(no outbox followers). Printed: events/s (wall, first start to last end) and CPU µs/event.
``--profile FILE``: also write a profile of one drain of this tree: pyinstrument's text for
FILE.txt (``pip install pyinstrument`` into .venv; not a dependency), else cProfile's stats."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from scripts.bench.ingest import (  # noqa: E402
    KEYS_CREATE,
    RESULT,
    BenchError,
    _asgi_post,
    _result,
    check_tree,
    import_tree,
    make_batches,
    reset_postgres,
    run,
    tree_environ,
)

SCRIPT = Path(__file__).resolve()


async def _drain(go: Path, profile: str) -> dict[str, float]:
    from app.db import dispose_engines
    from app.ingest.processor import drain_outcome
    from app.process import tune_garbage_collector
    from app.profiles.service import VaultContext

    ctx = VaultContext.from_settings()
    tune_garbage_collector()
    print("READY", flush=True)
    while not go.exists():
        await asyncio.sleep(0.01)
    prof: Any = None
    if profile.endswith(".txt"):  # pyinstrument (sampling, low overhead), if installed
        from pyinstrument import Profiler

        prof = Profiler(interval=0.0005, async_mode="disabled")
        prof.start()
    elif profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0, c0 = time.time(), time.process_time()
    out = await drain_outcome(ctx)
    t1, c1 = time.time(), time.process_time()
    if profile.endswith(".txt"):
        prof.stop()
        Path(profile).write_text(prof.output_text(unicode=False, show_all=False))
    elif prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    await dispose_engines()
    return {"start": t0, "end": t1, "cpu": c1 - c0, "events": out.events, "set_aside": len(out.set_aside)}


async def _fill(key: str, n: int, seed: int) -> int:
    """``n`` batches of ``make_batches(seed)`` through ``POST /v1/batch`` in this process
    (the app's accept path, the processor off)."""
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
    for body in make_batches(n, seed=seed):
        status, answer = await _asgi_post(app, "/v1/batch", body, headers)
        if status != 200:
            raise SystemExit(f"/v1/batch answered {status}: {answer[:300]!r}")
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    await life
    return n * 100


def fill_main(tree: str, key: str, n: int, seed: int) -> None:
    import_tree(Path(tree).resolve())
    os.environ["CONSENTRY_INGEST_PROCESSOR"] = "off"
    print(RESULT, asyncio.run(_fill(key, n, seed)))


def warm_main(tree: str) -> None:
    """Drain what is queued, untimed (the warm-up's people become known)."""
    import_tree(Path(tree).resolve())

    async def go() -> int:
        from app.db import dispose_engines
        from app.ingest.processor import drain

        stored = await drain()
        await dispose_engines()
        return stored

    print(RESULT, asyncio.run(go()))


def drain_main(tree: str, go: str, profile: str) -> None:
    import_tree(Path(tree).resolve())
    print(RESULT, json.dumps(asyncio.run(_drain(Path(go), profile))))


def _fixed_randomness(seed: int) -> None:
    """Every random byte (ids, nonces, data keys) from a seeded generator: two trees that
    draw the same bytes in the same order store byte-identical rows."""
    import random

    rng = random.Random(seed)

    def urandom(n: int) -> bytes:
        return rng.randbytes(n)

    os.urandom = urandom
    random._urandom = urandom  # type: ignore[attr-defined]  # SystemRandom (secrets.token_bytes)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    AESGCM.generate_key = classmethod(lambda cls, bit_length: urandom(bit_length // 8))  # type: ignore[assignment, method-assign]  # OpenSSL's generator otherwise


def fixed_drain_main(tree: str) -> None:
    _fixed_randomness(7)
    import_tree(Path(tree).resolve())
    go = Path(tempfile.mkdtemp()) / "go"
    go.touch()
    print(RESULT, json.dumps(asyncio.run(_drain(go, ""))))


SKIP_COLUMNS = {
    # set from the clock while processing (datetime.now), never from the input
    "profile": {"created_at", "updated_at"},
    "profile_field": {"updated_at"},
    "subject_key": {"created_at"},
    "ingest_outbox": {"at"},
    "audit_entry": {"recorded_at", "prev_hash", "entry_hash"},  # the chain hashes the time
}
SKIP_TABLES = {"alembic_version", "audit_head"}


def table_digests(path: Path) -> dict[str, tuple[int, str]]:
    """Each table's rows (minus clock columns), sorted, hashed: (rows, sha256)."""
    import hashlib
    import sqlite3

    conn = sqlite3.connect(path)
    out = {}
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    for name in names:
        if name in SKIP_TABLES or name.startswith("sqlite_"):
            continue
        cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{name}")') if r[1] not in SKIP_COLUMNS.get(name, ())]
        rows = sorted(
            repr(r) for r in conn.execute(f'SELECT {", ".join(chr(34) + c + chr(34) for c in cols)} FROM "{name}"')
        )
        out[name] = (len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16])
    conn.close()
    return out


def compare_drains(trees: list[Path], work: Path, what: str) -> None:
    """Drain copies of ``work/bench.db``'s inbox with each tree under the same fixed randomness
    and compare every table's contents (clock columns and the ledger aside)."""
    digests = []
    for i, tree in enumerate(trees):
        db = work / f"drained-{i}.db"
        shutil.copy(work / "bench.db", db)
        env = {**tree_environ(tree, work, f"sqlite:///{db}", work / "nlp"), "CONSENTRY_INGEST_PROCESSOR": "off"}
        out = json.loads(_result(run("drain", [sys.executable, str(SCRIPT), "--fixed-drain", str(tree)], env, tree)))
        print(f"{tree}: {out['events']:,} {what}")
        digests.append(table_digests(db))
    same = True
    for name in sorted(set(digests[0]) | set(digests[1])):
        a, b = digests[0].get(name), digests[1].get(name)
        same = same and a == b
        print(f"  {name:28} {a} {'==' if a == b else '!='} {b}")
    print("SAME ROWS" if same else "ROWS DIFFER")


def same_rows(trees: list[Path], batches: int) -> None:
    """Fill one SQLite inbox, then ``compare_drains``."""
    work = Path(tempfile.mkdtemp(prefix="consentry-same-rows-"))
    try:
        environ = tree_environ(trees[0], work, "", work / "nlp")
        environ["CONSENTRY_INGEST_PROCESSOR"] = "off"
        run("consentry db upgrade", [sys.executable, "-m", "app", "db", "upgrade"], environ, trees[0])
        key = run("keys create", [*KEYS_CREATE, "bench"], environ, trees[0]).strip().splitlines()[-1].strip()
        fill = [sys.executable, str(SCRIPT), "--fill", str(trees[0]), key, str(batches), "17"]
        run("filling", fill, environ, trees[0])
        compare_drains(trees, work, "events stored")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(tree: Path, environ: dict[str, str], args: argparse.Namespace, tmp: Path, profile: str) -> dict[str, float]:
    if args.database_url:
        reset_postgres(args.database_url)
    run("consentry db upgrade", [sys.executable, "-m", "app", "db", "upgrade"], environ, tree)
    key = run("keys create", [*KEYS_CREATE, "bench"], environ, tree).strip().splitlines()[-1].strip()
    if args.warm:  # people the measured batches find known (their identifiers held)
        run("warm-up fill", [sys.executable, str(SCRIPT), "--fill", str(tree), key, str(args.warm), "5"], environ, tree)
        run("warm-up drain", [sys.executable, str(SCRIPT), "--warm", str(tree)], environ, tree)
    fill = [sys.executable, str(SCRIPT), "--fill", str(tree), key, str(args.batches), "17"]
    run("filling the inbox", fill, environ, tree)
    go = tmp / "go"
    cmd = [sys.executable, str(SCRIPT), "--drain", str(tree), str(go), profile]
    procs = [
        subprocess.Popen(cmd, env=environ, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(args.workers)
    ]
    for p in procs:  # every worker imported and connected: start together
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line.startswith("READY"):
            raise BenchError(f"worker failed to start: {line} {p.stderr.read() if p.stderr else ''}")
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode:
            raise BenchError(f"worker failed (exit {p.returncode}): {err[-1500:]}")
        results.append(json.loads(_result(out)))
    events = sum(r["events"] for r in results)
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    cpu = sum(r["cpu"] for r in results)
    return {"events": events, "rate": events / wall, "cpu_us": cpu / events * 1e6, "wall": wall}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--fill":
        fill_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--warm":
        warm_main(sys.argv[2])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--fixed-drain":
        fixed_drain_main(sys.argv[2])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--drain":
        drain_main(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "")
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=200, help="batches of 100 events in the inbox (default 200)")
    parser.add_argument("--database-url", default="", help="PostgreSQL database named bench* (default: SQLite file)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes draining at once")
    parser.add_argument("--baseline-tree", type=Path, help="checkout of the baseline commit to compare against")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--warm",
        type=int,
        default=0,
        help="batches (another seed) accepted and drained first, untimed: the measured ones meet known people",
    )
    parser.add_argument("--profile", default="", help="write a cProfile of this tree's drain (one worker) here")
    parser.add_argument(
        "--same-rows",
        action="store_true",
        help="instead of timing: check that the baseline tree and this one store the same rows (SQLite)",
    )
    args = parser.parse_args()
    if args.same_rows:
        if args.baseline_tree is None:
            parser.error("--same-rows needs --baseline-tree")
        same_rows([args.baseline_tree.resolve(), ROOT], args.batches)
        return
    if args.database_url and not args.database_url.rsplit("/", 1)[-1].startswith("bench"):
        parser.error("--database-url: its public schema is dropped; use a database named bench*")
    sides: list[tuple[str, Path]] = [("current", ROOT)]
    if args.baseline_tree is not None:
        sides.insert(0, ("baseline", args.baseline_tree.resolve()))
    for name, tree in sides:
        print(f"{name}: {check_tree(tree)}")
    work = Path(tempfile.mkdtemp(prefix="consentry-bench-proc-"))
    figures: dict[str, list[dict[str, float]]] = {name: [] for name, _t in sides}
    try:
        for r in range(args.rounds):
            for name, tree in sides:
                tmp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
                environ = tree_environ(tree, tmp, args.database_url, work / f"nlp-{name}")
                environ["CONSENTRY_INGEST_PROCESSOR"] = "off"
                profile = args.profile if (args.profile and name == "current" and r == 0) else ""
                try:
                    f = measure(tree, environ, args, tmp, profile)
                except BenchError as e:
                    print(f"  round {r + 1} {name}: FAILED {e}")
                    continue
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                figures[name].append(f)
                load = os.getloadavg()[0]
                print(
                    f"  round {r + 1} {name}: {f['events']:,.0f} events in {f['wall']:.2f} s, "
                    f"{f['rate']:,.0f} events/s, {f['cpu_us']:.0f} µs CPU/event (load {load:.2f})",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    db = "PostgreSQL" if args.database_url else "SQLite"
    print(f"\nmedians ({db}, {args.workers} worker(s), {args.batches * 100:,} events):")
    for name, runs in figures.items():
        if runs:
            rate = statistics.median(x["rate"] for x in runs)
            cpu = statistics.median(x["cpu_us"] for x in runs)
            print(f"  {name:9} {rate:>9,.0f} events/s  {cpu:>6.0f} µs CPU/event  ({len(runs)} runs)")


if __name__ == "__main__":
    main()
