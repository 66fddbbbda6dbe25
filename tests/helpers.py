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
            ingest = role == "ingest"
            _, token = await create_api_key(
                session, role, f"test-{role}", "test-source" if ingest else None, "server" if ingest else None
            )
            keys[role] = token
        _, keys["client"] = await create_api_key(session, "ingest", "test-web", "test-web", "client")
    return keys


def make_keys() -> dict[str, str]:
    """One API key per role in the current test database. ``ingest`` is a backend source
    (trust ``server``); ``client`` is a public write key of a web page (trust ``client``)."""
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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(environ: dict[str, str]) -> Iterator[str]:
    """A real ``consentry serve`` process on a free port; yields its base URL."""
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # as the browser harness: a loaded CI machine starts slowly
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before answering /health")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not answer /health within 120 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(15)


MARKETING = "marketing.advertising.first_party.targeted"


def grant_marketing(c: Any, compliance: str, profile_id: str) -> None:
    """Record the person's consent to first-party marketing (``c`` is a TestClient or an
    ``httpx`` module/client with a base URL), so a marketer may see their masked profile."""
    body = {"consents": [{"profile_id": profile_id, "purpose": MARKETING, "state": "granted", "method": "form"}]}
    r = c.post("/v1/consents", json=body, headers=auth(compliance))
    assert r.status_code == 201, r.text
