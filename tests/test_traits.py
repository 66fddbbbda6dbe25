"""Computed traits on a small hand-checked data set: every kind's values written out, the
profiling refusal, merged-away profiles, incremental refresh, and their use in segments."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, select, text

from app.db import get_engine, unit_of_work
from app.ingest.event_reads import events_table
from app.inventory import Person
from app.profiles.service import population
from app.segments.evaluate import Facts, matches
from app.segments.grammar import Parser
from app.segments.sql import Compiler
from app.settings import get_settings
from app.traits.catalog import KINDS, check_traits_policy
from app.traits.holder import HOLDER
from app.traits.service import due_people, refresh_due, refresh_traits, values_of
from tests.conftest import Env, run
from tests.helpers import auth, client, make_keys, sync_db

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
PEOPLE = ("A", "B", "C", "D", "E", "F", "R", "M")
ID = {p: str(uuid.UUID(int=n + 1)) for n, p in enumerate(PEOPLE)}
ORDER = "Order Completed"
PROFILING = (
    "rfm_recency",
    "rfm_frequency",
    "rfm_monetary",
    "lifetime_value",
    "churn_risk",
    "lead_score",
    "bought_together",
)

# (person, event, days ago, properties). R refuses profiling; M is merged into A (a stale
# event of M's must never count).
EVENTS: list[tuple[str, str, int, dict[str, Any]]] = [
    (
        "A",
        ORDER,
        10,
        {
            "revenue": 100,
            "category": "shoes",
            "affiliation": "web",
            "products": [{"product_id": "p1"}, {"product_id": "p2"}],
        },
    ),
    (
        "A",
        ORDER,
        40,
        {
            "revenue": 50,
            "category": "socks",
            "affiliation": "app",
            "products": [{"product_id": "p2"}, {"product_id": "p3"}],
        },
    ),
    ("A", "Order Refunded", 5, {"revenue": 20}),
    ("B", ORDER, 100, {"total": 30, "category": "shoes", "products": [{"product_id": "p1"}, {"product_id": "p3"}]}),
    ("C", ORDER, 2, {"revenue": 200, "category": "balls", "products": [{"product_id": "p4"}]}),
    ("C", ORDER, 3, {"revenue": 10, "category": "shoes", "products": [{"product_id": "p1"}, {"product_id": "p4"}]}),
    ("C", ORDER, 400, {"revenue": 5, "category": "shoes", "products": [{"product_id": "p5"}]}),
    ("D", "Product Viewed", 1, {"category": "a"}),
    ("D", "Product Viewed", 2, {"category": "b"}),
    ("D", "Product Viewed", 3, {"category": "a"}),
    ("D", "Signed Up", 200, {}),
    *[("D", "Product Added", d, {}) for d in (5, 6, 7, 8)],
    ("E", ORDER, 20, {"revenue": 70, "category": "balls", "products": [{"product_id": "p1"}]}),
    ("E", "Product Viewed", 25, {"category": "z"}),
    ("E", "Product Viewed", 26, {"category": "y"}),
    ("F", ORDER, 50, {"revenue": 40, "category": "socks", "products": [{"product_id": "p3"}]}),
    ("R", ORDER, 1, {"revenue": 1000, "category": "shoes", "products": [{"product_id": "p2"}, {"product_id": "p4"}]}),
    ("M", ORDER, 1, {"revenue": 9, "category": "hats", "products": [{"product_id": "p9"}]}),
]


def _iso(days: int) -> str:
    return (NOW - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


# Hand-checked (see policies/computed_traits.yaml for each formula):
# - RFM ranks A, B, C, E, F (R refuses profiling, D has no order; n = 5):
#   recency (latest order) B 100d < F 50d < E 20d < A 10d < C 2d → 1..5;
#   frequency A 2, B 1, C 3, E 1, F 1 → B, E, F tie at rank 1 (score 1), A rank 4 → 1 + 15 // 5 = 4, C 5;
#   monetary A 150, B 30, C 215, E 70, F 40 → B 1, F 2, E 3, A 4, C 5.
# - churn = round(2·min(d, 90)/3 + 40·b/(a+b)) (20 when a+b = 0): A d=5, a=2, b=1 → 3.33 + 13.33 = 16.67 → 17;
#   B d=100 → 60 + 20 = 80; C d=2, a=2, b=0 → 1.33 → 1; D d=1, a=8 → 0.67 → 1; E d=20, a=3 → 13.33 → 13;
#   F d=50, a=0, b=1 → 33.33 + 40 = 73.33 → 73.
# - lead score: D views 3*5 = 15, adds 4*10 = 40 → cap 30, signed up 30 → 75; E views 2*5 = 10.
# - bought together: co(p1,p2) = co(p2,p3) = co(p1,p3) = co(p1,p4) = co(p2,p4) = 1 (R's order counts
#   for the pairs); A bought p1 p2 p3 → p4 (1 + 1); B p1 p3 → p2 (2), p4 (1); C p1 p4 p5 → p2 (2), p3 (1);
#   E p1 → p2, p3, p4 (1 each: by id); F p3 → p1, p2.
EXPECTED: dict[str, dict[str, Any]] = {
    "A": {
        "purchase_count": 2,
        "orders_90d": 2,
        "purchase_total": 150,
        "first_source": "app",
        "last_category": "shoes",
        "categories_bought": ["shoes", "socks"],
        "last_seen": _iso(5),
        "rfm_recency": 4,
        "rfm_frequency": 4,
        "rfm_monetary": 4,
        "lifetime_value": 130,
        "churn_risk": 17,
        "bought_together": ["p4"],
    },
    "B": {
        "purchase_count": 1,
        "purchase_total": 30,
        "last_category": "shoes",
        "categories_bought": ["shoes"],
        "last_seen": _iso(100),
        "rfm_recency": 1,
        "rfm_frequency": 1,
        "rfm_monetary": 1,
        "lifetime_value": 30,
        "churn_risk": 80,
        "bought_together": ["p2", "p4"],
    },
    "C": {
        "purchase_count": 3,
        "orders_90d": 2,
        "purchase_total": 215,
        "last_category": "balls",
        "categories_bought": ["balls", "shoes"],
        "last_seen": _iso(2),
        "rfm_recency": 5,
        "rfm_frequency": 5,
        "rfm_monetary": 5,
        "lifetime_value": 215,
        "churn_risk": 1,
        "bought_together": ["p2", "p3"],
    },
    "D": {"favourite_category": "a", "last_seen": _iso(1), "churn_risk": 1, "lead_score": 75},
    "E": {
        "purchase_count": 1,
        "orders_90d": 1,
        "purchase_total": 70,
        "favourite_category": "y",
        "last_category": "balls",
        "categories_bought": ["balls"],
        "last_seen": _iso(20),
        "rfm_recency": 3,
        "rfm_frequency": 1,
        "rfm_monetary": 3,
        "lifetime_value": 70,
        "churn_risk": 13,
        "lead_score": 10,
        "bought_together": ["p2", "p3", "p4"],
    },
    "F": {
        "purchase_count": 1,
        "orders_90d": 1,
        "purchase_total": 40,
        "last_category": "socks",
        "categories_bought": ["socks"],
        "last_seen": _iso(50),
        "rfm_recency": 2,
        "rfm_frequency": 1,
        "rfm_monetary": 2,
        "lifetime_value": 40,
        "churn_risk": 73,
        "bought_together": ["p1", "p2"],
    },
    "R": {
        "purchase_count": 1,
        "orders_90d": 1,
        "purchase_total": 1000,
        "last_category": "shoes",
        "categories_bought": ["shoes"],
        "last_seen": _iso(1),
    },
    "M": {},
}


def _store() -> None:
    profile, _person, _region, _live = population()
    events = events_table()
    with sync_db() as db:
        for p in PEOPLE:
            row = {"id": ID[p], "created_at": NOW, "updated_at": NOW, "traits": {}, "trait_sources": {}, "region": "DE"}
            db.execute(insert(profile), {**row, "merged_into": ID["A"] if p == "M" else None})
        for n, (p, name, days, props) in enumerate(EVENTS):
            at = NOW - timedelta(days=days)
            row = {"id": f"e{n:03d}", "profile_id": ID[p], "origin_id": ID[p], "source": "t", "message_id": f"m{n}"}
            extra = {"received_at": at, "properties": props, "traits": {}, "key_version": 1, "sealed": b"x"}
            db.execute(insert(events), {**row, "type": "track", "name": name, "occurred_at": at, **extra})
        _refuse(db, "R")


def _refuse(db: Any, p: str) -> None:
    db.execute(
        text(
            "INSERT INTO privacy_flag (origin_id, flag, profile_id, set_at, source) "
            "VALUES (:id, 'profiling_refused', :id, :at, 'test')"
        ),
        {"id": ID[p], "at": NOW},
    )


async def _refresh(ids: list[str] | None = None) -> dict[str, int]:
    async with unit_of_work() as session:
        return await refresh_traits(session, ids, NOW)


async def _values() -> dict[str, dict[str, Any]]:
    async with unit_of_work() as session:
        return {p: await values_of(session, ID[p], NOW) for p in PEOPLE}


@pytest.fixture
def shop(env: Env) -> Env:
    _store()
    return env


def _numbers_equal(got: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Whole floats as ints, so 150.0 (PostgreSQL) reads as 150 (SQLite)."""
    return {
        p: {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in vals.items()}
        for p, vals in got.items()
    }


