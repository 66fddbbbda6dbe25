"""The accept writer: requests waiting together are written in one transaction with exact
counts (an id named by two of them goes to the first), a request whose part fails is written
alone, and on SQLite a store whose write lock another process holds (the processor storing a
group) does not hold accepts up: they go to the spool, from which they reach the inbox once,
even when the move or the service is killed midway."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from app.access.service import Principal
from app.db import session_maker, table_of
from app.ingest import inbox
from app.ingest.inbox import Accepted, accept_writer, checked_request, opened, spool_path
from app.ingest.models import InboxBatch
from app.ingest.processor import drain
from app.profiles.service import VaultContext
from app.settings import get_settings
from tests.conftest import PG_URL, Env, run
from tests.helpers import auth, client, free_port, make_keys, start_server, sync_db

SQLITE_ONLY = pytest.mark.skipif(
    bool(PG_URL), reason="the spool is SQLite's (PostgreSQL's accepts never wait for a group)"
)


def _messages(tag: str, ids: list[int]) -> list[dict[str, Any]]:
    return [
        {"type": "track", "event": "Viewed", "userId": f"{tag}-u{i % 3}", "messageId": f"m{i}", "properties": {"i": i}}
        for i in ids
    ]


def _count(sql: str) -> int:
    with sync_db() as conn:
        return int(conn.execute(text(sql)).scalar() or 0)


def _events() -> list[str]:
    with sync_db() as conn:
        return [r[0] for r in conn.execute(text("SELECT message_id FROM event"))]


def _principal(name: str = "test-ingest") -> Principal:
    return Principal(key_id=f"k-{name}", role="ingest", name=name, source="group-src")


async def _accept_together(bodies: list[list[dict[str, Any]]], principals: list[Principal] | None = None) -> list[Any]:
    """Check each body, then hand them all to the writer before it runs: one group."""
    ctx = VaultContext.from_settings()
    principals = principals or [_principal() for _ in bodies]
    async with session_maker()() as session:
        reqs = [await checked_request(session, ctx, p, b) for p, b in zip(principals, bodies, strict=True)]
    writer = accept_writer()
    assert writer is not None
    try:
        return await asyncio.gather(*(writer.accept(r) for r in reqs), return_exceptions=True)
    finally:
        await inbox.close_writers()


async def _stored_messages() -> dict[int, list[str]]:
    ctx = VaultContext.from_settings()
    t = table_of(InboxBatch)
    async with session_maker()() as session:
        rows = (await session.execute(select(t).order_by(t.c.id))).all()
    return {r.id: [m["messageId"] for m in opened(ctx, r).messages] for r in rows}


def test_requests_written_in_one_group_count_exactly_and_the_first_naming_an_id_gets_it(env: Env) -> None:
    first = run(_accept_together([_messages("a", [1, 2, 3])]))[0]
    assert isinstance(first, Accepted) and first.result.accepted == 3
    groups: list[int] = []
    real = inbox._rows

    def spy(items: list[Any], fresh: dict[str, set[str]]) -> Any:
        groups.append(len(items))
        return real(items, fresh)

    inbox._rows = spy  # type: ignore[assignment]
    try:
        out = run(_accept_together([_messages("b", [3, 4, 5]), _messages("c", [5, 6, 6]), _messages("d", [1, 4])]))
    finally:
        inbox._rows = real  # type: ignore[assignment]
    assert groups == [3], "the three requests were not written as one group"
    b, c, d = out
    assert (b.result.accepted, b.result.duplicates) == (2, 1)  # m3 stored before
    assert (c.result.accepted, c.result.duplicates) == (1, 2)  # m5 went to b; m6 twice in c
    assert (d.result.accepted, d.result.duplicates, d.batch_id) == (0, 2, None)
    stored = run(_stored_messages())
    assert sorted(stored.values()) == [["m1", "m2", "m3"], ["m4", "m5"], ["m6"]]
    assert _count("SELECT count(*) FROM ingested_message") == 6
    assert run(drain()) == 6
    assert sorted(_events()) == [f"m{i}" for i in range(1, 7)]


def test_a_request_whose_part_fails_is_written_alone_and_the_others_are_stored(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = inbox._values

    def poisoned(sealed: Any, sqlite: bool) -> Any:
        if sealed[0]["name"] == "poison":
            raise ValueError("this request's row cannot be written")
        return real(sealed, sqlite)

    monkeypatch.setattr(inbox, "_values", poisoned)
    principals = [_principal(), _principal("poison"), _principal()]
    out = run(_accept_together([_messages("a", [1, 2]), _messages("b", [3, 4]), _messages("c", [2, 5])], principals))
    assert isinstance(out[1], ValueError)
    assert (out[0].result.accepted, out[2].result.accepted, out[2].result.duplicates) == (2, 1, 1)
    assert sorted(run(_stored_messages()).values()) == [["m1", "m2"], ["m5"]]
    # nothing of the failed request was registered: its ids are fresh for a retry
    assert _count("SELECT count(*) FROM ingested_message WHERE message_id IN ('m3', 'm4')") == 0


class _StoreLock:
    """Another process's write transaction on the SQLite store (the processor storing a group)."""

    def __init__(self) -> None:
        self.conn = sqlite3.connect(get_settings().database_url.removeprefix("sqlite:///"), isolation_level=None)

    def __enter__(self) -> _StoreLock:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("UPDATE ingest_inbox SET attempts = attempts WHERE id = -1")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.conn.execute("COMMIT")
        self.conn.close()


