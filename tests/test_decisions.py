"""Consent decisions: the table of regimes, stale replays, GPC that follows a device, and the
population predicate agreeing with single decisions."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import text

from tests.conftest import Env, run
from tests.helpers import auth, client, make_keys, sync_db

M = "marketing.advertising.first_party.targeted"
A = "analytics.reporting"
T0 = datetime(2026, 6, 1, tzinfo=UTC)
NOW = -1
"""A day offset meaning: decided now (after the GPC signal the person's browser sent)."""


def _at(days: int) -> datetime:
    return datetime.now(UTC) if days == NOW else T0 + timedelta(days=days)


def _person(c: TestClient[Any], keys: dict[str, str], n: int, region: str | None, gpc: bool = False) -> str:
    traits = {"country": region} if region else {"plan": "x"}
    body = {"userId": f"p-{n}", "anonymousId": f"dev-{n}", "traits": traits}
    headers = {"Sec-GPC": "1"} if gpc else {}
    assert c.post("/v1/identify", json=body, auth=(keys["ingest"], ""), headers=headers).status_code == 200
    found = c.post("/v1/profiles/lookup", json={"kind": "user_id", "value": f"p-{n}"}, headers=auth(keys["admin"]))
    return str(found.json()["profiles"][0]["id"])


def _consent(c: TestClient[Any], keys: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    r = c.post("/v1/consents", json=body, headers=auth(keys["compliance"]))
    assert r.status_code == 201, r.text
    return dict(r.json())


def _grant(pid: str, purpose: str, state: str = "granted", at: datetime = T0, method: str = "form") -> dict[str, Any]:
    return {"profile_id": pid, "purpose": purpose, "state": state, "decided_at": at.isoformat(), "method": method}


# region, purpose, consents (purpose, state, days after T0, method), flags, gpc, categories, cross_border
# → decision, reason
CASES: list[tuple[str | None, str, list[tuple[str, str, int, str]], list[str], bool, list[str], bool, str, str]] = [
    ("DE", M, [], [], False, [], False, "deny", "no consent"),
    ("DE", M, [(M, "granted", 0, "form")], [], False, [], False, "allow", "allowed"),
    ("DE", M, [(M, "granted", 0, "form"), (M, "withdrawn", 1, "form")], [], False, [], False, "deny", "withdrawn"),
    ("DE", A, [], [], False, [], False, "allow", "allowed"),
    ("DE", M, [(M, "granted", 0, "form")], ["restricted"], False, [], False, "deny", "restricted"),
    ("DE", M, [(M, "granted", 0, "form")], ["suppressed"], False, [], False, "deny", "suppressed"),
    ("DE", M, [(M, "granted", 0, "form")], ["profiling_refused"], False, [], False, "deny", "profiling refused"),
    ("DE", A, [], ["profiling_refused"], False, [], False, "allow", "allowed"),  # reporting is not profiling
    (
        "DE",
        M,
        [(M, "granted", 0, "form")],
        [],
        False,
        ["user.health_and_medical"],
        False,
        "deny",
        "sensitive category without explicit consent",
    ),
    (
        "DE",
        M,
        [(M, "granted", 0, "form"), ("sensitive:user.health_and_medical", "granted", 0, "form")],
        [],
        False,
        ["user.health_and_medical"],
        False,
        "allow",
        "allowed",
    ),
    (
        "DE",
        M,
        [(M, "granted", 0, "form")],
        ["minor_under_16"],
        False,
        [],
        False,
        "deny",
        "minor without guardian consent",
    ),
    ("DE", M, [(M, "granted", 0, "guardian")], ["minor_under_16"], False, [], False, "allow", "allowed"),
    ("US-CA", M, [], [], False, [], False, "allow", "allowed"),
    ("US-CA", M, [(M, "denied", 0, "form")], [], False, [], False, "deny", "denied"),
    ("US-CA", M, [], [], True, [], False, "deny", "GPC"),
    (
        "US-CA",
        M,
        [(M, "granted", NOW, "form")],
        [],
        True,
        [],
        False,
        "allow",
        "allowed",
    ),  # a later opt-in overrides GPC
    ("US-CA", A, [], [], True, [], False, "allow", "allowed"),  # GPC is about sale/sharing, not reporting
    ("US-CA", M, [], ["minor_under_14"], False, [], False, "deny", "minor without guardian consent"),
    ("CN", M, [], [], False, [], False, "deny", "no consent"),
    ("CN", A, [], [], False, [], False, "deny", "no consent"),
    ("CN", M, [(M, "granted", 0, "form")], [], False, [], False, "allow", "allowed"),
    ("CN", M, [(M, "granted", 0, "form")], ["minor_under_16"], False, [], False, "allow", "allowed"),  # PIPL: under 14
    (
        "CN",
        M,
        [(M, "granted", 0, "form")],
        ["minor_under_14"],
        False,
        [],
        False,
        "deny",
        "minor without guardian consent",
    ),
    ("CN", M, [(M, "granted", 0, "form")], [], False, [], True, "deny", "cross-border transfer not consented"),
    (
        "CN",
        M,
        [(M, "granted", 0, "form"), (f"cross_border:{M}", "granted", 0, "form")],
        [],
        False,
        [],
        True,
        "allow",
        "allowed",
    ),
    (
        "CN",
        M,
        [(M, "granted", 0, "form")],
        [],
        False,
        ["user.government_id"],
        False,
        "deny",
        "sensitive category without explicit consent",
    ),
    (None, M, [], [], False, [], False, "deny", "no consent"),  # unknown jurisdiction: the strictest regime
    (None, A, [], [], False, [], False, "deny", "no consent"),
    (None, M, [(M, "granted", 0, "form")], [], True, [], False, "deny", "GPC"),  # strict: GPC is not overridable
    (None, M, [(M, "granted", 0, "form")], [], False, [], False, "allow", "allowed"),
]


def test_the_decision_table(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        people = []
        for n, (region, _p, consents, flags, gpc, *_rest) in enumerate(CASES):
            pid = _person(c, keys, n, region, gpc)
            body: dict[str, Any] = {
                "consents": [
                    _grant(pid, p, s, _at(d), method) | {"client_id": f"case-{n}-{i}"}
                    for i, (p, s, d, method) in enumerate(consents)
                ],
                "flags": {pid: {f: True for f in flags}} if flags else {},
            }
            if consents or flags:
                _consent(c, keys, body)
            people.append(pid)
        for n, (region, purpose, _c, _f, _gpc, cats, xb, decision, reason) in enumerate(CASES):
            ask = {"person": people[n], "purpose": purpose, "categories": cats, "cross_border": xb}
            r = c.post("/v1/decisions", json=ask, headers=auth(keys["marketer"]))
            assert r.status_code == 200, r.text
            got = r.json()
            assert (got["decision"], got["reason"]) == (decision, reason), (n, region, purpose, got)
            assert len(got["policy_version"]) == 16
        denied = c.get(
            "/v1/audit/entries", params={"action": "decision.denied", "limit": 1000}, headers=auth(keys["auditor"])
        )
        role = c.post(
            "/v1/decisions", json={"person": people[1], "purpose": M}, headers=auth(keys["compliance"])
        ).json()
        explained = c.get(
            "/v1/decisions/explain", params={"person": people[2], "purpose": M}, headers=auth(keys["auditor"])
        )
    expected_denials = sum(1 for case in CASES if case[7] == "deny")
    entries = denied.json()["entries"]
    assert len(entries) == expected_denials + 0
    assert all(e["details"]["policy_version"] and e["details"]["reason"] for e in entries)
    assert (role["decision"], role["reason"]) == ("deny", "role may not use purpose")
    assert explained.json()["reason"] == "withdrawn" and "withdrew" in explained.json()["rule"]
    assert explained.json()["jurisdiction"] == "GDPR"


def test_a_stale_replayed_grant_loses_to_a_newer_withdrawal(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        pid = _person(c, keys, 1, "DE")
        _consent(c, keys, {"consents": [_grant(pid, M, "granted", T0) | {"client_id": "g1"}]})
        _consent(c, keys, {"consents": [_grant(pid, M, "withdrawn", T0 + timedelta(days=2)) | {"client_id": "w1"}]})
        # the old grant arrives again, late, under a new client id: history only
        late = _consent(
            c, keys, {"consents": [_grant(pid, M, "granted", T0 + timedelta(days=1)) | {"client_id": "g1-late"}]}
        )
        again = _consent(c, keys, {"consents": [_grant(pid, M, "granted", T0) | {"client_id": "g1"}]})  # exact replay
        decision = c.post("/v1/decisions", json={"person": pid, "purpose": M}, headers=auth(keys["marketer"])).json()
        view = c.get(f"/v1/profiles/{pid}/consents", headers=auth(keys["compliance"])).json()
    assert late["stored"] == 1 and again == {"stored": 0, "duplicates": 1, "ids": []}
    assert (decision["decision"], decision["reason"]) == ("deny", "withdrawn")
    assert view["current"][M]["state"] == "withdrawn"
    assert [(h["state"], h["applied"]) for h in view["history"]] == [
        ("granted", True),
        ("granted", False),
        ("withdrawn", True),
    ]


def test_gpc_on_a_device_opts_out_a_profile_linked_to_it_later(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        w = (keys["client"], "")
        # browsing with GPC on, before anyone knows who this is
        assert (
            c.post(
                "/v1/page", json={"anonymousId": "ca-browser", "name": "Home"}, auth=w, headers={"Sec-GPC": "1"}
            ).status_code
            == 200
        )
        member = _person(c, keys, 7, "US-CA")  # a known Californian, opted in to nothing, opted out of nothing
        before = c.post("/v1/decisions", json={"person": member, "purpose": M}, headers=auth(keys["marketer"])).json()
        # later the browser logs in as that member: the GPC signal follows the browser to them
        c.post("/v1/identify", json={"userId": "p-7", "anonymousId": "ca-browser"}, auth=w)
        after = c.post("/v1/decisions", json={"person": member, "purpose": M}, headers=auth(keys["marketer"])).json()
    assert before["decision"] == "allow"
    assert (after["decision"], after["reason"]) == ("deny", "GPC")


def test_consent_preferences_sent_with_events_become_records(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        pid = _person(c, keys, 3, "DE")
        prefs = {"consent": {"categoryPreferences": {"Advertising": True, "Analytics": False}}}
        c.post("/v1/track", json={"userId": "p-3", "event": "Viewed", "context": prefs}, auth=(keys["ingest"], ""))
        allowed = c.post("/v1/decisions", json={"person": pid, "purpose": M}, headers=auth(keys["marketer"])).json()
        refused = c.post("/v1/decisions", json={"person": pid, "purpose": A}, headers=auth(keys["marketer"])).json()
        rudder = {"consentManagement": {"deniedConsentIds": ["marketing"]}}
        c.post("/v1/track", json={"userId": "p-3", "event": "Viewed", "context": rudder}, auth=(keys["ingest"], ""))
        withdrawn = c.post("/v1/decisions", json={"person": pid, "purpose": M}, headers=auth(keys["marketer"])).json()
    assert allowed["decision"] == "allow"
    assert (refused["decision"], refused["reason"]) == ("deny", "denied")
    assert (withdrawn["decision"], withdrawn["reason"]) == ("deny", "denied")


def test_merged_people_keep_the_most_restrictive_choice_and_show_the_conflict(env: Env) -> None:
    keys = make_keys()
    s = (keys["ingest"], "")
    with client() as c:
        for anon, traits in (("ma", {"email": "a@example.com"}), ("mb", {"phone": "+4915112345678"})):
            c.post("/v1/identify", json={"anonymousId": anon, "traits": {**traits, "country": "DE"}}, auth=s)
        ids = [
            c.post(
                "/v1/profiles/lookup", json={"kind": "anonymous_id", "value": k}, headers=auth(keys["admin"])
            ).json()["profiles"][0]["id"]
            for k in ("ma", "mb")
        ]
        a, b = ids
        _consent(c, keys, {"consents": [_grant(a, M, "granted", T0), _grant(b, M, "denied", T0 + timedelta(days=1))]})
        both = {"email": "a@example.com", "phone": "+4915112345678"}
        c.post("/v1/track", json={"anonymousId": "mz", "event": "x", "context": {"traits": both}}, auth=s)
        decision = c.post("/v1/decisions", json={"person": b, "purpose": M}, headers=auth(keys["marketer"])).json()
        view = c.get(f"/v1/profiles/{b}/consents", headers=auth(keys["compliance"])).json()
        # the person chooses again: the new choice applies to the whole merged person
        _consent(c, keys, {"consents": [_grant(a, M, "granted", T0 + timedelta(days=3))]})
        again = c.post("/v1/decisions", json={"person": b, "purpose": M}, headers=auth(keys["marketer"])).json()
    assert view["profile_id"] == a
    assert (decision["decision"], decision["reason"]) == ("deny", "denied")
    assert view["current"][M]["state"] == "denied" and view["current"][M]["conflict"] is True
    assert again["decision"] == "allow"


@pytest.mark.slow
def test_population_counts_agree_with_single_decisions_for_every_person(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10,000 generated people: the population predicate, each single decision and an
    independent Python reading of the rules give the same reason for every one."""
    from app.access.service import Principal
    from app.db import unit_of_work
    from app.decisions import service
    from app.decisions.engine import Ask, JoinedFacts, reason_expr
    from app.decisions.service import current_rules, decide_person, decide_population, population_predicate
    from app.profiles.service import population

    rng = random.Random(7)
    n = 10_000
    regions = ["DE", "FR", "US-CA", "CN", None, "JP"]
    people = []
    for i in range(n):
        people.append(
            {
                "id": f"00000000-0000-4000-8000-{i:012d}",
                "region": rng.choice(regions),
                "state": rng.choice([None, "granted", "denied", "withdrawn"]),
                "guardian": rng.random() < 0.1,
                "flags": [
                    f
                    for f in ("restricted", "profiling_refused", "minor_under_14", "minor_under_16")
                    if rng.random() < 0.05
                ],
                "gpc": rng.random() < 0.1,
                "later_grant": rng.random() < 0.5,
            }
        )
    now = datetime(2026, 11, 1, tzinfo=UTC)
    _bulk_people(people, now)
    principal = Principal("k", "marketer", "m")
    ask = Ask(M)

    some = set(rng.sample([p["id"] for p in people], 2_000))  # a segment: the narrowed form

    async def check() -> tuple[dict[str, str], dict[str, int], int]:
        rules = current_rules()
        table, person, region, live = population()
        async with unit_of_work() as s:
            from sqlalchemy import select

            rows = (await s.execute(select(person, reason_expr(rules, ask, person, region, now)).where(live))).all()
            facts = JoinedFacts(now)  # the population form: facts joined, not probed per person
            joined = select(person, reason_expr(rules, ask, person, region, now, facts))
            joined_rows = (await s.execute(joined.select_from(facts.joined(table, person)).where(live))).all()
            predicate = population_predicate(ask, person, region, now)
            allowed_ids = set((await s.execute(select(person).where(live, predicate))).scalars())
            counts = await decide_population(s, principal, ask, now)
            narrowed = await decide_population(s, principal, ask, now, within=person.in_(some), sample=25)
            monkeypatch.setattr(service, "SPLIT_FROM", 1_000)  # PostgreSQL: the same 2,000, in two halves
            halves = await decide_population(s, principal, ask, now, within=person.in_(some), sample=25)
            sample = rng.sample([p["id"] for p in people], 300)
            single = {pid: (await decide_person(s, principal, ask, pid, now, explain=True)).reason for pid in sample}
        by_row = {str(a): str(b) for a, b in rows}
        assert {str(a): str(b) for a, b in joined_rows} == by_row
        assert allowed_ids == {pid for pid, reason in by_row.items() if reason == "allowed"}
        within: dict[str, int] = {}
        for pid in some:
            within[by_row[pid]] = within.get(by_row[pid], 0) + 1
        assert (narrowed.allowed, narrowed.denied) == (within.pop("allowed", 0), within)
        assert narrowed.sample == sorted(pid for pid in some if by_row[pid] == "allowed")[:25]
        assert (halves.allowed, halves.denied, halves.sample) == (narrowed.allowed, narrowed.denied, narrowed.sample)
        assert all(by_row[pid] == reason for pid, reason in single.items())
        return by_row, counts.denied, counts.allowed

    by_row, denied, allowed = run(check())
    rules = _oracle_rules()
    for p in people:
        assert by_row[p["id"]] == _oracle(rules, p), p
    expected: dict[str, int] = {}
    for reason in by_row.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert allowed == expected.pop("allowed", 0) and denied == expected


def _bulk_people(people: list[dict[str, Any]], now: datetime) -> None:
    t = now - timedelta(days=10)
    with sync_db() as conn:
        conn.execute(
            text(
                "INSERT INTO profile (id, created_at, updated_at, traits, trait_sources, region) "
                "VALUES (:id, :t, :t, '{}', '{}', :region)"
            ),
            [{"id": p["id"], "t": t, "region": p["region"]} for p in people],
        )
        states = [p for p in people if p["state"]]
        conn.execute(
            text(
                "INSERT INTO consent_state (origin_id, purpose, profile_id, state, method, decided_at,"
                " received_at, record_id) VALUES (:id, :purpose, :id, :state, :method, :at, :at, :id)"
            ),
            [
                {
                    "id": p["id"],
                    "purpose": M,
                    "state": p["state"],
                    "method": "guardian" if p["guardian"] else "form",
                    "at": t + timedelta(days=5) if p["later_grant"] else t - timedelta(days=5),
                }
                for p in states
            ],
        )
        flags = [{"id": p["id"], "flag": f, "t": t} for p in people for f in p["flags"]]
        if flags:
            conn.execute(
                text(
                    "INSERT INTO privacy_flag (origin_id, flag, profile_id, set_at, source)"
                    " VALUES (:id, :flag, :id, :t, 'test')"
                ),
                flags,
            )
        gpc = [{"id": p["id"], "t": t} for p in people if p["gpc"]]
        conn.execute(
            text(
                "INSERT INTO identifier (origin_id, kind, digest, profile_id, first_seen, trust, gpc_at)"
                " VALUES (:id, 'anonymous_id', :id, :id, :t, 'client', :t)"
            ),
            gpc,
        )


def _oracle_rules() -> Any:
    from app.consent.rules import load_rules
    from app.settings import get_settings

    return load_rules(get_settings().policy_dir)


def _oracle(rules: Any, p: dict[str, Any]) -> str:
    """The rules of jurisdictions.yaml read independently, for the marketing purpose."""
    j = rules.jurisdiction_of(p["region"])
    mode = j.mode(M)
    flags, state = set(p["flags"]), p["state"]
    if mode == "none":
        return "allowed"
    if "restricted" in flags:
        return "restricted"
    if j.profiling_refusal and "profiling_refused" in flags:
        return "profiling refused"
    minor = "minor_under_14" in flags or (j.minor_age > 14 and "minor_under_16" in flags)
    if minor and not (state == "granted" and p["guardian"]):
        return "minor without guardian consent"
    if M in j.gpc and p["gpc"] and not (j.gpc_overridable and state == "granted" and p["later_grant"]):
        return "GPC"
    if state == "withdrawn":
        return "withdrawn"
    if state == "denied":
        return "denied"
    if mode == "opt_in" and state != "granted":
        return "no consent"
    return "allowed"


def test_tcf_and_gpp_strings_sent_with_events_become_consent_or_are_refused_with_a_reason(env: Env) -> None:
    from tests.test_consent_signals import GPP_VECTORS, TCF_VECTORS

    def string(vectors: list[dict[str, Any]], prefix: str) -> str:
        return str(next(v["string"] for v in vectors if v["name"].startswith(prefix)))

    all_purposes = string(TCF_VECTORS, "all eleven purposes")
    refused_all = string(TCF_VECTORS, "everything refused")
    version_2 = string(TCF_VECTORS, "policy version 2")
    opted_out = string(GPP_VECTORS, "usnat v2 opted out of everything")
    keys = make_keys()
    s = (keys["ingest"], "")
    with client() as c:
        eu, ca = _person(c, keys, 1, "DE"), _person(c, keys, 2, "US-CA")
        batch = [
            {"type": "track", "userId": "p-1", "event": "Consent", "context": {"tcf": all_purposes}},
            {"type": "track", "userId": "p-1", "event": "Consent", "context": {"tcf": version_2}},
            {"type": "track", "userId": "p-1", "event": "Consent", "context": {"tcf": all_purposes[:26]}},
            {"type": "track", "userId": "p-2", "event": "Consent", "context": {"gpp": opted_out}},
        ]
        body = c.post("/v1/batch", json={"batch": batch}, auth=s).json()
        granted = c.post("/v1/decisions", json={"person": eu, "purpose": M}, headers=auth(keys["marketer"])).json()
        opted = c.post("/v1/decisions", json={"person": ca, "purpose": M}, headers=auth(keys["marketer"])).json()
        later = [{"type": "track", "userId": "p-1", "event": "Consent", "context": {"tcf": refused_all}}]
        c.post("/v1/batch", json={"batch": later}, auth=s)
        withdrawn = c.post("/v1/decisions", json={"person": eu, "purpose": M}, headers=auth(keys["marketer"])).json()
    rejected = {r["index"]: r for r in body["rejected"]}
    assert body["accepted"] == 2 and set(rejected) == {1, 2}
    assert rejected[1]["field"] == "context.tcf" and "below 4" in rejected[1]["reason"]
    assert rejected[2]["field"] == "context.tcf" and all_purposes[:26] not in str(body)
    assert granted["decision"] == "allow"
    assert (opted["decision"], opted["reason"]) == ("deny", "denied")
    assert (withdrawn["decision"], withdrawn["reason"]) == ("deny", "denied")


def test_policy_diff_counts_who_a_change_would_newly_allow_or_deny(env: Env, tmp_path: Any) -> None:
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from app.settings import get_settings

    keys = make_keys()
    with client() as c:
        de = [_person(c, keys, n, "DE") for n in range(3)]
        _consent(c, keys, {"consents": [_grant(de[0], M, "granted", T0)]})
        _person(c, keys, 9, "US-CA")
    new = tmp_path / "policies"
    shutil.copytree(get_settings().policy_dir, new)
    j = new / "jurisdictions.yaml"  # GDPR marketing becomes opt-out; CCPA marketing opt-in
    data = yaml.safe_load(j.read_text())
    data["jurisdictions"]["GDPR"]["purposes"][M] = "opt_out"
    data["jurisdictions"]["CCPA"]["purposes"][M] = "opt_in"
    j.write_text(yaml.safe_dump(data, allow_unicode=True))
    out = subprocess.run(
        [sys.executable, "-m", "app", "policy", "diff", str(get_settings().policy_dir), str(Path(new))],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith(M))
    assert line.split()[1:] == ["2", "1"]  # two Germans without consent newly allowed; the Californian denied


def test_each_grant_has_a_consent_receipt(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        pid = _person(c, keys, 1, "DE")
        stored = _consent(c, keys, {"consents": [_grant(pid, M) | {"notice_version": "privacy-2026-09"}]})
        r = c.get(f"/v1/consents/{stored['ids'][0]}/receipt", headers=auth(keys["compliance"]))
        missing = c.get("/v1/consents/nope/receipt", headers=auth(keys["compliance"]))
    assert r.status_code == 200, r.text
    receipt = r.json()
    assert receipt["version"] == "KI-CR-v1.1.0" and receipt["consentReceiptID"] == stored["ids"][0]
    assert receipt["piiPrincipalId"] == pid and receipt["collectionMethod"] == "form"
    assert receipt["policyUrl"].endswith("/2026-09") and receipt["services"][0]["service"] == M
    assert receipt["consentTimestamp"] == int(T0.timestamp())
    assert missing.status_code == 404


def test_a_birthday_makes_a_minor_who_needs_a_guardians_consent(env: Env) -> None:
    today = datetime.now(UTC).date()

    def born(years: int) -> str:
        return today.replace(year=today.year - years, day=min(today.day, 28)).isoformat()

    keys = make_keys()
    s = (keys["ingest"], "")
    people = {}
    with client() as c:
        for name, region, age in (("cn12", "CN", 12), ("cn15", "CN", 15), ("de15", "DE", 15), ("de30", "DE", 30)):
            body = {"userId": name, "traits": {"country": region, "birthday": born(age)}}
            assert c.post("/v1/identify", json=body, auth=s).json()["accepted"] == 1
            pid = c.post("/v1/profiles/lookup", json={"kind": "user_id", "value": name}, headers=auth(keys["admin"]))
            people[name] = pid.json()["profiles"][0]["id"]
            _consent(c, keys, {"consents": [_grant(people[name], M)]})
        got = {
            name: c.post("/v1/decisions", json={"person": pid, "purpose": M}, headers=auth(keys["marketer"])).json()
            for name, pid in people.items()
        }
        # a guardian's consent lets the 12-year-old's data be used
        _consent(c, keys, {"consents": [_grant(people["cn12"], M, at=T0 + timedelta(days=1), method="guardian")]})
        guardian = c.post(
            "/v1/decisions", json={"person": people["cn12"], "purpose": M}, headers=auth(keys["marketer"])
        )
        # the birthday corrected: an adult after all
        c.patch(f"/v1/profiles/{people['de15']}", json={"traits": {"birthday": born(40)}}, headers=auth(keys["admin"]))
        adult = c.post("/v1/decisions", json={"person": people["de15"], "purpose": M}, headers=auth(keys["marketer"]))
    assert got["cn12"]["reason"] == "minor without guardian consent"
    assert got["cn15"]["decision"] == "allow"  # PIPL: under 14
    assert got["de15"]["reason"] == "minor without guardian consent"  # GDPR marketing: under 16
    assert got["de30"]["decision"] == "allow"
    assert guardian.json()["decision"] == "allow"
    assert adult.json()["decision"] == "allow"


def test_the_same_bulk_consents_sent_twice_at_once_are_stored_once(env: Env) -> None:
    """Two requests carrying the same client ids race: each record is stored once, and each
    request reports only the ones it stored."""
    import asyncio

    from app.consent.records import Choice, record_choices
    from app.db import unit_of_work

    keys = make_keys()
    with client() as c:
        people = [_person(c, keys, n, "DE") for n in range(1, 4)]

    async def send() -> list[str]:
        choices = [Choice(p, M, "granted", "form", "race", T0, client_id=f"race-{n}") for n, p in enumerate(people)]
        async with unit_of_work() as session:
            return [r.id for r in await record_choices(session, choices)]

    async def both() -> list[list[str]]:
        return list(await asyncio.gather(send(), send()))

    first, second = run(both())
    assert sorted([len(first), len(second)]) == [0, 3]
    with sync_db() as conn:
        stored = conn.execute(text("SELECT count(*) FROM consent_record WHERE source = 'race'")).scalar()
    assert stored == 3


def test_explain_replays_the_policy_in_force_at_a_past_time(env: Env, tmp_path: Any, monkeypatch: Any) -> None:
    """After a policy change, ``explain?at=`` before the change answers under the old version."""
    import shutil
    import time

    import yaml

    from app.settings import get_settings

    keys = make_keys()
    with client() as c:  # the service starts with today's policy: GDPR marketing is opt-in
        pid = _person(c, keys, 1, "DE")
        before = c.get("/v1/decisions/explain", params={"person": pid, "purpose": M}, headers=auth(keys["compliance"]))
    time.sleep(0.05)
    between = datetime.now(UTC).isoformat()
    time.sleep(0.05)
    new = tmp_path / "policies"
    shutil.copytree(get_settings().policy_dir, new)
    j = new / "jurisdictions.yaml"
    data = yaml.safe_load(j.read_text())
    data["jurisdictions"]["GDPR"]["purposes"][M] = "opt_out"
    j.write_text(yaml.safe_dump(data, allow_unicode=True))
    monkeypatch.setenv("CONSENTRY_POLICY_DIR", str(new))
    get_settings.cache_clear()
    with client() as c:  # restarted with the new policy
        now = c.get("/v1/decisions/explain", params={"person": pid, "purpose": M}, headers=auth(keys["compliance"]))
        then = c.get(
            "/v1/decisions/explain",
            params={"person": pid, "purpose": M, "at": between},
            headers=auth(keys["compliance"]),
        )
        too_early = c.get(
            "/v1/decisions/explain",
            params={"person": pid, "purpose": M, "at": "2001-01-01T00:00:00Z"},
            headers=auth(keys["compliance"]),
        )
    old, current, replay = before.json(), now.json(), then.json()
    assert (old["decision"], old["reason"]) == ("deny", "no consent")
    assert (current["decision"], current["reason"]) == ("allow", "allowed")
    assert current["policy_version"] != old["policy_version"]
    assert (replay["decision"], replay["reason"], replay["policy_version"]) == (
        "deny",
        "no consent",
        old["policy_version"],
    )
    assert replay["state_as_of"] == "now"
    assert too_early.status_code == 422 and too_early.json()["invalid-params"][0]["name"] == "at"


def test_a_minor_grows_up_on_their_birthday_without_anyone_touching_the_profile(env: Env) -> None:
    """The minor flag a birthday sets lapses on the 16th birthday: decisions from that day on
    no longer ask for a guardian, and the retention run removes the lapsed flag."""
    from app.access.service import SYSTEM
    from app.db import unit_of_work
    from app.decisions.engine import Ask
    from app.decisions.service import decide_person

    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    try:
        born = tomorrow.replace(year=tomorrow.year - 16)
    except ValueError:  # 29 February
        born = tomorrow.replace(year=tomorrow.year - 16, day=28)
    keys = make_keys()
    with client() as c:
        body = {"userId": "teen", "traits": {"country": "DE", "birthday": born.isoformat()}}
        assert c.post("/v1/identify", json=body, auth=(keys["ingest"], "")).json()["accepted"] == 1
        found = c.post("/v1/profiles/lookup", json={"kind": "user_id", "value": "teen"}, headers=auth(keys["admin"]))
        pid = found.json()["profiles"][0]["id"]
        _consent(c, keys, {"consents": [_grant(pid, M)]})
        today = c.post("/v1/decisions", json={"person": pid, "purpose": M}, headers=auth(keys["marketer"])).json()

    async def on(day: datetime) -> str:
        async with unit_of_work() as session:
            return (await decide_person(session, SYSTEM, Ask(M), pid, day, explain=True)).reason

    after = datetime(tomorrow.year, tomorrow.month, tomorrow.day, 12, tzinfo=UTC) + timedelta(days=1)
    assert today["reason"] == "minor without guardian consent"
    assert run(on(after)) == "allowed"
    with sync_db() as conn:  # the birthday has passed (as the daily run will see it)
        conn.execute(text("UPDATE privacy_flag SET until = :t WHERE profile_id = :p"), {"t": "2001-01-01", "p": pid})
    from app.retention.service import run_retention

    async def retention() -> dict[str, int]:
        async with unit_of_work() as session:
            return (await run_retention(session, datetime.now(UTC), dry_run=False)).removed

    assert run(retention())["privacy_flag"] == 1
    with sync_db() as conn:
        left = conn.execute(text("SELECT count(*) FROM privacy_flag WHERE profile_id = :p"), {"p": pid}).scalar()
    assert left == 0


def test_concurrent_bulk_consents_for_the_same_people_in_any_order_all_succeed(env: Env) -> None:
    """Two bulk writes naming the same people in opposite orders: both are stored (no
    deadlock surfaces as an error), and each person ends with one current state."""
    import asyncio

    from app.consent.records import Choice, record_choices
    from app.db import unit_of_work

    keys = make_keys()
    with client() as c:
        people = [_person(c, keys, n, "DE") for n in range(1, 41)]

    async def send(order: list[str], tag: str, state: str) -> int:
        choices = [Choice(p, M, state, "form", tag, T0, client_id=f"{tag}-{p}") for p in order]
        async with unit_of_work() as session:
            return len(await record_choices(session, choices))

    async def both() -> list[int]:
        return list(await asyncio.gather(send(people, "a", "granted"), send(list(reversed(people)), "b", "withdrawn")))

    assert run(both()) == [40, 40]
    with sync_db() as conn:
        states = conn.execute(text("SELECT state, count(*) FROM consent_state GROUP BY state")).all()
    assert dict(states) == {"withdrawn": 40}  # a withdrawal always applies


def test_a_purpose_that_needs_no_consent_is_decided_for_one_person(env: Env) -> None:
    """A defect: a purpose needing no consent anywhere compiled to a statement without the
    time, and binding the time then answered 500."""
    keys = make_keys()
    with client() as c:
        pid = _person(c, keys, 1, "DE")
        ask = {"person": pid, "purpose": "essential.service"}
        r = c.post("/v1/decisions", json=ask, headers=auth(keys["compliance"]))
    assert r.status_code == 200, r.text
    assert (r.json()["decision"], r.json()["reason"]) == ("allow", "allowed")