def test_every_kind_on_a_hand_checked_data_set(shop: Env) -> None:
    counts = run(_refresh())
    assert counts["skipped"] == 0
    assert counts["purchase_count"] == 6
    assert _numbers_equal(run(_values())) == EXPECTED


def test_a_profiling_refusal_removes_the_scores_at_the_next_refresh(shop: Env) -> None:
    run(_refresh())
    with sync_db() as db:
        _refuse(db, "A")
        db.execute(text("DELETE FROM privacy_flag WHERE profile_id = :id"), {"id": ID["R"]})
    hidden = run(_values())["A"]  # hidden at once, though still stored
    assert set(hidden) == set(EXPECTED["A"]) - set(PROFILING)
    run(_refresh([ID["A"], ID["R"]]))
    with sync_db() as db:
        stored = {
            r[0] for r in db.execute(text("SELECT name FROM trait_value WHERE profile_id = :id"), {"id": ID["A"]})
        }
    assert stored == set(EXPECTED["A"]) - set(PROFILING)
    after = run(_values())["R"]
    assert after["churn_risk"] == 1  # R no longer refuses: scored (d = 1, a = 1, b = 0)
    assert "rfm_recency" not in after  # population-wide: at the next full refresh


def test_an_incremental_refresh_touches_only_the_people_named(shop: Env) -> None:
    run(_refresh())
    with sync_db() as db:
        at = NOW - timedelta(days=1)
        row = {"id": "e999", "profile_id": ID["B"], "origin_id": ID["B"], "source": "t", "message_id": "m999"}
        extra = {"received_at": at, "properties": {"revenue": 5, "category": "hats"}, "traits": {}}
        db.execute(
            insert(events_table()),
            {**row, "type": "track", "name": ORDER, "occurred_at": at, **extra, "key_version": 1, "sealed": b"x"},
        )
        db.execute(
            text("UPDATE trait_value SET value = :v WHERE profile_id = :id AND name = 'purchase_count'"),
            {"v": '{"v": 99}', "id": ID["C"]},
        )
        db.execute(  # a value left for a merged-away id (as if computed before the merge)
            text("INSERT INTO trait_value (profile_id, name, value, computed_at) VALUES (:id, 'rfm_recency', :v, :at)"),
            {"v": '{"v": 3}', "id": ID["M"], "at": NOW},
        )
    counts = run(_refresh([ID["B"], ID["M"]]))
    assert counts["purchase_count"] == 1
    values = run(_values())
    assert (values["B"]["purchase_count"], values["B"]["last_category"], values["B"]["churn_risk"]) == (2, "hats", 1)
    assert values["C"]["purchase_count"] == 99  # not named: untouched
    assert values["B"]["rfm_recency"] == 1  # population-wide: kept until the next full refresh
    assert values["M"] == {}


