"""Profile vault throughput: encrypted vs plaintext columns, in the same run.

    .venv/bin/python scripts/bench/vault.py [--profiles 1000] [--rounds 3] [--database-url URL]

Both modes run the real service path (normalise, authorise, audit, one transaction per
profile). The plaintext baseline swaps only the cryptography for identity functions
(plain bytes in the same columns, the raw value in place of the blind index, no data
key), so the difference is what encryption costs. Prints profiles/s and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


@contextmanager
def plaintext_columns() -> Iterator[None]:
    """Replace encryption in the profile write and read paths with plaintext storage (benchmark only)."""
    import importlib

    from app.vault.service import DataKey

    modules = [
        importlib.import_module(m)
        for m in ("app.profiles.service", "app.people.service", "app.identity.service", "app.identity.resolver")
    ]

    async def no_key(_s: Any, _r: Any, pid: str) -> DataKey:
        return DataKey(pid, 1, b"")

    async def no_keys(_s: Any, _r: Any, pids: list[str]) -> dict[str, DataKey]:
        return {p: DataKey(p, 1, b"") for p in pids}

    def new_key(_r: Any, pid: str) -> tuple[DataKey, dict[str, Any]]:
        row = {
            "profile_id": pid,
            "key_version": 1,
            "master_version": 1,
            "wrapped_key": b"",
            "created_at": datetime.now(UTC),
        }
        return DataKey(pid, 1, b""), row

    fakes: dict[str, Any] = {
        "seal_field": lambda _k, _p, _f, _v, value: json.dumps(value).encode(),
        "open_field": lambda _k, _p, _f, _v, blob: json.loads(blob),
        "subject_key": no_key,
        "subject_keys": no_keys,
        "new_subject_key": new_key,
        "blind_index": lambda _k, _kind, value: value[:64],
    }
    saved = [(m, n, getattr(m, n)) for m in modules for n in fakes if hasattr(m, n)]
    for m, n, _f in saved:
        setattr(m, n, fakes[n])
    try:
        yield
    finally:
        for m, n, f in saved:
            setattr(m, n, f)


async def measure(n: int) -> tuple[float, float]:
    from app.access.service import SYSTEM
    from app.db import unit_of_work
    from app.demo import demo_customers
    from app.people.service import write_profile
    from app.profiles.service import VaultContext, read_profiles

    ctx = VaultContext.from_settings()
    people = demo_customers(n, seed=int(time.time()))
    ids: list[str] = []
    t0 = time.perf_counter()
    for traits in people:
        async with unit_of_work() as session:
            ids.append((await write_profile(session, ctx, SYSTEM, traits)).id)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for pid in ids:
        async with unit_of_work() as session:
            await read_profiles(session, ctx, SYSTEM, [pid])
    read_s = time.perf_counter() - t0
    return n / write_s, n / read_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per mode; best is reported")
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="consentry-bench-"))
    os.environ["CONSENTRY_DATABASE_URL"] = args.database_url or f"sqlite:///{tmp}/bench.db"
    os.environ["CONSENTRY_KEY_DIR"] = str(tmp / "keys")
    os.environ["CONSENTRY_LOG_LEVEL"] = "WARNING"

    from app.logs import configure_logging
    from app.migrate import upgrade
    from app.settings import get_settings

    configure_logging(get_settings(), stream=sys.stderr)
    upgrade()

    async def both() -> dict[str, tuple[float, float]]:
        from app.db import dispose_engines

        runs: dict[str, list[tuple[float, float]]] = {"plaintext": [], "encrypted": []}
        await measure(min(200, args.profiles))  # warm-up
        for _ in range(args.rounds):  # alternate, so database growth hits both modes alike
            with plaintext_columns():
                runs["plaintext"].append(await measure(args.profiles))
            runs["encrypted"].append(await measure(args.profiles))
        await dispose_engines()
        return {mode: (max(w for w, _ in rs), max(r for _, r in rs)) for mode, rs in runs.items()}

    r = asyncio.run(both())
    db = "PostgreSQL" if "postgres" in os.environ["CONSENTRY_DATABASE_URL"] else "SQLite"
    print(
        f"vault benchmark on {db}: {args.profiles} profiles x {args.rounds} rounds per mode, best round;"
        " one transaction per profile (incl. its audit entry)"
    )
    print(f"{'mode':<10} {'writes/s':>10} {'reads/s':>10}")
    for mode, (w, rd) in r.items():
        print(f"{mode:<10} {w:>10.0f} {rd:>10.0f}")
    (pw, pr), (ew, er) = r["plaintext"], r["encrypted"]
    print(
        f"encryption cost: writes {100 * (1 - ew / pw):.1f}%  reads {100 * (1 - er / pr):.1f}%  (target: writes < 25%)"
    )


if __name__ == "__main__":
    main()
