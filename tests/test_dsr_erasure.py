"""Erasure through the inventory: a person ingested through every path there is (events,
identify, an import, a free text, consents, a saved segment, a merge) is erased; nothing of
theirs is left anywhere the residue scan looks, other people are untouched, their
identifiers are refused when sent again (counted and audited), and an erasure racing an
ingestion of the same person answers no 500 and leaves nothing."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import text

from app.access.service import Principal
from app.db import unit_of_work
from app.dsr.certificate import erasure_certificate, verify_certificate
from app.dsr.erasure import ErasureReport, erase_in_store, erase_subject, erasure_plan
from app.dsr.residue import ResidueResult, residue_scan
from app.inventory import Person
from app.settings import get_settings
from app.vault.keyring import key_material
from tests.conftest import Env, run
from tests.helpers import auth, client, grant_marketing, make_keys, sync_db
from tests.test_activation import _activate, _destination
from tests.test_journeys import Outbox, _journey, _tick, _track

REPORTING = "analytics.reporting"
OFFICER = Principal(key_id="test-officer", role="compliance", name="officer")
ALICE = {
    "email": "alice.liddell@example.com",
    "phone": "+14155550123",
    "user_id": "alice-1",
    "anonymous_id": "anon-alice",
    "device_id": "dev-alice-77",
    "external:crm_id": "crm-alice-9",
}
BOB = {"email": "bob.builder@example.org", "phone": "+14155550188", "user_id": "bob-1"}


@pytest.fixture
def dsr_env(env: Env, monkeypatch: pytest.MonkeyPatch) -> Env:
    return with_dsr_dirs(env, monkeypatch)


def with_dsr_dirs(env: Env, monkeypatch: pytest.MonkeyPatch) -> Env:
    """Imports and access packages in the test's folder; segment counts shown exactly."""
    monkeypatch.setenv("CONSENTRY_DSR_EXPORT_DIR", str(env.tmp / "exports"))
    monkeypatch.setenv("CONSENTRY_IMPORT_DIR", str(env.tmp / "imports"))
    monkeypatch.setenv("CONSENTRY_SEGMENT_MIN_COUNT", "0")
    monkeypatch.setenv("CONSENTRY_ACTIVATION_DIR", str(env.tmp / "activation"))
    get_settings.cache_clear()
    return env


def _lookup(c: TestClient[Any], admin: str, kind: str, value: str) -> list[str]:
    r = c.post("/v1/profiles/lookup", json={"kind": kind, "value": value}, headers=auth(admin))
    assert r.status_code == 200, r.text
    return [p["id"] for p in r.json()["profiles"]]


def _import(c: TestClient[Any], ingest: str, lines: list[str]) -> None:
    body = ("\n".join(lines) + "\n").encode()
    r = c.post("/v1/imports", files={"file": ("crm.ndjson", body, "application/x-ndjson")}, auth=(ingest, ""))
    assert r.status_code == 202, r.text
    for _ in range(200):
        job = c.get(f"/v1/imports/{r.json()['id']}", auth=(ingest, "")).json()
        if job["status"] in ("done", "failed"):
            break
        time.sleep(0.05)
    assert job["status"] == "done", job