async def _scheduled(at: datetime) -> tuple[dict[str, Any], list[str]]:
    """The scheduled refresh at ``at``, and whom it would find due a minute later."""
    async with unit_of_work() as session:
        done = await refresh_due(session, at)
    async with unit_of_work() as session:
        return done, await due_people(session, at, at + timedelta(minutes=1))


def test_the_scheduled_refresh_recomputes_whom_time_changed_as_a_full_one_would(
    shop: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.traits.service.FULL_EVERY", timedelta(days=7))
    done, _due = run(_scheduled(NOW))
    assert done["mode"] == "full"  # the first run computes everything
    at = NOW
    for hours in (12, 12, 13, 20):  # each run within a day of the one before
        at += timedelta(hours=hours)
        done, due = run(_scheduled(at))
        assert done["mode"] == "due"
        assert 0 < done["people"] < len(PEOPLE)
        assert ID["B"] not in due  # his one order is 100 days old: no value of his changes with time
        incremental = run(_values())

        async def full(at: datetime = at) -> None:
            async with unit_of_work() as session:
                await refresh_traits(session, None, at)

        run(full())
        assert run(_values()) == incremental
    assert incremental["A"]["churn_risk"] == 18  # 57 hours on: d = 7, a = 2, b = 1 (17 at NOW)
    done, _due = run(_scheduled(at + timedelta(hours=25)))
    assert done["mode"] == "full"  # more than a day since the last run


def _members(tree: Any, refused: set[str]) -> tuple[set[str], set[str]]:
    """The people a tree selects in SQL, and by the in-memory evaluator over the stored values."""
    node = Parser(lambda _name: None, lambda name: name, frozenset()).parse(tree)
    profile, person, _region, live = population()
    with sync_db() as db:
        got = {
            str(r)
            for r in db.execute(select(person).where(live, Compiler(person, profile.c.traits, NOW)(node))).scalars()
        }
    stored = run(_values())
    expected = set()
    for p in PEOPLE[:-1]:
        facts = Facts(computed=stored[p], profiling_refused=p in refused)
        if matches(node, facts, NOW):
            expected.add(ID[p])
    return got, expected


def test_segments_use_computed_traits_and_leave_out_profiling_refusals(shop: Env) -> None:
    run(_refresh())
    name = {v: k for k, v in ID.items()}
    for tree, want in [
        ({"computed": "purchase_total", "gte": 100}, {"A", "C", "R"}),
        ({"computed": "categories_bought", "includes": "shoes"}, {"A", "B", "C", "R"}),
        ({"computed": "rfm_monetary", "gte": 4}, {"A", "C"}),
        ({"not": {"computed": "churn_risk", "gt": 50}}, {"A", "C", "D", "E"}),  # R refuses: out even under not
        ({"computed": "bought_together", "includes": "p4"}, {"A", "B", "E"}),
        (
            {"any": [{"computed": "lead_score", "exists": True}, {"computed": "last_category", "eq": "socks"}]},
            {"D", "E", "F"},
        ),
    ]:
        got, expected = _members(tree, {"R"})
        assert {name[i] for i in got} == want, tree
        assert got == expected, tree


def test_the_api_lists_traits_and_refuses_unknown_ones_by_path(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        r = c.get("/v1/traits", headers=auth(keys["marketer"]))
        assert r.status_code == 200, r.text
        traits = {t["name"]: t for t in r.json()["traits"]}
        assert traits["churn_risk"]["profiling"] is True and traits["purchase_count"]["profiling"] is False
        assert "0.6" in traits["churn_risk"]["formula"]
        tree = {"all": [{"trait": "plan", "eq": "x"}, {"computed": "shoe_size", "gt": 1}]}
        bad = c.post("/v1/segments/preview", json={"tree": tree}, headers=auth(keys["marketer"]))
        assert bad.status_code == 422, bad.text
        assert bad.json()["invalid-params"][0]["name"] == "tree.all[1].computed"
        ok = c.post(
            "/v1/segments/preview",
            json={"tree": {"computed": "rfm_monetary", "gte": 4}},
            headers=auth(keys["marketer"]),
        )
        assert ok.status_code == 200, ok.text
        refresh = c.post("/v1/traits/refresh", json={}, headers=auth(keys["admin"]))
        assert refresh.status_code == 200, refresh.text
        assert c.post("/v1/traits/refresh", json={}, headers=auth(keys["marketer"])).status_code == 403


def test_the_profile_view_shows_computed_traits(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        assert c.post("/v1/identify", json={"userId": "u1", "traits": {}}, auth=(keys["ingest"], "")).status_code == 200
        order = {"userId": "u1", "event": ORDER, "properties": {"revenue": 80, "category": "hats"}}
        assert c.post("/v1/track", json=order, auth=(keys["ingest"], "")).status_code == 200
        found = c.post("/v1/profiles/lookup", json={"kind": "user_id", "value": "u1"}, headers=auth(keys["admin"]))
        pid = found.json()["profiles"][0]["id"]
        r = c.post("/v1/traits/refresh", json={"profile_ids": [pid]}, headers=auth(keys["admin"]))
        assert r.status_code == 200, r.text
        assert r.json()["values"]["purchase_count"] == 1
        view = c.get(f"/v1/profiles/{pid}", headers=auth(keys["admin"])).json()
        assert (view["computed"]["purchase_count"], view["computed"]["last_category"]) == (1, "hats")
        assert view["computed"]["churn_risk"] == 0  # active today (d = 0), a = 1, b = 0: T = 0
        bad = c.post("/v1/traits/refresh", json={"profile_ids": ["x" * 40]}, headers=auth(keys["admin"]))
        assert bad.status_code == 422 and bad.json()["invalid-params"][0]["name"] == "profile_ids"


def test_a_trait_reading_a_personal_property_is_skipped(shop: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    policies = shop.tmp / "policies"
    shutil.copytree(get_settings().policy_dir, policies)
    with (policies / "computed_traits.yaml").open("a", encoding="utf-8") as fh:
        fh.write("  email_seen:\n    kind: last\n    event: Order Completed\n")
        fh.write("    property: email\n    profiling: false\n")
    monkeypatch.setenv("CONSENTRY_POLICY_DIR", str(policies))
    get_settings.cache_clear()
    counts = run(_refresh())
    assert counts["skipped"] == 1 and "email_seen" not in counts
    assert _numbers_equal(run(_values())) == EXPECTED


def test_the_holder_exports_forgets_and_drops_values_on_merge(shop: Env) -> None:
    run(_refresh())

    async def work() -> tuple[dict[str, Any], int, int]:
        async with unit_of_work() as session:
            person = Person(ID["A"], (ID["A"], ID["M"]))
            exported = await HOLDER.export(session, {}, person)
            dropped = await HOLDER.rekey(session, ID["C"], ID["A"], [ID["C"]])  # C merged into A
            removed = await HOLDER.forget(session, person)
            return exported, dropped, removed

    exported, dropped, removed = run(work())
    assert {v["name"]: v["value"] for v in exported["computed_traits"]}["purchase_count"] == 2
    assert dropped == len(EXPECTED["C"])
    assert removed == len(EXPECTED["A"])
    assert run(_values())["A"] == {} and run(_values())["C"] == {}


def test_a_broken_definition_is_a_policy_problem(tmp_path: Path) -> None:
    (tmp_path / "computed_traits.yaml").write_text(
        "traits:\n  churn:\n    kind: guess\n    profiling: true\n", encoding="utf-8"
    )
    (problem,) = check_traits_policy(tmp_path)
    assert (problem.file, problem.problem) == ("computed_traits.yaml", "churn: kind must be one of " + ", ".join(KINDS))
    assert check_traits_policy(get_settings().policy_dir) == []
    assert check_traits_policy(tmp_path / "none") == []  # no file: no traits


@contextmanager
def _statement_plans() -> Iterator[list[tuple[str, list[str]]]]:
    """The plan of every statement that reads (INSERT … SELECT included) run while inside."""
    engine = get_engine().sync_engine
    plans: list[tuple[str, list[str]]] = []

    def before(conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, many: bool) -> None:
        reads = "SELECT" in statement.upper() or statement.lstrip().upper().startswith("DELETE")
        if many or not reads:
            return
        cur = conn.connection.dbapi_connection.cursor()
        if conn.dialect.name == "sqlite":
            cur.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            plan = [str(r[-1]) for r in cur.fetchall()]
        else:
            cur.execute("SET LOCAL enable_seqscan = off")  # tiny test tables: only a missing index scans now
            cur.execute("EXPLAIN " + statement, parameters)
            plan = [str(r[0]) for r in cur.fetchall()]
        cur.close()
        plans.append((statement, plan))

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield plans
    finally:
        event.remove(engine, "before_cursor_execute", before)


def test_a_refresh_of_named_people_reads_only_their_rows(shop: Env) -> None:
    """The outbox follower refreshes the people an ingest group touched: its cost must not
    grow with the store, so no statement reads a whole person table, nor (SQLite, which has
    no statistics) every event of a name instead of the named people's events."""
    run(_refresh())

    async def named() -> list[tuple[str, list[str]]]:
        with _statement_plans() as plans:
            await _refresh([ID["A"], ID["B"], ID["M"], ID["R"]])
        return plans

    plans = run(named())
    sqlite = shop.sqlite_path is not None
    pattern = r"\bSCAN (\w+)|USING (?:COVERING )?INDEX (ix_event_name_time)" if sqlite else r"Seq Scan on (\w+)"
    person_tables = {"event", "profile", "trait_value", "privacy_flag"}
    wide = []
    for statement, plan in plans:
        for line in plan:
            m = re.search(pattern, line)
            if m and ({g for g in m.groups() if g} & (person_tables | {"ix_event_name_time"})):
                wide.append((statement.split("\n")[0][:120], line.strip()))
    assert len(plans) > 10
    assert not wide, wide
