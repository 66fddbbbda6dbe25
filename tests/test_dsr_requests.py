"""Data-subject requests: intake (public and staff), verification codes, the request's states,
deadlines per regulation (written-out examples), waiting, extension, the deadline watch, bulk
actions, and a person unknown to us answered exactly like a known one."""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import text

from app.dsr.deadlines import deadlines_at_receipt, extended_due, is_working_day, nth_working_day, paused_between
from app.dsr.policy import load_policy, parse_policy
from app.settings import get_settings
from tests.conftest import Env, run
from tests.helpers import auth, client, fail_consent_forget_once, make_keys, sync_db

POLICIES = Path(__file__).resolve().parents[1] / "policies"
RULES = load_policy(POLICIES).regulations


@pytest.fixture
def policy_dir(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the policies whose public-intake limit the test can set (default: roomy)."""
    target = env.tmp / "policies"
    shutil.copytree(POLICIES, target)
    _set_rate(target, "1000/minute")
    monkeypatch.setenv("CONSENTRY_POLICY_DIR", str(target))
    get_settings.cache_clear()
    yield target
    get_settings.cache_clear()


def _set_rate(folder: Path, rate: str) -> None:
    path = folder / "dsr.yaml"
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("public_intake_rate:")]
    path.write_text("\n".join([*lines, f"public_intake_rate: {rate}", ""]))


def _person(c: TestClient[Any], keys: dict[str, str], n: int, **traits: str) -> str:
    body = {"userId": f"dsr-{n}", "traits": traits}
    assert c.post("/v1/identify", json=body, auth=(keys["ingest"], "")).status_code == 200
    found = c.post("/v1/profiles/lookup", json={"kind": "user_id", "value": f"dsr-{n}"}, headers=auth(keys["admin"]))
    return str(found.json()["profiles"][0]["id"])


def _intake(c: TestClient[Any], body: dict[str, Any], key: str | None = None) -> Any:
    return c.post("/v1/dsr", json=body, headers=auth(key) if key else {})


def _outbox(c: TestClient[Any], keys: dict[str, str], rid: str) -> list[dict[str, Any]]:
    r = c.get(f"/v1/dsr/{rid}/outbox", headers=auth(keys["compliance"]))
    assert r.status_code == 200, r.text
    return list(r.json())


def _codes(c: TestClient[Any], keys: dict[str, str], rid: str) -> dict[str, list[str]]:
    return {m["body"]["to"]: m["body"]["codes"] for m in _outbox(c, keys, rid) if m["topic"] == "code"}


def _status(c: TestClient[Any], keys: dict[str, str], rid: str, status: str, reason: str | None = None) -> Any:
    return c.post(f"/v1/dsr/{rid}/status", json={"status": status, "reason": reason}, headers=auth(keys["compliance"]))


def _view(c: TestClient[Any], keys: dict[str, str], rid: str) -> dict[str, Any]:
    r = c.get(f"/v1/dsr/{rid}", headers=auth(keys["compliance"]))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_a_public_request_goes_from_intake_through_its_code_to_completed(env: Env, policy_dir: Path) -> None:
    keys = make_keys()
    with client() as c:
        pid = _person(c, keys, 1, email="ada@example.com")
        r = _intake(c, {"kind": "access", "regulation": "GDPR", "identifiers": {"email": "Ada@Example.com"}})
        assert r.status_code == 202, r.text
        receipt = r.json()
        assert receipt["status"] == "received" and "ada" not in r.text.lower()
        rid = receipt["id"]
        codes = _codes(c, keys, rid)
        assert list(codes) == ["email"] and len(codes["email"]) == 1 and len(codes["email"][0]) == 6
        assert _outbox(c, keys, rid) == []  # read once: delivered, purged
        ok = c.post(f"/v1/dsr/{rid}/verify", json={"code": codes["email"][0]})
        assert ok.status_code == 200 and ok.json()["status"] == "verified"
        seen = _view(c, keys, rid)
        assert seen["identifiers"] == {"email": "Ada@Example.com"}
        assert seen["verifications"] == [{"profile_id": pid, "state": "verified", "points": 1, "attempts": 0}]
        assert _status(c, keys, rid, "in_progress").json()["status"] == "in_progress"
        done = _status(c, keys, rid, "completed").json()
        assert done["status"] == "completed" and done["closed_at"]
        history = [(h["from"], h["to"]) for h in _view(c, keys, rid)["history"]]
        assert history == [("received", "verified"), ("verified", "in_progress"), ("in_progress", "completed")]
        listed = c.get("/v1/audit/entries", params={"limit": 500}, headers=auth(keys["auditor"])).json()
        entries = listed["entries"] if isinstance(listed, dict) else listed
        actions = [e["action"] for e in entries if (e.get("details") or {}).get("dsr") == rid]
        assert {"dsr.received", "dsr.verified", "dsr.status", "dsr.outbox_read", "dsr.viewed"} <= set(actions)


def test_wrong_expired_and_too_many_codes_are_refused(env: Env, policy_dir: Path) -> None:
    keys = make_keys()
    body = {"kind": "erasure", "regulation": "gdpr", "identifiers": {"email": "bo@example.com"}}
    with client() as c:
        _person(c, keys, 2, email="bo@example.com")
        rid = _intake(c, body).json()["id"]
        code = _codes(c, keys, rid)["email"][0]
        bad = c.post(f"/v1/dsr/{rid}/verify", json={"code": "12ab"})
        assert bad.status_code == 422 and bad.json()["invalid-params"][0]["name"] == "code"
        wrong = c.post(f"/v1/dsr/{rid}/verify", json={"code": _wrong(code)})
        assert wrong.status_code == 422 and wrong.headers["content-type"].startswith("application/problem+json")
        assert _view(c, keys, rid)["verifications"][0]["attempts"] == 1  # counted although refused
        for _ in range(3):
            assert c.post(f"/v1/dsr/{rid}/verify", json={"code": _wrong(code)}).status_code == 422
        last = c.post(f"/v1/dsr/{rid}/verify", json={"code": _wrong(code)})
        assert last.status_code == 422 and "too many" in last.json()["detail"]
        assert c.post(f"/v1/dsr/{rid}/verify", json={"code": code}).status_code == 422  # locked: the right one too
        seen = _view(c, keys, rid)
        assert seen["status"] == "denied" and "too many" in seen["denial_reason"]
        assert seen["verifications"][0]["state"] == "locked"

        rid = _intake(c, body).json()["id"]
        code = _codes(c, keys, rid)["email"][0]
        with sync_db() as conn:
            conn.execute(
                text("UPDATE dsr_verification SET expires_at = :t WHERE request_id = :r"),
                {"t": datetime.now(UTC) - timedelta(minutes=1), "r": rid},
            )
        expired = c.post(f"/v1/dsr/{rid}/verify", json={"code": code})
        assert expired.status_code == 422 and "expired" in expired.json()["detail"]
        assert _view(c, keys, rid)["status"] == "received"
        assert c.post(f"/v1/dsr/{rid}/verify", json={"code": code}).status_code == 422  # still expired
        assert c.post(f"/v1/dsr/{rid}/codes", headers=auth(keys["compliance"])).json() == {"sent": 1}
        fresh = _codes(c, keys, rid)["email"][0]
        assert c.post(f"/v1/dsr/{rid}/verify", json={"code": fresh}).json()["status"] == "verified"
        assert c.post(f"/v1/dsr/{rid}/codes", headers=auth(keys["compliance"])).status_code == 409


def test_illegal_transitions_are_refused(env: Env, policy_dir: Path) -> None:
    keys = make_keys()
    with client() as c:
        body = {"kind": "erasure", "regulation": "CCPA", "identifiers": {"email": "cy@example.com"}}
        rid = _intake(c, body, keys["compliance"]).json()["id"]
        early = _status(c, keys, rid, "completed")
        assert early.status_code == 409 and early.json()["title"] == "Conflict"
        assert "received cannot become completed" in early.json()["detail"]
        unverified = _status(c, keys, rid, "in_progress")
        assert unverified.status_code == 409 and "not verified" in unverified.json()["detail"]
        assert _status(c, keys, rid, "verified").status_code == 422  # only a code verifies
        assert _status(c, keys, rid, "denied").status_code == 422  # a denial needs a reason
        assert c.post(f"/v1/dsr/{rid}/resume", json={}, headers=auth(keys["compliance"])).status_code == 409
        denied = _status(c, keys, rid, "denied", "we could not verify the request")
        assert (
            denied.json()["status"] == "denied" and denied.json()["denial_reason"] == "we could not verify the request"
        )
        for to in ("in_progress", "completed"):
            assert _status(c, keys, rid, to).status_code == 409
        assert c.post(f"/v1/dsr/{rid}/wait", json={}, headers=auth(keys["compliance"])).status_code == 409
        assert _status(c, keys, "00000000-0000-0000-0000-000000000000", "completed").status_code == 404


def test_a_person_we_do_not_know_is_answered_exactly_like_one_we_know(env: Env, policy_dir: Path) -> None:
    keys = make_keys()
    with client() as c:
        _person(c, keys, 3, email="known@example.com", phone="+14155550101")
        c.post("/v1/dsr", json={"kind": "access", "regulation": "GDPR", "identifiers": {"email": "warm@example.com"}})

        def ask(email: str, phone: str) -> tuple[float, int, dict[str, Any]]:
            body = {"kind": "access", "regulation": "GDPR", "identifiers": {"email": email, "phone": phone}}
            started = time.perf_counter()
            r = c.post("/v1/dsr", json=body)
            return time.perf_counter() - started, r.status_code, r.json()

        known, unknown = [], []
        for _ in range(7):
            known.append(ask("known@example.com", "+14155550101"))
            unknown.append(ask("nobody@example.com", "+14155550199"))
        for (_, s1, b1), (_, s2, b2) in zip(known, unknown, strict=True):
            assert s1 == s2 == 202
            assert set(b1) == set(b2) and b1["message"] == b2["message"] and b1["status"] == b2["status"]
            assert b1["due_at"][:10] == b2["due_at"][:10]
        fast, slow = sorted([statistics.median(t for t, _, _ in known), statistics.median(t for t, _, _ in unknown)])
        assert slow - fast < max(0.05, fast), (fast, slow)  # within noise (2 shared cores): no absolute timing
        rid = unknown[0][2]["id"]
        code = _codes(c, keys, rid)["email"][0]  # a code goes out either way: to the address given
        answer = c.post(f"/v1/dsr/{rid}/verify", json={"code": code})
        assert answer.status_code == 200 and answer.json()["status"] == "verified"
        assert _view(c, keys, rid)["verifications"] == [
            {"profile_id": None, "state": "verified", "points": 0, "attempts": 0}
        ]


def test_every_matching_profile_is_verified_on_its_own(env: Env, policy_dir: Path) -> None:
    keys = make_keys()
    with client() as c:
        a = _person(c, keys, 4, email="dee@example.com")
        b = _person(c, keys, 5, phone="+14155550102")
        body = {
            "kind": "erasure",
            "regulation": "GDPR",
            "identifiers": {"email": "dee@example.com", "phone": "+14155550102"},
        }
        rid = _intake(c, body).json()["id"]
        codes = _codes(c, keys, rid)
        assert sorted(codes) == ["email", "phone"]  # each profile's code goes to the contact it holds
        assert c.post(f"/v1/dsr/{rid}/verify", json={"code": codes["email"][0]}).json()["status"] == "verified"
        states = {v["profile_id"]: v["state"] for v in _view(c, keys, rid)["verifications"]}
        assert states == {a: "verified", b: "pending"}  # the other profile is not acted on until its own code
        twin = _intake(c, body).json()["id"]  # a duplicate request, never verified
        assert _status(c, keys, twin, "in_progress").status_code == 409
        assert _status(c, keys, rid, "in_progress").status_code == 200
        assert c.post(f"/v1/dsr/{rid}/run", headers=auth(keys["compliance"])).json()["complete"] is True
        assert c.get(f"/v1/profiles/{a}", headers=auth(keys["admin"])).status_code in (404, 410)  # erased
        assert c.get(f"/v1/profiles/{b}", headers=auth(keys["admin"])).status_code == 200  # unverified: untouched
        assert c.post(f"/v1/dsr/{rid}/verify", json={"code": codes["phone"][0]}).status_code == 409  # closed


def test_verification_strength_follows_the_request_kind(env: Env, policy_dir: Path) -> None:
    keys = make_keys()
    with client() as c:
        pid = _person(c, keys, 6, email="eve@example.com", phone="+14155550103")
        two = {"email": "eve@example.com", "phone": "+14155550103"}
        # CCPA specific pieces need three matching data points: two are not enough
        rid = _intake(c, {"kind": "access", "regulation": "CCPA", "identifiers": two}).json()["id"]
        c.post(f"/v1/dsr/{rid}/verify", json={"code": _codes(c, keys, rid)["email"][0]})
        assert _view(c, keys, rid)["verifications"][0]["state"] == "insufficient"
        three = {**two, "user_id": "dsr-6"}
        rid = _intake(c, {"kind": "access", "regulation": "CCPA", "identifiers": three}).json()["id"]
        c.post(f"/v1/dsr/{rid}/verify", json={"code": _codes(c, keys, rid)["email"][0]})
        assert _view(c, keys, rid)["verifications"][0] == {
            "profile_id": pid,
            "state": "verified",
            "points": 3,
            "attempts": 0,
        }
        # categories only: two points do
        rid = _intake(c, {"kind": "access", "scope": "categories", "regulation": "CCPA", "identifiers": two}).json()[
            "id"
        ]
        c.post(f"/v1/dsr/{rid}/verify", json={"code": _codes(c, keys, rid)["email"][0]})
        assert _view(c, keys, rid)["verifications"][0]["state"] == "verified"
        # a correction of the email is verified by the phone, not by the email being corrected
        fix = {"kind": "rectification", "regulation": "GDPR", "field": "email", "identifiers": two}
        rid = _intake(c, fix).json()["id"]
        assert list(_codes(c, keys, rid)) == ["phone"]
        assert _view(c, keys, rid)["verifications"][0]["points"] == 1
        only_field = _intake(c, {**fix, "identifiers": {"email": "eve@example.com"}})
        assert only_field.status_code == 422 and only_field.json()["invalid-params"][0]["name"] == "identifiers"
        # opt-outs need no verification
        out = _intake(c, {"kind": "opt_out", "regulation": "CCPA", "identifiers": {"email": "eve@example.com"}})
        assert out.json()["status"] == "verified"
        assert [m["topic"] for m in _outbox(c, keys, out.json()["id"])] == ["acknowledgement"]


def test_staff_intake_and_what_it_may_skip(env: Env, policy_dir: Path) -> None:
    keys = make_keys()
    body = {"kind": "restriction", "regulation": "PIPL", "identifiers": {"phone": "+8613800138000"}}
    with client() as c:
        pid = _person(c, keys, 7, phone="+8613800138000")
        staff = _intake(
            c, {**body, "verify": False, "verification_note": "ID card checked at the desk"}, keys["compliance"]
        )
        assert staff.status_code == 202 and staff.json()["status"] == "verified" and staff.json()["channel"] == "staff"
        assert staff.json()["due_at"]
        assert _view(c, keys, staff.json()["id"])["verifications"][0]["profile_id"] == pid
        assert _intake(c, {**body, "verify": False}).status_code == 422  # the public form cannot skip it
        assert _intake(c, body, keys["marketer"]).status_code == 403
        assert _intake(c, body, "csk_000000000000_nope").status_code == 401
        for bad, name in (
            ({"kind": "forget-me"}, "kind"),
            ({"regulation": "LGPD"}, "regulation"),
            ({"identifiers": {}}, "identifiers"),
        ):
            r = _intake(c, {**body, **bad})
            assert r.status_code == 422 and r.json()["invalid-params"][0]["name"] == name
        r = _intake(c, {**body, "identifiers": {"email": "not an email <script>"}})
        assert r.status_code == 422 and "script" not in r.text


def test_the_public_form_is_rate_limited_per_address(env: Env, policy_dir: Path) -> None:
    _set_rate(policy_dir, "2/minute")
    keys = make_keys()
    body = {"kind": "opt_out", "regulation": "CCPA", "identifiers": {"email": "fay@example.com"}}
    with client() as c:
        assert [_intake(c, body).status_code for _ in range(2)] == [202, 202]
        third = _intake(c, body)
        assert third.status_code == 429 and int(third.headers["Retry-After"]) >= 1
        assert _intake(c, body, keys["compliance"]).status_code == 202  # staff are not held by the form's limit


def test_the_public_forms_count_is_atomic_in_redis(env: Env, policy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests arriving together are each counted: never more through than the limit."""
    from concurrent.futures import ThreadPoolExecutor

    import redis

    from tests.test_limits import _redis_up

    if not _redis_up():
        pytest.skip("no Redis on 127.0.0.1:6379")
    _set_rate(policy_dir, "3/hour")
    monkeypatch.setenv("CONSENTRY_REDIS_URL", "redis://127.0.0.1:6379/0")
    get_settings.cache_clear()
    with redis.Redis.from_url("redis://127.0.0.1:6379/0") as r:  # this address's count of earlier runs
        r.delete(*r.keys("consentry:ratelimit:dsr-intake:addr:testclient*") or ["-"])
    body = {"kind": "opt_out", "regulation": "CCPA", "identifiers": {"email": "hal@example.com"}}
    with client() as c, ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _n: _intake(c, body).status_code, range(12)))
    assert sorted(codes) == [202] * 3 + [429] * 9


