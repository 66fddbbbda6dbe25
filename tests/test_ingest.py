"""The event API: batches with bad events, limits, replays, identity resolution, consent signals."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import text

from app.settings import get_settings
from tests.conftest import Env
from tests.helpers import auth, client, grant_marketing, make_keys, sync_db


def _source_key(c: TestClient[Any], admin: str, source: str, trust: str = "server") -> tuple[str, str]:
    r = c.post("/v1/keys", json={"role": "ingest", "name": source, "trust": trust}, headers=auth(admin))
    assert r.status_code == 201
    return (r.json()["key"], "")


def _lookup(c: TestClient[Any], key: str, **q: str) -> list[dict[str, Any]]:
    r = c.post("/v1/profiles/lookup", json=q, headers=auth(key))
    assert r.status_code == 200, r.text
    return list(r.json()["profiles"])


def test_batch_stores_good_events_and_reports_bad_ones_by_index(env: Env) -> None:
    keys = make_keys()
    batch = [
        {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "a"},
        {"type": "track", "userId": "u1", "messageId": "b"},  # no event name
        {"type": "identify", "anonymousId": "x", "traits": {"email": "not-an-email"}, "messageId": "c"},
        {"type": "teleport", "userId": "u1", "messageId": "d"},
        {"type": "page", "name": "Home", "messageId": "e"},  # neither userId nor anonymousId
        {
            "type": "page",
            "anonymousId": "x",
            "name": "Pricing",
            "messageId": "f",
            "timestamp": "2026-11-25T10:00:00Z",
            "sentAt": "2026-11-25T10:00:05Z",
        },
        {"type": "track", "userId": "u1", "event": "Big", "properties": {"blob": "x" * 40_000}, "messageId": "g"},
    ]
    with client() as c:
        r = c.post("/v1/batch", json={"batch": batch}, auth=(keys["ingest"], ""))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["accepted"] == 2 and body["duplicates"] == 0
        rejected = {x["index"]: x for x in body["rejected"]}
        assert set(rejected) == {1, 2, 3, 4, 6}
        assert rejected[1]["field"] == "event" and rejected[2]["field"] == "traits.email"
        assert rejected[3]["field"] == "type" and rejected[4]["field"] == "userId"
        assert "32768" in rejected[6]["reason"]
        assert "not-an-email" not in r.text

        again = c.post("/v1/batch", json={"batch": batch}, auth=(keys["ingest"], "")).json()
        assert again["accepted"] == 0 and again["duplicates"] == 2  # replay stores nothing twice
    with sync_db() as conn:
        assert conn.execute(text("SELECT count(*) FROM event")).scalar() == 2
        received, occurred = conn.execute(
            text("SELECT received_at, occurred_at FROM event WHERE name = 'Pricing'")
        ).one()
    # skew-corrected: timestamp = receivedAt - (sentAt - timestamp), i.e. 5 s before receipt
    from datetime import datetime

    def ts(v: Any) -> datetime:
        return v if isinstance(v, datetime) else datetime.fromisoformat(str(v))

    assert abs((ts(received) - ts(occurred)).total_seconds() - 5) < 0.01


def test_limits_gzip_and_single_event_errors(env: Env) -> None:
    keys = make_keys()
    w = (keys["ingest"], "")
    with client() as c:
        big = {
            "batch": [
                {"type": "track", "userId": f"u{i}", "event": "E", "properties": {"p": "y" * 20_000}} for i in range(30)
            ]
        }
        r = c.post("/v1/batch", json=big, auth=w)
        assert r.status_code == 413 and r.headers["content-type"].startswith("application/problem+json")
        r = c.post("/v1/track", json={"userId": "u", "event": "E", "properties": {"p": "y" * 40_000}}, auth=w)
        assert r.status_code == 413
        r = c.post("/v1/track", json={"userId": "u"}, auth=w)
        assert r.status_code == 422 and r.json()["invalid-params"][0]["name"] == "event"
        r = c.post("/v1/identify", content=b"{not json", auth=w, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["invalid-params"][0]["name"] == "body"
        payload = gzip.compress(json.dumps({"batch": [{"type": "track", "userId": "g", "event": "Zipped"}]}).encode())
        r = c.post(
            "/v1/batch",
            content=payload,
            auth=w,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        assert r.status_code == 200 and r.json()["accepted"] == 1
        bomb = gzip.compress(b'{"batch": [' + b" " * 2_000_000 + b"]}")
        r = c.post("/v1/batch", content=bomb, auth=w, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413


def test_crm_rows_and_shop_order_with_one_phone_in_three_formats_are_one_profile(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSENTRY_DEFAULT_REGION", "CN")
    get_settings.cache_clear()
    keys = make_keys()
    with client() as c:
        crm, shop = _source_key(c, keys["admin"], "crm"), _source_key(c, keys["admin"], "shop")
        rows = [
            {
                "type": "identify",
                "anonymousId": "crm-row-1",
                "traits": {"crm_id": "C-1", "phone": "138 0013 8000", "name": "张伟"},
            },
            {
                "type": "identify",
                "anonymousId": "crm-row-2",
                "traits": {"crm_id": "C-2", "phone": "+86-138-0013-8000", "loyalty_tier": "gold"},
            },
        ]
        assert c.post("/v1/batch", json={"batch": rows}, auth=crm).json()["accepted"] == 2
        order = {
            "userId": "shop-991",
            "event": "Order Completed",
            "properties": {"total": 599},
            "context": {"traits": {"phone": "+86 (138) 00138000"}},
        }
        assert c.post("/v1/track", json=order, auth=shop).status_code == 200
        by_phone = _lookup(c, keys["compliance"], phone="13800138000")
        assert len(by_phone) == 1
        pid = by_phone[0]["id"]
        for kind, value in (("external:crm_id", "C-1"), ("external:crm_id", "C-2"), ("user_id", "shop-991")):
            assert [p["id"] for p in _lookup(c, keys["compliance"], kind=kind, value=value)] == [pid]
        view = c.get(f"/v1/profiles/{pid}", headers=auth(keys["compliance"])).json()
        assert view["traits"]["name"] == "张伟" and view["traits"]["loyalty_tier"] == "gold"
        assert view["summary"]["events"] == 3
    with sync_db() as conn:
        assert conn.execute(text("SELECT count(*) FROM profile WHERE merged_into IS NULL")).scalar() == 1


def test_shared_device_fuses_nobody_and_the_ledger_says_why(env: Env) -> None:
    keys = make_keys()
    people = [
        {
            "type": "identify",
            "userId": f"member-{i}",
            "context": {"device": {"id": "family-tablet"}},
            "traits": {"firstName": f"Member{i}"},
        }
        for i in range(5)
    ]
    with client() as c:
        for person in people:  # separate requests, as five logins on the tablet would be
            assert c.post("/v1/batch", json={"batch": [person]}, auth=(keys["ingest"], "")).json()["accepted"] == 1
        ids = {_lookup(c, keys["admin"], kind="user_id", value=f"member-{i}")[0]["id"] for i in range(5)}
        assert len(ids) == 5
        entries = c.get(
            "/v1/audit/entries", params={"action": "identity.merge_blocked"}, headers=auth(keys["auditor"])
        ).json()["entries"]
    assert len(entries) == 4
    assert all(e["details"]["via"] == "device_id" and e["details"]["rule"] == "shared_device" for e in entries)
    with sync_db() as conn:
        assert conn.execute(text("SELECT count(*) FROM profile_merge")).scalar() == 0


def test_two_known_profiles_sharing_an_email_merge_with_audit_and_history(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        w = (keys["ingest"], "")
        c.post("/v1/identify", json={"anonymousId": "web-1", "traits": {"email": "sam@example.com"}}, auth=w)
        c.post("/v1/track", json={"anonymousId": "web-1", "event": "Viewed"}, auth=w)
        c.post("/v1/identify", json={"userId": "app-sam", "traits": {"phone": "+14155550123"}}, auth=w)
        older = _lookup(c, keys["admin"], email="sam@example.com")[0]["id"]
        younger = _lookup(c, keys["admin"], kind="user_id", value="app-sam")[0]["id"]
        assert older != younger
        r = c.post("/v1/identify", json={"userId": "app-sam", "traits": {"email": "Sam@Example.com"}}, auth=w)
        assert r.status_code == 200
        merged = _lookup(c, keys["admin"], phone="+1 415 555 0123")
        assert [p["id"] for p in merged] == [older]  # the older profile survives
        merges = c.get(f"/v1/profiles/{older}/merges", headers=auth(keys["admin"])).json()
        assert merges[0]["merged_id"] == younger and merges[0]["via_kind"] == "email"
        view = c.get(f"/v1/profiles/{younger}", headers=auth(keys["compliance"])).json()  # old id still answers
        assert view["id"] == older and view["summary"]["events"] == 4
        assert view["traits"]["phone"] == "+14155550123"
        audit = c.get(
            "/v1/audit/entries", params={"action": "identity.merge", "subject": older}, headers=auth(keys["auditor"])
        ).json()["entries"]
        assert audit[0]["details"] == {
            "merged_profile": younger,
            "via": "email",
            "rule": "shared email",
            "source": "test-source",
        }
    with sync_db() as conn:  # every row now belongs to the survivor and remembers where it came from
        for table in ("event", "identifier", "profile_field"):
            q = f"SELECT count(*) FROM {table} WHERE profile_id = :p"
            assert conn.execute(text(q), {"p": younger}).scalar() == 0
            q = f"SELECT count(*) FROM {table} WHERE origin_id = :p AND profile_id = :o"
            assert conn.execute(text(q), {"p": younger, "o": older}).scalar() >= 1


def test_authoritative_source_wins_over_more_recent_ones(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        crm, web = _source_key(c, keys["admin"], "crm"), _source_key(c, keys["admin"], "web")
        c.post(
            "/v1/identify",
            json={
                "userId": "k1",
                "traits": {"email": "kim@crm.example", "plan": "gold"},
                "timestamp": "2026-01-01T00:00:00Z",
            },
            auth=crm,
        )
        c.post(
            "/v1/identify",
            json={
                "userId": "k1",
                "traits": {"email": "kim@web.example", "plan": "free"},
                "timestamp": "2026-06-01T00:00:00Z",
            },
            auth=web,
        )
        c.post(
            "/v1/identify",
            json={"userId": "k1", "traits": {"plan": "silver"}, "timestamp": "2026-03-01T00:00:00Z"},
            auth=web,
        )
        pid = _lookup(c, keys["admin"], kind="user_id", value="k1")[0]["id"]
        view = c.get(f"/v1/profiles/{pid}", headers=auth(keys["compliance"])).json()
    assert view["traits"]["email"] == "kim@crm.example"  # crm is authoritative for email
    assert view["sources"]["email"]["source"] == "crm"
    assert view["traits"]["plan"] == "free"  # most recent wins for plan; an older event does not overwrite
    assert view["sources"]["plan"]["source"] == "web" and view["sources"]["plan"]["at"].startswith("2026-06-01")


def test_consent_signals_arriving_with_events_are_kept(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        w = (keys["ingest"], "")
        c.post("/v1/track", json={"userId": "c1", "event": "Viewed"}, auth=w, headers={"Sec-GPC": "1"})
        c.post(
            "/v1/page",
            json={
                "userId": "c1",
                "name": "Home",
                "context": {"consent": {"categoryPreferences": {"Advertising": False, "Analytics": True}}},
            },
            auth=w,
        )
        c.post(
            "/v1/page",
            json={
                "userId": "c1",
                "name": "Home",
                "context": {"consentManagement": {"deniedConsentIds": ["marketing"]}},
            },
            auth=w,
        )
        pid = _lookup(c, keys["admin"], kind="user_id", value="c1")[0]["id"]
    with sync_db() as conn:
        rows = conn.execute(
            text("SELECT kind, payload FROM consent_signal WHERE profile_id = :p ORDER BY kind"), {"p": pid}
        ).all()
    kinds = {r[0]: (json.loads(r[1]) if isinstance(r[1], str) else r[1]) for r in rows}
    assert kinds["gpc"] == {"Sec-GPC": "1"}
    assert kinds["segment.consent"]["categoryPreferences"]["Advertising"] is False
    assert kinds["rudderstack.consent"]["deniedConsentIds"] == ["marketing"]


def test_concurrent_batches_introducing_the_same_person_make_one_profile(env: Env) -> None:
    import asyncio

    from app.access.service import Principal
    from app.db import unit_of_work
    from app.ingest.service import ingest_messages
    from app.profiles.service import VaultContext
    from tests.conftest import run

    principal = Principal("k", "ingest", "web", "web")

    async def send(n: int) -> None:
        batch = [
            {"type": "identify", "userId": "same-person", "traits": {"email": "same@example.com"}},
            {"type": "track", "userId": f"other-{n}", "event": "Viewed"},  # an event without traits
            {
                "type": "track",
                "anonymousId": "same-anon",
                "event": "Viewed",
                "context": {"traits": {"email": "same@example.com"}},
            },
        ]
        async with unit_of_work() as session:
            await ingest_messages(session, VaultContext.from_settings(), principal, batch)

    async def both() -> None:
        await asyncio.gather(*(send(n) for n in range(4)))

    run(both())
    with sync_db() as conn:
        rows = conn.execute(text("SELECT kind, count(DISTINCT profile_id) FROM identifier GROUP BY kind")).all()
        live = conn.execute(text("SELECT count(*) FROM profile WHERE merged_into IS NULL")).scalar()
    assert dict(rows) == {"user_id": 5, "email": 1, "anonymous_id": 1}
    assert live == 5  # same-person (with same-anon) plus four others


def test_undeclared_pii_in_event_properties_is_sealed_and_flagged(env: Env) -> None:
    keys = make_keys()
    event = {
        "userId": "p1",
        "event": "Support Requested",
        "properties": {
            "contact_email": "pat@example.com",
            "ref": "13812345678",
            "sku": "BB-23",
            "name": "Air Zoom",
            "qty": 2,
        },
    }
    with client() as c:
        assert c.post("/v1/track", json=event, auth=(keys["ingest"], "")).status_code == 200
        pid = _lookup(c, keys["admin"], kind="user_id", value="p1")[0]["id"]
        grant_marketing(c, keys["compliance"], pid)
        marketer_view = c.get(f"/v1/profiles/{pid}/events", headers=auth(keys["marketer"])).json()["events"][0]
        compliance_view = c.get(f"/v1/profiles/{pid}/events", headers=auth(keys["compliance"])).json()["events"][0]
        entry = c.get(
            "/v1/audit/entries", params={"action": "ingest.events", "subject": pid}, headers=auth(keys["auditor"])
        ).json()["entries"][0]
    assert marketer_view["properties"] == {"sku": "BB-23", "name": "Air Zoom", "qty": 2}
    assert compliance_view["properties"]["contact_email"] == "pat@example.com"
    from app.pii.fields import name_key
    from app.vault.keyring import key_material

    index_key = key_material(get_settings()).index_key
    assert entry["details"]["undeclared_pii"] == sorted(name_key(index_key, n) for n in ("contact_email", "ref"))
    assert "contact_email" not in str(entry)  # a name the client chose never reaches the ledger verbatim
    with sync_db() as conn:
        stored = str(conn.execute(text("SELECT properties FROM event")).scalar())
    assert "pat@example.com" not in stored and "13812345678" not in stored