def _populate(c: TestClient[Any], keys: dict[str, str]) -> dict[str, str]:
    """Alice through every path, Bob through most; returns their surviving profile ids."""
    s = (keys["ingest"], "")
    # an anonymous visitor on a device, later identified: two profiles merged into one
    anon = {"anonymousId": ALICE["anonymous_id"], "event": "Product Viewed", "properties": {"sku": "hat-1"}}
    anon["context"] = {"device": {"id": ALICE["device_id"]}}
    assert c.post("/v1/track", json=anon, auth=s).status_code == 200
    first = {"userId": "alice-1", "traits": {"email": ALICE["email"]}}
    assert c.post("/v1/identify", json=first, auth=s).status_code == 200
    link = {"userId": "alice-1", "anonymousId": ALICE["anonymous_id"], "traits": {"plan": "pro", "country": "DE"}}
    assert c.post("/v1/identify", json=link, auth=s).status_code == 200
    order = {"userId": "alice-1", "event": "Order Completed", "properties": {"total": 42, "category": "hats"}}
    assert c.post("/v1/track", json=order, auth=s).status_code == 200
    bob = {"userId": "bob-1", "traits": {"email": BOB["email"], "phone": BOB["phone"], "plan": "pro", "country": "DE"}}
    assert c.post("/v1/identify", json=bob, auth=s).status_code == 200
    assert c.post("/v1/track", json={"userId": "bob-1", "event": "Order Completed"}, auth=s).status_code == 200
    _import(
        c,
        keys["ingest"],
        [
            f'{{"user_id": "alice-1", "phone": "{ALICE["phone"]}", "first_name": "Alice", '
            f'"crm_id": "{ALICE["external:crm_id"]}"}}',
            '{"user_id": "bob-1", "first_name": "Bob"}',
        ],
    )
    note = f"Please call me back on {ALICE['phone']} or write to {ALICE['email']}, thanks Alice"
    body = {"text": note, "channel": "chat", "author": {"user_id": "alice-1"}}
    assert c.post("/v1/texts", json=body, auth=s).status_code == 201
    body = {"text": f"Bob here, mail {BOB['email']}", "channel": "chat", "author": {"user_id": "bob-1"}}
    assert c.post("/v1/texts", json=body, auth=s).status_code == 201
    ids = {"alice": _lookup(c, keys["admin"], "email", ALICE["email"])[0]}
    ids["bob"] = _lookup(c, keys["admin"], "email", BOB["email"])[0]
    for pid in ids.values():
        grant_marketing(c, keys["compliance"], pid)
    m = auth(keys["marketer"])
    seg = c.post(
        "/v1/segments",
        json={"name": "Pros", "tree": {"trait": "plan", "eq": "pro"}, "purpose": REPORTING},
        headers=auth(keys["admin"]),
    )
    assert seg.status_code == 201, seg.text
    assert seg.json()["members"] == 2
    ids["segment"] = seg.json()["id"]
    # the marketers send the same people to a CRM file (activation)
    pros = c.post("/v1/segments", json={"name": "Pros to CRM", "tree": {"trait": "plan", "eq": "pro"}}, headers=m)
    assert pros.status_code == 201, pros.text
    ids["to_crm"] = pros.json()["id"]
    dest = _destination(c, keys, kind="file", config={"format": "ndjson", "directory": "crm"})
    run_ = _activate(c, keys, ids["to_crm"], dest["id"])
    assert run_["status"] == "done", run_
    ids["run"] = run_["id"]
    return ids


def _erase(root: str, request_id: str = "req-erase-1") -> ErasureReport:
    async def go() -> ErasureReport:
        async with unit_of_work() as s:
            return await erase_subject(s, OFFICER, root, request_id)

    return run(go())


def _scan(ids: tuple[str, ...], identifiers: dict[str, str]) -> ResidueResult:
    async def go() -> ResidueResult:
        async with unit_of_work() as s:
            return await residue_scan(s, list(identifiers.items()), ids)

    return run(go())


def _plan(root: str) -> dict[str, dict[str, int]]:
    async def go() -> dict[str, dict[str, int]]:
        async with unit_of_work() as s:
            return await erasure_plan(s, root)

    return run(go())


def _count(sql: str, **params: Any) -> int:
    with sync_db() as db:
        return int(db.execute(text(sql), params).scalar() or 0)


def _origins(root: str) -> tuple[str, ...]:
    with sync_db() as db:
        q = text("SELECT id FROM profile WHERE id = :p OR merged_into = :p ORDER BY id")
        return tuple(r[0] for r in db.execute(q, {"p": root}))


