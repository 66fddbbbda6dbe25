"""A large run's ledger entry: a group of thousands of people is indexed in bulk (COPY on
PostgreSQL), and each of them is still found by their id and the entry still verifies."""

from __future__ import annotations

from app.access.service import SYSTEM
from app.db import unit_of_work
from app.ledger.service import record_group
from audit import store
from tests.conftest import Env, run
from tests.helpers import auth, client, make_keys
from tests.test_ledger_attacks import _verify_db

PEOPLE = [f"p-{n:05d}" for n in range(store.COPY_FROM + 500)]


async def _group() -> int:
    async with unit_of_work() as session:
        entry = await record_group(
            session, SYSTEM, "activation.run", PEOPLE, purpose="audit.review", legal_basis="legal_obligation"
        )
    return entry.seq


def test_a_group_entry_over_more_people_than_copy_from_is_indexed_whole_and_verifies(env: Env) -> None:
    seq = run(_group())
    with client() as c:
        keys = make_keys()
        for person in (PEOPLE[0], PEOPLE[store.COPY_FROM], PEOPLE[-1]):
            page = c.get("/v1/audit/entries", params={"subject": person}, headers=auth(keys["auditor"])).json()
            assert [e["seq"] for e in page["entries"]] == [seq]
            assert page["entries"][0]["details"]["subjects"]["count"] == len(PEOPLE)
        assert c.post("/v1/audit/checkpoints", headers=auth(keys["auditor"])).status_code == 201
        assert c.get("/v1/audit/verify", headers=auth(keys["auditor"])).json()["ok"] is True
    assert _verify_db(env).returncode == 0
