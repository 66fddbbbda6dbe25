"""Tags (标签体系): the taxonomy, tagging by hand in bulk (audited), rule tags with their
history, the profiling flag, tags in segments and in the 360° view, merges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import text

from app.segments.tag_rules import apply_tags
from app.settings import get_settings
from app.tags.taxonomy import TaxonomyError, load_taxonomy, parse_taxonomy
from tests.conftest import Env, run
from tests.helpers import auth, client, make_keys, sync_db

REPORTING = "analytics.reporting"


@pytest.fixture
def exact(monkeypatch: pytest.MonkeyPatch, env: Env) -> Env:
    """Counts shown exactly (threshold 0) to every role."""
    monkeypatch.setenv("CONSENTRY_SEGMENT_MIN_COUNT", "0")
    get_settings.cache_clear()
    return env


def _ago(days: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat().replace("+00:00", "Z")


def _person(c: TestClient[Any], keys: dict[str, str], uid: str) -> str:
    body = {"userId": uid, "traits": {"country": "DE"}}
    assert c.post("/v1/identify", json=body, auth=(keys["ingest"], "")).status_code == 200
    found = c.post("/v1/profiles/lookup", json={"kind": "user_id", "value": uid}, headers=auth(keys["admin"]))
    return str(found.json()["profiles"][0]["id"])


def _order(c: TestClient[Any], keys: dict[str, str], uid: str, category: str, days: int) -> None:
    props = {"order_id": f"o-{uid}-{days}", "products": [{"product_id": f"sku-{category}", "category": category}]}
    body = {"userId": uid, "event": "Order Completed", "properties": props, "timestamp": _ago(days)}
    assert c.post("/v1/track", json=body, auth=(keys["ingest"], "")).status_code == 200


def _members(c: TestClient[Any], keys: dict[str, str], tree: dict[str, Any]) -> set[str]:
    r = c.post("/v1/segments", json={"name": "t", "tree": tree, "purpose": REPORTING}, headers=auth(keys["admin"]))
    assert r.status_code == 201, r.text
    page = c.get(f"/v1/segments/{r.json()['id']}/members", headers=auth(keys["admin"])).json()
    assert page["total"] == len(page["members"])
    return {m["id"] for m in page["members"]}


def _refuse_profiling(c: TestClient[Any], keys: dict[str, str], pid: str) -> None:
    body = {"flags": {pid: {"profiling_refused": True}}}
    r = c.post("/v1/consents", json=body, headers=auth(keys["compliance"]))
    assert r.status_code == 201, r.text


def test_the_taxonomy_has_groups_with_english_and_chinese_names(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        r = c.get("/v1/tags", headers=auth(keys["marketer"]))
        assert r.status_code == 200, r.text
        groups = {g["group"]: g for g in r.json()}
        assert groups["lifecycle"]["zh"] == "生命周期" and groups["value"]["zh"] == "价值分层"
        lifecycle = {t["tag"]: t for t in groups["lifecycle"]["tags"]}
        assert list(lifecycle) == ["lifecycle.new", "lifecycle.active", "lifecycle.at_risk", "lifecycle.lost"]
        assert lifecycle["lifecycle.active"]["applied_by"] == ["manual", "rule"]
        assert lifecycle["lifecycle.at_risk"]["profiling"] is True
        assert all(t["profiling"] for t in groups["value"]["tags"])
        assert lifecycle["lifecycle.new"]["people"] == "<10"  # masked role, below the threshold
    with pytest.raises(TaxonomyError):
        parse_taxonomy({"groups": {"Bad Name": {"en": "x", "zh": "x", "tags": {}}}})
    with pytest.raises(TaxonomyError):
        parse_taxonomy({"groups": {"g": {"en": "x", "zh": "x", "tags": {"t": {"en": "only english"}}}}})


def test_tagging_by_hand_in_bulk_is_audited_and_kept_in_history(exact: Env) -> None:
    keys = make_keys()
    m = auth(keys["marketer"])
    with client() as c:
        ids = [_person(c, keys, f"u{n}") for n in range(3)]
        _refuse_profiling(c, keys, ids[2])
        r = c.post("/v1/tags/value.high/people", json={"add": [*ids, "no-such-profile"]}, headers=m)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "tag": "value.high",
            "added": 2,
            "removed": 0,
            "unchanged": 0,
            "refused_profiling": 1,
            "unknown": 1,
        }
        again = c.post("/v1/tags/value.high/people", json={"add": ids[:1]}, headers=m).json()
        assert (again["added"], again["unchanged"]) == (0, 1)
        assert c.post("/v1/tags/value.high/people", json={"remove": [ids[1]]}, headers=m).json()["removed"] == 1

        view = c.get(f"/v1/profiles/{ids[0]}", headers=auth(keys["compliance"])).json()
        assert [(t["tag"], t["zh"], t["sources"]) for t in view["tags"]] == [("value.high", "高价值", ["manual"])]
        gone = c.get(f"/v1/profiles/{ids[1]}", headers=auth(keys["compliance"])).json()
        assert gone["tags"] == []
        assert [(h["tag"], h["change"]) for h in gone["tag_history"]] == [
            ("value.high", "lost"),
            ("value.high", "gained"),
        ]
        assert c.get(f"/v1/profiles/{ids[2]}", headers=auth(keys["compliance"])).json()["tags"] == []

        entries = c.get("/v1/audit/entries?limit=500", headers=auth(keys["auditor"])).json()["entries"]
        tagged = [e for e in entries if e["action"] == "tag.apply"]
        assert len(tagged) == 3 and all(e["actor_role"] == "marketer" and e["request_id"] for e in tagged)
        assert [e["details"]["added"] for e in tagged] == [2, 0, 0]
        mine = c.get(f"/v1/audit/entries?subject={ids[1]}&action=tag.apply", headers=auth(keys["auditor"])).json()
        assert len(mine["entries"]) == 2  # the person's access request finds both changes

        assert c.post("/v1/tags/value.nope/people", json={"add": ids}, headers=m).status_code == 404
        bad = c.post("/v1/tags/value.high/people", json={"add": [ids[0]], "remove": [ids[0]]}, headers=m)
        assert bad.status_code == 422 and bad.json()["invalid-params"][0]["name"] == "remove"
        empty = c.post("/v1/tags/value.high/people", json={}, headers=m)
        assert empty.status_code == 422 and empty.json()["invalid-params"][0]["name"] == "add"


def test_rule_tags_follow_the_rule_skip_people_who_refused_profiling_and_keep_history(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        ids = {u: _person(c, keys, u) for u in ("new", "active", "risk", "lost", "hoops", "refuser")}
        _order(c, keys, "new", "socks", 5)
        for days in (10, 40):
            _order(c, keys, "active", "socks", days)
        _order(c, keys, "risk", "socks", 120)
        _order(c, keys, "lost", "socks", 400)
        _order(c, keys, "hoops", "basketball shoes", 20)
        _order(c, keys, "refuser", "basketball shoes", 20)
        _refuse_profiling(c, keys, ids["refuser"])
    result = run(apply_tags())
    assert result["failed"] == 0 and result["applied"] >= 6
    with client() as c:

        def carrying(tag: str) -> set[str]:
            by_id = {v: k for k, v in ids.items()}
            return {by_id[p] for p in _members(c, keys, {"tag": tag})}

        assert carrying("lifecycle.new") == {"new", "hoops", "refuser"}
        assert carrying("lifecycle.active") == {"active"}
        assert carrying("lifecycle.at_risk") == {"risk"}
        assert carrying("lifecycle.lost") == {"lost"}
        assert carrying("interests.basketball") == {"hoops"}  # a profiling tag: not for the refuser
        view = c.get(f"/v1/profiles/{ids['hoops']}", headers=auth(keys["compliance"])).json()
        assert {(t["tag"], tuple(t["sources"])) for t in view["tags"]} == {
            ("lifecycle.new", ("rule",)),
            ("interests.basketball", ("rule",)),
        }
    later = datetime.now(UTC) + timedelta(days=400)  # a year on, without new orders
    run(apply_tags(later))
    with client() as c:
        view = c.get(f"/v1/profiles/{ids['hoops']}", headers=auth(keys["compliance"])).json()
        assert [t["tag"] for t in view["tags"]] == ["lifecycle.lost"]
        history = {(h["tag"], h["change"]) for h in view["tag_history"]}
        assert history == {
            ("lifecycle.new", "gained"),
            ("lifecycle.new", "lost"),
            ("interests.basketball", "gained"),
            ("interests.basketball", "lost"),
            ("lifecycle.lost", "gained"),
        }
    again = run(apply_tags(later))
    assert (again["gained"], again["lost"]) == (0, 0)  # nothing changes twice


def test_a_tag_in_a_segment_and_a_bad_tag_is_a_422(exact: Env) -> None:
    keys = make_keys()
    m = auth(keys["marketer"])
    with client() as c:
        ids = [_person(c, keys, f"u{n}") for n in range(4)]
        c.post("/v1/tags/interests.beauty/people", json={"add": ids[:2]}, headers=m)
        c.post("/v1/tags/value.low/people", json={"add": ids[1:3]}, headers=m)
        assert _members(c, keys, {"tag": "interests.beauty"}) == set(ids[:2])
        both = {"all": [{"tag": "interests.beauty"}, {"not": {"tag": "value.low"}}]}
        assert _members(c, keys, both) == {ids[0]}
        preview = c.post("/v1/segments/preview", json={"tree": {"tag": "value.low"}, "purpose": REPORTING}, headers=m)
        assert preview.json()["total"] == 2
        _refuse_profiling(c, keys, ids[0])  # a profiling tag's segment leaves them out at once, under not too
        assert _members(c, keys, {"tag": "interests.beauty"}) == {ids[1]}
        assert _members(c, keys, {"not": {"tag": "interests.beauty"}}) == set(ids[2:])
        for tree, field in [({"tag": "value.secret"}, "tree.tag"), ({"any": [{"tag": 3}]}, "tree.any[0].tag")]:
            r = c.post("/v1/segments/preview", json={"tree": tree}, headers=m)
            assert r.status_code == 422 and r.json()["invalid-params"][0]["name"] == field, r.text
            assert "secret" not in r.text


def test_a_merged_person_carries_a_tag_once_and_an_unmerge_gives_it_back(exact: Env) -> None:
    keys = make_keys()
    m = auth(keys["marketer"])
    with client() as c:
        known = _person(c, keys, "u0")
        visit = {"anonymousId": "anon-1", "event": "Viewed"}
        assert c.post("/v1/track", json=visit, auth=(keys["ingest"], "")).status_code == 200
        lookup = {"kind": "anonymous_id", "value": "anon-1"}
        anon = c.post("/v1/profiles/lookup", json=lookup, headers=auth(keys["admin"])).json()["profiles"][0]["id"]
        assert c.post("/v1/tags/interests.running/people", json={"add": [known, anon]}, headers=m).json()["added"] == 2
        login = {"userId": "u0", "anonymousId": "anon-1"}
        assert c.post("/v1/identify", json=login, auth=(keys["ingest"], "")).status_code == 200
        assert _members(c, keys, {"tag": "interests.running"}) == {known}
        listed = {t["tag"]: t["people"] for g in c.get("/v1/tags", headers=m).json() for t in g["tags"]}
        assert listed["interests.running"] == 1
        view = c.get(f"/v1/profiles/{known}", headers=auth(keys["compliance"])).json()
        assert [t["tag"] for t in view["tags"]] == ["interests.running"]
        assert c.post(f"/v1/profiles/{anon}/unmerge", headers=auth(keys["admin"])).status_code in (200, 201)
        tree = {"tree": {"tag": "interests.running"}, "purpose": REPORTING}
        assert c.post("/v1/segments/preview", json=tree, headers=auth(keys["admin"])).json()["total"] == 2
    with sync_db() as db:
        rows = db.execute(text("SELECT origin_id, profile_id FROM tag_assignment ORDER BY origin_id")).all()
        assert sorted(rows) == sorted([(known, known), (anon, anon)])


def test_the_shipped_rules_parse_against_the_grammar(env: Env) -> None:
    from app.db import unit_of_work
    from app.segments.service import parse_tree

    async def parse_all() -> int:
        async with unit_of_work() as session:
            rules = [s for s in load_taxonomy().tags.values() if s.rule]
            for spec in rules:
                await parse_tree(session, spec.rule, spec.name)
            return len(rules)

    assert run(parse_all()) >= 6


def test_threshold_tags_follow_a_computed_trait(exact: Env) -> None:
    from app.traits.jobs import refresh_all_traits

    keys = make_keys()
    with client() as c:
        spent = {"big": 1500, "mid": 300, "small": 50, "refuser": 2000}
        ids = {u: _person(c, keys, u) for u in [*spent, "nobody"]}
        for uid, revenue in spent.items():
            body = {"userId": uid, "event": "Order Completed", "properties": {"revenue": revenue}}
            assert c.post("/v1/track", json=body, auth=(keys["ingest"], "")).status_code == 200
        _refuse_profiling(c, keys, ids["refuser"])
    run(refresh_all_traits())
    assert run(apply_tags())["failed"] == 0
    with client() as c:
        by_id = {v: k for k, v in ids.items()}
        tiers = {t: {by_id[p] for p in _members(c, keys, {"tag": f"value.{t}"})} for t in ("high", "medium", "low")}
        assert tiers == {"high": {"big"}, "medium": {"mid"}, "low": {"small"}}  # not the refuser: profiling
        view = c.get(f"/v1/profiles/{ids['big']}", headers=auth(keys["compliance"])).json()
        assert [(t["tag"], t["sources"]) for t in view["tags"] if t["group"] == "value"] == [
            ("value.high", ["threshold"])
        ]


def test_a_saved_segment_on_a_tag_follows_tagging_through_the_outbox(exact: Env) -> None:
    from app.segments.jobs import apply_outbox_job

    keys = make_keys()
    m = auth(keys["marketer"])
    with client() as c:
        ids = [_person(c, keys, f"u{n}") for n in range(3)]
        seg = c.post(
            "/v1/segments",
            json={"name": "beauty", "tree": {"tag": "interests.beauty"}, "purpose": REPORTING},
            headers=auth(keys["admin"]),
        ).json()
        assert seg["members"] == 0
        c.post("/v1/tags/interests.beauty/people", json={"add": ids[:2]}, headers=m)
    run(apply_outbox_job())  # what the ingest processor runs after each batch; no full refresh
    with client() as c:
        page = c.get(f"/v1/segments/{seg['id']}/members", headers=auth(keys["admin"])).json()
        assert {p["id"] for p in page["members"]} == set(ids[:2])
        c.post("/v1/tags/interests.beauty/people", json={"remove": ids[:1]}, headers=m)
    run(apply_outbox_job())
    with client() as c:
        page = c.get(f"/v1/segments/{seg['id']}/members", headers=auth(keys["admin"])).json()
        assert {p["id"] for p in page["members"]} == {ids[1]}


def test_the_policy_check_reads_tags_yaml(tmp_path: Any) -> None:
    from app.tags.taxonomy import check_tags_policy

    assert check_tags_policy(get_settings().policy_dir) == []
    (tmp_path / "tags.yaml").write_text("groups:\n  life:\n    en: Life\n    tags: {}\n", encoding="utf-8")
    (problem,) = check_tags_policy(tmp_path)
    assert problem.file == "tags.yaml" and "en and zh" in problem.problem
