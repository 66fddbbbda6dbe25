"""Personal data is sealed wherever it arrives, under whatever name: identify and group
traits under any spelling (English and Chinese), CSV columns, nested properties, phone
numbers inside free text. Nothing of it is stored or logged in plaintext, and the
marketer sees none of it unmasked."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import text

from app.settings import get_settings
from tests.conftest import Env
from tests.helpers import auth, client, grant_marketing, make_keys, sync_db
from tests.test_no_plaintext import _database_bytes

SHAPES_IDENTIFY = {
    "Email": "Shape.Upper@Example.org",
    "lastname": "Quistorff",
    "ssn": "219-09-9999",
    "street": "742 Evergreen Terrace",
    "mobile_phone": "+1 650 253 0111",
    "contact_email": "contact.me@example.org",
    "mobile_number": "+44 20 7946 0321",
    "wechat_openid": "oWx1aBcDeFgHiJkLmNoPqRsTu",
    "crm_id": "CRM-88213377",
    "plan": "gold",
}
SHAPES_CHINESE = {
    "收货人": "欧阳娜娜",
    "手机号": "13987654321",
    "身份证号": "11010519491231002X",
    "收货地址": "浙江省杭州市西湖区文三路477号",
    "邮箱": "ouyang.nana@example.cn",
    "微信号": "nana_wx_2024",
    "生日": "1995-07-21",
}
TRACK = {
    "type": "track",
    "userId": "seal-1",
    "event": "Order Completed",
    "properties": {
        "order_id": "ORD-1001",
        "revenue": 42.5,
        "currency": "EUR",
        "products": [{"product_id": "P-1", "sku": "SKU-9", "name": "Trail Shoe", "price": 42.5, "quantity": 1}],
        "customer": {"email": "nested.deep@example.org", "name": "Ingeborg Vandersloot", "tier": "gold"},
        "note": "please call me on +1 415 555 2671 before delivery",
        "comment": "联系我 18612349876 谢谢",
        "favourite_colour": "teal",
    },
    "context": {"ip": "203.0.113.99", "userAgent": "Mozilla/5.0 (SealPhone)", "locale": "en-US"},
}
GROUP = {
    "type": "group",
    "userId": "seal-1",
    "groupId": "acme",
    "traits": {"plan": "enterprise", "email": "billing.person@example.org", "phone": "+1 212 555 0147"},
}
CSV = (
    "First Name,Last Name,Street Address,SSN,Date of Birth,Email\n"
    "Hieronymus,Blankenfeld,1600 Amphitheatre Parkway,078-05-1120,1971-02-03,hiero@example.org\n"
)
NEEDLES = [
    "shape.upper@example.org",
    "Quistorff",
    "219-09-9999",
    "742 Evergreen",
    "2530111",
    "contact.me@example.org",
    "79460321",
    "7946 0321",
    "oWx1aBcDeFgHiJkLmNoPqRsTu",
    "CRM-88213377",
    "欧阳娜娜",
    "13987654321",
    "11010519491231002X",
    "文三路477号",
    "ouyang.nana@example.cn",
    "nana_wx_2024",
    "1995-07-21",
    "nested.deep@example.org",
    "Vandersloot",
    "5552671",
    "555 2671",
    "18612349876",
    "teal",
    "203.0.113.99",
    "SealPhone",
    "billing.person@example.org",
    "5550147",
    "Hieronymus",
    "Blankenfeld",
    "1600 Amphitheatre",
    "078-05-1120",
    "1971-02-03",
    "hiero@example.org",
]


def _forms(needle: str) -> list[bytes]:
    """The needle as UTF-8 and as JSON escapes it (non-ASCII as \\uXXXX)."""
    return [needle.encode(), json.dumps(needle)[1:-1].encode(), needle.lower().encode()]


def _find(haystack: bytes, needles: list[str]) -> list[str]:
    low = haystack.lower()
    return [n for n in needles if any(f.lower() in low for f in _forms(n))]


def _send_every_shape(c: TestClient[Any], keys: dict[str, str]) -> None:
    w = (keys["ingest"], "")
    batch = [
        {"type": "identify", "userId": "seal-1", "traits": SHAPES_IDENTIFY},
        {"type": "identify", "userId": "seal-2", "traits": SHAPES_CHINESE},
        TRACK,
        GROUP,
    ]
    r = c.post("/v1/batch", json={"batch": batch}, auth=w)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 4 and r.json()["rejected"] == [], r.text
    up = c.post("/v1/imports", files={"file": ("people.csv", CSV.encode(), "text/csv")}, auth=w)
    assert up.status_code == 202, up.text
    for _ in range(200):
        job = c.get(f"/v1/imports/{up.json()['id']}", auth=w).json()
        if job.get("status") in ("done", "failed"):
            break
        time.sleep(0.05)
    assert job["status"] == "done" and job["events_stored"] == 1, job


def _profile(c: TestClient[Any], key: str, **q: str) -> str:
    r = c.post("/v1/profiles/lookup", json=q, headers=auth(key))
    assert r.status_code == 200, r.text
    return str(r.json()["profiles"][0]["id"])


def test_every_shape_is_sealed_in_the_database_and_logs_and_masked_for_marketers(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSENTRY_LOG_LEVEL", "DEBUG")  # statement logs must carry no value even at DEBUG
    get_settings.cache_clear()
    keys = make_keys()
    with client() as c:
        _send_every_shape(c, keys)
        pids = [
            _profile(c, keys["admin"], kind="user_id", value="seal-1"),
            _profile(c, keys["admin"], kind="user_id", value="seal-2"),
            _profile(c, keys["admin"], email="hiero@example.org"),
        ]
        marketer = ""
        compliance = ""
        for pid in pids:
            grant_marketing(c, keys["compliance"], pid)  # so the marketer is shown the (masked) profile
            for path in (f"/v1/profiles/{pid}", f"/v1/profiles/{pid}/events"):
                m = c.get(path, headers=auth(keys["marketer"]))
                assert m.status_code == 200, m.text
                marketer += m.text
                compliance += c.get(path, headers=auth(keys["compliance"])).text
        seal1 = c.get(f"/v1/profiles/{pids[0]}", headers=auth(keys["admin"])).json()
        events = c.get(f"/v1/profiles/{pids[0]}/events", headers=auth(keys["marketer"])).json()["events"]
        seal1_plain = c.get(f"/v1/profiles/{pids[0]}", headers=auth(keys["compliance"])).json()

    stored = _database_bytes(env)
    logs = env.log_file.read_bytes()
    assert b"gold" in stored and b'"request"' in logs
    assert _find(stored, NEEDLES) == [], "found in the database"
    assert _find(logs, NEEDLES) == [], "found in the logs"
    assert _find(marketer.encode(), NEEDLES) == [], "shown unmasked to the marketer"
    # the values were kept: compliance reads them back (traits under their own names, nested properties merged)
    missing = set(NEEDLES) - set(_find(compliance.encode(), NEEDLES))
    assert missing == {"79460321", "5552671"}  # numbers sealed as sent, not normalised
    assert seal1_plain["traits"]["email"] == "shape.upper@example.org"  # "Email" is the email trait
    assert seal1_plain["traits"]["phone"] == "+16502530111" and seal1_plain["traits"]["mobile_number"].endswith("0321")
    # (admin reads masked) masked by category, and ordinary properties stay plain and queryable
    if seal1.get("reveal") == "masked":
        assert seal1["traits"]["email"] == "s***@example.org" and seal1["traits"]["lastName"] == "Q***"
    assert seal1["traits"]["plan"] == "gold"
    order = next(e for e in events if e["name"] == "Order Completed")
    assert order["properties"]["order_id"] == "ORD-1001" and order["properties"]["revenue"] == 42.5
    assert order["properties"]["products"][0] == {
        "product_id": "P-1",
        "sku": "SKU-9",
        "name": "Trail Shoe",
        "price": 42.5,
        "quantity": 1,
    }
    assert order["properties"]["customer"] == {"tier": "gold"}  # the rest of it is personal
    group = next(e for e in events if e["type"] == "group")
    assert group["traits"] == {"plan": "enterprise"}
    # no SQL statement log reached the file, DEBUG included
    for line in logs.decode().splitlines():
        rec = json.loads(line)
        assert not str(rec.get("logger", "")).startswith(("sqlalchemy", "aiosqlite", "asyncpg")), line


def test_compliance_reads_nested_properties_back_whole(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        assert c.post("/v1/batch", json={"batch": [TRACK]}, auth=(keys["ingest"], "")).json()["accepted"] == 1
        pid = _profile(c, keys["admin"], kind="user_id", value="seal-1")
        ev = c.get(f"/v1/profiles/{pid}/events", headers=auth(keys["compliance"])).json()["events"][0]
    assert ev["properties"] == TRACK["properties"]
    assert ev["categories"]["properties.customer.email"] == "user.contact.email"
    assert ev["categories"]["properties.note"] == "user.contact.phone_number"
    assert ev["categories"]["properties.favourite_colour"] == "user.unknown"


def test_an_event_name_carrying_personal_data_is_rejected_without_echoing_it(env: Env) -> None:
    keys = make_keys()
    batch = [
        {"type": "track", "userId": "n1", "event": "Signed up bob.leak@example.org"},
        {"type": "track", "userId": "n1", "event": "Called +86 139 1111 2222"},
        {"type": "page", "userId": "n1", "name": "Profile of 13911112222"},
        {"type": "track", "userId": "n1", "event": "Signed Up", "properties": {"plan": "pro"}},
    ]
    with client() as c:
        r = c.post("/v1/batch", json={"batch": batch}, auth=(keys["ingest"], ""))
        assert r.status_code == 200, r.text
        body = r.json()
        single = c.post("/v1/track", json={**batch[0], "userId": "n2"}, auth=(keys["ingest"], ""))
    assert body["accepted"] == 1
    assert [(x["index"], x["field"]) for x in body["rejected"]] == [(0, "event"), (1, "event"), (2, "name")]
    assert 400 <= single.status_code < 500 and "bob.leak" not in single.text
    assert _find(r.text.encode() + _database_bytes(env), ["bob.leak@example.org", "1111 2222", "13911112222"]) == []


def test_unknown_fields_are_listed_for_review_and_a_decision_applies_from_then_on(env: Env) -> None:
    keys = make_keys()
    w = (keys["ingest"], "")
    first = {
        "type": "track",
        "userId": "r1",
        "event": "Configured",
        "properties": {"favourite_colour": "teal", "zed.person@example.org": True, "shoe_size": 44},
    }
    with client() as c:
        assert c.post("/v1/batch", json={"batch": [first, {**first, "messageId": "m2"}]}, auth=w).status_code == 200
        assert c.get("/v1/fields/review", headers=auth(keys["marketer"])).status_code == 403
        listed = c.get("/v1/fields/review", headers=auth(keys["admin"])).json()
        by_name = {i["name"]: i for i in listed}
        assert by_name["favourite_colour"]["seen"] == 2
        assert by_name["favourite_colour"]["where"] == {"properties": 2}
        assert by_name["shoe_size"]["seen"] == 2
        hidden = by_name[None]  # a personal-looking name is listed by its keyed hash only
        assert len(hidden["key"]) == 32 and "zed.person" not in json.dumps(listed)
        decide = [
            {"name": "Favourite Colour", "decision": "non_personal"},  # any spelling of the name
            {"key": by_name["shoe_size"]["key"], "decision": "user.demographic"},
            {"name": "x", "decision": "not a category"},
        ]
        answers = [c.post("/v1/fields/review", json=d, headers=auth(keys["admin"])) for d in decide]
        assert [a.status_code for a in answers] == [200, 200, 422]
        assert "not a category" not in answers[2].text
        again = {**first, "messageId": "m3", "properties": {"favourite_colour": "ochre", "shoe_size": 45}}
        assert c.post("/v1/track", json=again, auth=w).status_code == 200
        pid = _profile(c, keys["admin"], kind="user_id", value="r1")
        assert pid
        after = c.get("/v1/fields/review", headers=auth(keys["admin"])).json()
        everything = c.get("/v1/fields/review?include_decided=true", headers=auth(keys["admin"])).json()
        ledger = c.get("/v1/audit/entries", params={"action": "fields.review"}, headers=auth(keys["auditor"])).json()
    with sync_db() as conn:
        plain = conn.execute(text("SELECT properties FROM event WHERE message_id = 'm3'")).scalar()
    plain = json.loads(plain) if isinstance(plain, str) else plain
    assert plain == {"favourite_colour": "ochre"}  # declared non-personal: plain; shoe_size sealed
    assert {i["name"] for i in after} == {None}  # only the undecided personal-looking name is left
    assert {i["name"]: i["decision"] for i in everything if i["name"]}["shoe_size"] == "user.demographic"
    assert len(ledger["entries"]) == 2


def test_scheduler_timestamps_survive_the_scrubber_and_detectors_mask_more_than_email_and_phone(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSENTRY_LOG_LEVEL", "DEBUG")
    get_settings.cache_clear()
    with client():
        sched = logging.getLogger("apscheduler.scheduler")
        sched.info("Next wakeup is due at 2026-11-27 10:20:30.123456+00:00 (in 19.998 seconds)")
        sched.debug('Job "tree head (trigger: interval[0:00:20], next run at: 2026-11-27 10:20:50 UTC)" executed')
        logging.getLogger("consentry.test").debug(
            "card %s id %s iban %s ip %s ssn %s",
            "4111 1111 1111 1111",
            "11010519491231002X",
            "GB82 WEST 1234 5698 7654 32",
            "198.51.100.23",
            "219-09-9999",
        )
        logging.getLogger("sqlalchemy.engine.Engine").debug("INSERT INTO t VALUES (?) ('leak.sql@example.org',)")
        logging.getLogger("aiosqlite").debug("executing ('leak.sql@example.org',)")
    logs = env.log_file.read_text()
    assert "2026-11-27 10:20:30.123456+00:00" in logs and "next run at: 2026-11-27 10:20:50 UTC" in logs
    assert "in 19.998 seconds" in logs
    for value in ("4111 1111 1111 1111", "11010519491231002X", "GB82 WEST", "198.51.100.23", "219-09-9999"):
        assert value not in logs
    assert "leak.sql" not in logs