def _wait(sql: str, expected: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _count(sql) != expected:
        assert time.monotonic() < deadline, f"{sql}: {_count(sql)}, expected {expected}"
        time.sleep(0.05)


def _spooled() -> int:
    path = spool_path(get_settings().database_url.removeprefix("sqlite:///"))
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM spool_batch").fetchone()[0])
    finally:
        conn.close()


@SQLITE_ONLY
def test_accepts_do_not_wait_for_the_processors_write_lock_and_reach_the_inbox_once(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSENTRY_INGEST_PROCESSOR", "0")
    monkeypatch.setenv("CONSENTRY_INGEST_WAIT", "0")  # (read-your-writes waits for the lock instead)
    get_settings.cache_clear()
    keys = make_keys()
    with client() as c:
        post = lambda body: c.post("/v1/batch", json={"batch": body}, auth=(keys["ingest"], ""))  # noqa: E731
        with _StoreLock():
            t0 = time.monotonic()
            first = post(_messages("a", [1, 2, 3]))
            assert first.status_code == 200 and first.json()["accepted"] == 3, first.text
            replay = post(_messages("a", [2, 3, 4])).json()  # registered in the spool: duplicates at once
            assert (replay["accepted"], replay["duplicates"]) == (1, 2)
            assert time.monotonic() - t0 < 5, "the accepts waited for the store's write lock"
            status = c.get("/v1/ingest/status", headers=auth(keys["admin"])).json()
            assert status["queued_batches"] == 2 and status["queued_events"] == 4
            assert _spooled() == 2
        _wait("SELECT count(*) FROM ingest_inbox", 2)  # moved once the lock is free
        again = post(_messages("a", [1, 4, 5])).json()
        assert (again["accepted"], again["duplicates"]) == (1, 2)
    assert _spooled() == 0
    assert sorted(run(_stored_messages()).values()) == [["m1", "m2", "m3"], ["m4"], ["m5"]]
    assert run(drain()) == 5
    assert sorted(_events()) == ["m1", "m2", "m3", "m4", "m5"]


@SQLITE_ONLY
def test_a_move_cut_short_after_the_stores_commit_appends_nothing_twice(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSENTRY_INGEST_WAIT", "0")
    get_settings.cache_clear()
    with _StoreLock():
        out = run(_accept_together([_messages("a", [1, 2]), _messages("b", [3])]))
    assert [o.batch_id for o in out] == [None, None] and _spooled() == 2
    store = inbox._SqliteStore(get_settings().database_url.removeprefix("sqlite:///"))

    class CommitFails:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __getattr__(self, name: str) -> Any:
            return getattr(self.conn, name)

        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "COMMIT":
                raise sqlite3.OperationalError("disk I/O error")  # killed between the two commits
            return self.conn.execute(sql, *args)

    store.conns["mover-spool"] = CommitFails(store._conn("mover-spool"))  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError):
        store.move(VaultContext.from_settings())
    store.conns["mover-spool"].conn.close()  # type: ignore[attr-defined]
    del store.conns["mover-spool"]
    assert _count("SELECT count(*) FROM ingest_inbox") == 2 and _spooled() == 2
    assert store.move(VaultContext.from_settings()) == 2  # done again: their ids are registered already
    run(store.close())
    assert _count("SELECT count(*) FROM ingest_inbox") == 2 and _spooled() == 0
    assert run(drain()) == 3


@SQLITE_ONLY
@pytest.mark.slow
def test_kill_9_of_the_service_with_batches_in_the_spool_loses_and_duplicates_nothing(env: Env) -> None:
    keys = make_keys()
    port = free_port()
    environ = {**env.environ(), "CONSENTRY_INGEST_WAIT": "0", "CONSENTRY_INGEST_PROCESSOR": "0"}
    base = f"http://127.0.0.1:{port}"
    acked: set[str] = set()
    server = start_server(environ, port, wait=60)
    with _StoreLock():
        for b in range(5):
            batch = [{**m, "messageId": f"k{b}-{m['messageId']}"} for m in _messages("k", list(range(20)))]
            r = httpx.post(f"{base}/v1/batch", json={"batch": batch}, auth=(keys["ingest"], ""), timeout=30)
            assert r.status_code == 200 and r.json()["accepted"] == 20
            acked |= {m["messageId"] for m in batch}
        os.kill(server.pid, signal.SIGKILL)  # with everything in the spool
        server.wait()
    assert _spooled() == 5 and _count("SELECT count(*) FROM ingest_inbox") == 0
    server = start_server(environ, port, wait=60)  # moves what the killed one left
    try:
        _wait("SELECT coalesce(sum(events), 0) FROM ingest_inbox", 100)
        replay = httpx.post(
            f"{base}/v1/batch",
            json={"batch": [{**m, "messageId": f"k0-{m['messageId']}"} for m in _messages("k", [1, 2])]},
            auth=(keys["ingest"], ""),
            timeout=30,
        ).json()
        assert replay["duplicates"] == 2
    finally:
        server.terminate()
        server.wait(30)
    assert _spooled() == 0
    assert run(drain()) == 100
    stored = _events()
    assert len(stored) == len(set(stored)) and set(stored) == acked


@SQLITE_ONLY
def test_a_spooled_message_whose_id_was_registered_another_way_meanwhile_is_not_moved(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import (or the browser route) registering the same id in the store while the batch
    waits in the spool: the moved row holds the other messages only, sealed again."""
    monkeypatch.setenv("CONSENTRY_INGEST_WAIT", "0")
    get_settings.cache_clear()
    with _StoreLock():
        out = run(_accept_together([_messages("a", [1, 2, 3])]))
    assert out[0].result.accepted == 3 and _spooled() == 1
    with sync_db() as conn:
        conn.execute(
            text("INSERT INTO ingested_message (source, message_id, received_at) VALUES ('group-src', 'm2', :at)"),
            {"at": "2026-11-27 00:00:00.000000"},
        )
    store = inbox._SqliteStore(get_settings().database_url.removeprefix("sqlite:///"))
    assert store.move(VaultContext.from_settings()) == 1
    run(store.close())
    assert list(run(_stored_messages()).values()) == [["m1", "m3"]]
    assert _count("SELECT events FROM ingest_inbox") == 2 and _spooled() == 0
    assert run(drain()) == 2
