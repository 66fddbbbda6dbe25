"""Segments (issue 11): the basketball-shoes segment end to end, and membership kept up to
date incrementally through the ingest outbox — an event, a consent withdrawal or a merge
changes membership without a full refresh, and neither a crash between commit and
consumption nor a transaction committing late (PostgreSQL) loses anyone."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import select, text, update

from app.db import session_maker, table_of
from app.ingest.outbox import publish
from app.profiles.models import Profile
from app.segments.incremental import apply_outbox
from app.segments.jobs import apply_outbox_job
from app.settings import get_settings
from tests.conftest import PG_URL, Env, run
from tests.helpers import MARKETING, auth, client, grant_marketing, make_keys, sync_db
from tests.test_segments import REPORTING, SHOES, _born, _bought, _person, _shop

CONSUME = "import asyncio; from app.segments.jobs import apply_outbox_job; print(asyncio.run(apply_outbox_job()))"


@pytest.fixture
def exact(monkeypatch: pytest.MonkeyPatch, env: Env) -> Env:
    """Counts shown exactly (threshold 0) to every role."""
    monkeypatch.setenv("CONSENTRY_SEGMENT_MIN_COUNT", "0")
    get_settings.cache_clear()
    return env


def _save(c: TestClient[Any], token: str, tree: dict[str, Any], purpose: str = REPORTING) -> dict[str, Any]:
    r = c.post("/v1/segments", json={"name": "s", "tree": tree, "purpose": purpose}, headers=auth(token))
    assert r.status_code == 201, r.text
    return dict(r.json())


def _members(segment_id: str) -> set[str]:
    """Who is in the segment's membership table now (what a consumer or refresh wrote)."""
    with sync_db() as db:
        q = text("SELECT profile_id FROM segment_member WHERE segment_id = :s")
        return {str(r[0]) for r in db.execute(q, {"s": segment_id})}


def _history(segment_id: str, profile_id: str) -> list[str]:
    with sync_db() as db:
        q = text("SELECT change FROM segment_history WHERE segment_id = :s AND profile_id = :p ORDER BY at")
        return [str(r[0]) for r in db.execute(q, {"s": segment_id, "p": profile_id})]