def _bob_state(c: TestClient[Any], keys: dict[str, str], bob: str) -> dict[str, Any]:
    view = c.get(f"/v1/profiles/{bob}", headers=auth(keys["compliance"]))
    assert view.status_code == 200, view.text
    v = view.json()
    return {
        "traits": v["traits"],
        "identities": sorted((i["kind"], i["value"]) for i in v["identities"]),
        "events": _count("SELECT count(*) FROM event WHERE profile_id = :p", p=bob),
        "texts": _count("SELECT count(*) FROM text_record WHERE profile_id = :p", p=bob),
        "consents": _count("SELECT count(*) FROM consent_record WHERE profile_id = :p", p=bob),
    }


def test_a_person_ingested_every_way_is_erased_and_nothing_of_theirs_is_left(dsr_env: Env) -> None:
    keys = make_keys()
    with client() as c:
        ids = _populate(c, keys)
        _journey(c, keys, "abandoned_cart", {"hours": 2})  # a timer due to each of them
        for uid in ("alice-1", "bob-1"):
            _track(c, keys, uid, "Product Added", datetime.now(UTC) - timedelta(minutes=5))
        assert _tick(Outbox(), datetime.now(UTC))["timers"] == 2
        origins = _origins(ids["alice"])
        assert len(origins) == 2  # the anonymous visitor was merged in
        bob_before = _bob_state(c, keys, ids["bob"])
        before = _scan(origins, ALICE)  # before: the scan sees her, in the stores and in the bytes
        assert before.stores["ingest"] and not before.clean
        places = {f["where"] for f in before.findings if f["what"] == "blind index"}
        assert places & {"database file", "database WAL", "table identifier"}, before.findings
        assert {f["where"] for f in before.findings if f["what"] == "profile id"} >= {"table event", "table profile"}

    plan = _plan(ids["alice"])
    assert plan["journeys"] == {"journey_timer": 1}
    assert plan["ingest"]["event"] == 6 and plan["identity"]["identifier"] == len(ALICE)
    assert plan["texts"]["text_record"] == 1 and plan["segments"]["segment_member"] == 2
    assert plan["activation"] == {"activation_recipient": 1}
    assert plan["consent"]["consent_record"] == 1 and plan["vault"]["subject_key"] == 2
    assert plan["ledger"] == {}

    report = _erase(ids["alice"])
    assert report.complete, report.failed
    assert report.keys_shredded == 2
    assert [n["outcome"] for n in report.notices] == ["erased"]  # her line left the CRM file
    assert sum(report.suppressed.values()) == len(ALICE)
    assert report.removed["ingest"] >= 4 and report.removed["identity"] >= len(ALICE)
    if dsr_env.sqlite_path is not None:
        assert report.sqlite == {"secure_delete": True, "wal_truncated": True}

    residue = _scan(origins, {**ALICE, "first_name": "Alice"})
    assert residue.clean, residue.to_json()
    assert "suppressed_identifier" in residue.skipped
    assert residue.scanned["tables"] > 10
    if dsr_env.sqlite_path is not None:
        assert residue.scanned["bytes"] >= dsr_env.sqlite_path.stat().st_size
    assert _plan_gone(ids["alice"])

    async def certify() -> dict[str, Any]:
        async with unit_of_work() as s:
            return await erasure_certificate(s, report, residue)

    cert = run(certify())
    assert cert["body"]["residue_scan"]["clean"] is True
    assert cert["body"]["undecryptable"]["master_versions"] == [1]
    from audit.chain import canonical_json

    public = key_material(get_settings()).signing_key.public_key()
    assert verify_certificate(canonical_json(cert["body"]), cert["signature"], public)
    assert not verify_certificate(canonical_json({**cert["body"], "kind": "access"}), cert["signature"], public)

    with client() as c:
        for kind, value in ALICE.items():
            assert _lookup(c, keys["admin"], kind, value) == [], kind
        assert _bob_state(c, keys, ids["bob"]) == bob_before
        assert _lookup(c, keys["admin"], "email", BOB["email"]) == [ids["bob"]]
        members = c.get(f"/v1/segments/{ids['segment']}/members", headers=auth(keys["admin"])).json()
        assert [m["id"] for m in members["members"]] == [ids["bob"]]
        crm = (dsr_env.tmp / "activation" / "crm" / f"{ids['run']}.ndjson").read_text()
        assert BOB["email"] in crm and ALICE["email"] not in crm

        # she comes back through the front door: refused, counted and audited, nothing stored
        s = (keys["ingest"], "")
        again = {"userId": "someone-new", "traits": {"email": ALICE["email"].upper(), "plan": "pro"}}
        assert c.post("/v1/identify", json=again, auth=s).status_code == 200
        assert c.post("/v1/track", json={"anonymousId": ALICE["anonymous_id"], "event": "X"}, auth=s).status_code == 200
        assert _lookup(c, keys["admin"], "email", ALICE["email"]) == []
        assert _lookup(c, keys["admin"], "user_id", "someone-new") == []
        entries = c.get("/v1/audit/entries?limit=1000", headers=auth(keys["auditor"])).json()["entries"]
        refused = [e for e in entries if e["action"] == "ingest.suppressed"]
        assert sum(e["details"]["refused"] for e in refused) == 2
        assert any(e["action"] == "dsr.erasure" and e["subject_id"] == ids["alice"] for e in entries)
    assert _count("SELECT sum(refused) FROM suppressed_identifier") == 2
    assert _scan(origins, ALICE).clean