def test_deadlines_written_out() -> None:
    gdpr, ccpa, pipl = RULES["gdpr"], RULES["ccpa"], RULES["pipl"]

    def due(rules: Any, kind: str, at: datetime) -> date:
        return deadlines_at_receipt(rules, kind, at).due_at.date()

    # GDPR, one month: the same date next month, or that month's last day when it has none
    assert due(gdpr, "access", datetime(2025, 1, 31, 9, tzinfo=UTC)) == date(2025, 2, 28)  # a Friday
    assert due(gdpr, "access", datetime(2028, 1, 31, 9, tzinfo=UTC)) == date(2028, 2, 29)  # leap year
    # 28 Feb 2026 is a Saturday: the period runs to the next working day (Reg. 1182/71 Art. 3(4))
    assert due(gdpr, "access", datetime(2026, 1, 31, 9, tzinfo=UTC)) == date(2026, 3, 2)
    # 23:30 UTC on 31 January is already 1 February in Berlin: due 1 March (a Sunday) → 2 March
    assert due(gdpr, "access", datetime(2026, 1, 31, 23, 30, tzinfo=UTC)) == date(2026, 3, 2)
    assert due(gdpr, "access", datetime(2026, 3, 10, 9, tzinfo=UTC)) == date(2026, 4, 10)
    end = deadlines_at_receipt(gdpr, "access", datetime(2026, 3, 10, 9, tzinfo=UTC)).due_at
    assert (end.hour, end.minute, end.utcoffset()) == (23, 59, timedelta(hours=2))  # end of day, Berlin summer time
    assert extended_due(gdpr, end).date() == date(2026, 6, 10)  # + two months

    # CCPA: 45 calendar days; acknowledgement in 10 business days; opt-outs in 15 business days.
    # Received Thursday 26 Nov 2026 (Thanksgiving); Friday 27 Nov is a California holiday.
    got = deadlines_at_receipt(ccpa, "access", datetime(2026, 11, 26, 18, tzinfo=UTC))
    assert got.due_at.date() == date(2027, 1, 10)
    assert got.ack_due_at is not None and got.ack_due_at.date() == date(2026, 12, 11)
    assert due(ccpa, "opt_out", datetime(2026, 11, 26, 18, tzinfo=UTC)) == date(2026, 12, 18)
    assert extended_due(ccpa, got.due_at).date() == date(2027, 2, 24)  # one 45-day extension

    # PIPL: 15 working days across the National Day holiday (1-7 Oct 2026), counting the adjusted
    # working Saturday 10 Oct (调休) and not the Sunday 4 Oct inside the holiday.
    assert is_working_day(pipl, date(2026, 10, 10)) and not is_working_day(pipl, date(2026, 10, 4))
    assert not is_working_day(pipl, date(2026, 10, 7)) and is_working_day(pipl, date(2026, 9, 20))
    # received 28 Sep (Mon): 29, 30 Sep; 8, 9, 10 (Sat) Oct; 12-16; 19-23 → Friday 23 Oct
    assert due(pipl, "access", datetime(2026, 9, 28, 2, tzinfo=UTC)) == date(2026, 10, 23)
    assert nth_working_day(pipl, date(2026, 9, 28), 5) == date(2026, 10, 10)


