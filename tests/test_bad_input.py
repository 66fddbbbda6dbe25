"""Bad input: each defect gets its 4xx (never a 500), names the field, never echoes the value,
and loses nothing else. The same answers on SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from tests.conftest import Env
from tests.helpers import auth, client, make_keys, sync_db

SECRET = "zq-secret-marker"
NUL = "\x00"


def _now(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).isoformat()


def _problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers["content-type"]
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert SECRET not in r.text
    return body


def _events() -> int:
    with sync_db() as conn:
        return int(conn.execute(text("SELECT count(*) FROM event")).scalar() or 0)


BAD_EVENTS: list[tuple[str, dict[str, Any]]] = [
    # (field the rejection must name, event)
    ("timestamp", {"timestamp": "9999-12-31T23:59:59Z", "sentAt": "0001-01-01T00:00:00Z"}),
    ("timestamp", {"timestamp": "0001-01-01T00:00:00+01:00"}),
    ("timestamp", {"timestamp": "9999-12-31T23:59:59Z"}),
    ("timestamp", {"timestamp": "1999-12-31T23:59:59Z"}),
    ("timestamp", {"timestamp": _now(timedelta(days=2))}),
    ("sentAt", {"timestamp": _now(), "sentAt": "0001-01-01T00:00:00+01:00"}),
    ("messageId", {"messageId": SECRET + "m" * 150}),
    ("event", {"event": f"Signed{NUL}Up {SECRET}"}),
    ("properties", {"properties": {f"plan{NUL}{SECRET}": "pro"}}),
    ("properties", {"properties": {"plan": f"pro{NUL}{SECRET}"}}),
    ("properties", {"properties": {"nested": {"deeper": [f"{NUL}{SECRET}"]}}}),
    ("context", {"context": {"page": {"title": f"{NUL}{SECRET}"}}}),
    ("userId", {"userId": f"u{NUL}{SECRET}"}),
]


def test_a_batch_reports_each_bad_event_by_index_field_and_reason_and_stores_the_rest(env: Env) -> None:
    keys = make_keys()
    batch: list[dict[str, Any]] = [{"type": "track", "userId": "ok-0", "event": "Fine", "messageId": "good-0"}]
    for i, (_field, extra) in enumerate(BAD_EVENTS):
        batch.append({"type": "track", "userId": f"u{i}", "event": "E", "messageId": f"bad-{i}", **extra})
    batch.append(
        {
            "type": "identify",
            "userId": "ok-1",
            "messageId": "good-1",
            "traits": {f"tier{NUL}": "gold"},
        }
    )
    # a device whose clock says 1970 is corrected by sentAt: stored at about the time received
    batch.append(
        {
            "type": "track",
            "userId": "ok-2",
            "event": "Skewed",
            "messageId": "good-2",
            "timestamp": "1970-01-01T00:00:00Z",
            "sentAt": "1970-01-01T00:00:05Z",
        }
    )
    batch.append({"type": "page", "userId": "ok-3", "name": "Home", "messageId": "m" * 128})
    with client() as c:
        r = c.post("/v1/batch", json={"batch": batch}, auth=(keys["ingest"], ""))
        assert r.status_code == 200, r.text
        body = r.json()
    assert SECRET not in r.text and "\\u0000" not in r.text
    rejected = {x["index"]: x for x in body["rejected"]}
    expected = {i + 1: f for i, (f, _e) in enumerate(BAD_EVENTS)}
    expected[len(BAD_EVENTS) + 1] = "traits"
    assert {i: x["field"] for i, x in rejected.items()} == expected
    assert all(x["reason"] for x in rejected.values())
    assert body["accepted"] == 3
    assert _events() == 3
    with sync_db() as conn:
        names = {r[0] for r in conn.execute(text("SELECT name FROM event"))}
        occurred = conn.execute(text("SELECT occurred_at FROM event WHERE name = 'Skewed'")).scalar()
    assert names == {"Fine", "Skewed", "Home"}
    when = occurred if isinstance(occurred, datetime) else datetime.fromisoformat(str(occurred))
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - when).total_seconds()) < 120


def test_single_event_routes_answer_422_naming_the_field_and_store_nothing(env: Env) -> None:
    keys = make_keys()
    w = (keys["ingest"], "")
    with client() as c:
        for field, extra in BAD_EVENTS:
            event = {"userId": "u1", "event": "E", **extra}
            body = _problem(c.post("/v1/track", json=event, auth=w), 422)
            assert body["invalid-params"][0]["name"] == field, (field, body)
        body = _problem(c.post("/v1/identify", json={"userId": "u1", "traits": {f"a{NUL}": SECRET}}, auth=w), 422)
        assert body["invalid-params"][0]["name"] == "traits"
        body = _problem(
            c.post("/v1/group", json={"userId": "u1", "groupId": "g", "traits": {"n": f"{NUL}{SECRET}"}}, auth=w), 422
        )
        assert body["invalid-params"][0]["name"] == "traits"
    assert _events() == 0


def test_an_event_dated_9999_cannot_pin_a_trait(env: Env) -> None:
    keys = make_keys()
    w = (keys["ingest"], "")
    with client() as c:
        pinned = {"type": "identify", "userId": "pin", "traits": {"plan": "pinned"}}
        pinned["timestamp"] = "9999-12-31T00:00:00Z"
        r = c.post("/v1/batch", json={"batch": [pinned]}, auth=w)
        assert r.status_code == 200 and r.json()["rejected"][0]["field"] == "timestamp"
        assert c.post("/v1/identify", json={"userId": "pin", "traits": {"plan": "pro"}}, auth=w).status_code == 200
        assert c.post("/v1/identify", json={"userId": "pin", "traits": {"plan": "team"}}, auth=w).status_code == 200
        found = c.post("/v1/profiles/lookup", json={"kind": "user_id", "value": "pin"}, headers=auth(keys["admin"]))
        assert found.status_code == 200, found.text
        (profile,) = found.json()["profiles"]
    assert profile["traits"]["plan"] == "team"


def _deep(depth: int) -> bytes:
    return b'{"batch": [' + b'{"a": ' * depth + b"1" + b"}" * depth + b"]}"


def test_whole_body_defects_answer_400_with_a_problem_everywhere(env: Env) -> None:
    keys = make_keys()
    w = (keys["ingest"], "")
    invalid_utf8 = b'{"userId": "u1", "event": "\xff\xfe ' + SECRET.encode() + b'"}'
    deep = b"[" * 1000 + b"]" * 1000
    deep_object = _deep(1000)
    json_type = {"Content-Type": "application/json"}
    with client() as c:
        for route in ("/v1/track", "/v1/identify", "/v1/batch"):
            for body in (invalid_utf8, deep, deep_object):
                _problem(c.post(route, content=body, auth=w, headers=json_type), 400)
                zipped = gzip.compress(body)
                _problem(c.post(route, content=zipped, auth=w, headers={**json_type, "Content-Encoding": "gzip"}), 400)
        for route, key in (
            ("/v1/texts", keys["ingest"]),
            ("/v1/profiles", keys["admin"]),
            ("/v1/keys", keys["admin"]),
            ("/v1/pii/scan", keys["compliance"]),
            ("/v1/profiles/lookup", keys["compliance"]),
        ):
            for body in (invalid_utf8, deep, deep_object):
                _problem(c.post(route, content=body, headers={**auth(key), **json_type}), 400)
        # an event nested deeper than events need is rejected by index; the batch's others are kept
        deep_event = b'{"batch": [{"type": "track", "userId": "d", "event": "Deep", "properties": '
        deep_event += b'{"a": ' * 60 + b"1" + b"}" * 60 + b'}, {"type": "track", "userId": "d", "event": "Flat"}]}'
        r = c.post("/v1/batch", content=deep_event, auth=w, headers=json_type)
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 1 and r.json()["rejected"][0]["index"] == 0
        assert "nested" in r.json()["rejected"][0]["reason"]
        # the batch's shared context nested too deep: the whole body is refused, by name
        deep_context = b'{"context": ' + b'{"a": ' * 60 + b"1" + b"}" * 60 + b', "batch": []}'
        body = _problem(c.post("/v1/batch", content=deep_context, auth=w, headers=json_type), 400)
        assert "nested" in body["detail"] and body["invalid-params"][0]["name"] == "context"
        deep_texts = b'{"text": "hi", "channel": "chat", "author": ' + b'{"a": ' * 60 + b"1" + b"}" * 60 + b"}"
        _problem(c.post("/v1/texts", content=deep_texts, auth=w, headers=json_type), 400)
        # malformed JSON stays a 422 naming the body
        r = c.post("/v1/identify", content=b"{not json", auth=w, headers=json_type)
        assert _problem(r, 422)["invalid-params"][0]["name"] == "body"
        # what is fine still goes through
        ok = c.post("/v1/track", json={"userId": "u1", "event": "Still Fine"}, auth=w)
        assert ok.status_code == 200, ok.text
    assert _events() == 2


def test_a_purpose_over_128_characters_is_a_422_naming_it(env: Env) -> None:
    keys = make_keys()
    long_purpose = SECRET + "p" * 200
    with client() as c:
        created = c.post("/v1/profiles", json={"traits": {"plan": "pro"}}, headers=auth(keys["admin"]))
        assert created.status_code in (200, 201), created.text
        pid = created.json()["id"]
        for method, path, key in (
            ("GET", f"/v1/profiles/{pid}", keys["compliance"]),
            ("GET", f"/v1/profiles/{pid}/events", keys["compliance"]),
            ("GET", "/v1/texts/00000000-0000-0000-0000-000000000000", keys["compliance"]),
        ):
            for purpose in (long_purpose, f"analytics{NUL}"):
                r = c.request(method, path, params={"purpose": purpose}, headers=auth(key))
                body = _problem(r, 422)
                assert body["invalid-params"][0]["name"] == "purpose"
        r = c.patch(
            f"/v1/profiles/{pid}", params={"purpose": long_purpose}, json={"traits": {}}, headers=auth(keys["admin"])
        )
        assert _problem(r, 422)["invalid-params"][0]["name"] == "purpose"


def test_nul_characters_in_other_bodies_are_422_naming_the_field(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        for path, body, key, field in (
            ("/v1/texts", {"text": f"hi{NUL}{SECRET}", "channel": "chat"}, keys["ingest"], "text"),
            ("/v1/texts", {"texts": [{"text": f"{NUL}{SECRET}", "channel": "chat"}]}, keys["ingest"], "texts"),
            ("/v1/profiles", {"traits": {"plan": f"x{NUL}{SECRET}"}}, keys["admin"], "traits"),
            ("/v1/keys", {"role": "ingest", "name": f"n{NUL}{SECRET}"}, keys["admin"], "name"),
            ("/v1/pii/scan", {"text": f"a{NUL}{SECRET}"}, keys["compliance"], "text"),
        ):
            body = _problem(c.post(path, json=body, headers=auth(key)), 422)
            assert body["invalid-params"][0]["name"] == field, (path, body)
        # an escaped backslash before "u0000" is no NUL
        ok = c.post("/v1/texts", json={"text": "path C:\\u0000 ok", "channel": "chat"}, auth=(keys["ingest"], ""))
        assert ok.status_code == 201, ok.text
    with sync_db() as conn:
        assert conn.execute(text("SELECT count(*) FROM text_record")).scalar() == 1
