"""Identity you can trust: what a public write key (trust ``client``) can and cannot do to
other people, and what a backend key (trust ``server``) does with the same calls.

``keys["client"]`` is a web page's write key; ``keys["ingest"]`` a backend's.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from litestar.testing import TestClient
from sqlalchemy import text

from tests.conftest import Env
from tests.helpers import auth, client, make_keys, sync_db


def _ids(c: TestClient[Any], admin: str, **q: str) -> list[str]:
    r = c.post("/v1/profiles/lookup", json=q, headers=auth(admin))
    assert r.status_code == 200, r.text
    return [p["id"] for p in r.json()["profiles"]]


def _view(c: TestClient[Any], compliance: str, pid: str) -> dict[str, Any]:
    r = c.get(f"/v1/profiles/{pid}", headers=auth(compliance))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _entries(c: TestClient[Any], auditor: str, action: str) -> list[dict[str, Any]]:
    r = c.get("/v1/audit/entries", params={"action": action, "limit": 1000}, headers=auth(auditor))
    return list(r.json()["entries"])


def _merges() -> int:
    with sync_db() as conn:
        return int(conn.execute(text("SELECT count(*) FROM profile_merge")).scalar() or 0)


def _victim(c: TestClient[Any], keys: dict[str, str]) -> str:
    r = c.post(
        "/v1/identify",
        json={"userId": "victim-1", "traits": {"email": "vera@example.com", "firstName": "Vera", "plan": "gold"}},
        auth=(keys["ingest"], ""),
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1
    return _ids(c, keys["admin"], kind="user_id", value="victim-1")[0]


def test_a_client_claiming_someones_email_neither_links_nor_overwrites_them(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        victim = _victim(c, keys)
        attack = {"anonymousId": "attacker-device", "traits": {"email": "vera@example.com", "firstName": "Mallory"}}
        assert c.post("/v1/identify", json=attack, auth=(keys["client"], "")).json()["accepted"] == 1
        view = _view(c, keys["compliance"], victim)
        assert view["traits"]["firstName"] == "Vera"
        assert sorted(i["kind"] for i in view["identities"]) == ["email", "user_id"]
        attacker = _ids(c, keys["admin"], kind="anonymous_id", value="attacker-device")
        assert attacker and attacker != [victim]
        assert _ids(c, keys["admin"], email="vera@example.com") == [victim]  # the email is still hers alone
        claims = _entries(c, keys["auditor"], "identity.claim_unverified")
        assert [(e["subject_id"], e["details"]["via"], e["details"]["rule"]) for e in claims] == [
            (attacker[0], "email", "client_trust")
        ]
        assert "vera@example.com" not in str(claims)

        # the same call from a backend source is believed: the device joins her profile
        server = {"anonymousId": "her-laptop", "traits": {"email": "vera@example.com", "firstName": "Vera B."}}
        assert c.post("/v1/identify", json=server, auth=(keys["ingest"], "")).json()["accepted"] == 1
        assert _ids(c, keys["admin"], kind="anonymous_id", value="her-laptop") == [victim]
        assert _view(c, keys["compliance"], victim)["traits"]["firstName"] == "Vera B."
    assert _merges() == 0


def test_client_trait_values_never_replace_what_a_server_set(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        victim = _victim(c, keys)
        later = {"userId": "victim-1", "traits": {"firstName": "Mallory", "plan": "free", "theme": "dark"}}
        assert c.post("/v1/identify", json=later, auth=(keys["client"], "")).json()["accepted"] == 1
        traits = _view(c, keys["compliance"], victim)["traits"]
    assert traits["firstName"] == "Vera" and traits["plan"] == "gold"
    assert traits["theme"] == "dark"  # what no server set, a client may set


def test_one_anonymous_id_shared_by_two_known_people_merges_nobody(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        for who in ("xia", "yan"):
            body = {"anonymousId": f"crm-{who}", "traits": {"email": f"{who}@example.com"}}
            assert c.post("/v1/identify", json=body, auth=(keys["ingest"], "")).json()["accepted"] == 1
        for key in (keys["client"], keys["ingest"]):  # neither a page nor a backend can fuse them through a device
            shared = f"shared-{key[-6:]}"
            for who in ("xia", "yan"):
                body = {"anonymousId": shared, "traits": {"email": f"{who}@example.com"}}
                assert c.post("/v1/identify", json=body, auth=(key, "")).json()["accepted"] == 1
        xia = _ids(c, keys["admin"], email="xia@example.com")
        yan = _ids(c, keys["admin"], email="yan@example.com")
        assert len(xia) == 1 and len(yan) == 1 and xia != yan
        blocked = _entries(c, keys["auditor"], "identity.merge_blocked")
    assert _merges() == 0
    assert {e["details"]["rule"] for e in blocked} == {"shared_device"}


def test_a_device_seen_with_two_user_ids_is_refused_the_second_link_whatever_the_cap(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        w = (keys["client"], "")
        c.post("/v1/identify", json={"userId": "u-1", "anonymousId": "kiosk"}, auth=w)
        c.post("/v1/identify", json={"userId": "u-2", "anonymousId": "kiosk"}, auth=w)
        one, two = (_ids(c, keys["admin"], kind="user_id", value=u) for u in ("u-1", "u-2"))
        assert one != two
        assert _ids(c, keys["admin"], kind="anonymous_id", value="kiosk") == one
        entry = _entries(c, keys["auditor"], "identity.merge_blocked")[0]
    assert entry["details"]["rule"] == "shared_device" and entry["details"]["via"] == "anonymous_id"
    assert _merges() == 0


def test_a_client_still_stitches_anonymous_browsing_to_the_user_it_identifies(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        w = (keys["client"], "")
        c.post("/v1/page", json={"anonymousId": "browser-9", "name": "Home"}, auth=w)
        c.post("/v1/track", json={"anonymousId": "browser-9", "event": "Added to Cart"}, auth=w)
        c.post("/v1/identify", json={"userId": "member-9", "anonymousId": "browser-9"}, auth=w)
        pid = _ids(c, keys["admin"], kind="user_id", value="member-9")
        assert _ids(c, keys["admin"], kind="anonymous_id", value="browser-9") == pid
        assert _view(c, keys["compliance"], pid[0])["summary"]["events"] == 3
        # a second browser of the same member: an anonymous profile joins the known one
        c.post("/v1/page", json={"anonymousId": "phone-9", "name": "Home"}, auth=w)
        c.post("/v1/identify", json={"userId": "member-9", "anonymousId": "phone-9"}, auth=w)
        assert _ids(c, keys["admin"], kind="anonymous_id", value="phone-9") == pid
        assert _view(c, keys["compliance"], pid[0])["summary"]["events"] == 5


def test_a_verified_user_hash_makes_a_client_call_count_as_server_for_that_user(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        made = c.post("/v1/keys", json={"role": "ingest", "name": "shop-web"}, headers=auth(keys["admin"])).json()
        assert made["trust"] == "client" and made["identity_secret"]
        listed = {k["id"]: k for k in c.get("/v1/keys", headers=auth(keys["admin"])).json()}
        assert listed[made["id"]]["trust"] == "client" and listed[made["id"]]["identity_secret"] is None
        w = (made["key"], "")
        c.post(
            "/v1/identify",
            json={"anonymousId": "crm-z", "traits": {"email": "zoe@example.com"}},
            auth=(keys["ingest"], ""),
        )
        c.post("/v1/identify", json={"userId": "zoe-1"}, auth=w)
        bad = {"userId": "zoe-1", "traits": {"email": "zoe@example.com"}, "context": {"userHash": "0" * 64}}
        c.post("/v1/identify", json=bad, auth=w)
        assert (
            len(
                set(
                    _ids(c, keys["admin"], email="zoe@example.com")
                    + _ids(c, keys["admin"], kind="user_id", value="zoe-1")
                )
            )
            == 2
        )
        good_hash = hmac.new(made["identity_secret"].encode(), b"zoe-1", hashlib.sha256).hexdigest()
        good = {"userId": "zoe-1", "traits": {"email": "zoe@example.com"}, "context": {"userHash": good_hash}}
        c.post("/v1/identify", json=good, auth=w)
        assert _ids(c, keys["admin"], email="zoe@example.com") == _ids(c, keys["admin"], kind="user_id", value="zoe-1")
    assert _merges() == 1


def test_a_client_never_merges_two_known_people_even_through_a_user_id(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        s = (keys["ingest"], "")
        c.post("/v1/identify", json={"userId": "ann", "anonymousId": "ann-laptop"}, auth=s)
        c.post("/v1/identify", json={"userId": "bob", "traits": {"email": "bob@example.com"}}, auth=s)
        w = (keys["client"], "")
        c.post("/v1/identify", json={"userId": "bob", "anonymousId": "ann-laptop"}, auth=w)
        c.post("/v1/identify", json={"userId": "ann", "traits": {"email": "bob@example.com"}}, auth=w)
        ann, bob = (_ids(c, keys["admin"], kind="user_id", value=u) for u in ("ann", "bob"))
        assert ann != bob and _ids(c, keys["admin"], email="bob@example.com") == bob
    assert _merges() == 0


def test_ingest_keys_write_but_never_read_or_learn_who_exists(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        victim = _victim(c, keys)
        for key in (keys["client"], keys["ingest"]):
            r = c.post(
                "/v1/texts",
                json={
                    "text": "hi, is my order on its way?",
                    "channel": "chat",
                    "author": {"email": "vera@example.com"},
                },
                auth=(key, ""),
            )
            assert r.status_code == 201
            assert set(r.json()[0]) == {"id", "language", "redacted", "entities"}  # no profile id: no oracle
            h = auth(key)
            assert c.get(f"/v1/profiles/{victim}", headers=h).status_code == 403
            assert (
                c.patch(f"/v1/profiles/{victim}", json={"traits": {"email": "evil@example.com"}}, headers=h).status_code
                == 403
            )
            assert c.post("/v1/profiles", json={"traits": {"email": "vera@example.com"}}, headers=h).status_code == 403
            assert c.post("/v1/profiles/lookup", json={"email": "vera@example.com"}, headers=h).status_code == 403
        assert _ids(c, keys["admin"], email="vera@example.com") == [victim]
        assert _ids(c, keys["admin"], email="evil@example.com") == []
        with sync_db() as conn:
            authors = dict(conn.execute(text("SELECT source, profile_id FROM text_record")).all())
    assert authors["test-web"] != victim  # a page's claim of her email does not make her the author
    assert authors["test-source"] == victim  # a backend's does


def test_identifiers_mentioned_in_a_text_link_and_merge_nobody(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        s = (keys["ingest"], "")
        c.post("/v1/identify", json={"userId": "wife-1", "traits": {"email": "wife@example.com"}}, auth=s)
        c.post("/v1/identify", json={"anonymousId": "husband-chat", "traits": {"phone": "+14155550111"}}, auth=s)
        msg = "send the invoice to my wife at wife@example.com, or call me on +1 415 555 0199"
        for channel in ("chat", "ticket", "email"):
            body = {"text": msg, "channel": channel, "author": {"anonymous_id": "husband-chat"}}
            assert c.post("/v1/texts", json=body, auth=s).status_code == 201
        wife = _ids(c, keys["admin"], email="wife@example.com")
        husband = _ids(c, keys["admin"], kind="anonymous_id", value="husband-chat")
        assert len(wife) == 1 and wife != husband
        assert _ids(c, keys["admin"], phone="+1 415 555 0199") == []
        assert sorted(i["kind"] for i in _view(c, keys["compliance"], husband[0])["identities"]) == [
            "anonymous_id",
            "phone",
        ]
    assert _merges() == 0


def test_creating_a_profile_with_an_email_someone_holds_answers_that_person(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        victim = _victim(c, keys)
        r = c.post(
            "/v1/profiles", json={"traits": {"email": "Vera@Example.com", "tier": "vip"}}, headers=auth(keys["admin"])
        )
        assert r.status_code == 201 and r.json() == {"id": victim, "created": False, "fields": ["email", "tier"]}
        assert _ids(c, keys["admin"], email="vera@example.com") == [victim]
        c.post(
            "/v1/track",
            json={"userId": "victim-1", "event": "Viewed", "context": {"traits": {"email": "vera@example.com"}}},
            auth=(keys["ingest"], ""),
        )
        view = _view(c, keys["compliance"], victim)
        other = c.post(
            "/v1/profiles", json={"traits": {"email": "new@example.com"}}, headers=auth(keys["admin"])
        ).json()
        taken = c.patch(
            f"/v1/profiles/{other['id']}", json={"traits": {"email": "vera@example.com"}}, headers=auth(keys["admin"])
        )
    assert view["summary"]["events"] == 2 and view["traits"]["tier"] == "vip"
    assert taken.status_code == 409 and "vera" not in taken.text


def test_phone_extensions_are_part_of_the_identifier(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        s = (keys["ingest"], "")
        c.post("/v1/identify", json={"userId": "desk-12", "traits": {"phone": "+1 415 555 0100 ext. 12"}}, auth=s)
        c.post("/v1/identify", json={"userId": "desk-13", "traits": {"phone": "+1 (415) 555-0100 x13"}}, auth=s)
        a = _ids(c, keys["admin"], kind="user_id", value="desk-12")
        b = _ids(c, keys["admin"], kind="user_id", value="desk-13")
        assert a != b
        assert _ids(c, keys["admin"], phone="+14155550100;ext=12") == a
        assert _ids(c, keys["admin"], phone="415 555 0100 extension 13") == b
        assert _ids(c, keys["admin"], phone="+1 415 555 0100") == []
        assert _view(c, keys["compliance"], a[0])["traits"]["phone"] == "+14155550100;ext=12"
    assert _merges() == 0