def test_the_policy_can_add_working_days_the_calendar_does_not_know_yet() -> None:
    text_ = (POLICIES / "dsr.yaml").read_text().replace("extra_holidays: []", "extra_holidays: [2026-10-23]")
    pipl = parse_policy(text_).regulations["pipl"]
    assert nth_working_day(pipl, date(2026, 9, 28), 15) == date(2026, 10, 26)
    rate = "public_intake_rate: 10/hour"
    assert parse_policy(text_.replace(rate, "public_intake_rate: off")).public_intake_rate == "off"  # YAML: false
    assert parse_policy(text_.replace(rate, "public_intake_rate: lots")).problems
    broken = parse_policy("regulations:\n  gdpr: {deadline: {weeks: 4}}\n  ccpa: nope\n")
    problems = [str(p) for p in broken.problems]
    assert any("regulations.gdpr.deadline" in p for p in problems)
    assert any("regulations.ccpa" in p for p in problems) and any("regulations.pipl: missing" in p for p in problems)


def test_waiting_for_the_requester_stops_the_clock(env: Env, policy_dir: Path) -> None:
    keys = make_keys()
    with client() as c:
        body = {
            "kind": "objection",
            "scope": "profiling",
            "regulation": "GDPR",
            "identifiers": {"email": "gil@example.com"},
        }
        r = _intake(c, {**body, "verify": False, "verification_note": "known caller"}, keys["compliance"]).json()
        rid = r["id"]
        waiting = c.post(
            f"/v1/dsr/{rid}/wait", json={"reason": "asked which processing"}, headers=auth(keys["compliance"])
        )
        assert waiting.json()["status"] == "waiting"
        assert _status(c, keys, rid, "in_progress").status_code == 409  # waiting leaves only by resume
        berlin = RULES["gdpr"].timezone
        midnight = datetime.combine(datetime.now(berlin).date(), datetime.min.time(), berlin)
        since = midnight - timedelta(days=3) + timedelta(minutes=1)  # three days and some hours pass while we wait
        with sync_db() as conn:
            conn.execute(text("UPDATE dsr_request SET waiting_since = :t WHERE id = :r"), {"t": since, "r": rid})
        assert run(_flags()) is not None
        listed = c.get("/v1/dsr", params={"status": "waiting"}, headers=auth(keys["compliance"])).json()
        assert [x["id"] for x in listed] == [rid] and listed[0]["flag"] is None
        back = c.post(f"/v1/dsr/{rid}/resume", json={}, headers=auth(keys["compliance"])).json()
        waited = datetime.now(UTC) - since
        assert back["status"] == "verified" and abs(back["waited_seconds"] - waited.total_seconds()) < 60
        # the deadline moves by the three days the clock stood still, and stays the end of a day in Berlin
        moved = datetime.fromisoformat(back["due_at"])
        assert moved == deadline_of(RULES["gdpr"], "objection", datetime.fromisoformat(r["received_at"]), 3)
        assert moved.astimezone(berlin).time() == datetime.max.time().replace(microsecond=0)


