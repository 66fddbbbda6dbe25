"""The audit ledger: verification, tamper detection, signed tree heads, export, and parallel writers."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from app.access.service import SYSTEM
from app.db import unit_of_work
from app.ledger.service import record
from app.settings import get_settings
from app.vault.keyring import key_material
from audit import store
from audit.chain import Entry, seal
from audit.verify import VerificationReport, verify_ledger
from tests.conftest import Env, run
from tests.helpers import auth, client, make_keys, sync_db


async def _append(n: int, tag: str = "t") -> None:
    for i in range(n):
        async with unit_of_work() as session:
            await record(
                session,
                SYSTEM,
                "test.append",
                subject_id=f"{tag}-{i}",
                purpose="audit.review",
                legal_basis="legal_obligation",
                details={"i": i, "tag": tag},
            )


async def _checkpoint() -> None:
    s = get_settings()
    async with unit_of_work() as session:
        await store.create_checkpoint(session, key_material(s).signing_key, s.audit_origin)


async def _report() -> VerificationReport:
    async with unit_of_work() as session:
        entries = [e async for e in store.stream_entries(session)]
        cps = await store.list_checkpoints(session)
    return verify_ledger(entries, cps, key_material(get_settings()).signing_key.public_key())


async def _verify() -> tuple[bool, int | None, str]:
    report = await _report()
    return report.ok, report.bad_seq, report.reason


def _consentry(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], env=env.environ(), capture_output=True, text=True, timeout=120
    )


def test_untouched_ledger_verifies(env: Env) -> None:
    run(_append(10))
    run(_checkpoint())
    assert run(_verify()) == (True, None, "")
    out = _consentry(env, "audit", "verify")
    assert out.returncode == 0 and out.stdout.startswith("OK: 10 entries, 1 signed tree heads"), out.stdout


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder"])
def test_each_kind_of_tampering_is_detected_and_the_entry_named(env: Env, tamper: str) -> None:
    run(_append(8))
    with sync_db() as conn:
        if tamper == "edit":
            conn.execute(text("UPDATE audit_entry SET purpose = 'marketing' WHERE seq = 4"))
        elif tamper == "delete":
            conn.execute(text("DELETE FROM audit_entry WHERE seq = 4"))
        else:  # swap the contents of entries 4 and 5, keeping their sequence numbers
            rows = {r.seq: r._mapping for r in conn.execute(text("SELECT * FROM audit_entry WHERE seq IN (4, 5)"))}
            for seq, other in ((4, 5), (5, 4)):
                values = {k: v for k, v in rows[other].items() if k != "seq"}
                sets = ", ".join(f"{k} = :{k}" for k in values)
                conn.execute(text(f"UPDATE audit_entry SET {sets} WHERE seq = :seq"), {**values, "seq": seq})
    ok, bad_seq, reason = run(_verify())
    assert not ok and bad_seq == 4, reason
    out = _consentry(env, "audit", "verify")
    assert out.returncode == 1 and "entry 4" in out.stdout


def test_rewritten_history_is_caught_by_the_signed_checkpoint(env: Env) -> None:
    run(_append(6))
    run(_checkpoint())
    # an attacker edits entry 2 and recomputes every later hash, so the chain is consistent again
    with sync_db() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM audit_entry ORDER BY seq"))]
        prev = rows[0]["entry_hash"]
        for row in rows[1:]:
            data = {**row, "details": json.loads(row["details"]), "prev_hash": prev}
            if row["seq"] == 2:
                data["action"] = "nothing.happened"
            e = seal(Entry.from_json(data))
            conn.execute(
                text("UPDATE audit_entry SET action = :a, prev_hash = :p, entry_hash = :h WHERE seq = :s"),
                {"a": e.action, "p": e.prev_hash, "h": e.entry_hash, "s": e.seq},
            )
            prev = e.entry_hash
    report = run(_report())
    assert not report.ok and report.bad_head == 6 and "rewritten" in report.reason
    out = _consentry(env, "audit", "verify")
    assert out.returncode == 1 and "tree head 6" in out.stdout, out.stdout


def test_export_verifies_offline_with_only_the_public_key(env: Env) -> None:
    keys = make_keys()
    run(_append(5))
    with client() as c:
        assert c.post("/v1/audit/checkpoints", headers=auth(keys["auditor"])).status_code == 201
        export = c.get("/v1/audit/export", headers=auth(keys["auditor"]))
        assert export.status_code == 200
        pub = c.get("/v1/audit/public-key", headers=auth(keys["auditor"])).json()["public_key"]
    path = env.tmp / "ledger.ndjson"
    path.write_text(export.text)
    audit_dir = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "audit", "verify", str(path), "--public-key", pub]
    ok = subprocess.run(cmd, capture_output=True, text=True, cwd=audit_dir)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 signed tree heads" in ok.stdout

    lines = path.read_text().splitlines()
    third = json.loads(lines[2])
    third["actor_role"] = "admin" if third["actor_role"] != "admin" else "auditor"
    lines[2] = json.dumps(third)
    path.write_text("\n".join(lines) + "\n")
    bad = subprocess.run(cmd, capture_output=True, text=True, cwd=audit_dir)
    assert bad.returncode == 1 and f"entry {third['seq']}" in bad.stdout

    wrong_key = subprocess.run([*cmd[:-1], "A" * 43 + "="], capture_output=True, text=True, cwd=audit_dir)
    assert wrong_key.returncode == 1


def _writer(url: str, key_dir: str, tag: str, n: int) -> None:
    import os

    os.environ["CONSENTRY_DATABASE_URL"] = url
    os.environ["CONSENTRY_KEY_DIR"] = key_dir
    get_settings.cache_clear()
    run(_append(n, tag))


def test_parallel_writers_in_several_processes_never_fork_the_chain(env: Env) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(env.url, str(env.key_dir), f"w{i}", 40)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with sync_db() as conn:
        seqs = [r[0] for r in conn.execute(text("SELECT seq FROM audit_entry ORDER BY seq"))]
        head = conn.execute(text("SELECT seq FROM audit_head")).scalar_one()
    assert seqs == list(range(1, 161)) and head == 160
    run(_checkpoint())  # the tree head is made from the frontier the writers kept
    assert run(_verify()) == (True, None, "")
