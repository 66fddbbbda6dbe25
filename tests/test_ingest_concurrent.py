"""Many concurrent ``/v1/batch`` requests with overlapping message ids against a live server
with its processor running: every answer is 200 (or a 503 with Retry-After), never a 500;
every acknowledged event is stored exactly once."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import PG_URL, Env
from tests.helpers import client, free_port, make_keys, start_server, sync_db

CLIENTS = 16
BATCHES = 32


def _batch(b: int) -> list[dict[str, Any]]:
    """40 events; half their ids shared with the next batch (replays racing each other), every
    other batch listing them in reverse order."""
    events = [
        {
            "type": "identify" if i % 5 == 0 else "track",
            "event": "Viewed",
            "userId": f"u{(b * 11 + i) % 200}",
            "messageId": f"m{(b * 20 + i)}",
            "traits": {"email": f"p{(b * 11 + i) % 200}@concurrent-example.com"},
        }
        for i in range(40)
    ]
    return events[::-1] if b % 2 else events


def _send(base: str, key: str, b: int) -> tuple[int, set[str], str]:
    batch = _batch(b)
    for _ in range(20):  # as the SDKs do: 503 and 429 are retried after Retry-After
        r = httpx.post(f"{base}/v1/batch", json={"batch": batch}, auth=(key, ""), timeout=60)
        if r.status_code not in (429, 503):
            break
        assert r.headers.get("retry-after"), r.text
        time.sleep(min(float(r.headers["retry-after"]), 1.0))
    return r.status_code, {m["messageId"] for m in batch}, r.text


@pytest.mark.slow
def test_concurrent_batches_with_overlapping_ids_never_answer_500(env: Env, tmp_path: Path) -> None:
    keys = make_keys()
    port = free_port()
    environ = {**env.environ(), "CONSENTRY_INGEST_WAIT": "0", "CONSENTRY_INGEST_PROCESSOR": "1"}
    environ["CONSENTRY_RATE_LIMIT"] = "0"
    log = tmp_path / "server.log"
    proc = start_server(environ, port, log, wait=60)
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(lambda b: _send(f"http://127.0.0.1:{port}", keys["ingest"], b), range(BATCHES)))
        failed = [(status, body[:200]) for status, _, body in answers if status != 200]
        assert not failed, f"{failed[:3]}\n{log.read_text()[-4000:]}"
        acked = set().union(*(ids for _, ids, _ in answers))
        deadline = time.monotonic() + 60
        while _count("SELECT count(*) FROM ingest_inbox WHERE status = 'queued'") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(30)
    assert "unhandled_error" not in log.read_text(), log.read_text()[-4000:]
    assert _count("SELECT count(*) FROM ingest_inbox") == 0
    with sync_db() as conn:
        stored = [r[0] for r in conn.execute(text("SELECT message_id FROM event"))]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert acked == set(stored), f"{len(acked - set(stored))} acknowledged events were lost"


def _count(sql: str) -> int:
    with sync_db() as conn:
        return int(conn.execute(text(sql)).scalar() or 0)


def test_a_busy_store_is_a_503_with_retry_after_and_nothing_accepted(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's lock wait running out (or PostgreSQL deadlocking each time) while the accept
    writer writes a group: the client is told to retry, and nothing of the batch is
    registered or queued. (The busy error is raised after the group's statements ran, so the
    rollback is what keeps them out.)"""
    import sqlite3

    import asyncpg

    from app.ingest import inbox

    keys = make_keys()
    real = inbox._rows
    monkeypatch.setattr(inbox, "BUSY_WAIT_S", 0.2)

    def busy(*args: Any) -> Any:
        real(*args)
        if PG_URL:
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(inbox, "_rows", busy)
    with client() as c:
        r = c.post("/v1/batch", json={"batch": _batch(1)}, auth=(keys["ingest"], ""))
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["status"] == 503 and "busy" in r.json()["detail"]
        one = c.post("/v1/track", json=_batch(1)[1], auth=(keys["ingest"], ""))
        assert one.status_code == 503 and one.headers["retry-after"] == "1"
    assert _count("SELECT count(*) FROM ingest_inbox") == 0
    assert _count("SELECT count(*) FROM ingested_message") == 0
    monkeypatch.setattr(inbox, "_rows", real)
    with client() as c:  # the retry is accepted whole
        again = c.post("/v1/batch", json={"batch": _batch(1)}, auth=(keys["ingest"], "")).json()
        assert again["accepted"] == 40 and again["duplicates"] == 0
