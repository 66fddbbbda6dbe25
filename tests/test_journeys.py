"""Journeys end to end with a fake clock: abandoned cart, birthday, frequency caps, quiet
hours; consent at send time and erasure; the timers and sends as personal data."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from litestar.testing import TestClient
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.db import unit_of_work
from app.dsr.erasure import erase_subject
from app.errors import NotFound
from app.inventory import Person, holders
from app.journeys.delivery import Delivered, use_sender
from app.journeys.service import run_triggers
from app.journeys.triggers import event_page
from app.segments.sql import events_table
from app.settings import get_settings
from tests.conftest import Env, run
from tests.helpers import MARKETING, auth, client, grant_marketing, make_keys, sync_db

SECRET = "whsec_" + base64.b64encode(b"consentry-test-signing-key-32byt").decode()


@dataclass
class Hook:
    """A local webhook receiver: the bodies it accepted."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def emails(self) -> list[str]:
        return sorted(p["fields"].get("email", "") for b in self.bodies for p in b.get("people", []))


@pytest.fixture(autouse=True)
def local_destinations(monkeypatch: pytest.MonkeyPatch) -> None:
    """The destinations here are on 127.0.0.1: an admin setting lets activation reach them."""
    monkeypatch.setenv("CONSENTRY_ACTIVATION_PRIVATE_NETWORKS", "1")
    get_settings.cache_clear()


