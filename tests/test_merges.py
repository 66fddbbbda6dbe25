"""Merges lose nothing and can be undone; history is transitive; concurrent merges lose nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import text

from tests.conftest import PG_URL, Env, run
from tests.helpers import auth, client, make_keys, sync_db

HOLDER_TABLES = (
    "event",
    "identifier",
    "profile_field",
    "consent_signal",
    "text_record",
    "text_vault",
    "identity_claim",
)


def _id(c: TestClient[Any], admin: str, **q: str) -> str:
    found = c.post("/v1/profiles/lookup", json=q, headers=auth(admin)).json()["profiles"]
    assert len(found) == 1, found
    return str(found[0]["id"])


def _snapshot(c: TestClient[Any], compliance: str, pid: str) -> dict[str, Any]:
    view = c.get(f"/v1/profiles/{pid}", headers=auth(compliance)).json()
    events = c.get(f"/v1/profiles/{pid}/events", params={"limit": 500}, headers=auth(compliance)).json()["events"]
    return {
        "id": view["id"],
        "traits": view["traits"],
        "identities": sorted((i["kind"], i["value"]) for i in view["identities"]),
        "events": sorted(e["message_id"] for e in events),
    }


def _stranded() -> int:
    """Rows left on a profile that was merged away (they must all belong to the survivor)."""
    with sync_db() as conn:
        return sum(
            int(
                conn.execute(
                    text(
                        f"SELECT count(*) FROM {t} x JOIN profile p ON p.id = x.profile_id"
                        " WHERE p.merged_into IS NOT NULL"
                    )
                ).scalar()
                or 0
            )
            for t in HOLDER_TABLES
        )


def test_merge_then_unmerge_restores_both_people_exactly(env: Env) -> None:
    keys = make_keys()
    s = (keys["ingest"], "")
    with client() as c:
        c.post(
            "/v1/identify",
            json={
                "userId": "sam-crm",
                "messageId": "old-1",
                "traits": {"email": "sam@example.com", "firstName": "Sam", "plan": "gold"},
                "timestamp": "2026-01-01T00:00:00Z",
            },
            auth=s,
        )
        c.post("/v1/track", json={"userId": "sam-crm", "event": "Ordered", "messageId": "old-2"}, auth=s)
        c.post(
            "/v1/identify",
            json={
                "anonymousId": "app-install-1",
                "messageId": "young-1",
                "traits": {"phone": "+14155550123", "firstName": "Samuel", "plan": "free"},
                "timestamp": "2026-02-01T00:00:00Z",
            },
            auth=s,
        )
        for n in range(3):
            c.post(
                "/v1/track",
                json={"anonymousId": "app-install-1", "event": "Opened", "messageId": f"young-t{n}"},
                auth=s,
            )
        text_body = {
            "text": "my card 4111 1111 1111 1111 is blocked",
            "channel": "chat",
            "author": {"anonymous_id": "app-install-1"},
        }
        text_id = c.post("/v1/texts", json=text_body, auth=s).json()[0]["id"]
        old, young = _id(c, keys["admin"], email="sam@example.com"), _id(c, keys["admin"], phone="+14155550123")
        before_old, before_young = _snapshot(c, keys["compliance"], old), _snapshot(c, keys["compliance"], young)

        link = {
            "userId": "sam-crm",
            "event": "Linked App",
            "messageId": "link-1",
            "context": {"traits": {"phone": "+14155550123"}},
        }
        assert c.post("/v1/track", json=link, auth=s).json()["accepted"] == 1
        merged = _snapshot(c, keys["compliance"], young)
        assert merged["id"] == old  # the old id survives; the young id answers with it
        assert set(merged["events"]) == {*before_old["events"], *before_young["events"], "link-1"}
        assert set(merged["identities"]) == {*before_old["identities"], *before_young["identities"]}
        assert merged["traits"]["firstName"] == "Samuel" and merged["traits"]["plan"] == "free"  # most recent wins
        assert c.get(f"/v1/texts/{text_id}", headers=auth(keys["compliance"])).json()["profile_id"] == old
        assert _stranded() == 0

        assert c.post(f"/v1/profiles/{young}/unmerge", headers=auth(keys["compliance"])).status_code == 403
        r = c.post(f"/v1/profiles/{young}/unmerge", headers=auth(keys["admin"]))
        assert r.status_code == 200, r.text
        assert r.json() == {"restored": young, "survivor": old}
        after_old, after_young = _snapshot(c, keys["compliance"], old), _snapshot(c, keys["compliance"], young)
        read = c.get(f"/v1/texts/{text_id}", headers=auth(keys["compliance"])).json()
        again = c.post(f"/v1/profiles/{young}/unmerge", headers=auth(keys["admin"]))
        entry = c.get("/v1/audit/entries", params={"action": "identity.unmerge"}, headers=auth(keys["auditor"])).json()[
            "entries"
        ]
    assert after_young == before_young
    assert after_old == {
        **before_old,
        "events": sorted([*before_old["events"], "link-1"]),
    }  # the linking event was Sam's
    assert read["profile_id"] == young and read["text"] == text_body["text"]
    assert again.status_code == 404
    assert [(e["subject_id"], e["details"]["from_profile"], e["actor_role"]) for e in entry] == [(young, old, "admin")]
    with sync_db() as conn:
        merges = conn.execute(text("SELECT count(*) FROM profile_merge WHERE unmerged_at IS NOT NULL")).scalar()
        keys_left = conn.execute(text("SELECT count(*) FROM subject_key")).scalar()
    assert merges == 1 and keys_left == 2  # no key was shredded by the merge


def test_merge_history_lists_every_profile_folded_in_transitively(env: Env) -> None:
    keys = make_keys()
    s = (keys["ingest"], "")
    with client() as c:
        c.post("/v1/identify", json={"anonymousId": "ka", "traits": {"phone": "+14155550001"}}, auth=s)
        c.post("/v1/identify", json={"anonymousId": "kb", "traits": {"email": "b@example.com"}}, auth=s)
        c.post("/v1/identify", json={"anonymousId": "kc", "traits": {"phone": "+14155550003"}}, auth=s)
        a, b, cc = (_id(c, keys["admin"], kind="anonymous_id", value=k) for k in ("ka", "kb", "kc"))
        both = {"email": "b@example.com", "phone": "+14155550003"}
        c.post("/v1/track", json={"anonymousId": "z1", "event": "x", "context": {"traits": both}}, auth=s)  # C -> B
        both = {"email": "b@example.com", "phone": "+14155550001"}
        c.post("/v1/track", json={"anonymousId": "z2", "event": "x", "context": {"traits": both}}, auth=s)  # B -> A
        history = c.get(f"/v1/profiles/{cc}/merges", headers=auth(keys["admin"])).json()
        assert {(m["profile_id"], m["merged_id"]) for m in history} == {(b, cc), (a, b)}
        # undoing B brings C back with it: C had been folded into B
        assert c.post(f"/v1/profiles/{b}/unmerge", headers=auth(keys["admin"])).status_code == 200
        assert _id(c, keys["admin"], kind="anonymous_id", value="kc") == b
        assert _id(c, keys["admin"], kind="anonymous_id", value="ka") == a
        assert [
            (m["profile_id"], m["merged_id"])
            for m in c.get(f"/v1/profiles/{b}/merges", headers=auth(keys["admin"])).json()
        ] == [(b, cc)]
    assert _stranded() == 0


def test_concurrent_merges_sharing_a_middle_profile_lose_nothing(env: Env) -> None:
    """30 pairs of concurrent batches; in each pair one batch merges L into M and the other M
    into R (M in the middle). Afterwards no row sits on a merged-away profile, no batch failed,
    and every person's events are all readable."""
    from app.access.service import Principal
    from app.db import unit_of_work
    from app.ingest.service import ingest_messages
    from app.profiles.service import VaultContext

    pairs = 30 if PG_URL else 8
    principal = Principal("k", "ingest", "backend", "backend", "server")
    ctx = VaultContext.from_settings()

    def email(k: int, who: str) -> str:
        return f"{who}{k}@example.com"

    def phone(k: int, who: str) -> str:
        return f"+1415555{k:02d}{'lmr'.index(who)}{k % 10}"

    async def send(batch: list[dict[str, Any]]) -> None:
        async with unit_of_work() as session:
            result = await ingest_messages(session, ctx, principal, batch)
            assert result.rejected == []

    async def setup() -> None:
        for k in range(pairs):
            await send(
                [
                    {"type": "identify", "anonymousId": f"l{k}", "traits": {"phone": phone(k, "l")}},
                    {
                        "type": "identify",
                        "anonymousId": f"m{k}",
                        "traits": {"email": email(k, "m"), "phone": phone(k, "m")},
                    },
                    {"type": "identify", "anonymousId": f"r{k}", "traits": {"email": email(k, "r")}},
                ]
            )

    async def race() -> None:
        jobs = []
        for k in range(pairs):
            left = {"email": email(k, "m"), "phone": phone(k, "l")}
            right = {"email": email(k, "r"), "phone": phone(k, "m")}
            jobs.append(
                send([{"type": "track", "anonymousId": f"x{k}", "event": "Linked", "context": {"traits": left}}])
            )
            jobs.append(
                send([{"type": "track", "anonymousId": f"y{k}", "event": "Linked", "context": {"traits": right}}])
            )
        await asyncio.gather(*jobs)

    run(setup())
    run(race())
    assert _stranded() == 0
    keys = make_keys()
    with client() as c:
        for k in range(pairs):
            ids = {_id(c, keys["admin"], kind="anonymous_id", value=f"{w}{k}") for w in ("l", "m", "r", "x", "y")}
            assert len(ids) == 1, (k, ids)
            events = c.get(f"/v1/profiles/{ids.pop()}/events", headers=auth(keys["compliance"]))
            assert events.status_code == 200, events.text
            assert len(events.json()["events"]) == 5
            assert all(e.get("anonymousId") for e in events.json()["events"])  # each one decrypts


@pytest.mark.skipif(not PG_URL, reason="PostgreSQL's lock manager is what this exercises")
def test_a_lost_deadlock_is_retried_not_answered_with_an_error(env: Env) -> None:
    from sqlalchemy.exc import DBAPIError

    from app.db import retry_conflicts, unit_of_work

    attempts: list[int] = []

    class Deadlock(Exception):
        sqlstate = "40P01"

    async def work() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise DBAPIError("SELECT 1", None, Deadlock())
        return "done"

    async def go() -> str:
        async with unit_of_work() as session:
            return await retry_conflicts(session, work)

    assert run(go()) == "done" and len(attempts) == 3
