"""Test set-up: a fresh, migrated database per test on SQLite (default) or PostgreSQL.

``CONSENTRY_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test`` runs the same
suite on PostgreSQL (``scripts/test`` does both).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, text

from app.db import create_sync_engine, dispose_engines, is_sqlite
from app.migrate import upgrade
from app.settings import get_settings
from app.vault import keyring
from audit.store import HEAD_ROW

T = TypeVar("T")
PG_URL = os.environ.get("CONSENTRY_TEST_DATABASE_URL", "")
ROLES = ("admin", "ingest", "marketer", "compliance", "auditor")
pytest_plugins = ["tests.browser.plugin"]  # real-browser fixtures: live server, chromium, axe-core


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh event loop and release its connections afterwards."""

    async def wrapped() -> T:
        try:
            return await coro
        finally:
            await dispose_engines()

    return asyncio.run(wrapped())


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_ready() -> Iterator[str]:
    """Migrate the PostgreSQL test database once per session, from an empty schema."""
    engine = create_sync_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    upgrade(PG_URL)
    yield PG_URL
    for kept in _PG_ENGINES.values():
        kept.dispose()


_EMPTY_TABLES = """
DO $$
DECLARE
    t text;
    filled text[] := '{}';
    has_rows boolean;
BEGIN
    FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version' LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', t) INTO has_rows;
        IF has_rows THEN
            filled := filled || format('%I', t);
        END IF;
    END LOOP;
    IF cardinality(filled) > 0 THEN
        EXECUTE 'TRUNCATE ' || array_to_string(filled, ', ') || ' CASCADE';
    END IF;
END $$
"""
"""Truncate the tables holding rows, in one round trip: the last test touched a few of the
schema's tables, and truncating all of them (each a new file, synced at commit) took seconds."""
_PG_ENGINES: dict[str, Engine] = {}


def _reset_postgres(url: str) -> None:
    """Empty the run's database between tests (the schema stays migrated) and put back the
    ledger's head row."""
    if url not in _PG_ENGINES:
        _PG_ENGINES[url] = create_sync_engine(url, pool_size=1, pool_pre_ping=True)
    engine = _PG_ENGINES[url]
    with engine.begin() as conn:
        conn.execute(text(_EMPTY_TABLES))
        conn.execute(text("INSERT INTO audit_head (id, seq, head_hash) VALUES (:id, :seq, :head_hash)"), HEAD_ROW)


@dataclass
class Env:
    """The database and directories one test runs against."""

    url: str
    tmp: Path
    key_dir: Path
    log_file: Path

    @property
    def sqlite_path(self) -> Path | None:
        return Path(self.url.removeprefix("sqlite:///")) if is_sqlite(self.url) else None

    def environ(self) -> dict[str, str]:
        """Environment for a subprocess that must use this test's database and keys."""
        return {
            **os.environ,
            "CONSENTRY_DATABASE_URL": self.url,
            "CONSENTRY_KEY_DIR": str(self.key_dir),
            "CONSENTRY_LOG_FILE": str(self.log_file),
            "CONSENTRY_SCHEDULER": "0",
            "CONSENTRY_INGEST_WAIT": "30",  # read-your-writes: an accepted batch is processed before the answer,
            "CONSENTRY_INGEST_PROCESSOR": "0",  # by the accepting request itself (no background task between tests)
        }


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Env]:
    if PG_URL:
        url = request.getfixturevalue("pg_ready")
        _reset_postgres(url)
    else:
        template = request.getfixturevalue("sqlite_template")
        db = tmp_path / "data" / "consentry.db"
        db.parent.mkdir()
        shutil.copy(template, db)
        url = f"sqlite:///{db}"
    e = Env(url=url, tmp=tmp_path, key_dir=tmp_path / "keys", log_file=tmp_path / "consentry.log")
    for k, v in e.environ().items():
        if k.startswith("CONSENTRY_"):
            monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    keyring._loaded.clear()
    yield e
    get_settings.cache_clear()
    keyring._loaded.clear()


@pytest.fixture
def no_processor(env: Env, monkeypatch: pytest.MonkeyPatch) -> Env:
    """Accepting only: batches wait in the inbox until the test drains them."""
    monkeypatch.setenv("CONSENTRY_INGEST_PROCESSOR", "0")
    monkeypatch.setenv("CONSENTRY_INGEST_WAIT", "0")
    get_settings.cache_clear()
    return env
