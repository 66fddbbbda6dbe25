"""The inbox as a NATS JetStream stream (``CONSENTRY_INBOX_URL=nats://…``): acknowledged only
once the stream has the batch, sealed in the stream, stored exactly once (replays, redelivery
after a commit, kill -9 of a worker, two workers), a poison message set aside with its reason.

Each test uses its own stream; skipped when no NATS server answers on 127.0.0.1:4222."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from sqlalchemy import text

from app.ingest import jetstream
from app.ingest.processor import drain
from tests.conftest import Env, run
from tests.helpers import auth, client, free_port, make_keys, sync_db

NATS_URL = "nats://127.0.0.1:4222"


def _nats_up() -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", 4222)) == 0


pytestmark = pytest.mark.skipif(not _nats_up(), reason="no NATS server (JetStream) answers on 127.0.0.1:4222")


@pytest.fixture
def js_env(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """This test's own stream; batches wait in it until the test (or a worker) processes them."""
    from app.settings import get_settings

    monkeypatch.setenv("CONSENTRY_INBOX_URL", NATS_URL)
    monkeypatch.setenv("CONSENTRY_INBOX_STREAM", f"T{uuid.uuid4().hex[:16]}")
    monkeypatch.setenv("CONSENTRY_INBOX_ACK_WAIT", "2")
    monkeypatch.setenv("CONSENTRY_INGEST_PROCESSOR", "0")
    monkeypatch.setenv("CONSENTRY_INGEST_WAIT", "0")
    get_settings.cache_clear()
    yield env
    run(_delete_stream())


async def _delete_stream() -> None:
    link = await jetstream._link()
    try:
        await link.js.delete_stream(jetstream._stream())
    finally:
        await jetstream.close()


async def _closing(coro: Any) -> Any:
    try:
        return await coro
    finally:
        await jetstream.close()


def _drain() -> int:
    return int(run(_closing(drain())))


def _pending() -> int:
    return int(run(_closing(jetstream.pending())))


async def _raw_messages() -> list[bytes]:
    """What the stream holds, read by sequence (a work-queue stream has no second consumer)."""
    link = await jetstream._link()
    state = (await link.js.stream_info(jetstream._stream())).state
    return [
        bytes((await link.js.get_msg(jetstream._stream(), seq)).data or b"")
        for seq in range(state.first_seq, state.last_seq + 1)
    ]


def _count(sql: str) -> int:
    with sync_db() as conn:
        return int(conn.execute(text(sql)).scalar() or 0)


def _batch(tag: str, n: int) -> list[dict[str, object]]:
    return [
        {
            "type": "identify",
            "userId": f"{tag}-{i}",
            "messageId": f"{tag}-m{i}",
            "traits": {"email": f"{tag}.{i}@js-example.com", "plan": "pro"},
        }
        for i in range(n)
    ]


def test_events_posted_through_the_jetstream_inbox_are_stored_exactly_once(js_env: Env) -> None:
    keys = make_keys()
    with client() as c:
        r = c.post("/v1/batch", json={"batch": [*_batch("a", 3), {"type": "track"}]}, auth=(keys["ingest"], ""))
        assert r.status_code == 200  # answered once the stream acknowledged it
        assert r.json()["accepted"] == 3 and [x["index"] for x in r.json()["rejected"]] == [3]
        again = c.post("/v1/batch", json={"batch": _batch("a", 3)}, auth=(keys["ingest"], "")).json()
        assert again["accepted"] == 0 and again["duplicates"] == 3  # a replay is a duplicate at once
        assert c.post("/v1/identify", json=_batch("b", 1)[0], auth=(keys["ingest"], "")).status_code == 200
        assert c.post("/v1/batch", content=b"{not json", auth=(keys["ingest"], "")).status_code in (400, 422)
        assert 400 <= c.post("/v1/track", json={"type": "track"}, auth=(keys["ingest"], "")).status_code < 500
        time.sleep(0.2)
        queued = c.get("/v1/ingest/status", headers=auth(keys["admin"])).json()
        assert queued["queued_batches"] == 2 and queued["lag_seconds"] >= 0.2
    assert _count("SELECT count(*) FROM ingest_inbox") == 0  # the database inbox is not used
    raw = run(_closing(_raw_messages()))
    assert len(raw) == 2 and not any(b"js-example.com" in m or b"a-0" in m or b"b-0" in m for m in raw)
    assert _drain() == 4
    assert _count("SELECT count(*) FROM event") == 4 and _count("SELECT count(*) FROM profile") == 4
    assert _pending() == 0 and _drain() == 0
    assert _count("SELECT count(*) FROM event") == 4


