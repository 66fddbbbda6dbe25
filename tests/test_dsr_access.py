"""The access package: everything held about one person, from every path, across the
profiles merged into them, and nothing about anyone else; valid against its published
schema, with CSV copies, behind an expiring token, deleted by the purge job."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.db import unit_of_work
from app.dsr.access_package import AccessPackage, build_access_package, open_package, purge_packages
from app.errors import NotFound
from tests.conftest import Env, run
from tests.helpers import auth, client, make_keys
from tests.test_dsr_erasure import ALICE, BOB, OFFICER, _origins, _populate, with_dsr_dirs

SCHEMA = Path(__file__).resolve().parent.parent / "app" / "dsr" / "access_package.schema.json"


@pytest.fixture
def dsr_env(env: Env, monkeypatch: pytest.MonkeyPatch) -> Env:
    return with_dsr_dirs(env, monkeypatch)


def _build(root: str, request_id: str = "req-access-1") -> AccessPackage:
    async def go() -> AccessPackage:
        async with unit_of_work() as s:
            return await build_access_package(s, OFFICER, root, request_id)

    return run(go())


def _files(path: Path) -> dict[str, str]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name).decode() for name in z.namelist()}


def test_the_package_holds_exactly_the_persons_data_from_every_path(dsr_env: Env) -> None:
    keys = make_keys()
    with client() as c:
        ids = _populate(c, keys)
        bob_profile = c.get(f"/v1/profiles/{ids['bob']}", headers=auth(keys["compliance"])).json()
    origins = _origins(ids["alice"])
    pkg = _build(ids["alice"])
    assert pkg.path.exists() and pkg.path.stat().st_mode & 0o777 == 0o600
    files = _files(pkg.path)
    body = json.loads(files["package.json"])
    data = body["data"]

    import jsonschema_rs

    jsonschema_rs.validator_for(json.loads(SCHEMA.read_text())).validate(body)
    assert json.loads(files["access_package.schema.json"]) == json.loads(SCHEMA.read_text())

    assert body["subject"] == {"profile_id": ids["alice"], "merged_profiles": [o for o in origins if o != ids["alice"]]}
    assert sorted((i["kind"], i["value"]) for i in data["identity"]["identifiers"]) == sorted(ALICE.items())
    fields = {f["name"]: f["value"] for f in data["profiles"]["personal_fields"]}
    assert fields["email"] == ALICE["email"] and fields["phone"] == ALICE["phone"] and fields["firstName"] == "Alice"
    events = data["ingest"]["events"]
    assert len(events) == 5
    assert {e["name"] for e in events if e["type"] == "track"} == {"Product Viewed", "Order Completed"}
    viewed = next(e for e in events if e["name"] == "Product Viewed")  # from the merged-in visitor
    assert viewed["anonymousId"] == ALICE["anonymous_id"] and viewed["context"]["device"]["id"] == ALICE["device_id"]
    [note] = data["texts"]["texts"]
    assert ALICE["email"] in note["text"] and ALICE["phone"] in note["text"]  # PII restored
    assert [r["state"] for r in data["consent"]["consent_history"]] == ["granted"]
    assert [r["consentReceiptID"] for r in body["consent_receipts"]] == [
        r["id"] for r in data["consent"]["consent_history"]
    ]
    assert sorted(m["segment_id"] for m in data["segments"]["segments"]) == sorted([ids["segment"], ids["to_crm"]])
    records = data["ledger"]["processing_records"]
    assert {"ingest.events", "consent.record"} <= {r["action"] for r in records} or len(records) > 5
    [sent] = body["activations"]["recipients"]
    assert (sent["run_id"], sent["destination"], sent["status"]) == (ids["run"], "CRM", "sent")
    assert sent["proof"]["leaf"]["person"] in origins and sent["proof"]["tree_size"] == 2
    assert info_destinations(body) == ["CRM"]

    info = body["article_15"]
    assert {p["purpose"] for p in info["purposes"]} >= {"essential.service", "analytics.reporting"}
    assert info["retention"]["by_category_days"]["user.behavior"] == 730
    assert "test-source" in info["sources"]
    assert "marketing.advertising.first_party.targeted" in info["automated_decisions"]["profiling_purposes"]

    everything = "\n".join(files.values())
    for value in [*BOB.values(), ids["bob"], "Bob"]:
        assert value not in everything, value
    for ident in bob_profile["identities"]:
        assert ident["value"] not in everything

    events_csv = list(csv.DictReader(io.StringIO(files["csv/ingest.events.csv"])))
    assert len(events_csv) == 5
    assert json.loads(files["manifest.json"])["profile_ids"] == sorted(origins)


def info_destinations(body: dict[str, Any]) -> list[str]:
    return list(body["article_15"]["recipients"]["destinations"])


def test_the_link_expires_and_the_purge_job_deletes_the_package(dsr_env: Env) -> None:
    keys = make_keys()
    with client() as c:
        ids = _populate(c, keys)
    pkg = _build(ids["bob"], "req-b")

    async def fetch(token: str) -> Path:
        async with unit_of_work() as s:
            return await open_package(s, token)

    assert run(fetch(pkg.token)) == pkg.path
    with pytest.raises(NotFound):
        run(fetch("not-a-token"))
    assert pkg.expires_at - datetime.now(UTC) > timedelta(days=6)

    async def purge(at: datetime) -> int:
        async with unit_of_work() as s:
            return await purge_packages(s, at)

    assert run(purge(datetime.now(UTC))) == 0 and pkg.path.exists()
    assert run(purge(pkg.expires_at + timedelta(seconds=1))) == 1
    assert not pkg.path.exists()
    with pytest.raises(NotFound):
        run(fetch(pkg.token))


def test_a_package_names_nobody_else_in_the_ledger(dsr_env: Env) -> None:
    from app.dsr.access_package import OTHER, redact_others

    mine = ("11111111-1111-4111-8111-111111111111",)
    other = "22222222-2222-4222-8222-222222222222"
    details: Any = {"merged": [mine[0], other], "note": f"from {other}"}
    assert redact_others(details, mine) == {"merged": [mine[0], OTHER], "note": f"from {OTHER}"}


def test_each_event_says_which_identifier_linked_it_and_flags_a_shared_device(dsr_env: Env) -> None:
    keys = make_keys()
    s = (keys["ingest"], "")
    tablet = {"device": {"id": "family-tablet-1"}}
    with client() as c:
        alice = {"userId": "alice-1", "traits": {"email": ALICE["email"]}, "context": tablet}
        assert c.post("/v1/identify", json=alice, auth=s).status_code == 200
        assert c.post("/v1/identify", json={"userId": "bob-1", "traits": {"plan": "pro"}}, auth=s).status_code == 200
        # Bob on Alice's tablet: the tablet is not linked to him (a shared device), the event is his
        shared = {"userId": "bob-1", "event": "Product Viewed", "context": tablet}
        assert c.post("/v1/track", json=shared, auth=s).status_code == 200
        assert c.post("/v1/track", json={"userId": "bob-1", "event": "Order Completed"}, auth=s).status_code == 200
        r = c.post("/v1/profiles/lookup", json={"kind": "user_id", "value": "bob-1"}, headers=auth(keys["admin"]))
        bob = r.json()["profiles"][0]["id"]
        r = c.post("/v1/profiles/lookup", json={"kind": "user_id", "value": "alice-1"}, headers=auth(keys["admin"]))
        alice_id = r.json()["profiles"][0]["id"]

    body = json.loads(_files(_build(bob, "req-bob").path)["package.json"])
    import jsonschema_rs

    jsonschema_rs.validator_for(json.loads(SCHEMA.read_text())).validate(body)
    links = {
        e.get("name") or e["type"]: (e["identified_by"], e["shared_device"]) for e in body["data"]["ingest"]["events"]
    }
    assert links == {
        "identify": (["user_id"], False),
        "Product Viewed": (["user_id"], True),
        "Order Completed": (["user_id"], False),
    }
    body = json.loads(_files(_build(alice_id, "req-alice").path)["package.json"])
    [event] = body["data"]["ingest"]["events"]
    assert (event["identified_by"], event["shared_device"]) == (["device_id", "email", "user_id"], False)
    files = _files(_build(bob, "req-bob-2").path)
    rows = list(csv.DictReader(io.StringIO(files["csv/ingest.events.csv"])))
    assert sorted(r["shared_device"] for r in rows) == ["false", "false", "true"]
