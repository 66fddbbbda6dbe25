"""Entities beyond the person: accounts from Segment group calls and products from
e-commerce events, in segments (exact members), through merges, and the in-memory
evaluator agreeing with SQL on them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import select, text

from app.settings import get_settings
from tests.conftest import Env, run
from tests.helpers import auth, client, make_keys, sync_db

REPORTING = "analytics.reporting"
NIKE_HOOPS = {"brand": {"eq": "Nike"}, "category": {"eq": "basketball shoes"}}


@pytest.fixture
def exact(monkeypatch: pytest.MonkeyPatch, env: Env) -> Env:
    monkeypatch.setenv("CONSENTRY_SEGMENT_MIN_COUNT", "0")
    get_settings.cache_clear()
    return env


def _send(c: TestClient[Any], keys: dict[str, str], kind: str, body: dict[str, Any]) -> None:
    r = c.post(f"/v1/{kind}", json=body, auth=(keys["ingest"], ""))
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text


def _person(c: TestClient[Any], keys: dict[str, str], uid: str) -> str:
    _send(c, keys, "identify", {"userId": uid, "traits": {"country": "DE"}})
    found = c.post("/v1/profiles/lookup", json={"kind": "user_id", "value": uid}, headers=auth(keys["admin"]))
    return str(found.json()["profiles"][0]["id"])


def _order(c: TestClient[Any], keys: dict[str, str], uid: str, *products: dict[str, Any]) -> None:
    _send(c, keys, "track", {"userId": uid, "event": "Order Completed", "properties": {"products": list(products)}})


def _members(c: TestClient[Any], keys: dict[str, str], tree: dict[str, Any]) -> set[str]:
    r = c.post("/v1/segments", json={"name": "t", "tree": tree, "purpose": REPORTING}, headers=auth(keys["admin"]))
    assert r.status_code == 201, r.text
    page = c.get(f"/v1/segments/{r.json()['id']}/members", headers=auth(keys["admin"])).json()
    assert page["total"] == len(page["members"])
    return {m["id"] for m in page["members"]}


def _world(c: TestClient[Any], keys: dict[str, str]) -> dict[str, str]:
    """u0, u1 in the ACME account (enterprise); u2 in a family household; u3 in none.
    u0 bought Nike basketball shoes; u1 Nike running shoes and Adidas basketball shoes in one
    order; u2 only viewed the Nike basketball shoes; u3 bought dearer Nike basketball shoes."""
    ids = {u: _person(c, keys, u) for u in ("u0", "u1", "u2", "u3")}
    acme = {"plan": "enterprise", "industry": "retail", "email": "boss@acme.example", "name": "Wang Fang"}
    _send(c, keys, "group", {"userId": "u0", "groupId": "acme", "traits": acme})
    _send(c, keys, "group", {"userId": "u1", "groupId": "acme", "traits": {}})
    _send(c, keys, "group", {"userId": "u2", "groupId": "home-7", "traits": {"plan": "family"}})
    _order(c, keys, "u0", {"product_id": "nk-1", "brand": "Nike", "category": "basketball shoes", "price": 120})
    _order(
        c,
        keys,
        "u1",
        {"product_id": "nk-2", "brand": "Nike", "category": "running shoes", "price": 90},
        {"product_id": "ad-1", "brand": "Adidas", "category": "basketball shoes", "price": 110},
    )
    _send(c, keys, "track", {"userId": "u2", "event": "Product Viewed", "properties": {"product_id": "nk-1"}})
    _order(c, keys, "u3", {"product_id": "nk-3", "brand": "Nike", "category": "basketball shoes", "price": 300})
    return ids


def test_a_group_call_makes_an_account_and_segments_select_its_members(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        ids = _world(c, keys)
        by_id = {v: k for k, v in ids.items()}

        def chosen(tree: dict[str, Any]) -> set[str]:
            return {by_id[p] for p in _members(c, keys, tree)}

        assert chosen({"account": {"plan": {"eq": "enterprise"}}}) == {"u0", "u1"}
        assert chosen({"account": {"plan": {"eq": "family"}}}) == {"u2"}
        assert chosen({"account": {}}) == {"u0", "u1", "u2"}
        assert chosen({"not": {"account": {}}}) == {"u3"}
        _send(c, keys, "group", {"userId": "u1", "groupId": "acme", "traits": {"plan": "pro"}})
        assert chosen({"account": {"plan": {"eq": "enterprise"}}}) == set()
        assert chosen({"account": {"plan": {"eq": "pro"}, "industry": {"eq": "retail"}}}) == {"u0", "u1"}
        view = c.get(f"/v1/profiles/{ids['u0']}", headers=auth(keys["compliance"])).json()
        assert [a["traits"] for a in view["accounts"]] == [{"plan": "pro", "industry": "retail"}]
        for tree, field in [
            ({"account": {"email": {"eq": "boss@acme.example"}}}, "tree.account"),
            ({"account": "acme"}, "tree.account"),
        ]:
            r = c.post("/v1/segments/preview", json={"tree": tree}, headers=auth(keys["marketer"]))
            assert r.status_code == 422 and r.json()["invalid-params"][0]["name"].startswith(field), r.text
            assert "boss@" not in r.text
    with sync_db() as db:
        accounts = db.execute(text("SELECT id, traits FROM account")).all()
        assert len(accounts) == 2 and all(len(a) == 32 and "acme" not in a for a, _t in accounts)
        dump = " ".join(str(r) for t in ("account", "account_member") for r in db.execute(text(f"SELECT * FROM {t}")))
        assert "boss@acme.example" not in dump and "Wang Fang" not in dump  # personal group traits stay sealed


def test_product_conditions_select_who_bought_a_brand_in_a_category(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        ids = _world(c, keys)
        by_id = {v: k for k, v in ids.items()}

        def chosen(tree: dict[str, Any]) -> set[str]:
            return {by_id[p] for p in _members(c, keys, tree)}

        assert chosen({"event": "Order Completed", "product": NIKE_HOOPS}) == {"u0", "u3"}  # u1: not the same product
        cheap = {**NIKE_HOOPS, "price": {"lte": 200}}
        assert chosen({"event": "Order Completed", "product": cheap}) == {"u0"}
        assert chosen({"event": "Order Completed", "product": {"category": {"eq": "basketball shoes"}}}) == {
            "u0",
            "u1",
            "u3",
        }
        # the view carried only the product id: brand and category are the product's
        assert chosen({"event": "Product Viewed", "product": {"brand": {"eq": "Nike"}}}) == {"u2"}
        assert chosen({"event": "Order Completed", "product": {"product_id": {"in": ["ad-1", "nk-3"]}}}) == {
            "u1",
            "u3",
        }
        funnel = {"funnel": [{"event": "Product Viewed"}, {"event": "Order Completed", "product": NIKE_HOOPS}]}
        assert chosen({**funnel, "within": {"days": 1}}) == set()
        bad = {"event": "Order Completed", "product": {"brand": {"like": "N%"}}}
        r = c.post("/v1/segments/preview", json={"tree": bad}, headers=auth(keys["marketer"]))
        assert r.status_code == 422 and r.json()["invalid-params"][0]["name"] == "tree.product.brand", r.text
    with sync_db() as db:
        products = dict(db.execute(text("SELECT id, attributes FROM product")).all())
        assert sorted(products) == ["ad-1", "nk-1", "nk-2", "nk-3"]


def test_a_merge_moves_memberships_and_purchases_so_the_person_counts_once(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        known = _person(c, keys, "u0")
        _send(c, keys, "group", {"userId": "u0", "groupId": "acme", "traits": {"plan": "enterprise"}})
        _send(c, keys, "group", {"anonymousId": "anon-1", "groupId": "acme", "traits": {}})
        props = {"products": [{"product_id": "nk-1", "brand": "Nike", "category": "basketball shoes"}]}
        _send(c, keys, "track", {"anonymousId": "anon-1", "event": "Order Completed", "properties": props})
        lookup = {"kind": "anonymous_id", "value": "anon-1"}
        anon = c.post("/v1/profiles/lookup", json=lookup, headers=auth(keys["admin"])).json()["profiles"][0]["id"]
        plan = {"tree": {"account": {"plan": {"eq": "enterprise"}}}, "purpose": REPORTING}
        assert c.post("/v1/segments/preview", json=plan, headers=auth(keys["admin"])).json()["total"] == 2
        _send(c, keys, "identify", {"userId": "u0", "anonymousId": "anon-1"})
        assert c.post("/v1/segments/preview", json=plan, headers=auth(keys["admin"])).json()["total"] == 1
        assert _members(c, keys, {"event": "Order Completed", "product": NIKE_HOOPS}) == {known}
        view = c.get(f"/v1/profiles/{known}", headers=auth(keys["compliance"])).json()
        assert len(view["accounts"]) == 1
    with sync_db() as db:
        moved = db.execute(text("SELECT profile_id FROM account_member WHERE origin_id = :a"), {"a": anon}).scalar()
        bought = db.execute(text("SELECT profile_id FROM event_product")).scalars().all()
        assert moved == known and bought == [known]


def test_the_in_memory_evaluator_agrees_with_sql_on_tags_accounts_and_products(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        ids = _world(c, keys)
        c.post(
            "/v1/tags/interests.basketball/people", json={"add": [ids["u0"], ids["u2"]]}, headers=auth(keys["admin"])
        )
    trees: list[dict[str, Any]] = [
        {"tag": "interests.basketball"},
        {"not": {"tag": "interests.basketball"}},
        {"account": {"plan": {"eq": "enterprise"}}},
        {"account": {"plan": {"ne": "family"}}},
        {"any": [{"account": {"plan": {"eq": "family"}}}, {"tag": "interests.basketball"}]},
        {"event": "Order Completed", "product": NIKE_HOOPS},
        {"event": "Order Completed", "product": {"price": {"between": [100, 150]}}, "count": {"gte": 1}},
        {"event": "Order Completed", "product": {"brand": {"starts_with": "Ad"}}, "within": {"days": 1}},
        {"all": [{"event": "Order Completed", "product": {"brand": {"eq": "Nike"}}}, {"not": {"account": {}}}]},
        {"event": "Product Viewed", "product": {"category": {"exists": True}}},
    ]
    assert run(_agreement(trees)) == len(trees)


async def _agreement(trees: list[dict[str, Any]]) -> int:
    from app.db import unit_of_work
    from app.entities.service import event_products, person_accounts
    from app.ingest.holder import HOLDER
    from app.profiles.service import population
    from app.segments.evaluate import Fact, Facts, matches
    from app.segments.service import matching, parse_tree
    from app.tags.service import person_tags

    now = datetime.now(UTC)
    events = next(t for t in HOLDER.tables if t.name == "event")
    async with unit_of_work() as s:
        _table, person, _region, live = population()
        people = list((await s.execute(select(person).where(live))).scalars())
        rows = (
            await s.execute(
                select(events.c.id, events.c.profile_id, events.c.name, events.c.occurred_at, events.c.properties)
            )
        ).all()
        products = await event_products(s, [r.id for r in rows])
        facts = {}
        for p in people:
            mine = [
                Fact(r.name or "", r.occurred_at, r.properties, products.get(r.id, []))
                for r in rows
                if r.profile_id == p
            ]
            tags = {t["tag"] for t in await person_tags(s, p)}
            accounts = [a["traits"] for a in await person_accounts(s, p)]
            facts[p] = Facts(events=mine, tags=tags, accounts=accounts)
        agreed = 0
        for tree in trees:
            node = (await parse_tree(s, tree)).node
            in_sql = set((await s.execute(select(person).where(matching(node, now)))).scalars())
            in_memory = {p for p in people if matches(node, facts[p], now)}
            assert in_sql == in_memory, tree
            assert in_sql and in_sql != set(people), tree  # every tree tells people apart
            agreed += 1
    return agreed