def deadline_of(rules: Any, kind: str, received: datetime, paused_days: int) -> datetime:
    """The GDPR deadline as if the request had arrived ``paused_days`` later (the clock stood still)."""
    return deadlines_at_receipt(rules, kind, received + timedelta(days=paused_days)).due_at


def test_waiting_moves_deadlines_by_the_regulations_own_days() -> None:
    gdpr, ccpa, pipl = RULES["gdpr"], RULES["ccpa"], RULES["pipl"]

    def resumed(rules: Any, kind: str, received: datetime, since: datetime, until: datetime) -> Any:
        return deadlines_at_receipt(rules, kind, received, paused_between(rules, since, until))

    shanghai = pipl.timezone
    # PIPL, 15 working days: received Mon 2 Nov 2026, due Mon 23 Nov. Waiting from Friday 6 Nov
    # to Monday 9 Nov stops the clock for one working day (the weekend never counted): Tue 24 Nov.
    received = datetime(2026, 11, 2, 10, tzinfo=shanghai)
    assert deadlines_at_receipt(pipl, "access", received).due_at.date() == date(2026, 11, 23)
    got = resumed(
        pipl, "access", received, datetime(2026, 11, 6, 10, tzinfo=shanghai), datetime(2026, 11, 9, 9, tzinfo=shanghai)
    )
    assert got.due_at == datetime(2026, 11, 24, 23, 59, 59, tzinfo=shanghai)
    # GDPR, one month: received 10 March 2026 (due 10 April); waiting 12 March 18:00 to 15 March
    # 08:00 Berlin stops three calendar days: due 13 April, the end of that day in Berlin.
    berlin = gdpr.timezone
    received = datetime(2026, 3, 10, 9, tzinfo=berlin)
    got = resumed(
        gdpr, "access", received, datetime(2026, 3, 12, 18, tzinfo=berlin), datetime(2026, 3, 15, 8, tzinfo=berlin)
    )
    assert got.due_at == datetime(2026, 4, 13, 23, 59, 59, tzinfo=berlin)
    # ... and a waited-out same day moves nothing
    same = resumed(
        gdpr, "access", received, datetime(2026, 3, 12, 9, tzinfo=berlin), datetime(2026, 3, 12, 17, tzinfo=berlin)
    )
    assert same == deadlines_at_receipt(gdpr, "access", received)
    # CCPA: 45 calendar days and the acknowledgement's 10 business days both skip the stopped days;
    # received Mon 2 Nov 2026 (due 17 Dec, acknowledge by Tue 17 Nov: Veterans Day 11 Nov is a
    # holiday); waiting Wed 4 Nov to Mon 9 Nov stops 5 days, 3 of them business days.
    la = ccpa.timezone
    received = datetime(2026, 11, 2, 9, tzinfo=la)
    before = deadlines_at_receipt(ccpa, "access", received)
    assert before.due_at.date() == date(2026, 12, 17) and before.ack_due_at is not None
    assert before.ack_due_at.date() == date(2026, 11, 17)
    got = resumed(ccpa, "access", received, datetime(2026, 11, 4, 9, tzinfo=la), datetime(2026, 11, 9, 9, tzinfo=la))
    assert got.due_at.date() == date(2026, 12, 22) and got.ack_due_at is not None
    assert got.ack_due_at.date() == date(2026, 11, 20)


