"""The cost of ingesting a group must not grow with the store: no statement the ingest path
runs may scan a table that holds people's data (``EXPLAIN QUERY PLAN`` on SQLite,
``EXPLAIN`` with sequential scans discouraged on PostgreSQL)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlmodel import SQLModel

from app.access.service import Principal
from app.db import get_engine, unit_of_work
from app.ingest.service import ingest_messages
from app.inventory import PERSON_COLUMNS
from app.profiles.service import VaultContext
from tests.conftest import Env, run

PERSON_TABLES = frozenset(
    t.name for t in SQLModel.metadata.tables.values() if PERSON_COLUMNS & set(t.c.keys()) or t.name == "profile"
)


def _scans(dialect: str, plan: list[str]) -> list[str]:
    """The person tables a plan reads from start to end."""
    found = []
    pattern = r"\bSCAN (\w+)" if dialect == "sqlite" else r"Seq Scan on (\w+)"
    for line in plan:
        m = re.search(pattern, line)
        if m and m.group(1) in PERSON_TABLES:
            found.append(line.strip())
    return found


@contextmanager
def explained() -> Iterator[list[tuple[str, list[str]]]]:
    """Explain every statement run while inside (on the statement's own connection)."""
    engine = get_engine().sync_engine
    plans: list[tuple[str, list[str]]] = []

    def before(conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, many: bool) -> None:
        head = statement.lstrip().split(None, 1)[0].upper()
        if head not in ("SELECT", "UPDATE", "DELETE", "WITH"):
            return  # plain inserts read nothing (ON CONFLICT probes the primary key)
        params = parameters[0] if many and parameters else parameters
        cur = conn.connection.dbapi_connection.cursor()
        if conn.dialect.name == "sqlite":
            cur.execute("EXPLAIN QUERY PLAN " + statement, params)
            plan = [str(r[-1]) for r in cur.fetchall()]
        else:
            cur.execute("SET enable_seqscan = off")  # tiny test tables: only a missing index scans now
            cur.execute("EXPLAIN " + statement, params)
            plan = [str(r[0]) for r in cur.fetchall()]
        cur.close()
        plans.append((statement, plan))

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield plans
    finally:
        event.remove(engine, "before_cursor_execute", before)


def _batch(n: int, tag: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        user = f"{tag}-u{i % 7}"
        out.append(
            {
                "type": "identify",
                "userId": user,
                "anonymousId": f"{tag}-a{i}",
                "messageId": f"{tag}-id-{i}",
                "traits": {"email": f"{user}@example.com", "phone": f"+1415555{i % 7:04d}", "plan": "pro"},
                "context": {"consent": {"categoryPreferences": {"advertising": i % 2 == 0}}},
            }
        )
        out.append(
            {
                "type": "track",
                "userId": user,
                "event": "Order Completed",
                "messageId": f"{tag}-tr-{i}",
                "properties": {"revenue": i},
                "context": {"device": {"id": f"{tag}-d{i % 3}"}},
            }
        )
    return out


def test_no_group_statement_scans_a_person_table(env: Env) -> None:
    principal = Principal(key_id="k", role="ingest", name="crm", source="crm", trust="server")

    async def go() -> list[tuple[str, list[str]]]:
        ctx = VaultContext.from_settings()
        async with unit_of_work() as s:  # something to find: people, identifiers and fields exist
            await ingest_messages(s, ctx, principal, _batch(30, "x"), gpc=True)
        with explained() as plans:
            async with unit_of_work() as s:
                await ingest_messages(s, ctx, principal, _batch(30, "x") + _batch(30, "y"), gpc=True)
        return plans

    plans = run(go())
    dialect = "sqlite" if env.sqlite_path else "postgresql"
    assert len(plans) > 5
    assert any("identifier" in s for s, _p in plans) and any("profile_field" in s for s, _p in plans)
    scanning = [(s.split("\n")[0][:160], _scans(dialect, p)) for s, p in plans if _scans(dialect, p)]
    assert not scanning, scanning
