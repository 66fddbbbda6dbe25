"""Shared test helpers: an app client with a key per role, and direct database access."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from litestar.testing import TestClient
from sqlalchemy import Connection

from app.access.service import create_api_key
from app.db import create_sync_engine, unit_of_work
from app.main import create_app
from tests.conftest import ROLES, run


async def _make_keys() -> dict[str, str]:
    keys = {}
    async with unit_of_work() as session:
        for role in ROLES:
            _, token = await create_api_key(session, role, f"test-{role}", "test-source" if role == "ingest" else None)
            keys[role] = token
    return keys


def make_keys() -> dict[str, str]:
    """One API key per role in the current test database."""
    return run(_make_keys())


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def client() -> Iterator[TestClient[Any]]:
    with TestClient(app=create_app(), raise_server_exceptions=False) as c:
        yield c


@contextmanager
def sync_db() -> Iterator[Connection]:
    """A blocking connection to the current test database (committed on exit)."""
    engine = create_sync_engine()
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()