async def _flags() -> dict[str, Any]:
    from app.dsr.jobs import watch_deadlines

    return await watch_deadlines()


def test_extension_rules(env: Env, policy_dir: Path) -> None:
    keys = make_keys()
    h = auth(keys["compliance"])
    with client() as c:
        body = {"kind": "access", "regulation": "GDPR", "identifiers": {"email": "hal@example.com"}}
        r = _intake(c, {**body, "verify": False, "verification_note": "signed letter"}, keys["compliance"]).json()
        rid, due = r["id"], datetime.fromisoformat(r["due_at"])
        _outbox(c, keys, rid)
        assert c.post(f"/v1/dsr/{rid}/extend", json={}, headers=h).status_code == 422  # a reason is required
        ext = c.post(f"/v1/dsr/{rid}/extend", json={"reason": "many linked accounts to search"}, headers=h).json()
        assert ext["status"] == "extended" and ext["extension_reason"] == "many linked accounts to search"
        assert 58 <= (datetime.fromisoformat(ext["due_at"]) - due).days <= 63  # two more months
        notice = _outbox(c, keys, rid)
        assert [m["topic"] for m in notice] == ["extension_notice"] and notice[0]["body"]["due_at"] == ext["due_at"]
        assert c.post(f"/v1/dsr/{rid}/extend", json={"reason": "again"}, headers=h).status_code == 409  # only once
        assert _status(c, keys, rid, "completed").json()["status"] == "completed"

        late = _intake(c, {**body, "verify": False, "verification_note": "letter"}, keys["compliance"]).json()["id"]
        with sync_db() as conn:  # the first month is over: too late to extend
            conn.execute(
                text("UPDATE dsr_request SET extension_latest_at = :t WHERE id = :r"),
                {"t": datetime.now(UTC) - timedelta(hours=1), "r": late},
            )
        too_late = c.post(f"/v1/dsr/{late}/extend", json={"reason": "busy"}, headers=h)
        assert too_late.status_code == 409 and "too late" in too_late.json()["detail"]

        pipl = {"kind": "access", "regulation": "PIPL", "identifiers": {"phone": "+8613800138001"}}
        rid = _intake(c, pipl, keys["compliance"]).json()["id"]
        assert c.post(f"/v1/dsr/{rid}/extend", json={"reason": "busy"}, headers=h).status_code == 409
        opt = _intake(c, {"kind": "opt_out", "regulation": "CCPA", "identifiers": {"email": "hal@example.com"}}).json()[
            "id"
        ]
        assert c.post(f"/v1/dsr/{opt}/extend", json={"reason": "busy"}, headers=h).status_code == 409


