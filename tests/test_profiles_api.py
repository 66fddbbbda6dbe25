"""Profiles through HTTP: create, read by role, lookup, errors, and what the ledger records."""

from __future__ import annotations

from sqlalchemy import text

from tests.conftest import Env
from tests.helpers import auth, client, grant_marketing, make_keys, sync_db

ALICE = {"email": " Alice.Smith@Example.COM ", "phone": "(212) 555-0142", "firstName": "Alice", "plan": "pro"}


def test_create_then_read_plain_for_compliance_and_masked_for_marketer(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        r = c.post("/v1/profiles", json={"traits": ALICE}, headers=auth(keys["compliance"]))
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        assert "alice" not in r.text.lower()  # a write never echoes personal data

        plain = c.get(f"/v1/profiles/{pid}", headers=auth(keys["compliance"]))
        assert plain.status_code == 200
        body = plain.json()
        assert body["reveal"] == "plain"
        assert body["traits"] == {
            "email": "alice.smith@example.com",
            "phone": "+12125550142",
            "firstName": "Alice",
            "plan": "pro",
        }

        refused = c.get(f"/v1/profiles/{pid}", headers=auth(keys["marketer"]))
        assert refused.status_code == 403 and "no consent" in refused.json()["detail"]  # unknown region: opt-in
        grant_marketing(c, keys["compliance"], pid)
        masked = c.get(f"/v1/profiles/{pid}", headers=auth(keys["marketer"])).json()
        assert masked["reveal"] == "masked"
        assert masked["traits"]["email"] == "a***@example.com"
        assert masked["traits"]["phone"].endswith("0142") and "555" not in masked["traits"]["phone"]
        assert masked["traits"]["firstName"] == "A***"
        assert masked["traits"]["plan"] == "pro"


def test_lookup_by_differently_formatted_email_and_phone(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        pid = c.post("/v1/profiles", json={"traits": ALICE}, headers=auth(keys["admin"])).json()["id"]
        by_email = c.post(
            "/v1/profiles/lookup", json={"email": "ALICE.smith@example.com"}, headers=auth(keys["compliance"])
        )
        assert [p["id"] for p in by_email.json()["profiles"]] == [pid]
        by_phone = c.post("/v1/profiles/lookup", json={"phone": "+1 212-555-0142"}, headers=auth(keys["admin"]))
        assert [p["id"] for p in by_phone.json()["profiles"]] == [pid]
        none = c.post("/v1/profiles/lookup", json={"email": "bob@example.com"}, headers=auth(keys["admin"]))
        assert none.json() == {"profiles": []}


def test_update_replaces_email_and_its_index_and_null_removes(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        pid = c.post("/v1/profiles", json={"traits": ALICE}, headers=auth(keys["admin"])).json()["id"]
        r = c.patch(
            f"/v1/profiles/{pid}",
            json={"traits": {"email": "new@example.org", "plan": None}},
            headers=auth(keys["admin"]),
        )
        assert r.status_code == 200, r.text
        traits = c.get(f"/v1/profiles/{pid}", headers=auth(keys["admin"])).json()["traits"]
        assert traits["email"] == "new@example.org" and "plan" not in traits
        old = c.post("/v1/profiles/lookup", json={"email": "alice.smith@example.com"}, headers=auth(keys["admin"]))
        assert old.json()["profiles"] == []


def test_invalid_values_name_the_field_and_never_echo_the_value(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        r = c.post(
            "/v1/profiles",
            json={"traits": {"email": "not-an-email-secret123", "plan": "x"}},
            headers=auth(keys["admin"]),
        )
        assert r.status_code == 422
        assert r.headers["content-type"].startswith("application/problem+json")
        body = r.json()
        assert body["invalid-params"][0]["name"] == "traits.email"
        assert "secret123" not in r.text
        r = c.post("/v1/profiles", json={"traits": {"phone": "call me maybe"}}, headers=auth(keys["admin"]))
        assert r.status_code == 422 and r.json()["invalid-params"][0]["name"] == "traits.phone"
        r = c.post("/v1/profiles", json={"traits": "alice@example.com"}, headers=auth(keys["admin"]))
        assert r.status_code == 400 and r.json()["invalid-params"][0]["name"] == "traits"
        assert "alice@example.com" not in r.text
        r = c.get("/v1/profiles/00000000-0000-0000-0000-000000000000", headers=auth(keys["admin"]))
        assert r.status_code == 404 and r.json()["status"] == 404


def test_every_read_is_in_the_ledger_with_actor_purpose_and_request_id(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        pid = c.post("/v1/profiles", json={"traits": ALICE}, headers=auth(keys["admin"])).json()["id"]
        c.get(f"/v1/profiles/{pid}", headers={**auth(keys["compliance"]), "X-Request-ID": "req-42"})
        page = c.get("/v1/audit/entries", params={"subject": pid}, headers=auth(keys["auditor"])).json()
    actions = [(e["action"], e["actor_role"], e["purpose"], e["legal_basis"]) for e in page["entries"]]
    assert ("profile.create", "admin", "essential.service", "contract") in actions
    assert ("profile.read", "compliance", "legal.compliance.dsr", "legal_obligation") in actions
    read = next(e for e in page["entries"] if e["action"] == "profile.read")
    assert read["request_id"] == "req-42"
    assert read["actor_id"] == keys["compliance"].split("_")[1]


def test_denied_purpose_is_refused_and_recorded(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        pid = c.post("/v1/profiles", json={"traits": ALICE}, headers=auth(keys["admin"])).json()["id"]
        r = c.get(f"/v1/profiles/{pid}", params={"purpose": "legal.compliance.dsr"}, headers=auth(keys["marketer"]))
        assert r.status_code == 403
        assert r.json()["type"].endswith("policy-denied")
        assert "alice" not in r.text.lower()
    with sync_db() as conn:
        rows = conn.execute(
            text(
                "SELECT actor_role, purpose FROM audit_entry WHERE action = 'profile.read.denied' AND subject_id = :s"
            ),
            {"s": pid},
        ).all()
    assert rows == [("marketer", "legal.compliance.dsr")]


def test_a_refused_create_writes_nothing_but_the_refusal(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        r = c.post(
            "/v1/profiles",
            params={"purpose": "marketing.advertising.first_party.targeted"},
            json={"traits": ALICE},
            headers=auth(keys["compliance"]),
        )
        assert r.status_code == 403
    with sync_db() as conn:
        assert conn.execute(text("SELECT count(*) FROM profile")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM identifier")).scalar() == 0
        denied = conn.execute(text("SELECT count(*) FROM audit_entry WHERE action = 'profile.create.denied'")).scalar()
    assert denied == 1


def test_an_unknown_purpose_is_a_422_recorded_by_hash_and_never_echoed(env: Env) -> None:
    keys = make_keys()
    chosen = "exfiltrate.everything.to.my-server"
    with client() as c:
        pid = c.post("/v1/profiles", json={"traits": ALICE}, headers=auth(keys["admin"])).json()["id"]
        r = c.get(f"/v1/profiles/{pid}", params={"purpose": chosen}, headers=auth(keys["compliance"]))
        long_name = c.post("/v1/keys", json={"role": "admin", "name": "k" * 200}, headers=auth(keys["admin"]))
        huge = c.get("/v1/audit/entries", params={"after": str(2**70)}, headers=auth(keys["auditor"]))
    assert r.status_code == 422 and r.json()["invalid-params"][0]["name"] == "purpose"
    assert chosen not in r.text
    assert long_name.status_code == 422 and huge.status_code in (400, 422)
    with sync_db() as conn:
        rows = conn.execute(text("SELECT purpose, details FROM audit_entry WHERE action = 'profile.read.denied'")).all()
    assert len(rows) == 1 and rows[0][0].startswith("unknown:") and chosen not in str(rows)
