"""Non-negotiable 1: no plaintext personal data in the database or the logs."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text

from app.db import is_sqlite
from app.settings import get_settings
from tests.conftest import Env
from tests.helpers import auth, client, make_keys, sync_db

PEOPLE = [
    {"email": "Wang.Fang@Example.cn", "phone": "+86 138 1234 5678", "name": "王芳", "birthday": "1990-03-14"},
    {"email": "jsmith77@example.com", "phone": "(415) 555-0199", "firstName": "Jonathan", "lastName": "Smithers"},
    {"email": "li.lei@mail.example.org", "phone": "13912345678", "name": "李雷", "address": {"city": "杭州市西湖区"}},
]
# every form a value could be stored in: as sent, normalised, and the digits alone
NEEDLES = [
    "wang.fang@example.cn",
    "Wang.Fang@Example.cn",
    "+8613812345678",
    "13812345678",
    "王芳",
    "1990-03-14",
    "jsmith77@example.com",
    "+14155550199",
    "4155550199",
    "Jonathan",
    "Smithers",
    "li.lei@mail.example.org",
    "+8613912345678",
    "13912345678",
    "李雷",
    "杭州市西湖区",
]


def _database_bytes(env: Env) -> bytes:
    if is_sqlite(env.url):
        path = env.sqlite_path
        assert path is not None
        files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-journal")]
        return b"".join(f.read_bytes() for f in files if f.exists())
    chunks = []
    with sync_db() as conn:
        tables = [r[0] for r in conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname='public'"))]
        for t in tables:
            for (row,) in conn.execute(text(f'SELECT row_to_json(x)::text FROM "{t}" x')):
                chunks.append(row.encode())
    return b"\n".join(chunks)


def test_plaintext_appears_nowhere_in_the_database_or_the_logs(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENTRY_DEFAULT_REGION", "CN")  # numbers without a country code are Chinese
    get_settings.cache_clear()
    keys = make_keys()
    with client() as c:
        ids = []
        for traits in PEOPLE:
            r = c.post("/v1/profiles", json={"traits": {**traits, "plan": "gold"}}, headers=auth(keys["admin"]))
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        # reads, lookups and a rejected write all pass through the logs
        for pid in ids:
            assert c.get(f"/v1/profiles/{pid}", headers=auth(keys["compliance"])).status_code == 200
        assert (
            c.post(
                "/v1/profiles/lookup", json={"email": "WANG.FANG@example.cn"}, headers=auth(keys["marketer"])
            ).status_code
            == 200
        )
        bad = c.post(
            "/v1/profiles",
            json={"traits": {"email": "jsmith77@example.com", "phone": "Jonathan"}},
            headers=auth(keys["admin"]),
        )
        assert bad.status_code == 422
        # a careless log call with personal data in it is scrubbed too
        logging.getLogger("consentry.test").warning(
            "customer %s called from %s", "li.lei@mail.example.org", "+86 139 1234 5678"
        )

        # events (traits, context with IP and user agent) and free text carry personal data too
        batch = [
            {
                "type": "identify",
                "userId": "np-1",
                "traits": {"email": "events.only@example.org", "name": "Theodora Quist"},
                "context": {"ip": "198.51.100.77", "userAgent": "Mozilla/5.0 (QuistPhone)"},
            },
            {
                "type": "track",
                "userId": "np-1",
                "event": "Viewed",
                "properties": {"contact_email": "prop.mail@example.org"},
            },
        ]
        assert c.post("/v1/batch", json={"batch": batch}, auth=(keys["ingest"], "")).json()["accepted"] == 2
        text_body = {"text": "我是赵敏，电话13700001111，my mail is chat.mail@example.org", "channel": "chat"}
        assert c.post("/v1/texts", json=text_body, auth=(keys["ingest"], "")).status_code == 201

    # sanity: the values really were stored (decrypted read works) and logs were written
    stored = _database_bytes(env)
    assert b"gold" in stored
    logs = env.log_file.read_bytes()
    assert b'"request"' in logs and b"[EMAIL]" in logs and b"[PHONE]" in logs

    for needle in NEEDLES:
        raw = needle.encode("utf-8")
        assert raw not in stored, f"{needle!r} found in the database"
        assert raw.lower() not in stored.lower(), f"{needle!r} found in the database"
        assert raw not in logs, f"{needle!r} found in the logs"
