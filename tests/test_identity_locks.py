"""A processor group carries thousands of identifiers: the resolver's locks must not grow
with them (PostgreSQL's shared lock table holds 64 per connection by default; one advisory
lock per digest made a 5,000-event group fail with "out of shared memory")."""

from __future__ import annotations

from sqlalchemy import text

from app.access.service import Principal
from app.db import unit_of_work
from app.identity.resolver import LOCK_BUCKETS, Resolver
from app.identity.service import make_ident
from app.profiles.service import VaultContext
from tests.conftest import Env, run


def test_a_group_of_thousands_of_identifiers_takes_a_bounded_number_of_locks(env: Env) -> None:
    async def go() -> tuple[int, str]:
        ctx = VaultContext.from_settings()
        idents = [make_ident(ctx, kind, f"{kind}-{n}") for n in range(6000) for kind in ("user_id", "anonymous_id")]
        async with unit_of_work() as session:
            resolver = Resolver(session, ctx, Principal("k", "ingest", "locks"), "locks")
            await resolver.prepare(idents)  # 12,000 digests
            dialect = session.bind.dialect.name if session.bind else "sqlite"
            if dialect != "postgresql":
                return 0, dialect
            q = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            return int((await session.execute(text(q))).scalar() or 0), dialect

    held, dialect = run(go())
    if dialect == "postgresql":
        assert 0 < held <= LOCK_BUCKETS
