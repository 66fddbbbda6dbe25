"""Group entries: one ledger entry for many people, still found by each person's id and
checked by the verifier (issue 9's batches and issue 10's bulk writes use them)."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import text

from app.access.service import SYSTEM
from app.db import unit_of_work
from app.ledger.service import record_group
from tests.conftest import Env, run
from tests.helpers import auth, client, make_keys, sync_db
from tests.test_ledger_attacks import ROOT, _pub, _verify_db

PEOPLE = ["p-ada", "p-bo", "p-cy"]


async def _group() -> int:
    async with unit_of_work() as session:
        entry = await record_group(
            session, SYSTEM, "test.group", PEOPLE, purpose="audit.review", legal_basis="legal_obligation"
        )
    return entry.seq


def test_a_group_entry_is_found_by_each_of_its_subjects_and_verifies(env: Env) -> None:
    seq = run(_group())
    with client() as c:
        keys = make_keys()
        for person in PEOPLE:
            page = c.get("/v1/audit/entries", params={"subject": person}, headers=auth(keys["auditor"])).json()
            assert [e["seq"] for e in page["entries"]] == [seq]
            assert page["entries"][0]["details"]["subjects"]["count"] == 3
        other = c.get("/v1/audit/entries", params={"subject": "p-dee"}, headers=auth(keys["auditor"])).json()
        assert other["entries"] == []
        assert c.post("/v1/audit/checkpoints", headers=auth(keys["auditor"])).status_code == 201
        assert c.get("/v1/audit/verify", headers=auth(keys["auditor"])).json()["ok"] is True
        export = env.tmp / "ledger.ndjson"
        export.write_bytes(c.get("/v1/audit/export", headers=auth(keys["auditor"])).content)
    assert _verify_db(env).returncode == 0
    out = subprocess.run(
        [sys.executable, "-m", "audit", "verify", str(export), "--public-key", _pub(), "--no-witness"],
        env=env.environ(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_removing_a_person_from_a_group_entrys_index_is_caught_and_named(env: Env) -> None:
    seq = run(_group())
    with client() as c:
        keys = make_keys()
        assert c.post("/v1/audit/checkpoints", headers=auth(keys["auditor"])).status_code == 201
    with sync_db() as conn:  # hide p-bo from an access request
        conn.execute(text("DELETE FROM audit_subject WHERE subject_id = 'p-bo'"))
    out = _verify_db(env)
    assert out.returncode == 1
    assert f"FAILED at entry {seq}" in out.stdout and "differ from the digest" in out.stdout
    with client() as c:
        assert c.get("/v1/audit/verify", headers=auth(make_keys()["auditor"])).json()["ok"] is False


def test_adding_a_person_to_the_index_of_an_entry_that_lists_none_is_caught(env: Env) -> None:
    with client() as c:
        keys = make_keys()  # writes ordinary entries
        assert c.post("/v1/audit/checkpoints", headers=auth(keys["auditor"])).status_code == 201
    with sync_db() as conn:
        conn.execute(text("INSERT INTO audit_subject (subject_id, seq) VALUES ('p-framed', 1)"))
    out = _verify_db(env)
    assert out.returncode == 1
    assert "FAILED at entry 1" in out.stdout and "lists none" in out.stdout


def test_an_access_export_lists_the_group_entries_about_the_person(env: Env) -> None:
    from app.inventory import Person
    from app.ledger.holder import HOLDER

    seq = run(_group())

    async def export() -> dict[str, object]:
        async with unit_of_work() as session:
            return await HOLDER.export(session, {}, Person("p-cy", ("p-cy",)))

    records = run(export())["processing_records"]
    assert [r["seq"] for r in records] == [seq]  # type: ignore[index]


def test_a_misspelt_filter_is_refused_rather_than_ignored(env: Env) -> None:
    """An auditor who types ``subjet=`` must not get the whole ledger back as if it were filtered."""
    run(_group())
    with client() as c:
        keys = make_keys()
        r = c.get("/v1/audit/entries", params={"subjet": "p-ada"}, headers=auth(keys["auditor"]))
        assert r.status_code == 400
        assert [p["name"] for p in r.json()["invalid-params"]] == ["subjet"]
        assert "p-ada" not in r.text
        ok = c.get("/v1/audit/entries", params={"subject": "p-ada", "limit": 5}, headers=auth(keys["auditor"]))
        assert ok.status_code == 200
