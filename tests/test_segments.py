"""Segments through HTTP: the basketball-shoes segment on a hand-built population, consent
counts from the decision engine, saved segments with versions and members, merges and erasure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import text

from app.settings import get_settings
from tests.conftest import Env, run
from tests.helpers import MARKETING, auth, client, grant_marketing, make_keys, sync_db

REPORTING = "analytics.reporting"
SHOES = {"event": "Order Completed", "where": {"category": {"eq": "basketball shoes"}}, "within": {"days": 90}}


def _ago(days: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat().replace("+00:00", "Z")


def _person(c: TestClient[Any], keys: dict[str, str], uid: str, traits: dict[str, Any] | None = None) -> str:
    body = {"userId": uid, "traits": {"country": "DE", **(traits or {})}}
    assert c.post("/v1/identify", json=body, auth=(keys["ingest"], "")).status_code == 200
    found = c.post("/v1/profiles/lookup", json={"kind": "user_id", "value": uid}, headers=auth(keys["admin"]))
    return str(found.json()["profiles"][0]["id"])


def _bought(c: TestClient[Any], keys: dict[str, str], uid: str, category: str, days: int, price: float = 120) -> None:
    body = {
        "userId": uid,
        "event": "Order Completed",
        "properties": {"category": category, "price": price},
        "timestamp": _ago(days),
    }
    r = c.post("/v1/track", json=body, auth=(keys["ingest"], ""))
    assert r.status_code == 200, r.text


def _shop(c: TestClient[Any], keys: dict[str, str]) -> dict[str, str]:
    """p0, p1: basketball shoes lately, consented; p2: too long ago; p3: running shoes;
    p4: basketball shoes, no consent; p5: basketball shoes but VIP."""
    ids = {f"p{n}": _person(c, keys, f"u{n}", {"plan": "vip"} if n == 5 else {"plan": "basic"}) for n in range(6)}
    for uid, category, days in [
        ("u0", "basketball shoes", 10),
        ("u1", "basketball shoes", 30),
        ("u1", "socks", 31),
        ("u2", "basketball shoes", 200),
        ("u3", "running shoes", 5),
        ("u4", "basketball shoes", 5),
        ("u5", "basketball shoes", 3),
    ]:
        _bought(c, keys, uid, category, days)
    for p in ("p0", "p1", "p5"):
        grant_marketing(c, keys["compliance"], ids[p])
    return ids


@pytest.fixture
def exact(monkeypatch: pytest.MonkeyPatch, env: Env) -> Env:
    """Counts shown exactly (threshold 0) to every role."""
    monkeypatch.setenv("CONSENTRY_SEGMENT_MIN_COUNT", "0")
    get_settings.cache_clear()
    return env


def _born(years: int, days: int = 0) -> str:
    """A birthday making someone ``years`` old today, ``days`` earlier."""
    today = datetime.now(UTC).date()
    try:
        day = today.replace(year=today.year - years)
    except ValueError:  # 29 February
        day = today.replace(year=today.year - years, day=28)
    return (day - timedelta(days=days)).isoformat()


def test_the_basketball_shoes_segment_and_its_consent_counts(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        ids = _shop(c, keys)
        ages = {"u0": _born(25), "u1": _born(30, 300), "u4": _born(18), "u5": _born(22), "u6": _born(31)}
        for uid, birthday in ages.items():  # u6: 31 today, bought shoes, consented: too old
            ids[f"p{uid[1:]}"] = _person(c, keys, uid, {"birthday": birthday})
        _bought(c, keys, "u6", "basketball shoes", 2)
        grant_marketing(c, keys["compliance"], ids["p6"])
        vip = c.post(
            "/v1/segments", json={"name": "VIP", "tree": {"trait": "plan", "eq": "vip"}}, headers=auth(keys["marketer"])
        )
        assert vip.status_code == 201, vip.text
        tree = {"all": [SHOES, {"age": {"between": [18, 30]}}, {"not": {"segment": vip.json()["id"]}}]}
        saved = c.post(
            "/v1/segments",
            json={"name": "Hoops", "tree": tree, "purpose": REPORTING},
            headers=auth(keys["admin"]),
        )
        assert saved.status_code == 201, saved.text
        assert saved.json()["members"] == 3
        page = c.get(f"/v1/segments/{saved.json()['id']}/members", headers=auth(keys["admin"]))
        assert page.status_code == 200, page.text
        assert sorted(m["id"] for m in page.json()["members"]) == sorted([ids["p0"], ids["p1"], ids["p4"]])

        r = c.post("/v1/segments/preview", json={"tree": tree}, headers=auth(keys["marketer"]))
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["purpose"], body["total"], body["usable"], body["denied"]) == (MARKETING, 3, 2, {"no consent": 1})
        assert sorted(s["id"] for s in body["sample"]) == sorted([ids["p0"], ids["p1"]])

        withdraw = {"consents": [{"profile_id": ids["p0"], "purpose": MARKETING, "state": "withdrawn"}]}
        assert c.post("/v1/consents", json=withdraw, headers=auth(keys["compliance"])).status_code == 201
        after = c.post("/v1/segments/preview", json={"tree": tree}, headers=auth(keys["marketer"])).json()
        assert (after["usable"], after["denied"]) == (1, {"no consent": 1, "withdrawn": 1})


def test_narrow_counts_read_below_the_threshold_for_masked_roles(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        _shop(c, keys)
        r = c.post("/v1/segments/preview", json={"tree": SHOES}, headers=auth(keys["marketer"]))
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["total"], body["usable"], body["denied"], body["sample"]) == (
            "<10",
            "<10",
            {"no consent": "<10"},
            [],
        )


def test_a_bad_tree_is_a_422_naming_the_path_never_the_value(env: Env) -> None:
    keys = make_keys()
    secret = "alice@example.com"
    cases = [
        ({"all": [SHOES, {"event": "x", "where": {"category": {"matches": secret}}}]}, "tree.all[1].where.category"),
        ({"all": [SHOES, {"event": "x", "where": {"category": {"eq": [secret]}}}]}, "tree.all[1].where.category.eq"),
        ({"trait": "email", "eq": secret}, "tree.trait"),
        ({"any": [{"trait": "plan", "gt": secret}]}, "tree.any[0].gt"),
        ({"event": "x", "within": {"days": -1}}, "tree.within.days"),
        ({"segment": "00000000-0000-0000-0000-000000000000"}, "tree"),
        ({"funnel": [{"event": "a"}], "within": {"days": 7}}, "tree.funnel"),
        ({"nope": secret}, "tree"),
    ]
    with client() as c:
        for tree, field in cases:
            r = c.post("/v1/segments/preview", json={"tree": tree}, headers=auth(keys["marketer"]))
            assert r.status_code == 422, (tree, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert secret not in r.text
            assert r.json()["invalid-params"][0]["name"] == field, r.text


def test_saved_segments_are_versioned_owned_and_audited(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        _shop(c, keys)
        m = auth(keys["marketer"])
        seg = c.post("/v1/segments", json={"name": "Basic", "tree": {"trait": "plan", "eq": "basic"}}, headers=m).json()
        sid = seg["id"]
        assert (seg["version"], seg["members"]) == (1, 5)
        r = c.put(f"/v1/segments/{sid}", json={"name": "VIP", "tree": {"trait": "plan", "eq": "vip"}}, headers=m)
        assert r.status_code == 200, r.text
        assert (r.json()["version"], r.json()["members"]) == (2, 1)
        got = c.get(f"/v1/segments/{sid}", headers=m).json()
        assert [v["version"] for v in got["versions"]] == [1, 2]
        sizes = c.get(f"/v1/segments/{sid}/sizes", headers=m).json()
        assert [(s["members"], s["entered"], s["left"]) for s in sizes] == [(1, 1, 5), (5, 5, 0)]
        other = c.post("/v1/keys", json={"role": "marketer", "name": "other"}, headers=auth(keys["admin"])).json()
        denied = c.put(
            f"/v1/segments/{sid}", json={"name": "x", "tree": {"trait": "plan", "eq": "x"}}, headers=auth(other["key"])
        )
        assert denied.status_code == 403
        refused = c.get(f"/v1/segments/{sid}/members", headers=auth(keys["compliance"]))
        assert refused.status_code == 403  # compliance may not use marketing: refused and recorded
        entries = c.get("/v1/audit/entries?limit=500", headers=auth(keys["auditor"])).json()
        actions = [e["action"] for e in entries["entries"]]
        assert {"segment.create", "segment.update", "segment.use.denied"} <= set(actions)
        assert c.delete(f"/v1/segments/{sid}", headers=m).status_code == 204
        assert c.get(f"/v1/segments/{sid}", headers=m).status_code == 404


def test_a_merged_profile_counts_once_and_an_erased_person_leaves(exact: Env) -> None:
    from app.db import unit_of_work
    from app.inventory import holders
    from app.profiles.service import person_of
    from app.segments.jobs import refresh_segments

    keys = make_keys()
    admin = auth(keys["admin"])
    with client() as c:
        ids = _shop(c, keys)
        anonymous = {
            "anonymousId": "anon-9",
            "event": "Order Completed",
            "properties": {"category": "basketball shoes"},
        }
        assert c.post("/v1/track", json=anonymous, auth=(keys["ingest"], "")).status_code == 200
        seg = c.post("/v1/segments", json={"name": "Hoops", "tree": SHOES, "purpose": REPORTING}, headers=admin).json()
        assert seg["members"] == 5
        login = {"userId": "u0", "anonymousId": "anon-9", "traits": {"country": "DE"}}
        assert c.post("/v1/identify", json=login, auth=(keys["ingest"], "")).status_code == 200
    run(refresh_segments())  # (jobs run on their own event loop, outside the client's)
    with client() as c:
        members = c.get(f"/v1/segments/{seg['id']}/members", headers=admin).json()
        assert len(members["members"]) == members["total"] == 4
        assert ids["p0"] in {m["id"] for m in members["members"]}

    async def erase(pid: str) -> None:
        async with unit_of_work() as s:
            person = await person_of(s, pid)
            for h in holders():
                await h.forget(s, person)

    run(erase(ids["p1"]))
    run(refresh_segments())
    with client() as c:
        members = c.get(f"/v1/segments/{seg['id']}/members", headers=admin).json()
        assert ids["p1"] not in {m["id"] for m in members["members"]}
        assert members["total"] == 3
    with sync_db() as db:
        q = text("SELECT count(*) FROM segment_member WHERE profile_id = :p")
        assert db.execute(q, {"p": ids["p1"]}).scalar() == 0


def test_age_and_birthday_select_by_blind_index_without_decrypting(exact: Env) -> None:
    keys = make_keys()
    people = {"a": _born(18), "b": _born(18, -1), "c": _born(30, 364), "d": _born(31), "e": _born(40)}
    with client() as c:
        ids = {u: _person(c, keys, u, {"birthday": b}) for u, b in people.items()}
        ids["none"] = _person(c, keys, "u-nob")

        def chosen(tree: dict[str, Any]) -> set[str]:
            r = c.post(
                "/v1/segments", json={"name": "t", "tree": tree, "purpose": REPORTING}, headers=auth(keys["admin"])
            )
            assert r.status_code == 201, r.text
            page = c.get(f"/v1/segments/{r.json()['id']}/members", headers=auth(keys["admin"])).json()
            by_id = {v: k for k, v in ids.items()}
            return {by_id[m["id"]] for m in page["members"]}

        assert chosen({"age": {"between": [18, 30]}}) == {"a", "c"}  # b turns 18 tomorrow, d is 31 today
        assert chosen({"age": {"gte": 31}}) == {"d", "e"}
        assert chosen({"not": {"age": {"lte": 17}}}) == {"a", "c", "d", "e", "none"}
        assert chosen({"birthday": "today"}) == {"a", "d", "e"}
    with sync_db() as db:
        stored = db.execute(
            text("SELECT birth_year_index, birth_md_index FROM profile_field WHERE name = 'birthday'")
        ).all()
        assert len(stored) == 5 and all(len(y) == 32 and len(md) == 32 for y, md in stored)