@pytest.mark.parametrize("halves", [False, True], ids=["whole", "halves"])
def test_basketball_shoes_18_to_30_not_vip_members_and_a_withdrawal(
    exact: Env, halves: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if halves:  # PostgreSQL decides a large preview in two halves on two connections: here, any
        monkeypatch.setattr("app.decisions.service.SPLIT_FROM", 2)
    keys = make_keys()
    with client() as c:
        ids = _shop(c, keys)
        ages = {"u0": _born(25), "u1": _born(30, 300), "u3": _born(20), "u4": _born(18), "u5": _born(22)}
        ages |= {"u6": _born(31), "u2": _born(24)}
        for uid, birthday in ages.items():
            ids[f"p{uid[1:]}"] = _person(c, keys, uid, {"birthday": birthday})
        _bought(c, keys, "u6", "basketball shoes", 2)  # 31 today: too old
        grant_marketing(c, keys["compliance"], ids["p6"])
        vip = _save(c, keys["marketer"], {"trait": "plan", "eq": "vip"}, MARKETING)
        tree = {"all": [SHOES, {"age": {"between": [18, 30]}}, {"not": {"segment": vip["id"]}}]}
        hoops = _save(c, keys["admin"], tree)
        assert _members(hoops["id"]) == {ids["p0"], ids["p1"], ids["p4"]}
        consented = _save(c, keys["admin"], {"all": [tree, {"consent": MARKETING}]})
        assert _members(consented["id"]) == {ids["p0"], ids["p1"]}

        before = c.post("/v1/segments/preview", json={"tree": tree}, headers=auth(keys["marketer"])).json()
        assert (before["total"], before["usable"], before["denied"]) == (3, 2, {"no consent": 1})
        assert sorted(p["id"] for p in before["sample"]) == sorted([ids["p0"], ids["p1"]])
        withdraw = {"consents": [{"profile_id": ids["p1"], "purpose": MARKETING, "state": "withdrawn"}]}
        assert c.post("/v1/consents", json=withdraw, headers=auth(keys["compliance"])).status_code == 201
        after = c.post("/v1/segments/preview", json={"tree": tree}, headers=auth(keys["marketer"])).json()
        assert (after["total"], after["usable"], after["denied"]) == (3, 1, {"no consent": 1, "withdrawn": 1})
    run(apply_outbox_job())  # the withdrawal is in the outbox: the consent-deciding segment drops p1
    assert _members(consented["id"]) == {ids["p0"]}
    assert _history(consented["id"], ids["p1"]) == ["entered", "left"]
    assert _members(hoops["id"]) == {ids["p0"], ids["p1"], ids["p4"]}  # still matches; not usable for marketing


def test_an_event_makes_a_person_enter_a_saved_segment_without_a_refresh(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        ids = _shop(c, keys)
        seg = _save(c, keys["admin"], SHOES)
    run(apply_outbox_job())
    was = {ids["p0"], ids["p1"], ids["p4"], ids["p5"]}
    assert _members(seg["id"]) == was
    with client() as c:
        _bought(c, keys, "u3", "basketball shoes", 1)
    assert _members(seg["id"]) == was  # stored, not yet applied
    assert run(apply_outbox_job())["applied"] >= 1
    assert _members(seg["id"]) == was | {ids["p3"]}
    again = run(apply_outbox_job())  # PostgreSQL re-reads rows of transactions running at the last pass
    assert _history(seg["id"], ids["p3"]) == ["entered"]  # applying again changes nothing
    assert again["applied"] == 0 or PG_URL


def test_the_outbox_survives_a_crash_between_commit_and_consumption(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        ids = _shop(c, keys)
        seg = _save(c, keys["admin"], SHOES)
    run(apply_outbox_job())
    with client() as c:
        _bought(c, keys, "u3", "basketball shoes", 1)

    async def crashed_consumer() -> None:  # applies, then dies before committing (cursor and members)
        async with session_maker()() as s:
            assert await apply_outbox(s) >= 1
            await s.rollback()

    run(crashed_consumer())
    assert ids["p3"] not in _members(seg["id"])
    done = subprocess.run([sys.executable, "-c", CONSUME], env=exact.environ(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert ids["p3"] in _members(seg["id"])


async def _set_plan(session: Any, profile_id: str, plan: str) -> None:
    t = table_of(Profile)
    traits = (await session.execute(select(t.c.traits).where(t.c.id == profile_id))).scalar()
    await session.execute(update(t).where(t.c.id == profile_id).values(traits={**traits, "plan": plan}))
    await publish(session, [profile_id], "event")


@pytest.mark.skipif(not PG_URL, reason="SQLite has one writer at a time: its ids commit in order")
def test_a_row_committed_late_below_the_cursor_is_still_applied(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        x = _person(c, keys, "ux", {"plan": "basic"})
        y = _person(c, keys, "uy", {"plan": "basic"})
        seg = _save(c, keys["admin"], {"trait": "plan", "eq": "vip"})
    run(apply_outbox_job())

    async def late_commit() -> tuple[set[str], set[str]]:
        maker = session_maker()
        async with maker() as a:
            await _set_plan(a, x, "vip")  # takes the lower outbox id, commits last
            async with maker() as b:
                await _set_plan(b, y, "vip")
                await b.commit()
            async with maker() as consumer:
                await apply_outbox(consumer)
                await consumer.commit()
            first = _members(seg["id"])
            await a.commit()
        async with maker() as consumer:
            await apply_outbox(consumer)
            await consumer.commit()
        return first, _members(seg["id"])

    first, then = run(late_commit())
    assert first == {y}
    assert then == {x, y}


def test_a_merge_counts_once_without_a_refresh(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        ids = _shop(c, keys)
        shoes = {"category": "basketball shoes"}
        anonymous = {"anonymousId": "anon-9", "event": "Order Completed", "properties": shoes}
        assert c.post("/v1/track", json=anonymous, auth=(keys["ingest"], "")).status_code == 200
        seg = _save(c, keys["admin"], SHOES)
        assert seg["members"] == 5
    run(apply_outbox_job())
    with client() as c:
        login = {"userId": "u0", "anonymousId": "anon-9", "traits": {"country": "DE"}}
        assert c.post("/v1/identify", json=login, auth=(keys["ingest"], "")).status_code == 200
    run(apply_outbox_job())
    assert _members(seg["id"]) == {ids["p0"], ids["p1"], ids["p4"], ids["p5"]}
    with client() as c:
        page = c.get(f"/v1/segments/{seg['id']}/members", headers=auth(keys["admin"])).json()
        assert page["total"] == len(page["members"]) == 4


def test_the_processor_loop_applies_the_outbox_after_storing(exact: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.ingest.processor import Processor

    keys = make_keys()
    with client() as c:
        ids = _shop(c, keys)
        seg = _save(c, keys["admin"], SHOES)
    run(apply_outbox_job())
    monkeypatch.setenv("CONSENTRY_INGEST_WAIT", "0")  # accepted into the inbox, not processed by the request
    get_settings.cache_clear()
    with client() as c:
        _bought(c, keys, "u3", "basketball shoes", 1)
    assert ids["p3"] not in _members(seg["id"])
    run(Processor(followers=[apply_outbox_job]).run(stop_when_empty=True))  # what `consentry worker` runs
    assert ids["p3"] in _members(seg["id"])