def test_the_deadline_watch_flags_and_the_list_and_bulk_actions_use_it(env: Env, policy_dir: Path) -> None:
    keys = make_keys()
    h = auth(keys["compliance"])
    with client() as c:
        ids = []
        for n in range(3):
            body = {"kind": "erasure", "regulation": "CCPA", "identifiers": {"email": f"ivy{n}@example.com"}}
            ids.append(_intake(c, body, keys["compliance"]).json()["id"])
        now = datetime.now(UTC)
        with sync_db() as conn:
            for rid, due in zip(
                ids, (now - timedelta(days=1), now + timedelta(days=2), now + timedelta(days=30)), strict=True
            ):
                conn.execute(text("UPDATE dsr_request SET due_at = :t WHERE id = :r"), {"t": due, "r": rid})
        assert run(_flags()) == {"due_soon": 1, "overdue": 1, "codes_expired": 0}
        overdue = c.get("/v1/dsr", params={"flag": "overdue"}, headers=h).json()
        assert [x["id"] for x in overdue] == [ids[0]] and overdue[0]["days_left"] < 0
        soon = c.get(
            "/v1/dsr", params={"status": "received", "due_before": (now + timedelta(days=7)).isoformat()}, headers=h
        ).json()
        assert [x["id"] for x in soon] == ids[:2] and "identifiers" not in str(
            [x.get("identifiers") for x in soon if x.get("identifiers")]
        )
        assert c.get("/v1/dsr", params={"status": "finished"}, headers=h).status_code == 422
        bulk = c.post(
            "/v1/dsr/bulk",
            json={
                "status": "received",
                "due_before": (now + timedelta(days=7)).isoformat(),
                "action": "denied",
                "reason": "could not verify in time",
            },
            headers=h,
        ).json()
        assert [(b["id"], b["ok"], b["status"]) for b in bulk] == [(ids[0], True, "denied"), (ids[1], True, "denied")]
        again = c.post("/v1/dsr/bulk", json={"kind": "erasure", "action": "in_progress"}, headers=h).json()
        assert [b["ok"] for b in again] == [False, False, False]  # unverified or closed: each refused on its own
        assert {b["status"] for b in again} == {"denied", "received"}
        assert c.post("/v1/dsr/bulk", json={"action": "explode"}, headers=h).status_code == 422