def _plan_gone(root: str) -> bool:
    from app.errors import NotFound

    try:
        _plan(root)
    except NotFound:
        return True
    return False


def test_one_store_can_be_erased_again_on_its_own(dsr_env: Env) -> None:
    keys = make_keys()
    with client() as c:
        ids = _populate(c, keys)
    person = Person(ids["alice"], (ids["alice"],))

    async def texts_only() -> int:
        async with unit_of_work() as s:
            return await erase_in_store(s, person, "texts")

    assert run(texts_only()) == 4  # the text and its vault entries (phone, email, name)
    assert _count("SELECT count(*) FROM text_record WHERE profile_id = :p", p=ids["alice"]) == 0
    assert _count("SELECT count(*) FROM event WHERE profile_id = :p", p=ids["alice"]) > 0
    assert run(texts_only()) == 0


def test_erasure_while_the_same_person_is_being_ingested(dsr_env: Env) -> None:
    keys = make_keys()
    statuses: list[int] = []
    stop = threading.Event()
    with client() as c:
        ids = _populate(c, keys)
        origins = _origins(ids["alice"])

        def ingest() -> None:
            n = 0
            while not stop.is_set() and n < 200:
                n += 1
                body = {
                    "batch": [
                        {"type": "track", "userId": "alice-1", "event": "Page Viewed", "properties": {"n": n}},
                        {"type": "identify", "userId": "alice-1", "traits": {"email": ALICE["email"]}},
                    ]
                }
                statuses.append(c.post("/v1/batch", json=body, auth=(keys["ingest"], "")).status_code)

        worker = threading.Thread(target=ingest)
        worker.start()
        time.sleep(0.3)
        report = _erase(ids["alice"], "req-race")
        time.sleep(0.3)
        stop.set()
        worker.join(60)
        assert report.complete, report.failed
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        for kind, value in ALICE.items():
            assert _lookup(c, keys["admin"], kind, value) == [], kind
    assert _scan(origins, ALICE).clean
    assert _count("SELECT count(*) FROM profile WHERE id IN (SELECT profile_id FROM event)") == _count(
        "SELECT count(DISTINCT profile_id) FROM event"
    )


def test_an_erased_persons_access_packages_go_with_them(dsr_env: Env) -> None:
    from app.dsr.access_package import build_access_package

    keys = make_keys()
    with client() as c:
        ids = _populate(c, keys)

    async def build(root: str, rid: str) -> Path:
        async with unit_of_work() as s:
            return (await build_access_package(s, OFFICER, root, rid)).path

    mine, theirs = run(build(ids["alice"], "req-a")), run(build(ids["bob"], "req-b"))
    report = _erase(ids["alice"])
    assert report.packages_deleted == 1
    assert not mine.exists() and theirs.exists()
