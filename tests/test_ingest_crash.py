"""kill -9 under sustained load: of the service (processor inside), of a separate worker, and
of one of two workers sharing the inbox on PostgreSQL. Afterwards every acknowledged event
is stored exactly once, no refused event is stored, and the ledger verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import PG_URL, Env
from tests.helpers import auth, free_port, make_keys, start_server, sync_db

pytestmark = pytest.mark.slow


def _count(sql: str) -> int:
    with sync_db() as conn:
        return int(conn.execute(text(sql)).scalar() or 0)


def _environ(env: Env, processor: bool) -> dict[str, str]:
    return {**env.environ(), "CONSENTRY_INGEST_WAIT": "0", "CONSENTRY_INGEST_PROCESSOR": "1" if processor else "0"}


def _worker(environ: dict[str, str], once: bool = False) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "app", "worker", *(["--once"] if once else [])]
    return subprocess.Popen(args, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Load:
    """Batches of 40 events (one of them invalid) sent one after another until stopped;
    remembers which message ids were acknowledged, refused, or sent without an answer."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key
        self.acked: set[str] = set()
        self.refused: set[str] = set()
        self.sent: set[str] = set()
        self.batches = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _batch(self, b: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            {
                "type": "identify" if i % 4 == 0 else "track",
                "event": "Viewed",
                "userId": f"u{(b * 7 + i) % 300}",
                "messageId": f"m{b}-{i}",
                "traits": {"email": f"p{(b * 7 + i) % 300}@crash-example.com"},
            }
            for i in range(39)
        ]
        out.append({"type": "track", "userId": "u1", "messageId": f"m{b}-bad"})  # no event name: refused
        return out

    def _run(self) -> None:
        b = 0
        while not self._stop.is_set():
            batch = self._batch(b)
            ids = {m["messageId"] for m in batch}
            self.sent |= ids
            try:
                r = httpx.post(
                    f"http://127.0.0.1:{self.port}/v1/batch", json={"batch": batch}, auth=(self.key, ""), timeout=30
                )
            except httpx.HTTPError:
                time.sleep(0.05)  # the server is down: this batch was never acknowledged; send the next later
                b += 1
                continue
            if r.status_code == 200:
                refused = {batch[x["index"]]["messageId"] for x in r.json()["rejected"]}
                self.refused |= refused
                self.acked |= ids - refused
                self.batches += 1
            b += 1

    def start(self) -> None:
        self._thread.start()

    def wait_for(self, batches: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        target = self.batches + batches
        while self.batches < target:
            assert time.monotonic() < deadline, "the load did not get through"
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


@contextmanager
def _server(environ: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_server(environ, port, wait=60)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


def _drain(env: Env) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app", "worker", "--once"], env=_environ(env, False), capture_output=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]


def _check(env: Env, load: Load, keys: dict[str, str], port: int) -> None:
    """Exactly once for the acknowledged, never for the refused; the ledger verifies."""
    assert _count("SELECT count(*) FROM ingest_inbox") == 0
    with sync_db() as conn:
        stored = [r[0] for r in conn.execute(text("SELECT message_id FROM event"))]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert load.acked <= set(stored), f"{len(load.acked - set(stored))} acknowledged events were lost"
    assert not (set(stored) & load.refused) and set(stored) <= load.sent
    with _server(_environ(env, False), port):
        r = httpx.post(f"http://127.0.0.1:{port}/v1/audit/tree-heads", headers=auth(keys["auditor"]), timeout=30)
        assert r.status_code in (200, 201), r.text
    out = subprocess.run(
        [sys.executable, "-m", "app", "audit", "verify"], env=env.environ(), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_kill_9_of_the_service_under_load_loses_and_duplicates_nothing(env: Env) -> None:
    keys = make_keys()
    port = free_port()
    environ = _environ(env, True)
    load = Load(port, keys["ingest"])
    server = start_server(environ, port, wait=60)
    load.start()
    load.wait_for(15)
    os.kill(server.pid, signal.SIGKILL)  # accepting and processing, mid-group
    server.wait()
    with _server(environ, port):
        load.wait_for(10)
        load.stop()
    _drain(env)
    assert load.batches >= 25
    _check(env, load, keys, port)


def test_kill_9_of_the_worker_mid_group_leaves_nothing_half_applied(env: Env) -> None:
    keys = make_keys()
    port = free_port()
    environ = _environ(env, False)  # the service only accepts; workers process
    load = Load(port, keys["ingest"])
    with _server(environ, port):
        load.start()
        worker = _worker(environ)
        for _ in range(3):
            load.wait_for(8)
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
            worker = _worker(environ)
        load.wait_for(5)
        load.stop()
        worker.terminate()
        worker.wait(30)
    _drain(env)
    _check(env, load, keys, port)


@pytest.mark.postgres_only
@pytest.mark.skipif(not PG_URL, reason="several workers share the inbox through PostgreSQL's row locks")
def test_two_workers_share_the_inbox_and_one_killed_loses_nothing(env: Env) -> None:
    keys = make_keys()
    port = free_port()
    environ = _environ(env, False)
    load = Load(port, keys["ingest"])
    with _server(environ, port):
        load.start()
        a, b = _worker(environ), _worker(environ)
        load.wait_for(15)
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        load.wait_for(10)
        load.stop()
        b.terminate()
        b.wait(30)
    _drain(env)
    _check(env, load, keys, port)
