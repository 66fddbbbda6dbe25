"""Accept, then process: the inbox holds accepted batches sealed; the processor stores them in
groups, sets a poison batch aside with its reason, and reports depth, lag and failures."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from app.ingest.processor import drain
from tests.conftest import Env, run
from tests.helpers import auth, client, make_keys, sync_db


def _batch(tag: str, n: int) -> list[dict[str, object]]:
    return [
        {
            "type": "identify",
            "userId": f"{tag}-{i}",
            "messageId": f"{tag}-m{i}",
            "traits": {"email": f"{tag}.{i}@inbox-example.com", "plan": "pro"},
        }
        for i in range(n)
    ]


def _count(sql: str) -> int:
    with sync_db() as conn:
        return int(conn.execute(text(sql)).scalar() or 0)


def test_an_accepted_batch_is_sealed_in_the_inbox_until_processed(no_processor: Env) -> None:
    keys = make_keys()
    with client() as c:
        r = c.post("/v1/batch", json={"batch": [*_batch("a", 3), {"type": "track"}]}, auth=(keys["ingest"], ""))
        assert r.status_code == 200
        assert r.json()["accepted"] == 3 and [x["index"] for x in r.json()["rejected"]] == [3]
        again = c.post("/v1/batch", json={"batch": _batch("a", 3)}, auth=(keys["ingest"], "")).json()
        assert again["accepted"] == 0 and again["duplicates"] == 3  # a replay is a duplicate at once
        assert c.post("/v1/batch", json={"batch": _batch("b", 2)}, auth=(keys["ingest"], "")).status_code == 200
        status = c.get("/v1/ingest/status", headers=auth(keys["admin"])).json()
        assert status["queued_batches"] == 2 and status["queued_events"] == 5 and status["lag_seconds"] >= 0
        assert c.get("/v1/ingest/status", headers=auth(keys["ingest"])).status_code == 403
    assert _count("SELECT count(*) FROM event") == 0
    with sync_db() as conn:
        blobs = [bytes(b) for (b,) in conn.execute(text("SELECT sealed FROM ingest_inbox"))]
    assert blobs and not any(b"inbox-example.com" in b or b"a-0" in b for b in blobs)

    assert run(drain()) == 5
    assert _count("SELECT count(*) FROM event") == 5
    assert _count("SELECT count(*) FROM ingest_inbox") == 0
    assert _count("SELECT count(*) FROM profile") == 5
    # the two batches were one group: one ledger entry lists the five people
    with sync_db() as conn:
        entries = conn.execute(text("SELECT details FROM audit_entry WHERE action = 'ingest.events'")).all()
    details = [json.loads(d) if isinstance(d, str) else d for (d,) in entries]
    assert len(details) == 1 and details[0]["people"] == 5 and details[0]["events"] == {"identify": 5}


def test_a_poison_batch_is_set_aside_with_its_reason_and_the_rest_is_processed(no_processor: Env) -> None:
    keys = make_keys()
    with client() as c:
        for tag in ("p", "q", "r"):
            assert c.post("/v1/batch", json={"batch": _batch(tag, 2)}, auth=(keys["ingest"], "")).status_code == 200
    with sync_db() as conn:  # damage the middle batch's seal: it can never be opened
        poison = conn.execute(text("SELECT id FROM ingest_inbox ORDER BY id")).all()[1][0]
        conn.execute(text("UPDATE ingest_inbox SET key_version = 99 WHERE id = :i"), {"i": poison})
    assert run(drain()) == 4
    assert _count("SELECT count(*) FROM event") == 4
    with sync_db() as conn:
        status, attempts, error = conn.execute(text("SELECT status, attempts, error FROM ingest_inbox")).one()
    assert status == "failed" and attempts == 3 and error
    with client() as c:
        body = c.get("/v1/ingest/status", headers=auth(keys["admin"])).json()
        assert body["queued_batches"] == 0 and body["failed_batches"] == 1 and body["failed_events"] == 2
        failure = body["failures"][0]
        assert failure["id"] == poison and failure["attempts"] == 3 and failure["reason"]
        # the next batches are not blocked by the one set aside
        assert c.post("/v1/batch", json={"batch": _batch("s", 1)}, auth=(keys["ingest"], "")).status_code == 200
    assert run(drain()) == 1
    assert _count("SELECT count(*) FROM event") == 5
    with client() as c:  # an admin can queue it again (here it fails again: its seal is still damaged)
        assert c.post(f"/v1/ingest/failures/{poison}/retry", headers=auth(keys["ingest"])).status_code == 403
        assert c.post("/v1/ingest/failures/999999/retry", headers=auth(keys["admin"])).status_code == 404
        r = c.post(f"/v1/ingest/failures/{poison}/retry", headers=auth(keys["admin"]))
        assert r.status_code == 200 and r.json() == {"id": poison, "events": 2, "status": "queued"}
        assert c.get("/v1/ingest/status", headers=auth(keys["admin"])).json()["queued_batches"] == 1


def test_read_your_writes_with_the_in_service_processor(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service processes in the background (here in its event loop; by default in a child
    process); with ``CONSENTRY_INGEST_WAIT`` the answer comes once the batch is stored."""
    from app.settings import get_settings

    monkeypatch.setenv("CONSENTRY_INGEST_PROCESSOR", "loop")
    get_settings.cache_clear()
    keys = make_keys()
    with client() as c:
        r = c.post("/v1/identify", json=_batch("w", 1)[0], auth=(keys["ingest"], ""))
        assert r.status_code == 200
        found = c.post(
            "/v1/profiles/lookup", json={"kind": "user_id", "value": "w-0"}, headers=auth(keys["admin"])
        ).json()
        assert len(found["profiles"]) == 1
        assert c.get("/v1/ingest/status", headers=auth(keys["admin"])).json()["queued_batches"] == 0


def test_a_client_batch_relabelled_as_a_server_one_in_the_inbox_is_never_processed(no_processor: Env) -> None:
    """Who sent a batch (its key, role and trust) sits in the clear beside the sealed messages
    and is bound to them: raising a public write key's batch to server trust, or moving its
    blob to another row, makes it fail to open, so it is set aside instead of stored."""
    keys = make_keys()
    with client() as c:
        assert c.post("/v1/batch", json={"batch": _batch("w", 2)}, auth=(keys["client"], "")).status_code == 200
        assert c.post("/v1/batch", json={"batch": _batch("v", 2)}, auth=(keys["ingest"], "")).status_code == 200
    with sync_db() as conn:
        (web, trust), (_, other) = conn.execute(text("SELECT id, trust FROM ingest_inbox ORDER BY id")).all()
        assert (trust, other) == ("client", "server")
        conn.execute(text("UPDATE ingest_inbox SET trust = 'server' WHERE id = :i"), {"i": web})
    assert run(drain()) == 2  # only the untouched server batch
    with sync_db() as conn:
        failed = conn.execute(text("SELECT id FROM ingest_inbox WHERE status = 'failed'")).scalars().all()
    assert failed == [web]
    assert _count("SELECT count(*) FROM identifier WHERE kind = 'user_id'") == 2
