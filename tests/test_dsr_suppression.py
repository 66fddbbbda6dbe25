"""Re-ingestion of an erased person is refused on every way in: events (single, batch, through
the inbox processor, with consent signals), imports, free texts and consent records. A refused
message stores nothing, is counted on its suppression entry and recorded (``ingest.suppressed``),
and the sender sees the same answer as for anyone else (an ingest key learns nobody's erasure).
The list keeps matching after the master key is rotated and the old version retired."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import text

from app.access.service import Principal
from app.db import unit_of_work
from app.dsr.erasure import erase_subject
from app.ingest.processor import drain
from app.settings import get_settings
from app.vault import keyring
from tests.conftest import Env, run
from tests.helpers import MARKETING, auth, client, make_keys, sync_db

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
        assert [(d["source"], d["refused"], d["kinds"]) for d in refused] == [("test-source", 2, ["email", "user_id"])]
    assert _count("SELECT sum(refused) FROM suppressed_identifier") == 2


def test_events_of_an_erased_person_are_refused_by_the_inbox_processor(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = make_keys()
    with client() as c:
        _erased_carol(c, keys)
        monkeypatch.setenv("CONSENTRY_INGEST_WAIT", "0")  # accepted now, stored later by the processor
        get_settings.cache_clear()
        consent = {"consentManagement": {"deniedConsentIds": ["marketing"], "allowedConsentIds": ["analytics"]}}
        batch = [
            {"type": "identify", "userId": "someone-new", "traits": {"email": CAROL["email"]}},
            {"type": "track", "anonymousId": CAROL["anonymous_id"], "event": "Product Viewed", "context": consent},
            {
                "type": "page",
                "userId": CAROL["user_id"],
                "name": "Home",
                "context": {"consent": {"categoryPreferences": {}}},
            },
            {"type": "identify", "userId": "erin-3", "traits": {"plan": "pro"}, "context": consent},
        ]
        signals_before = _count("SELECT count(*) FROM consent_signal")
        r = c.post("/v1/batch", json={"batch": batch}, auth=(keys["ingest"], ""), headers={"Sec-GPC": "1"})
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 4  # the same answer as for anyone
        assert run(drain()) >= 1
        assert len(_lookup(c, keys["admin"], "user_id", "erin-3")) == 1
        _nothing_of_carol(c, keys)
        assert _lookup(c, keys["admin"], "user_id", "someone-new") == []
        # Erin's consent signal and record are stored, nothing of Carol's
        assert _count("SELECT count(*) FROM consent_signal") == signals_before + 2  # Erin's consentManagement, GPC
        assert _count("SELECT count(DISTINCT profile_id) FROM consent_record") == 1
        assert _count("SELECT count(*) FROM event") == 1  # Erin's identify (Carol's first one was erased)
        assert [d["refused"] for d in _refusals(c, keys)] == [3]
    assert _count("SELECT sum(refused) FROM suppressed_identifier") == 3


def test_import_rows_of_an_erased_person_are_refused(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENTRY_IMPORT_DIR", str(env.tmp / "imports"))
    get_settings.cache_clear()
    keys = make_keys()
    with client() as c:
        _erased_carol(c, keys)
        lines = [
            json.dumps({"user_id": "frank-4", "first_name": "Frank"}),
            json.dumps({"email": CAROL["email"], "first_name": "Carol", "crm_id": "crm-carol-2"}),
            json.dumps({"user_id": CAROL["user_id"], "plan": "pro"}),
        ]
        body = ("\n".join(lines) + "\n").encode()
        r = c.post(
            "/v1/imports", files={"file": ("crm.ndjson", body, "application/x-ndjson")}, auth=(keys["ingest"], "")
        )
        assert r.status_code == 202, r.text
        for _ in range(400):
            job = c.get(f"/v1/imports/{r.json()['id']}", auth=(keys["ingest"], "")).json()
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert job["status"] == "done", job
        assert len(_lookup(c, keys["admin"], "user_id", "frank-4")) == 1
        _nothing_of_carol(c, keys)
        assert _lookup(c, keys["admin"], "external:crm_id", "crm-carol-2") == []
        assert sum(d["refused"] for d in _refusals(c, keys)) == 2


def test_consents_for_an_erased_persons_profile_are_refused(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        pid = _erased_carol(c, keys)
        body = {"consents": [{"profile_id": pid, "purpose": MARKETING, "state": "granted", "method": "form"}]}
        r = c.post("/v1/consents", json=body, headers=auth(keys["compliance"]))
        assert r.status_code == 404, r.text
        assert r.json()["invalid-params"][0]["name"] == "consents[0].profile_id" and pid not in r.text
        r = c.post("/v1/consents", json={"flags": {pid: {"restricted": True}}}, headers=auth(keys["compliance"]))
        assert r.status_code == 404, r.text
    assert _count("SELECT count(*) FROM consent_record") == 0
    assert _count("SELECT count(*) FROM privacy_flag") == 0


def test_the_list_still_matches_after_the_master_key_is_rotated_and_retired(env: Env) -> None:
    from app.cli import _keys_rotate

    keys = make_keys()
    with client() as c:
        _erased_carol(c, keys)
    assert run(_keys_rotate()) == 0  # a new master version; every wrapped key re-wrapped under it
    ring_file = env.key_dir / "master-keys.json"
    ring = json.loads(ring_file.read_text())
    del ring["keys"]["1"]  # version 1 retired, as the erasure certificate tells the controller to
    ring_file.write_text(json.dumps(ring))
    keyring._loaded.clear()
    with client() as c:
        s = (keys["ingest"], "")
        again = {"userId": "carol-returns", "traits": {"email": CAROL["email"]}}
        assert c.post("/v1/identify", json=again, auth=s).status_code == 200
        body = {"text": "hello again", "channel": "chat", "author": {"user_id": CAROL["user_id"]}}
        assert c.post("/v1/texts", json=body, auth=s).status_code == 201
        _nothing_of_carol(c, keys)
        assert _lookup(c, keys["admin"], "user_id", "carol-returns") == []
        assert [d["refused"] for d in _refusals(c, keys)] == [1, 1]


def test_entries_of_before_the_suppression_key_still_match(env: Env) -> None:
    """Entries hashed under the key derived from a master version (erasures of before the
    suppression key) keep matching while that version is in the ring."""
    from datetime import UTC, datetime

    from app.identity.service import make_ident
    from app.identity.suppression import legacy_key, refuse_suppressed, suppression_digest
    from app.profiles.service import VaultContext

    ctx = VaultContext.from_settings()
    version, master = ctx.keys.master.current()
    digest = suppression_digest(legacy_key(master), "email", CAROL["email"])
    with sync_db() as db:
        db.execute(
            text(
                "INSERT INTO suppressed_identifier (digest, kind, master_version, suppressed_at, refused) "
                "VALUES (:d, 'email', :v, :t, 0)"
            ),
            {"d": digest, "v": version, "t": datetime.now(UTC)},
        )

    async def check() -> set[Any]:
        async with unit_of_work() as s:
            idents = [make_ident(ctx, "email", CAROL["email"]), make_ident(ctx, "email", "someone@example.com")]
            return await refuse_suppressed(s, ctx.keys.master, idents)

    assert run(check()) == {make_ident(ctx, "email", CAROL["email"]).key}
