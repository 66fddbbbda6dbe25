"""Exactly-once scheduled runs across service processes sharing one database."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

from sqlalchemy import text

from app.jobs.scheduler import JobSpec, run_due, slot_for
from tests.conftest import Env, run
from tests.helpers import auth, client, make_keys, sync_db


def test_two_processes_run_each_due_slot_exactly_once(env: Env) -> None:
    with sync_db() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS scheduler_probe (slot VARCHAR(40), pid INTEGER)"))
    outs = [env.tmp / f"probe{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.scheduler_probe", "7", str(o)], env=env.environ()) for o in outs
    ]
    for p in procs:
        assert p.wait(60) == 0
    counts = [json.loads(o.read_text()) for o in outs]
    with sync_db() as conn:
        rows = conn.execute(text("SELECT slot, pid FROM scheduler_probe")).all()
        runs = conn.execute(text("SELECT count(*) FROM job_run WHERE job_id = 'test.probe' AND status = 'ok'")).scalar()
        conn.execute(text("DROP TABLE scheduler_probe"))
    slots = [r.slot for r in rows]
    # both processes were alive and fired for (nearly) every slot, competing for each one
    assert all(c["fired"] >= 4 for c in counts), counts
    assert len(slots) >= 4
    assert len(slots) == len(set(slots)), "a slot ran twice"
    assert sum(c["ran"] for c in counts) == len(slots) == runs
    assert sum(c["fired"] for c in counts) > len(slots)  # the losers skipped


def test_failures_are_recorded_and_visible_through_the_api(env: Env) -> None:
    async def broken() -> None:
        raise RuntimeError("upstream said no to bob@example.com")

    spec = JobSpec("test.broken", broken, 60)
    now = datetime.now(UTC)
    assert run(run_due(spec, now)) is True
    assert run(run_due(spec, now)) is False  # the same slot is never run again
    keys = make_keys()
    with client() as c:
        runs = c.get("/v1/jobs/runs", params={"job_id": "test.broken"}, headers=auth(keys["admin"])).json()
        jobs = c.get("/v1/jobs", headers=auth(keys["admin"])).json()
    assert len(runs) == 1 and runs[0]["status"] == "failed"
    assert "RuntimeError" in runs[0]["result"] and "bob@example.com" not in runs[0]["result"]
    assert runs[0]["slot"].startswith(slot_for(now, 60).strftime("%Y-%m-%dT%H:%M"))
    assert "audit.checkpoint" in {j["id"] for j in jobs}


def test_checkpoint_job_signs_the_head(env: Env) -> None:
    from app.ledger.jobs import sign_checkpoint

    make_keys()
    with client() as c:
        c.post("/v1/profiles", json={"traits": {"plan": "x"}}, headers=auth(make_keys()["admin"]))
    result = run(sign_checkpoint())
    with sync_db() as conn:
        size = conn.execute(text("SELECT max(size) FROM audit_checkpoint")).scalar()
        head = conn.execute(text("SELECT seq FROM audit_head")).scalar()
    assert result == {"size": head} and size == head and head > 0
