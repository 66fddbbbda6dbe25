"""Rectification corrects only the value targeted and pins it (a later CRM import cannot
revert it); restriction and objection make every decision deny use; all recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from litestar.testing import TestClient

from app.db import unit_of_work
from app.dsr.corrections import object_to_processing, rectify, restrict
from tests.conftest import Env, run
from tests.helpers import MARKETING, auth, client, grant_marketing, make_keys
from tests.test_dsr_erasure import OFFICER, _lookup

OLD, OTHER, NEW = "ann.old@example.com", "ann.work@example.com", "ann.new@example.com"


def _ann(c: TestClient[Any], keys: dict[str, str]) -> str:
    """Ann has two emails: an old one, then a work one (shown, the newest)."""
    s = (keys["ingest"], "")
    then = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    first = {"userId": "ann-1", "traits": {"email": OLD, "plan": "basic", "country": "DE"}, "timestamp": then}
    assert c.post("/v1/identify", json=first, auth=s).status_code == 200
    assert c.post("/v1/identify", json={"userId": "ann-1", "traits": {"email": OTHER}}, auth=s).status_code == 200
    [pid] = _lookup(c, keys["admin"], "user_id", "ann-1")
    assert _lookup(c, keys["admin"], "email", OLD) == [pid] == _lookup(c, keys["admin"], "email", OTHER)
    return pid


def _traits(c: TestClient[Any], keys: dict[str, str], pid: str) -> dict[str, Any]:
    r = c.get(f"/v1/profiles/{pid}", headers=auth(keys["compliance"]))
    assert r.status_code == 200, r.text
    return dict(r.json()["traits"])


def test_a_staff_correction_replaces_only_the_email_shown(env: Env) -> None:
    """Reproduced first: the correction dropped every email identifier of the person (a
    lookup by her other, still valid, email found nobody)."""
    keys = make_keys()
    with client() as c:
        pid = _ann(c, keys)
        r = c.patch(f"/v1/profiles/{pid}", json={"traits": {"email": NEW}}, headers=auth(keys["admin"]))
        assert r.status_code == 200, r.text
        assert _lookup(c, keys["admin"], "email", NEW) == [pid]
        assert _lookup(c, keys["admin"], "email", OTHER) == []  # the value corrected is gone
        assert _lookup(c, keys["admin"], "email", OLD) == [pid]  # the other one stays
        assert _traits(c, keys, pid)["email"] == NEW


def test_rectification_corrects_the_targeted_value_and_pins_it(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        pid = _ann(c, keys)

    async def fix() -> dict[str, Any]:
        async with unit_of_work() as s:
            done = await rectify(s, OFFICER, pid, "req-rect", "email", NEW, old_value=OTHER)
            await rectify(s, OFFICER, pid, "req-rect", "plan", "premium")
            return done

    done = run(fix())
    assert done == {"field": "email", "dropped": 1, "identifier_replaced": True}
    with client() as c:
        assert _lookup(c, keys["admin"], "email", OTHER) == []  # the inaccurate value, identifier and field
        assert _lookup(c, keys["admin"], "email", NEW) == [pid] == _lookup(c, keys["admin"], "email", OLD)
        assert (_traits(c, keys, pid)["email"], _traits(c, keys, pid)["plan"]) == (NEW, "premium")
        # the CRM sends its stale copy again, newer and authoritative: the correction stands
        crm = {"userId": "ann-1", "traits": {"email": OTHER, "plan": "basic"}}
        assert c.post("/v1/identify", json=crm, auth=(keys["ingest"], "")).status_code == 200
        assert (_traits(c, keys, pid)["email"], _traits(c, keys, pid)["plan"]) == (NEW, "premium")
        entries = c.get("/v1/audit/entries?limit=500", headers=auth(keys["auditor"])).json()["entries"]
        fixes = [e for e in entries if e["action"] == "dsr.rectification"]
        assert len(fixes) == 2 and all(e["subject_id"] == pid for e in fixes)
        assert OLD not in str(fixes) and NEW not in str(fixes)


def _decide(c: TestClient[Any], keys: dict[str, str], pid: str, purpose: str) -> tuple[str, str]:
    role = "marketer" if purpose == MARKETING else "admin"
    r = c.post("/v1/decisions", json={"person": pid, "purpose": purpose}, headers=auth(keys[role]))
    assert r.status_code == 200, r.text
    return r.json()["decision"], r.json()["reason"]


def test_restriction_and_objection_make_decisions_deny(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        pid = _ann(c, keys)
        grant_marketing(c, keys["compliance"], pid)
        assert _decide(c, keys, pid, MARKETING)[0] == "allow"
        assert _decide(c, keys, pid, "analytics.reporting")[0] == "allow"

    async def act(what: str) -> Any:
        async with unit_of_work() as s:
            if what == "restrict":
                return await restrict(s, OFFICER, pid, "req-r")
            if what == "lift":
                return await restrict(s, OFFICER, pid, "req-r", on=False)
            return await object_to_processing(s, OFFICER, pid, "req-o")

    run(act("restrict"))
    with client() as c:
        assert _decide(c, keys, pid, MARKETING) == ("deny", "restricted")
        assert _decide(c, keys, pid, "analytics.reporting") == ("deny", "restricted")
        # a purpose needing no consent is still use: only legal duties remain (Art. 18(2))
        assert _decide(c, keys, pid, "essential.service") == ("deny", "restricted")
        assert _decide(c, keys, pid, "legal.compliance.dsr")[0] == "allow"
    run(act("lift"))
    done = run(act("object"))
    assert set(done["denied"]) >= {MARKETING, "analytics.reporting"}
    with client() as c:
        assert _decide(c, keys, pid, MARKETING) == ("deny", "profiling refused")
        assert _decide(c, keys, pid, "analytics.reporting") == ("deny", "denied")
        flags = c.get(f"/v1/profiles/{pid}/consents", headers=auth(keys["compliance"])).json()["flags"]
        assert flags == ["profiling_refused"]