def test_erasing_the_requester_keeps_only_the_minimal_record(env: Env, policy_dir: Path) -> None:
    keys = make_keys()
    with client() as c:
        pid = _person(c, keys, 9, email="jo@example.com")
        body = {"kind": "erasure", "regulation": "GDPR", "identifiers": {"email": "jo@example.com"}}
        rid = _intake(c, body).json()["id"]
        c.post(f"/v1/dsr/{rid}/verify", json={"code": _codes(c, keys, rid)["email"][0]})
        run(_forget(pid))
        seen = _view(c, keys, rid)
        assert seen["identifiers"] is None and seen["subject_id"] is None and seen["verifications"] == []
        assert seen["kind"] == "erasure" and seen["status"] == "verified" and seen["due_at"]
        with sync_db() as conn:
            assert (
                conn.execute(text("SELECT count(*) FROM subject_key WHERE profile_id = :r"), {"r": rid}).scalar() == 0
            )
            assert conn.execute(text("SELECT sealed FROM dsr_request WHERE id = :r"), {"r": rid}).scalar() is None


async def _forget(pid: str) -> None:
    from app.db import unit_of_work
    from app.dsr.holder import HOLDER
    from app.profiles.service import person_of

    async with unit_of_work() as session:
        await HOLDER.forget(session, await person_of(session, pid))


