"""Re-ingestion of an erased person is refused on every way in: events (single, batch, through
the inbox processor, with consent signals), imports, free texts and consent records. A refused
message stores nothing, is counted on its suppression entry and recorded (``ingest.suppressed``),
and the sender sees the same answer as for anyone else (an ingest key learns nobody's erasure).
The list keeps matching after the master key is rotated and the old version retired."""

from __future__ import annotations

from typing import Any

from litestar.testing import TestClient
from sqlalchemy import text

from app.access.service import Principal
from app.db import unit_of_work
from app.dsr.erasure import erase_subject
from tests.conftest import Env, run
from tests.helpers import auth, client, make_keys, sync_db

OFFICER = Principal(key_id="test-officer", role="compliance", name="officer")
CAROL = {"email": "carol.danvers@example.com", "user_id": "carol-7", "anonymous_id": "anon-carol"}


def _count(sql: str, **params: Any) -> int:
    with sync_db() as db:
        return int(db.execute(text(sql), params).scalar() or 0)


def _lookup(c: TestClient[Any], admin: str, kind: str, value: str) -> list[str]:
    r = c.post("/v1/profiles/lookup", json={"kind": kind, "value": value}, headers=auth(admin))
    assert r.status_code == 200, r.text
    return [p["id"] for p in r.json()["profiles"]]


def _erased_carol(c: TestClient[Any], keys: dict[str, str]) -> str:
    """Carol ingested (identify, then a visit linking her anonymous id) and erased."""
    s = (keys["ingest"], "")
    body = {"userId": CAROL["user_id"], "anonymousId": CAROL["anonymous_id"], "traits": {"email": CAROL["email"]}}
    assert c.post("/v1/identify", json=body, auth=s).status_code == 200
    pid = _lookup(c, keys["admin"], "email", CAROL["email"])[0]

    async def erase() -> None:
        async with unit_of_work() as session:
            report = await erase_subject(session, OFFICER, pid, "req-carol")
            assert report.complete, report.failed

    run(erase())
    assert _lookup(c, keys["admin"], "email", CAROL["email"]) == []
    return pid


def _refusals(c: TestClient[Any], keys: dict[str, str]) -> list[dict[str, Any]]:
    entries = c.get("/v1/audit/entries?limit=1000", headers=auth(keys["auditor"])).json()["entries"]
    return [e["details"] for e in entries if e["action"] == "ingest.suppressed"]


def _nothing_of_carol(c: TestClient[Any], keys: dict[str, str]) -> None:
    for kind, value in CAROL.items():
        assert _lookup(c, keys["admin"], kind, value) == [], kind


def test_free_texts_of_an_erased_author_are_refused(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        _erased_carol(c, keys)
        texts_before = _count("SELECT count(*) FROM text_record")
        profiles_before = _count("SELECT count(*) FROM profile")
        s = (keys["ingest"], "")
        body = {
            "texts": [
                {"text": "My order never came", "channel": "chat", "author": {"email": CAROL["email"].upper()}},
                {"text": "Still waiting, mail me", "channel": "ticket", "author": {"user_id": CAROL["user_id"]}},
                {"text": "Loved the hat", "channel": "review", "author": {"user_id": "dave-2"}},
            ]
        }
        r = c.post("/v1/texts", json=body, auth=s)
        assert r.status_code == 201, r.text
        answered = r.json()
        assert [t["redacted"] for t in answered] == [t["text"] for t in body["texts"]]  # the same answer for all
        assert len({t["id"] for t in answered}) == 3
        # only Dave's text (and Dave) are stored
        assert _count("SELECT count(*) FROM text_record") == texts_before + 1
        assert _count("SELECT count(*) FROM profile") == profiles_before + 1
        assert len(_lookup(c, keys["admin"], "user_id", "dave-2")) == 1
        _nothing_of_carol(c, keys)
        refused = _refusals(c, keys)
        assert [(d["source"], d["refused"], d["kinds"]) for d in refused] == [
            ("test-source", 2, ["email", "user_id"])
        ]
    assert _count("SELECT sum(refused) FROM suppressed_identifier") == 2
