"""Master-key rotation re-wraps data keys while reads go on, with no failed read."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
from sqlalchemy import text

from tests.conftest import Env
from tests.helpers import auth, live_server, make_keys, sync_db


def test_rotation_while_reads_continue(env: Env) -> None:
    keys = make_keys()
    environ = env.environ()
    with live_server(environ) as base:
        h = auth(keys["admin"])
        people = {}
        with httpx.Client(base_url=base, timeout=30) as c:
            for i in range(60):
                email = f"person{i}@example.com"
                r = c.post("/v1/profiles", json={"traits": {"email": email}}, headers=h)
                assert r.status_code == 201, r.text
                people[r.json()["id"]] = email

        failures: list[str] = []
        reads = [0]
        stop = threading.Event()

        def reader() -> None:
            with httpx.Client(base_url=base, timeout=60) as c:
                while not stop.is_set():
                    for pid, email in people.items():
                        r = c.get(f"/v1/profiles/{pid}", headers=auth(keys["compliance"]))
                        if r.status_code != 200 or r.json()["traits"]["email"] != email:
                            failures.append(f"{r.status_code} {r.text[:200]}")
                        reads[0] += 1
                        if stop.is_set():
                            return

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        before = reads[0]
        rot = subprocess.run(
            [sys.executable, "-m", "app", "keys", "rotate"], env=environ, capture_output=True, text=True, timeout=300
        )
        during = reads[0] - before
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(60)
        assert rot.returncode == 0, rot.stderr
        assert "60 data keys re-wrapped" in rot.stderr
        assert before > 0 and during > 0 and not failures, failures[:3]

        with sync_db() as conn:
            versions = {r[0] for r in conn.execute(text("SELECT DISTINCT master_version FROM subject_key"))}
        assert versions == {2}

        # retire version 1: everything still reads, so nothing depended on it any more
        ring_file = env.key_dir / "master-keys.json"
        ring = json.loads(ring_file.read_text())
        del ring["keys"]["1"]
        ring_file.write_text(json.dumps(ring))
        time.sleep(1.2)
        with httpx.Client(base_url=base, timeout=30) as c:
            for pid, email in people.items():
                r = c.get(f"/v1/profiles/{pid}", headers=auth(keys["compliance"]))
                assert r.status_code == 200 and r.json()["traits"]["email"] == email
            r = c.post("/v1/profiles", json={"traits": {"email": "after@example.com"}}, headers=h)
            assert r.status_code == 201
        with sync_db() as conn:
            mv = conn.execute(
                text("SELECT master_version FROM subject_key WHERE profile_id = :p"), {"p": r.json()["id"]}
            ).scalar_one()
        assert mv == 2  # new subjects are wrapped with the new master key