@contextmanager
def hook() -> Iterator[Hook]:
    state = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            state.bodies.append(json.loads(self.rfile.read(int(self.headers.get("content-length", 0)))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _destination(c: TestClient[Any], keys: dict[str, str], url: str = "http://journeys.invalid/none") -> str:
    """A webhook destination for marketing (emails only)."""
    body = {
        "name": "CRM",
        "purpose": MARKETING,
        "categories": ["user.contact.email"],
        "kind": "webhook",
        "config": {"url": url},
        "secret": SECRET,
    }
    r = c.post("/v1/destinations", json=body, headers=auth(keys["marketer"]))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@dataclass
class Outbox:
    """A destination standing in for activation's: who got which journey's message."""

    sent: list[tuple[str, str]] = field(default_factory=list)

    async def __call__(
        self,
        session: AsyncSession,
        principal: Principal,
        destination_id: str,
        profile_ids: Sequence[str],
        purpose: str,
        *,
        reason: str,
        idempotency_key: str,
    ) -> Delivered:
        assert purpose == MARKETING and principal.role == "marketer"
        self.sent += [(reason.removeprefix("journey:"), p) for p in profile_ids]
        return Delivered(sent=frozenset(profile_ids))

    def to(self, journey_id: str) -> list[str]:
        return sorted(p for j, p in self.sent if j == journey_id)


def _tick(outbox: Outbox, at: datetime) -> dict[str, int]:
    with use_sender(outbox):
        return run(run_triggers(now=at))


def _person(
    c: TestClient[Any], keys: dict[str, str], uid: str, traits: dict[str, Any] | None = None, consent: bool = True
) -> str:
    body = {"userId": uid, "traits": {"country": "DE", "email": f"{uid}@example.com", **(traits or {})}}
    assert c.post("/v1/identify", json=body, auth=(keys["ingest"], "")).status_code == 200
    found = c.post("/v1/profiles/lookup", json={"kind": "user_id", "value": uid}, headers=auth(keys["admin"]))
    pid = str(found.json()["profiles"][0]["id"])
    if consent:
        grant_marketing(c, keys["compliance"], pid)
    return pid


def _track(c: TestClient[Any], keys: dict[str, str], uid: str, event: str, at: datetime | None = None) -> None:
    body: dict[str, Any] = {"userId": uid, "event": event, "properties": {"price": 10}}
    if at is not None:
        body["timestamp"] = at.isoformat().replace("+00:00", "Z")
    r = c.post("/v1/track", json=body, auth=(keys["ingest"], ""))
    assert r.status_code == 200, r.text


def _journey(
    c: TestClient[Any], keys: dict[str, str], kind: str, definition: dict[str, Any], name: str = "j", dest: str = ""
) -> str:
    body = {"name": name, "kind": kind, "destination_id": dest or _destination(c, keys), "definition": definition}
    r = c.post("/v1/journeys", json=body, headers=auth(keys["marketer"]))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _sends(c: TestClient[Any], keys: dict[str, str], jid: str) -> list[tuple[str, str]]:
    r = c.get(f"/v1/journeys/{jid}/sends", headers=auth(keys["marketer"]))
    assert r.status_code == 200, r.text
    return sorted((s["profile_id"], s["outcome"]) for s in r.json()["sends"])


async def _forget(pid: str) -> None:
    """Erase the person as a data-subject request does (every holder's ``forget``, keys shredded)."""
    async with unit_of_work() as session:
        report = await erase_subject(session, Principal("k", "compliance", "test"), pid, "req-1")
    assert report.failed == {}


def test_abandoned_cart_fires_once_after_the_window_and_never_for_buyers_withdrawn_or_erased(env: Env) -> None:
    keys = make_keys()
    outbox = Outbox()
    with client() as c:
        jid = _journey(c, keys, "abandoned_cart", {"hours": 2})
        ids = {u: _person(c, keys, u) for u in ("left", "bought", "withdrew", "erased")}
        added = datetime.now(UTC) - timedelta(minutes=5)
        for u in ids:
            _track(c, keys, u, "Product Added", added)
        _track(c, keys, "bought", "Order Completed")
        start = datetime.now(UTC)
        assert _tick(outbox, start)["timers"] == 4
        withdraw = {"consents": [{"profile_id": ids["withdrew"], "purpose": MARKETING, "state": "withdrawn"}]}
        assert c.post("/v1/consents", json=withdraw, headers=auth(keys["compliance"])).status_code == 201
        run(_forget(ids["erased"]))

        _tick(outbox, added + timedelta(hours=1, minutes=59))
        assert outbox.sent == []
        _tick(outbox, added + timedelta(hours=2, seconds=30))
        assert outbox.to(jid) == [ids["left"]]
        _tick(outbox, added + timedelta(hours=5))
        assert outbox.to(jid) == [ids["left"]]  # once
        assert _sends(c, keys, jid) == sorted(
            [(ids["left"], "sent"), (ids["bought"], "condition"), (ids["withdrew"], "refused")]
        )
        r = c.get(f"/v1/journeys/{jid}/sends", headers=auth(keys["compliance"]))
        assert {s["reason"] for s in r.json()["sends"] if s["outcome"] == "refused"} == {"withdrawn"}
        assert c.get(f"/v1/journeys/{jid}", headers=auth(keys["marketer"])).json()["pending"] == 0


def test_a_birthday_message_goes_out_on_the_day_in_the_persons_zone_once(env: Env) -> None:
    keys = make_keys()
    outbox = Outbox()
    day = datetime.now(UTC).date() + timedelta(days=10)
    born = date(1990, day.month, min(day.day, 28)).isoformat() if day.month == 2 else f"1990-{day:%m-%d}"
    with client() as c:
        jid = _journey(c, keys, "birthday", {"send_at": "09:00", "timezone": "UTC"})
        tokyo = _person(c, keys, "tokyo", {"birthday": born, "timezone": "Asia/Tokyo"})
        york = _person(c, keys, "york", {"birthday": born, "timezone": "America/New_York"})
        _person(c, keys, "other", {"birthday": "1990-01-01" if day.month != 1 else "1990-07-01"})
        if day.month == 2 and day.day > 28:
            return  # (a 29 February target day: the date arithmetic below assumes the 28th)

        eve = datetime.combine(day - timedelta(days=1), datetime.min.time(), UTC) + timedelta(hours=20)
        assert _tick(outbox, eve)["timers"] == 2  # 05:00 in Tokyo on the day, 15:00 in New York the day before
        assert outbox.sent == []
        nine_tokyo = datetime.combine(day, datetime.min.time(), ZoneInfo("Asia/Tokyo")).replace(hour=9)
        _tick(outbox, nine_tokyo.astimezone(UTC) + timedelta(seconds=20))
        assert outbox.to(jid) == [tokyo]
        nine_york = datetime.combine(day, datetime.min.time(), ZoneInfo("America/New_York")).replace(hour=9)
        _tick(outbox, nine_york.astimezone(UTC) - timedelta(minutes=1))
        assert outbox.to(jid) == [tokyo]
        _tick(outbox, nine_york.astimezone(UTC) + timedelta(seconds=20))
        assert outbox.to(jid) == sorted([tokyo, york])
        later = nine_york.astimezone(UTC) + timedelta(hours=3)
        assert _tick(outbox, later)["timers"] == 0  # planned again: nobody new, nobody twice
        assert len(outbox.sent) == 2


def test_frequency_caps_hold_across_journeys_and_within_one(env: Env) -> None:
    keys = make_keys()
    outbox = Outbox()
    cap = {"person": {"count": 1, "hours": 24}}
    with client() as c:
        first = _journey(c, keys, "welcome", {"caps": cap}, "first")
        second = _journey(c, keys, "welcome", {"caps": cap}, "second")
        cart = _journey(c, keys, "abandoned_cart", {"hours": 1, "caps": {"journey": {"count": 1, "hours": 24}}})
        pid = _person(c, keys, "capped")
        _track(c, keys, "capped", "Signed Up")
        now = datetime.now(UTC)
        _tick(outbox, now)
        assert len(outbox.sent) == 1  # one of the two welcomes; the other is capped
        outcomes = sorted(o for j in (first, second) for _p, o in _sends(c, keys, j))
        assert outcomes == ["capped", "sent"]

        _track(c, keys, "capped", "Product Added", now - timedelta(hours=3))  # abandoned two hours ago
        _tick(outbox, datetime.now(UTC))
        assert outbox.to(cart) == [pid]
        _track(c, keys, "capped", "Product Added")  # a second cart the same day
        again = datetime.now(UTC)
        _tick(outbox, again)
        _tick(outbox, again + timedelta(hours=1, minutes=1))
        assert outbox.to(cart) == [pid]
        assert [o for _p, o in _sends(c, keys, cart)].count("capped") == 1


def test_quiet_hours_delay_a_message_until_they_end_in_the_persons_zone(env: Env) -> None:
    keys = make_keys()
    outbox = Outbox()
    berlin = ZoneInfo("Europe/Berlin")
    with client() as c:
        jid = _journey(c, keys, "welcome", {"quiet_hours": {"start": "21:00", "end": "08:00"}, "timezone": "UTC"})
        pid = _person(c, keys, "night", {"timezone": "Europe/Berlin"})
        _track(c, keys, "night", "Signed Up")
        local = datetime.now(berlin)
        night = datetime.combine(local.date(), datetime.min.time(), berlin).replace(hour=23)
        night = night if night > local else night + timedelta(days=1)
        assert _tick(outbox, night.astimezone(UTC))["delayed"] == 1
        assert outbox.sent == []
        morning = (night + timedelta(hours=9)).replace(hour=8, minute=0)
        _tick(outbox, morning.astimezone(UTC) - timedelta(minutes=1))
        assert outbox.sent == []
        _tick(outbox, morning.astimezone(UTC) + timedelta(seconds=20))
        assert outbox.to(jid) == [pid]


def test_journey_definitions_are_checked_versioned_and_audited(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        dest = _destination(c, keys)
        bad: list[tuple[dict[str, Any], str]] = [
            ({"kind": "spam"}, "kind"),
            ({"definition": {"hours": 0}}, "definition.hours"),
            ({"definition": {"timezone": "Mars/Olympus"}}, "definition.timezone"),
            ({"definition": {"quiet_hours": {"start": "25:00", "end": "08:00"}}}, "definition.quiet_hours.start"),
            ({"definition": {"caps": {"person": {"count": 1}}}}, "definition.caps.person"),
            (
                {"definition": {"condition": {"trait": "email", "eq": "secret@example.com"}}},
                "definition.condition.trait",
            ),
            ({"definition": {"condition": {"consent": MARKETING}}}, "definition.condition"),
            ({"destination_id": "no-such-destination"}, "destination_id"),
        ]
        for change, where in bad:
            body: dict[str, Any] = {"name": "x", "kind": "welcome", "destination_id": dest, **change}
            r = c.post("/v1/journeys", json=body, headers=auth(keys["marketer"]))
            assert r.status_code == 422, (change, r.text)
            assert where in r.text and "secret@example.com" not in r.text
        jid = _journey(c, keys, "welcome", {"condition": {"trait": "plan", "eq": "pro"}})
        body = {"name": "welcome v2", "kind": "welcome", "destination_id": dest, "definition": {"delay_minutes": 5}}
        r = c.put(f"/v1/journeys/{jid}", json=body, headers=auth(keys["marketer"]))
        assert r.status_code == 200 and r.json()["version"] == 2
        got = c.get(f"/v1/journeys/{jid}", headers=auth(keys["compliance"])).json()
        assert [v["version"] for v in got["versions"]] == [1, 2]
        assert (
            c.put(f"/v1/journeys/{jid}", json={**body, "kind": "birthday"}, headers=auth(keys["marketer"])).status_code
            == 422
        )
        entries = c.get("/v1/audit/entries", params={"limit": 500}, headers=auth(keys["auditor"])).json()
        actions = [e["action"] for e in (entries["entries"] if isinstance(entries, dict) else entries)]
        assert actions.count("journey.create") == 1 and actions.count("journey.update") == 1
        assert c.delete(f"/v1/journeys/{jid}", headers=auth(keys["marketer"])).status_code == 204
        assert c.get(f"/v1/journeys/{jid}", headers=auth(keys["marketer"])).status_code == 404


def test_pending_timers_are_exported_moved_and_forgotten_with_the_person(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        _journey(c, keys, "abandoned_cart", {"hours": 3})
        pid = _person(c, keys, "cart")
        _track(c, keys, "cart", "Product Added")
        _tick(Outbox(), datetime.now(UTC))

        async def held() -> dict[str, Any]:
            async with unit_of_work() as session:
                h = next(h for h in holders() if h.domain == "journeys")
                out = await h.export(session, {}, Person(pid, (pid,)))
                out["residue"] = await h.residue(session, Person(pid, (pid,)))
                return out

        found = run(held())
        assert [t["occasion"] for t in found["journey_timers"]] == ["cart"]
        run(_forget(pid))
        assert run(held())["residue"] == {}


def test_an_abandoned_cart_reaches_a_webhook_through_activation_with_consent_decided_at_send(env: Env) -> None:
    keys = make_keys()
    with client() as c, hook() as received:
        dest = _destination(c, keys, received.url)
        jid = _journey(c, keys, "abandoned_cart", {"hours": 1}, dest=dest)
        ids = {u: _person(c, keys, u, consent=u != "never") for u in ("ada", "bob", "never")}
        added = datetime.now(UTC) - timedelta(minutes=2)
        for u in ids:
            _track(c, keys, u, "Product Added", added)
        run(run_triggers(now=datetime.now(UTC)))
        withdraw = {"consents": [{"profile_id": ids["bob"], "purpose": MARKETING, "state": "withdrawn"}]}
        assert c.post("/v1/consents", json=withdraw, headers=auth(keys["compliance"])).status_code == 201
        run(run_triggers(now=added + timedelta(hours=1, seconds=30)))
        assert received.emails() == ["ada@example.com"]
        assert all(set(p["fields"]) <= {"email"} for b in received.bodies for p in b["people"])
        assert _sends(c, keys, jid) == sorted(
            [(ids["ada"], "sent"), (ids["bob"], "refused"), (ids["never"], "refused")]
        )
        run(run_triggers(now=added + timedelta(hours=3)))
        assert received.emails() == ["ada@example.com"]


def test_reengagement_waits_for_n_days_without_activity(env: Env) -> None:
    keys = make_keys()
    outbox = Outbox()
    with client() as c:
        jid = _journey(c, keys, "reengagement", {"days": 14})
        pid = _person(c, keys, "quiet")
        _track(c, keys, "quiet", "Page Viewed", datetime.now(UTC) - timedelta(days=3))
        _track(c, keys, "quiet", "Page Viewed")
        now = datetime.now(UTC)
        _tick(outbox, now)
        _tick(outbox, now + timedelta(days=13, hours=23))
        assert outbox.sent == []  # the latest activity counts, not the first
        _tick(outbox, now + timedelta(days=14, minutes=1))
        assert outbox.to(jid) == [pid]


def test_a_destination_that_refuses_fails_the_send_without_blocking_the_next_ones(env: Env) -> None:
    keys = make_keys()

    async def gone(*_a: Any, **_k: Any) -> Delivered:
        raise NotFound("no destination with this id", field="destination_id")

    with client() as c:
        jid = _journey(c, keys, "welcome", {})
        pid = _person(c, keys, "w")
        _track(c, keys, "w", "Signed Up")
        with use_sender(gone):
            run(run_triggers(now=datetime.now(UTC)))
        assert _sends(c, keys, jid) == [(pid, "failed")]
        assert c.get(f"/v1/journeys/{jid}", headers=auth(keys["marketer"])).json()["pending"] == 0


def test_welcome_greets_a_person_an_identify_creates_once_and_not_a_returning_one(env: Env) -> None:
    keys = make_keys()
    outbox = Outbox()
    with client() as c:
        old = _person(c, keys, "old")
        with sync_db() as db:
            db.execute(text("UPDATE profile SET created_at = :t WHERE id = :p"), {"t": datetime(2025, 1, 1), "p": old})
        jid = _journey(c, keys, "welcome", {"delay_minutes": 10})
        _person(c, keys, "old", {"plan": "pro"})  # a returning customer's identify
        new = _person(c, keys, "new")
        _person(c, keys, "new", {"plan": "pro"})
        now = datetime.now(UTC)
        _tick(outbox, now)
        _tick(outbox, now + timedelta(minutes=11))
        _tick(outbox, now + timedelta(minutes=30))
        assert outbox.to(jid) == [new]


def test_the_event_scan_reads_events_by_time_of_receipt_through_an_index(env: Env) -> None:
    ev = events_table()
    since = datetime(2026, 1, 1, tzinfo=UTC)
    q = select(ev.c.id, ev.c.name).where(ev.c.received_at > since, ev.c.received_at <= since + timedelta(hours=1))
    with sync_db() as db:
        compiled = event_page(q, (since, "")).compile(dialect=db.dialect)
        if db.dialect.name == "postgresql":
            db.execute(text("SET LOCAL enable_seqscan = off"))  # an empty table: ask whether an index can serve it
            plan = " ".join(r[0] for r in db.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params))
        else:
            values = tuple(str(compiled.params[k]) for k in compiled.positiontup or ())
            plan = " ".join(str(r[-1]) for r in db.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), values))
    assert "ix_event_received" in plan, plan  # a range of the index, in its order: no scan,
    assert "TEMP B-TREE" not in plan.upper() and "SORT  (" not in plan.upper(), plan  # and no sort