def test_a_message_redelivered_after_its_group_committed_is_not_stored_again(
    js_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A processor that dies between the commit and the ack: the message comes back and is only acked."""
    from nats.aio.msg import Msg

    keys = make_keys()
    with client() as c:
        assert c.post("/v1/batch", json={"batch": _batch("r", 5)}, auth=(keys["ingest"], "")).status_code == 200

    async def lost_ack(self: Msg) -> None:
        return None

    with monkeypatch.context() as m:
        m.setattr(Msg, "ack", lost_ack)
        assert _drain() == 5
    assert _count("SELECT count(*) FROM event") == 5 and _pending() == 1
    time.sleep(2.5)  # the ack wait runs out: JetStream redelivers
    _drain()
    assert _pending() == 0
    assert _count("SELECT count(*) FROM event") == 5


def test_the_same_messages_published_again_are_a_stream_duplicate(js_env: Env) -> None:
    """A resend after an accepting request failed past the PubAck (its database commit) is not a second message."""
    from datetime import UTC, datetime

    from app.access.service import Principal
    from app.profiles.service import VaultContext

    make_keys()
    sender = Principal(key_id="k1", role="ingest", name="shop", source="shop")
    body = {"m": _batch("d", 2), "d": {}, "r": True}

    async def twice() -> tuple[int, int, int]:
        ctx = VaultContext.from_settings()
        first = await jetstream.publish(ctx, sender, datetime.now(UTC), body, 2, None, False)
        again = await jetstream.publish(ctx, sender, datetime.now(UTC), body, 2, None, False)
        other = await jetstream.publish(ctx, sender, datetime.now(UTC), {**body, "m": _batch("e", 2)}, 2, None, False)
        return first, again, other

    first, again, other = run(_closing(twice()))
    assert first == again and other != first and _pending() == 2


def test_a_poison_message_is_set_aside_with_its_reason_and_the_rest_is_processed(js_env: Env) -> None:
    keys = make_keys()
    with client() as c:
        assert c.post("/v1/batch", json={"batch": _batch("p", 2)}, auth=(keys["client"], "")).status_code == 200
    raw = run(_closing(_raw_messages()))
    env = msgspec.msgpack.decode(raw[0])
    env["c"]["trust"] = "server"  # relabel a public key's batch: its seal no longer opens

    async def republish() -> None:
        link = await jetstream._link()
        await link.js.purge_stream(jetstream._stream())
        await link.js.publish(jetstream._subject(), msgspec.msgpack.encode(env))

    run(_closing(republish()))
    with client() as c:
        assert c.post("/v1/batch", json={"batch": _batch("q", 2)}, auth=(keys["ingest"], "")).status_code == 200
    deadline = time.monotonic() + 20
    while _pending() and time.monotonic() < deadline:
        _drain()
        time.sleep(0.1)
    assert _count("SELECT count(*) FROM event") == 2  # only the untouched batch
    with client() as c:
        body = c.get("/v1/ingest/status", headers=auth(keys["admin"])).json()
    assert body["queued_batches"] == 0 and body["failed_batches"] == 1 and body["failed_events"] == 2
    assert body["failures"][0]["attempts"] == 3 and body["failures"][0]["reason"]


def _load_check(env: Env, load: Any, keys: dict[str, str], port: int) -> None:
    from tests.test_ingest_crash import _check
    from tests.test_ingest_crash import _drain as drain_once

    deadline = time.monotonic() + 60
    while _pending():  # messages a killed worker held come back after the ack wait
        assert time.monotonic() < deadline, "the stream was not drained"
        drain_once(env)
    _check(env, load, keys, port)


@pytest.mark.slow
def test_kill_9_of_a_jetstream_worker_mid_load_loses_and_duplicates_nothing(js_env: Env) -> None:
    from tests.test_ingest_crash import Load, _environ, _server, _worker

    keys = make_keys()
    port = free_port()
    environ = _environ(js_env, False)
    load = Load(port, keys["ingest"])
    workers = []
    try:
        with _server(environ, port):
            load.start()
            for _ in range(3):  # a backlog, a worker storing it five messages at a time, killed between two groups
                load.wait_for(10)
                stored = _count("SELECT count(*) FROM event")
                workers.append(worker := _worker({**environ, "CONSENTRY_INBOX_FETCH": "5"}))
                deadline = time.monotonic() + 60
                while _count("SELECT count(*) FROM event") == stored:
                    assert time.monotonic() < deadline, "the worker stored nothing"
                    time.sleep(0.02)
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait()
            workers.append(worker := _worker(environ))
            load.wait_for(5)
            load.stop()
            worker.terminate()
            worker.wait(30)
    finally:  # a failed step leaves no worker behind (it has no parent to die with)
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    _load_check(js_env, load, keys, port)


@pytest.mark.slow
def test_two_workers_on_one_stream_process_nothing_twice_and_one_killed_loses_nothing(js_env: Env) -> None:
    from tests.test_ingest_crash import Load, _environ, _server, _worker

    keys = make_keys()
    port = free_port()
    environ = _environ(js_env, False)
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
    _load_check(js_env, load, keys, port)


def test_a_command_line_import_goes_through_the_jetstream_inbox_and_a_rerun_stores_nothing_twice(
    js_env: Env,
) -> None:
    from tests.test_imports import CUSTOMERS_MAP, _cli

    customers = js_env.tmp / "customers.csv"
    customers.write_text(
        "customer_id,email,mobile,first_name,tier,birthday\n"
        "C1,li.na@example.cn,138 0013 8000,李娜,gold,1991-04-05\n"
        "C4,bad-email,,Eve,gold,\n"
        "C5,kim@example.com,,Kim,silver,\n",
        encoding="utf-8",
    )
    (js_env.tmp / "c.yaml").write_text(CUSTOMERS_MAP)
    out = _cli(js_env, str(customers), "--source", "crm", "--mapping", str(js_env.tmp / "c.yaml"))
    assert out.returncode == 0, out.stderr
    assert "events stored: 2" in out.stdout and "rows rejected: 1" in out.stdout
    again = _cli(js_env, str(customers), "--source", "crm", "--mapping", str(js_env.tmp / "c.yaml"))
    assert "events stored: 0" in again.stdout and "duplicates: 2" in again.stdout
    assert _pending() == 0 and _count("SELECT count(*) FROM ingest_inbox") == 0
    assert _count("SELECT count(*) FROM event") == 2


@pytest.mark.slow
def test_kill_9_of_the_service_with_its_processor_on_the_jetstream_inbox_loses_and_duplicates_nothing(
    js_env: Env,
) -> None:
    from tests.helpers import start_server
    from tests.test_ingest_crash import Load, _environ, _server

    keys = make_keys()
    port = free_port()
    environ = _environ(js_env, True)  # the service processes the stream in its child worker
    load = Load(port, keys["ingest"])
    server = start_server(environ, port, wait=60)
    load.start()
    load.wait_for(15)
    os.kill(server.pid, signal.SIGKILL)  # accepting and processing
    server.wait()
    with _server(environ, port):
        load.wait_for(10)
        load.stop()
    _load_check(js_env, load, keys, port)


def test_a_batch_the_stream_did_not_acknowledge_is_refused_with_503_and_can_be_sent_again(
    js_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.settings import get_settings

    keys = make_keys()
    monkeypatch.setenv("CONSENTRY_INBOX_URL", f"nats://127.0.0.1:{free_port()}")  # nothing listens there
    get_settings.cache_clear()
    with client() as c:
        r = c.post("/v1/batch", json={"batch": _batch("u", 2)}, auth=(keys["ingest"], ""))
        assert r.status_code == 503 and "js-example.com" not in r.text
        monkeypatch.setenv("CONSENTRY_INBOX_URL", NATS_URL)
        get_settings.cache_clear()
        again = c.post("/v1/batch", json={"batch": _batch("u", 2)}, auth=(keys["ingest"], "")).json()
        assert again["accepted"] == 2 and again["duplicates"] == 0  # the refused request registered nothing
    assert _drain() == 2 and _count("SELECT count(*) FROM event") == 2
    assert "js-example.com" not in js_env.log_file.read_text()


def test_a_stream_deleted_and_made_again_stores_its_new_batches(js_env: Env) -> None:
    """Sequences restart at 1 in a new stream of the same name: old markers must not skip its batches."""
    keys = make_keys()
    with client() as c:
        assert c.post("/v1/batch", json={"batch": _batch("o", 2)}, auth=(keys["ingest"], "")).status_code == 200
    assert _drain() == 2
    run(_delete_stream())
    time.sleep(0.01)
    with client() as c:
        assert c.post("/v1/batch", json={"batch": _batch("n", 3)}, auth=(keys["ingest"], "")).status_code == 200
    assert _drain() == 3 and _pending() == 0
    assert _count("SELECT count(*) FROM event") == 5
