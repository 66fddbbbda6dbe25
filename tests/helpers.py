"""Shared test helpers: an app client with a key per role, and direct database access."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import httpx
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


def start_server(
    environ: dict[str, str], port: int, log: Path | None = None, wait: float = 120
) -> subprocess.Popen[bytes]:
    """A real ``consentry serve`` process on ``port``, once it answers ``/health`` (its output to
    ``log``, or dropped). Fails if it exits first or does not answer within ``wait`` seconds."""
    with log.open("wb") if log is not None else nullcontext(subprocess.DEVNULL) as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port)], env=environ, stdout=out, stderr=out
        )
    deadline = time.monotonic() + wait
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering /health")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not answer /health within {wait:.0f} s")
        time.sleep(0.1)


@contextmanager
def live_server(environ: dict[str, str]) -> Iterator[str]:
    """A real ``consentry serve`` process on a free port; yields its base URL."""
    port = free_port()
    proc = start_server(environ, port)  # 120 s: a loaded CI machine starts slowly
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(15)


def fail_consent_forget_once(monkeypatch: Any) -> None:
    """The consent store's ``forget`` raises (unreachable) the first time, then works: an
    erasure's consent step fails once and succeeds when retried."""
    from app.consent.holder import ConsentHolder

    real = ConsentHolder.forget
    failures = [True]

    async def flaky(self: ConsentHolder, session: Any, person: Any) -> int:
        if failures.pop() if failures else False:
            raise ConnectionError("store unreachable")
        return await real(self, session, person)

    monkeypatch.setattr(ConsentHolder, "forget", flaky)


MARKETING = "marketing.advertising.first_party.targeted"


def grant_marketing(c: Any, compliance: str, profile_id: str) -> None:
    """Record the person's consent to first-party marketing (``c`` is a TestClient or an
    ``httpx`` module/client with a base URL), so a marketer may see their masked profile."""
    body = {"consents": [{"profile_id": profile_id, "purpose": MARKETING, "state": "granted", "method": "form"}]}
    r = c.post("/v1/consents", json=body, headers=auth(compliance))
    assert r.status_code == 201, r.text