def _verified(c: TestClient[Any], keys: dict[str, str], body: dict[str, Any]) -> str:
    """A public request verified with its code and put in progress."""
    rid = str(_intake(c, body).json()["id"])
    for code in _codes(c, keys, rid).get("email", []):
        assert c.post(f"/v1/dsr/{rid}/verify", json={"code": code}).status_code == 200
    assert _status(c, keys, rid, "in_progress").status_code == 200
    return rid


def test_an_erasure_request_runs_store_by_store_and_completes_with_a_certificate(env: Env, policy_dir: Path) -> None:
    keys = make_keys()
    h = auth(keys["compliance"])
    with client() as c:
        pid = _person(c, keys, 10, email="kim@example.com", phone="+14155550110")
        other = _person(c, keys, 11, email="lee@example.com")
        rid = _verified(c, keys, {"kind": "erasure", "regulation": "GDPR", "identifiers": {"email": "kim@example.com"}})
        plan = c.get(f"/v1/dsr/{rid}/plan", headers=h).json()
        assert len(plan) == 1 and plan[0]["stores"]["identity"]
        done = c.post(f"/v1/dsr/{rid}/run", headers=h)
        assert done.status_code == 200, done.text
        assert done.json()["complete"] is True
        seen = _view(c, keys, rid)
        assert seen["status"] == "completed" and seen["identifiers"] is None and seen["subject_id"] is None
        assert {s["status"] for s in seen["steps"]} == {"done"} and "identity" in {s["store"] for s in seen["steps"]}
        cert = c.get(f"/v1/dsr/{rid}/certificate", headers=auth(keys["auditor"]))
        assert cert.status_code == 200 and cert.json()["signature"] and pid not in cert.json()["body"]
        lookup = c.post("/v1/profiles/lookup", json={"email": "kim@example.com"}, headers=auth(keys["admin"]))
        assert lookup.json()["profiles"] == []
        assert c.get(f"/v1/profiles/{other}", headers=auth(keys["admin"])).status_code == 200
        assert c.post(f"/v1/dsr/{rid}/run", headers=h).status_code == 409  # completed: nothing runs again


def test_a_failed_store_is_retried_on_its_own(env: Env, policy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = make_keys()
    h = auth(keys["compliance"])
    fail_consent_forget_once(monkeypatch)
    with client() as c:
        _person(c, keys, 12, email="max@example.com")
        rid = _verified(c, keys, {"kind": "erasure", "regulation": "GDPR", "identifiers": {"email": "max@example.com"}})
        first = c.post(f"/v1/dsr/{rid}/run", headers=h).json()
        assert first["complete"] is False
        steps = {s["store"]: s for s in _view(c, keys, rid)["steps"]}
        assert steps["consent"]["status"] == "failed" and steps["consent"]["error_class"] == "ConnectionError"
        assert steps["consent"]["result"] == {} and steps["identity"]["status"] == "done"
        assert _view(c, keys, rid)["status"] == "in_progress"
        assert c.post(f"/v1/dsr/{rid}/steps/identity/retry", headers=h).status_code == 409  # done already
        again = c.post(f"/v1/dsr/{rid}/steps/consent/retry", headers=h)
        assert again.status_code == 200 and again.json()["complete"] is True
        assert _view(c, keys, rid)["status"] == "completed"


def test_access_and_restriction_requests_run_through_the_fulfilment(env: Env, policy_dir: Path) -> None:
    keys = make_keys()
    h = auth(keys["compliance"])
    with client() as c:
        _person(c, keys, 13, email="ned@example.com")
        rid = _verified(c, keys, {"kind": "access", "regulation": "GDPR", "identifiers": {"email": "ned@example.com"}})
        assert c.post(f"/v1/dsr/{rid}/run", headers=h).json()["complete"] is True
        sent = {m["topic"]: m["body"] for m in _outbox(c, keys, rid)}
        assert sent["access_package"]["token"] and "completion" in sent  # the link goes to the requester
        rid = _verified(
            c, keys, {"kind": "restriction", "regulation": "GDPR", "identifiers": {"email": "ned@example.com"}}
        )
        out = c.post(f"/v1/dsr/{rid}/run", headers=h).json()
        assert out["complete"] is True and out["results"] == [{"flags": {"restricted": True}}]
        nobody = _verified(
            c, keys, {"kind": "erasure", "regulation": "GDPR", "identifiers": {"email": "zed@example.com"}}
        )
        assert c.post(f"/v1/dsr/{nobody}/run", headers=h).json()["complete"] is True  # nothing held: nothing to do
