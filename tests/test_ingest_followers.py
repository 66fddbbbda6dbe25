"""The service's outbox followers in a process of their own (issue 9, issue 11): membership
still follows an event the service accepted, the service's children (processor and
followers) stop when the service is killed with -9, and followers that are slow (a
sustained load) rest as long as they ran and wait while the processor is behind."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.ingest.followers import FollowerLoop, inbox_behind
from app.ingest.inbox import move_spool
from app.ingest.processor import drain
from app.segments.jobs import apply_outbox_job
from app.settings import get_settings
from tests.conftest import Env, run
from tests.helpers import client, free_port, make_keys, start_server, sync_db
from tests.test_ingest_inbox import _batch
from tests.test_segments import SHOES, _ago, _shop
from tests.test_segments_issue import _members, _save


def _service_environ(env: Env) -> dict[str, str]:
    """The default service: accepts into the inbox, its children process and follow."""
    return {**env.environ(), "CONSENTRY_INGEST_WAIT": "0", "CONSENTRY_INGEST_PROCESSOR": "process"}


def _children(pid: int) -> dict[int, str]:
    """Live (not zombie) processes whose parent is ``pid``, with their command lines."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found[int(entry.name)] = cmd
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_an_event_the_service_accepts_changes_membership_through_its_followers(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        ids = _shop(c, keys)
        seg = _save(c, keys["admin"], SHOES)
    run(apply_outbox_job())
    assert ids["p3"] not in _members(seg["id"])
    port = free_port()
    server = start_server(_service_environ(env), port, wait=60)
    try:
        body: dict[str, Any] = {
            "userId": "u3",
            "event": "Order Completed",
            "properties": {"category": "basketball shoes", "price": 120},
            "timestamp": _ago(1),
        }
        r = httpx.post(f"http://127.0.0.1:{port}/v1/track", json=body, auth=(keys["ingest"], ""), timeout=30)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        while ids["p3"] not in _members(seg["id"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ids["p3"] in _members(seg["id"])  # no request, refresh or scheduler put p3 there
        with sync_db() as db:
            queued = db.execute(text("SELECT count(*) FROM ingest_inbox")).scalar()
        assert queued == 0
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.slow
def test_the_service_children_stop_when_it_is_killed_9(env: Env) -> None:
    server = start_server(_service_environ(env), free_port(), wait=60)
    try:
        children = _children(server.pid)
        assert any("--no-followers" in c for c in children.values()), children
        assert any("--followers-only" in c for c in children.values()), children
    finally:
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
    deadline = time.monotonic() + 30  # a child still starting on a loaded machine stops once it runs
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [children[p] for p in children if _alive(p)]


def test_followers_that_run_long_rest_as_long_before_the_next_run() -> None:
    starts: list[float] = []

    async def slow() -> None:  # a run under a sustained load: 0.3 s of work
        starts.append(time.monotonic())
        await asyncio.sleep(0.3)

    async def two_seconds() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(FollowerLoop([slow], every=0.05, rest=1.0).run(), 2.0)

    asyncio.run(two_seconds())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) >= 2 and min(gaps) >= 0.58, gaps  # ran 0.3 s, rested 0.3 s (not every 0.05 s)


def _runs(behind: bool) -> int:
    """How often a quick follower runs in 1.5 s while the inbox is (or is not) behind."""
    runs: list[float] = []

    async def quick() -> None:
        runs.append(time.monotonic())

    async def says() -> bool:
        return behind

    async def a_while() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(FollowerLoop([quick], every=0.1, behind=says).run(), 1.5)

    asyncio.run(a_while())
    return len(runs)


def test_followers_wait_while_the_processor_is_behind() -> None:
    assert _runs(behind=True) == 1  # once, then not before busy_every (5 s)
    assert _runs(behind=False) >= 3  # idle: every 0.1 s


def test_the_inbox_is_behind_while_an_old_batch_waits(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENTRY_INGEST_WAIT", "0")  # accepted, left in the inbox
    get_settings.cache_clear()
    keys = make_keys()
    with client() as c:
        assert c.post("/v1/batch", json={"batch": _batch("a", 3)}, auth=(keys["ingest"], "")).status_code == 200
    run(move_spool())  # (SQLite: accepted batches wait in the spool first)
    assert not run(inbox_behind())  # just accepted
    with sync_db() as db:
        db.execute(text("UPDATE ingest_inbox SET received_at = :at"), {"at": _ago(1)})
    assert run(inbox_behind())
    run(drain())
    assert not run(inbox_behind())
