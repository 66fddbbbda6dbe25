"""The benchmarks' generated population, shared by the scripts in ``scripts/bench/``: people
(profiles with regions, consent states, privacy flags, device ids), their events, and the
bulk insert (COPY on PostgreSQL, executemany on SQLite) — seeded, so a run makes the same
rows every time.

    rows(n)                      people: {table: [row, …]} in ``COLUMNS`` order
    events(n, per_person, kind)  chunks of event rows (``EVENT_COLS``); ``kind`` draws each
                                 person's events (``segments.py`` and ``traits.py`` have theirs)
    populate(n, per_person, postgres, kind, people=rows)   both, inserted, then ANALYZE
    insert(conn, table, cols, rows, postgres)              one bulk insert
    reset_postgres(url)          drop and re-create a database's ``public`` schema
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

M = "marketing.advertising.first_party.targeted"
A = "analytics.reporting"
# region → share of the population (GDPR, CCPA, PIPL, and unknown → STRICT)
REGIONS = [
    ("US-CA", 0.18),
    ("US-NY", 0.12),
    ("US-TX", 0.08),
    ("DE", 0.12),
    ("FR", 0.08),
    ("GB", 0.08),
    ("ES", 0.04),
    ("CN", 0.10),
    ("JP", 0.05),
    ("BR", 0.05),
    (None, 0.10),
]
COLUMNS = {
    "profile": ("id", "created_at", "updated_at", "traits", "trait_sources", "region"),
    "consent_state": (
        "origin_id",
        "purpose",
        "profile_id",
        "state",
        "method",
        "decided_at",
        "received_at",
        "record_id",
    ),
    "privacy_flag": ("origin_id", "flag", "profile_id", "set_at", "source"),
    "identifier": ("origin_id", "kind", "digest", "profile_id", "first_seen", "trust", "gpc_at"),
}
EVENT_COLS = (
    "id", "profile_id", "origin_id", "source", "message_id", "type", "name",
    "occurred_at", "received_at", "properties", "traits", "key_version", "sealed",
)  # fmt: skip
Rows = dict[str, list[tuple[Any, ...]]]
PersonEvents = Callable[[random.Random], Callable[[random.Random, int], tuple[str, str, datetime]]]
"""Given the generator, one person's event maker (drawing per person first): given the
generator and the event's number, (name, properties as JSON, time)."""


def pid(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def _pick(rng: random.Random, table: list[tuple[Any, float]]) -> Any:
    r, acc = rng.random(), 0.0
    for value, share in table:
        acc += share
        if r < acc:
            return value
    return table[-1][0]


def rows(n: int, seed: int = 11) -> Rows:
    """Profiles, consent states, flags and identifiers (tuples in column order)."""
    rng = random.Random(seed)
    t = datetime(2026, 10, 1, tzinfo=UTC)
    out: Rows = {"profile": [], "consent_state": [], "privacy_flag": [], "identifier": []}
    states = [(None, 0.45), ("granted", 0.38), ("denied", 0.09), ("withdrawn", 0.08)]
    for i in range(n):
        p = pid(i)
        out["profile"].append((p, t, t, "{}", "{}", _pick(rng, REGIONS)))
        for purpose in (M, A):
            state = _pick(rng, states)
            if state:
                at = t + timedelta(days=rng.randrange(-30, 30))
                method = "guardian" if rng.random() < 0.01 else rng.choice(["form", "banner", "api"])
                out["consent_state"].append((p, purpose, p, state, method, at, at, p))
        for flag, share in (
            ("restricted", 0.005),
            ("suppressed", 0.01),
            ("profiling_refused", 0.02),
            ("minor_under_14", 0.005),
            ("minor_under_16", 0.01),
        ):
            if rng.random() < share:
                out["privacy_flag"].append((p, flag, p, t, "bench"))
        gpc = t if rng.random() < 0.08 else None
        out["identifier"].append((p, "anonymous_id", f"{i:064x}", p, t, "client", gpc))
    return out


def events(n: int, per_person: int, kind: PersonEvents, seed: int = 7) -> Iterator[list[tuple[Any, ...]]]:
    """Chunks of event rows: 0 to ``2 * per_person`` events a person (``per_person`` on average)."""
    rng = random.Random(seed)
    chunk: list[tuple[Any, ...]] = []
    for i in range(n):
        p = pid(i)
        event = kind(rng)
        for k in range(rng.randrange(per_person * 2 + 1)):
            name, props, at = event(rng, k)
            eid = str(uuid.UUID(int=rng.getrandbits(128)))
            chunk.append((eid, p, p, "bench", f"m{i}-{k}", "track", name, at, at, props, "{}", 1, b"x"))
        if len(chunk) >= 50_000:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def populate(
    n: int, per_person: int, postgres: bool, kind: PersonEvents, people: Callable[[int], Rows] = rows
) -> dict[str, int]:
    """``people(n)`` and their events inserted in one transaction, then ``VACUUM ANALYZE`` on
    PostgreSQL (as autovacuum does after a bulk load: index-only scans need the visibility
    map), ``ANALYZE`` on SQLite. Returns the rows inserted per table."""
    from sqlalchemy import text

    from app.db import create_sync_engine

    counts: dict[str, int] = {}
    engine = create_sync_engine()
    try:
        with engine.begin() as conn:
            data = people(n)
            for table, cols in COLUMNS.items():
                insert(conn, table, cols, data[table], postgres)
                counts[table] = len(data[table])
            del data
            counts["event"] = 0
            for chunk in events(n, per_person, kind):
                insert(conn, "event", EVENT_COLS, chunk, postgres)
                counts["event"] += len(chunk)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE" if postgres else "ANALYZE"))
    finally:
        engine.dispose()
    return counts


def insert(conn: Any, table: str, cols: tuple[str, ...], data: list[tuple[Any, ...]], postgres: bool) -> None:
    """Rows into ``table``: COPY on PostgreSQL, executemany on SQLite."""
    from sqlalchemy import text

    if postgres:
        cur = conn.connection.driver_connection.cursor()
        with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
            for r in data:
                copy.write_row(r)
        return
    marks = ", ".join(f":{c}" for c in cols)
    conn.execute(
        text(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})"),
        [dict(zip(cols, r, strict=True)) for r in data],
    )


def reset_postgres(url: str) -> None:
    """Drop and re-create the ``public`` schema of the database at ``url``."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    engine = create_engine(make_url(url).set(drivername="postgresql+psycopg"))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
