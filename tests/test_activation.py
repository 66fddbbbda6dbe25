"""Activation through HTTP against real receivers: a local webhook server sees exactly the
consented members with exactly the allowed fields, signed per Standard Webhooks; consent is
decided again at send time; retries deliver each person once; dead letters; ad audiences
with the platforms' published hash examples; files erasure can find; proofs of where a
person's data went; secrets kept sealed; scheduled runs exactly once; the journeys' send."""

from __future__ import annotations

import asyncio
import base64
import csv
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook

from app.access.service import Principal
from app.activation import runs, unseal
from app.activation.jobs import run_schedules
from app.activation.recipients import notify_erasure, recipients_of
from app.activation.service import send_to_destination, start_run
from app.db import unit_of_work
from app.jobs.scheduler import claim
from app.profiles.service import person_of
from app.retention.service import run_retention
from app.settings import get_settings
from audit.merkle import leaf_hash, verify_inclusion
from tests.conftest import Env, run
from tests.helpers import MARKETING, auth, client, make_keys, sync_db

SECRET = "whsec_" + base64.b64encode(b"consentry-test-signing-key-32byt").decode()


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: answers ``fail_first`` requests with 500 (or all,
    with ``always``), keeps every request it accepted."""

    url: str = ""
    fail_first: int = 0
    always: int | None = None
    hold_after: int | None = None
    """Requests after this many wait for ``release``, then are refused (503); later ones are answered."""
    release: threading.Event = field(default_factory=threading.Event)
    seen: int = 0
    accepted: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    ids_tried: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def people(self) -> list[dict[str, Any]]:
        return [p for _h, body in self.accepted for p in json.loads(body).get("people", [])]


@contextmanager
def receiver(**kw: Any) -> Iterator[Receiver]:
    state = Receiver(**kw)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with state.lock:
                state.seen += 1
                state.ids_tried.append(self.headers.get("webhook-id", ""))
                fail = state.always or (500 if state.seen <= state.fail_first else None)
                held = state.hold_after is not None and state.seen > state.hold_after and not state.release.is_set()
            if held:
                state.release.wait(60)
                fail = 503
            with state.lock:
                if not fail:
                    state.accepted.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(fail or 200)
            self.end_headers()
            self.wfile.write(b'{"errcode":0}')

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def exact(monkeypatch: pytest.MonkeyPatch, env: Env) -> Env:
    monkeypatch.setenv("CONSENTRY_SEGMENT_MIN_COUNT", "0")
    monkeypatch.setenv("CONSENTRY_ACTIVATION_DIR", str(env.tmp / "activation"))
    monkeypatch.setenv("CONSENTRY_ACTIVATION_PRIVATE_NETWORKS", "1")  # the receivers are on 127.0.0.1
    get_settings.cache_clear()
    return env


def _people(c: TestClient[Any], keys: dict[str, str], traits: list[dict[str, Any]]) -> list[str]:
    batch = [
        {"type": "identify", "userId": f"u{n}", "traits": {"country": "DE", "plan": "basic", **t}}
        for n, t in enumerate(traits)
    ]
    assert c.post("/v1/batch", json={"batch": batch}, auth=(keys["ingest"], "")).status_code == 200
    ids = []
    for n in range(len(traits)):
        found = c.post("/v1/profiles/lookup", json={"kind": "user_id", "value": f"u{n}"}, headers=auth(keys["admin"]))
        ids.append(str(found.json()["profiles"][0]["id"]))
    return ids


def _consent(c: TestClient[Any], keys: dict[str, str], ids: list[str], state: str = "granted", **flags: Any) -> None:
    body: dict[str, Any] = {
        "consents": [{"profile_id": p, "purpose": MARKETING, "state": state, "method": "form"} for p in ids]
    }
    if flags:
        body["flags"] = {p: flags for p in ids}
    r = c.post("/v1/consents", json=body, headers=auth(keys["compliance"]))
    assert r.status_code == 201, r.text


def _segment(c: TestClient[Any], keys: dict[str, str]) -> str:
    r = c.post(
        "/v1/segments", json={"name": "Basic", "tree": {"trait": "plan", "eq": "basic"}}, headers=auth(keys["marketer"])
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _destination(c: TestClient[Any], keys: dict[str, str], **body: Any) -> dict[str, Any]:
    full = {"name": "CRM", "purpose": MARKETING, "categories": ["user.contact.email", "user.name"], **body}
    r = c.post("/v1/destinations", json=full, headers=auth(keys["marketer"]))
    assert r.status_code == 201, r.text
    return dict(r.json())


def _activate(c: TestClient[Any], keys: dict[str, str], segment: str, dest: str) -> dict[str, Any]:
    r = c.post("/v1/activations", json={"segment_id": segment, "destination_id": dest}, headers=auth(keys["marketer"]))
    assert r.status_code == 202, r.text
    for _ in range(200):
        got = c.get(f"/v1/activations/{r.json()['id']}", headers=auth(keys["marketer"])).json()
        if got["status"] not in ("queued", "running"):
            return dict(got)
        time.sleep(0.05)
    raise AssertionError("the run did not finish")


SHOP = [
    {"email": "ada@example.com", "name": "Ada", "phone": "+4915112345678", "birthday": "1990-01-02"},
    {"email": "bob@example.com", "name": "Bob", "phone": "+4915112345679"},
    {"email": "cy@example.com", "name": "Cy"},
    {"email": "dee@example.com", "name": "Dee"},  # no consent
    {"email": "eve@example.com", "name": "Eve"},  # consented, but restricted processing
]


def test_a_webhook_gets_exactly_the_consented_members_with_the_allowed_fields_signed(exact: Env) -> None:
    keys = make_keys()
    with client() as c, receiver() as hook:
        ids = _people(c, keys, SHOP)
        _consent(c, keys, ids[:3])
        _consent(c, keys, ids[4:], restricted=True)
        seg = _segment(c, keys)
        dest = _destination(c, keys, kind="webhook", config={"url": hook.url, "batch_size": 2}, secret=SECRET)
        assert "secret" not in dest and dest["has_secret"] is True
        first = _activate(c, keys, seg, dest["id"])
        assert first["status"] == "done", first
        assert first["report"] == {"total": 5, "sent": 3, "failed": 0, "excluded": {"no consent": 1, "restricted": 1}}
        for headers, body in hook.accepted:
            Webhook(SECRET).verify(body, headers)  # raises on a bad signature
        got = hook.people()
        assert sorted(p["fields"]["email"] for p in got) == ["ada@example.com", "bob@example.com", "cy@example.com"]
        assert all(set(p["fields"]) <= {"email", "name"} for p in got)  # no phone, no birthday
        assert len({p["delivery_id"] for p in got}) == 3

        _consent(c, keys, ids[2:3], state="withdrawn")  # consent is decided again at send time
        hook.accepted.clear()
        second = _activate(c, keys, seg, dest["id"])
        assert sorted(p["fields"]["email"] for p in hook.people()) == ["ada@example.com", "bob@example.com"]
        assert second["report"]["excluded"] == {"no consent": 1, "restricted": 1, "withdrawn": 1}
        assert second["ledger_seq"] and second["merkle_root"]

        # where Ada's data went, with proofs against each run's root
        sent = run(_recipients(ids[0]))
        assert [s["run_id"] for s in sent] == [first["id"], second["id"]]
        for s in sent:
            proof = s["proof"]
            leaf = json.dumps(proof["leaf"], sort_keys=True, separators=(",", ":")).encode()
            assert leaf_hash(leaf).hex() == proof["leaf_hash"]  # the person can recompute their leaf
            assert verify_inclusion(
                proof["leaf_index"],
                proof["tree_size"],
                bytes.fromhex(proof["leaf_hash"]),
                [bytes.fromhex(h) for h in proof["path"]],
                bytes.fromhex(proof["root"]),
            )
        assert sent[0]["proof"]["root"] == first["merkle_root"] and sent[0]["fields"] == ["email", "name"]

        # erasure: one signed notice to the destination, its answer recorded
        hook.accepted.clear()
        answers = run(_notify(ids[0], "req-1"))
        assert [(a["destination_id"], a["outcome"], a["runs"]) for a in answers] == [(dest["id"], "acknowledged", 2)]
        ((headers, body),) = hook.accepted
        notice = Webhook(SECRET).verify(body, headers)
        assert notice["type"] == "erasure.request" and notice["request_id"] == "req-1"
        assert notice["person"] == got[[p["fields"]["email"] for p in got].index("ada@example.com")]["id"]

        # secrets: never in an answer, never in the database in the clear
        for r in (
            c.get(f"/v1/destinations/{dest['id']}", headers=auth(keys["admin"])),
            c.get("/v1/destinations", headers=auth(keys["marketer"])),
        ):
            assert SECRET not in r.text and SECRET[6:] not in r.text
    with sync_db() as conn:
        rows = conn.execute(text("SELECT * FROM destination")).all()
        assert rows and all(SECRET[6:].encode() not in repr(r).encode() and SECRET[6:] not in repr(r) for r in rows)


def test_a_large_run_decided_while_it_streams_sends_and_excludes_the_same_people(
    exact: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large run opens its fields in worker processes and, on PostgreSQL, streams its screen
    (people decided while the first chunks are opened): one person a chunk here, the same
    people sent and excluded for the same reasons as a small run decided whole."""
    keys = make_keys()
    with client() as c, receiver() as hook:
        ids = _people(c, keys, SHOP)
        _consent(c, keys, ids[:3])
        _consent(c, keys, ids[4:], restricted=True)
        seg = _segment(c, keys)
        dest = _destination(c, keys, kind="webhook", config={"url": hook.url, "batch_size": 2}, secret=SECRET)
        whole = _activate(c, keys, seg, dest["id"])
        sent = sorted(p["fields"]["email"] for p in hook.people())
        hook.accepted.clear()
        monkeypatch.setattr(unseal, "POOL_FROM", 0)
        monkeypatch.setattr(runs, "CHUNK", 1)
        monkeypatch.setattr(runs, "SCREEN_ROWS", 1)
        streamed = _activate(c, keys, seg, dest["id"])
        assert streamed["status"] == whole["status"] == "done", streamed
        assert streamed["report"] == whole["report"]
        assert whole["report"] == {"total": 5, "sent": 3, "failed": 0, "excluded": {"no consent": 1, "restricted": 1}}
        assert sent == ["ada@example.com", "bob@example.com", "cy@example.com"]
        assert sorted(p["fields"]["email"] for p in hook.people()) == sent


async def _recipients(pid: str) -> list[dict[str, Any]]:
    async with unit_of_work() as s:
        return await recipients_of(s, await person_of(s, pid))


async def _notify(pid: str, request_id: str) -> list[dict[str, Any]]:
    async with unit_of_work() as s:
        return await notify_erasure(s, Principal("test", "compliance", "dsr"), await person_of(s, pid), request_id)


def test_a_webhook_failing_twice_then_answering_gets_each_person_once(exact: Env) -> None:
    keys = make_keys()
    with client() as c, receiver(fail_first=2) as hook:
        ids = _people(c, keys, SHOP[:3])
        _consent(c, keys, ids)
        seg = _segment(c, keys)
        config = {"url": hook.url, "batch_size": 10, "backoff_s": 0.01}
        dest = _destination(c, keys, kind="webhook", config=config, secret=SECRET)
        out = _activate(c, keys, seg, dest["id"])
        assert out["status"] == "done" and out["report"]["sent"] == 3
        assert hook.seen == 3 and len(set(hook.ids_tried)) == 1  # one batch, the same webhook-id each time
        assert sorted(p["fields"]["name"] for p in hook.people()) == ["Ada", "Bob", "Cy"]


def test_a_batch_refused_after_every_retry_is_a_dead_letter(exact: Env) -> None:
    keys = make_keys()
    with client() as c, receiver(always=503) as hook:
        ids = _people(c, keys, SHOP[:2])
        _consent(c, keys, ids)
        seg = _segment(c, keys)
        config = {"url": hook.url, "max_attempts": 3, "backoff_s": 0.01}
        dest = _destination(c, keys, kind="webhook", config=config, secret=SECRET)
        out = _activate(c, keys, seg, dest["id"])
        assert out["status"] == "failed" and out["report"]["failed"] == 2 and out["report"]["sent"] == 0
        dead = c.get(f"/v1/destinations/{dest['id']}/dead-letters", headers=auth(keys["marketer"])).json()
        assert [(d["run_id"], d["people"], d["attempts"], d["last_status"]) for d in dead] == [(out["id"], 2, 3, 503)]
        assert hook.seen == 3


MATCH = "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
"""sha256("john_smith@gmail.com"): Meta's published example of a normalised email."""
E164 = "1e231c66011e7a2d867a9cfae267a6aff103cf4913640b6e71a99850fc0ffbc8"
"""sha256("+16505551212"): (650)555-1212 in E.164 with "+", as Google asks."""
GOLDEN = {
    # Meta, "customer information parameters": John_Smith@gmail.com → 62a14e44…, and
    # (650)555-1212 → 16505551212 → e323ec62… (digits only, country code, no +)
    "meta": [[MATCH, "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"]],
    # Google Customer Match: trimmed, lowercased email; phone in E.164 with "+"
    "google": [[MATCH, E164]],
    # Campaign Manager 360: as Google, and the dots before @gmail.com removed
    # (john.smith@gmail.com → johnsmith@gmail.com); an underscore stays
    "cm360": [[MATCH, E164], ["3586de92bb3636d0885a12eff961429a32e4ebd764b96f50d85d016f9338d586", ""]],
}


@pytest.mark.slow
def test_an_ad_audience_of_99_is_refused_and_of_100_exported_with_the_platforms_hashes(exact: Env) -> None:
    keys = make_keys()
    people = [{"email": " John_Smith@gmail.com", "phone": "+1 (650) 555-1212"}, {"email": "John.Smith@gmail.com"}]
    people += [{"email": f"p{n}@example.com"} for n in range(2, 100)]
    with client() as c:
        ids = _people(c, keys, people)
        _consent(c, keys, ids[:99])
        seg = _segment(c, keys)
        cats = ["user.contact"]
        dests = {
            p: _destination(
                c, keys, name=p, kind="ad_audience", categories=cats, config={"platform": p, "directory": p}
            )
            for p in GOLDEN
        }
        small = _activate(c, keys, seg, dests["meta"]["id"])
        assert small["status"] == "refused" and "99 < 100" in small["refusal"] and small["report"]["sent"] == 0
        assert not (exact.tmp / "activation" / "meta").exists()
        _consent(c, keys, ids[99:])
        for platform, expected in GOLDEN.items():
            out = _activate(c, keys, seg, dests[platform]["id"])
            assert out["status"] == "done" and out["report"]["sent"] == 100, out
            path = exact.tmp / "activation" / platform / f"{out['id']}.csv"
            rows = list(csv.reader(path.open()))
            assert len(rows) == 101
            assert all(row in rows[1:] for row in expected), platform
            assert "john" not in path.read_text().lower()
            assert path.stat().st_mode & 0o777 == 0o600


def test_a_file_export_is_registered_and_erasure_removes_the_persons_line(
    exact: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(unseal, "POOL_FROM", 0)  # fields opened in worker processes, as for a large run
    keys = make_keys()
    with client() as c:
        ids = _people(c, keys, SHOP[:3])
        _consent(c, keys, ids)
        seg = _segment(c, keys)
        dest = _destination(c, keys, kind="file", config={"format": "ndjson", "directory": "crm"})
        out = _activate(c, keys, seg, dest["id"])
        path = exact.tmp / "activation" / "crm" / f"{out['id']}.ndjson"
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert sorted(p["email"] for p in lines) == ["ada@example.com", "bob@example.com", "cy@example.com"]
        answers = run(_notify(ids[1], "req-2"))
        assert [a["outcome"] for a in answers] == ["erased"]
        assert sorted(json.loads(line)["email"] for line in path.read_text().splitlines()) == [
            "ada@example.com",
            "cy@example.com",
        ]
        answers = run(_notify(ids[2], "req-3"))  # the line numbers moved up with the first removal
        assert [json.loads(line)["email"] for line in path.read_text().splitlines()] == ["ada@example.com"]


def test_the_journeys_send_filters_like_a_run_and_sends_once_per_key(exact: Env) -> None:
    keys = make_keys()
    with client() as c, receiver() as hook:
        ids = _people(c, keys, SHOP[:4])
        _consent(c, keys, ids[:3])
        dest = _destination(c, keys, kind="webhook", config={"url": hook.url}, secret=SECRET)

        async def send(key: str) -> Any:
            marketer = Principal("k", "marketer", "journeys")
            people = [ids[0], ids[3], "nobody"]
            async with unit_of_work() as s:
                return await send_to_destination(
                    s, marketer, dest["id"], people, MARKETING, reason="welcome", idempotency_key=key
                )

        first = run(send("welcome:1"))
        assert first.sent == [ids[0]] and first.excluded == {ids[3]: "no consent", "nobody": "unknown person"}
        again = run(send("welcome:1"))
        assert again.duplicate and again.sent == [ids[0]] and again.run_id == first.run_id
        assert [p["fields"]["email"] for p in hook.people()] == ["ada@example.com"]


def test_a_schedule_runs_once_per_due_time_across_processes(exact: Env) -> None:
    keys = make_keys()
    with client() as c, receiver() as hook:
        ids = _people(c, keys, SHOP[:2])
        _consent(c, keys, ids)
        seg = _segment(c, keys)
        dest = _destination(c, keys, kind="webhook", config={"url": hook.url}, secret=SECRET)
        body = {"segment_id": seg, "destination_id": dest["id"], "cron": "* * * * *"}
        assert (
            c.post(
                "/v1/activation-schedules", json={**body, "cron": "nope"}, headers=auth(keys["marketer"])
            ).status_code
            == 422
        )
        assert c.post("/v1/activation-schedules", json=body, headers=auth(keys["marketer"])).status_code == 201

        async def two_processes() -> list[dict[str, Any]]:
            now = (datetime.now(UTC) + timedelta(minutes=1)).replace(second=30)
            return list(await asyncio.gather(run_schedules(claim, now), run_schedules(claim, now)))

        results = run(two_processes())
        assert sorted(r["started"] for r in results) == [0, 1]
        runs = c.get("/v1/activations", headers=auth(keys["marketer"])).json()
        assert [(r["trigger"], r["status"], r["report"]["sent"]) for r in runs] == [("schedule", "done", 2)]
        assert len(hook.people()) == 2


def test_bad_destinations_are_422_naming_the_field_never_the_value(exact: Env) -> None:
    keys = make_keys()
    secret_url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=SECRETKEY"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"kind": "pigeon"}, "kind"),
        ({"kind": "webhook", "config": {"url": "ftp://x"}, "secret": SECRET}, "config.url"),
        ({"kind": "webhook", "config": {"url": "http://x"}}, "secret"),
        ({"kind": "webhook", "config": {"url": "http://x"}, "secret": "not-a-key!"}, "secret"),
        ({"kind": "file", "config": {"directory": "../etc"}}, "config.directory"),
        ({"kind": "file", "categories": ["user.government_id"]}, "categories[0]"),
        ({"kind": "ad_audience", "config": {"platform": "myspace"}, "categories": ["user.contact"]}, "config.platform"),
        ({"kind": "ad_audience", "config": {"platform": "meta"}, "categories": ["user.name"]}, "categories"),
        ({"kind": "wecom", "secret": "file:///etc/passwd" + secret_url}, "secret"),
        ({"kind": "sms", "config": {"url": "http://x"}, "categories": ["user.contact.phone_number"]}, "config.text"),
    ]
    with client() as c:
        for body, field_name in cases:
            full = {"name": "x", "purpose": MARKETING, "categories": ["user.contact.email"], **body}
            r = c.post("/v1/destinations", json=full, headers=auth(keys["marketer"]))
            assert r.status_code == 422, (body, r.text)
            assert r.json()["invalid-params"][0]["name"] == field_name, (body, r.json())
            assert "SECRETKEY" not in r.text and "../etc" not in r.text
        ok = {"name": "bot", "kind": "wecom", "purpose": MARKETING, "categories": ["user.name"], "secret": secret_url}
        r = c.post("/v1/destinations", json=ok, headers=auth(keys["marketer"]))
        assert r.status_code == 201 and "SECRETKEY" not in r.text
        assert c.post("/v1/destinations", json=ok, headers=auth(keys["auditor"])).status_code == 403


def test_a_wecom_bot_gets_markdown_messages_within_its_size_limit(exact: Env) -> None:
    keys = make_keys()
    with client() as c, receiver() as hook:
        ids = _people(c, keys, SHOP[:3])
        _consent(c, keys, ids)
        seg = _segment(c, keys)
        body = {"kind": "wecom", "categories": ["user.name"], "secret": hook.url, "config": {"batch_size": 2}}
        dest = _destination(c, keys, **body)
        out = _activate(c, keys, seg, dest["id"])
        assert out["status"] == "done" and out["report"]["sent"] == 3
        messages = [json.loads(b) for _h, b in hook.accepted]
        assert [m["msgtype"] for m in messages] == ["markdown", "markdown"]
        content = "".join(m["markdown"]["content"] for m in messages)
        assert all(n in content for n in ("Ada", "Bob", "Cy")) and "@" not in content
        assert all(len(m["markdown"]["content"].encode()) <= 4096 for m in messages)


def test_data_leaving_the_country_needs_separate_consent_under_pipl(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        ids = _people(c, keys, [{"country": "CN", "name": "李雷"}, {"country": "CN", "name": "韩梅梅"}])
        _consent(c, keys, ids)
        abroad = _destination(c, keys, kind="file", categories=["user.name"], cross_border=True)
        home = _destination(c, keys, name="home", kind="file", categories=["user.name"])
        separate = [
            {"profile_id": ids[1], "purpose": f"cross_border:{MARKETING}", "state": "granted", "method": "form"}
        ]
        assert c.post("/v1/consents", json={"consents": separate}, headers=auth(keys["compliance"])).status_code == 201

    async def send(dest: str, key: str) -> Any:
        async with unit_of_work() as s:
            marketer = Principal("k", "marketer", "journeys")
            return await send_to_destination(s, marketer, dest, ids, MARKETING, reason="t", idempotency_key=key)

    out = run(send(abroad["id"], "a"))
    assert out.sent == [ids[1]] and out.excluded == {ids[0]: "cross-border transfer not consented"}
    assert sorted(run(send(home["id"], "b")).sent) == sorted(ids)


def test_a_destination_on_a_private_address_is_refused_unless_an_admin_allows_it(
    exact: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = make_keys()
    monkeypatch.setenv("CONSENTRY_ACTIVATION_PRIVATE_NETWORKS", "0")
    get_settings.cache_clear()
    with client() as c, receiver() as hook:
        for url in (hook.url, "http://10.1.2.3/hook", "http://169.254.169.254/latest", "http://[::ffff:127.0.0.1]/"):
            body = {"name": "x", "purpose": MARKETING, "categories": ["user.name"], "kind": "webhook"}
            r = c.post(
                "/v1/destinations",
                json={**body, "config": {"url": url}, "secret": SECRET},
                headers=auth(keys["marketer"]),
            )
            assert r.status_code == 422 and r.json()["invalid-params"][0]["name"] == "config.url", (url, r.text)
            assert url not in r.text
        # allowed when declared, refused at send time once the admin setting is off again
        ids = _people(c, keys, SHOP[:2])
        _consent(c, keys, ids)
        seg = _segment(c, keys)
        monkeypatch.setenv("CONSENTRY_ACTIVATION_PRIVATE_NETWORKS", "1")
        get_settings.cache_clear()
        dest = _destination(c, keys, kind="webhook", config={"url": hook.url, "backoff_s": 0.01}, secret=SECRET)
        monkeypatch.setenv("CONSENTRY_ACTIVATION_PRIVATE_NETWORKS", "0")
        get_settings.cache_clear()
        out = _activate(c, keys, seg, dest["id"])
        assert out["status"] == "failed" and out["report"]["sent"] == 0 and hook.seen == 0, out
        assert [d["last_error"] for d in out["dead_letters"]] == ["refused: not a public internet address"]


@pytest.mark.slow
def test_a_run_whose_process_died_is_taken_over_and_sends_nobody_twice(exact: Env) -> None:
    keys = make_keys()
    with client() as c, receiver(hold_after=1) as hook:
        ids = _people(c, keys, SHOP[:4])
        _consent(c, keys, ids)
        seg = _segment(c, keys)
        config = {"url": hook.url, "batch_size": 2, "max_attempts": 1}
        dest = _destination(c, keys, kind="webhook", config=config, secret=SECRET)

        async def queue() -> str:
            async with unit_of_work() as s:
                return (await start_run(s, Principal("k", "marketer", "m"), seg, dest["id"])).id

        run_id = run(queue())
        code = f"import asyncio; from app.activation.service import execute_run; asyncio.run(execute_run({run_id!r}))"
        worker = subprocess.Popen([sys.executable, "-c", code], env=exact.environ(), stdout=subprocess.DEVNULL)
        try:
            for _ in range(600):  # the first batch answered and recorded, the second held
                with sync_db() as db:
                    q = "SELECT count(*) FROM activation_recipient WHERE run_id = :r"
                    if db.execute(text(q), {"r": run_id}).scalar():
                        break
                time.sleep(0.05)
            else:
                raise AssertionError("the first batch was never recorded")
        finally:
            worker.kill()  # the process dies mid-run
            worker.wait()
        hook.release.set()
        assert len(hook.people()) == 2

        later = datetime.now(UTC) + timedelta(minutes=5)  # the activation job, once the run fell silent
        run(run_schedules(claim, later))
        out = c.get(f"/v1/activations/{run_id}", headers=auth(keys["marketer"])).json()
        assert out["status"] == "done" and out["report"]["sent"] == 4 and out["attempts"] == 2, json.dumps(out)
        emails = [p["fields"]["email"] for p in hook.people()]
        assert sorted(emails) == sorted(t["email"] for t in SHOP[:4])  # each person once
        assert len({p["delivery_id"] for p in hook.people()}) == 4
        for pid in ids:  # one root over both attempts' recipients
            (sent,) = run(_recipients(pid))
            proof = sent["proof"]
            assert proof["root"] == out["merkle_root"] and proof["tree_size"] == 4
            assert verify_inclusion(
                proof["leaf_index"],
                proof["tree_size"],
                bytes.fromhex(proof["leaf_hash"]),
                [bytes.fromhex(h) for h in proof["path"]],
                bytes.fromhex(proof["root"]),
            )


def test_recipient_rows_expire_with_their_purposes_retention_period(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        ids = _people(c, keys, SHOP[:2])
        _consent(c, keys, ids)
        seg = _segment(c, keys)
        dest = _destination(c, keys, kind="file", config={"format": "ndjson", "directory": "crm"})
        old, new = _activate(c, keys, seg, dest["id"]), _activate(c, keys, seg, dest["id"])
    now = datetime.now(UTC)
    with sync_db() as db:  # the first run was 731 days ago; marketing keeps data 730 days (retention.yaml)
        q = text("UPDATE activation_recipient SET sent_at = :t WHERE run_id = :r")
        db.execute(q, {"t": now - timedelta(days=731), "r": old["id"]})

    async def apply(dry_run: bool) -> Any:
        async with unit_of_work() as s:
            return await run_retention(s, now, dry_run)

    assert run(apply(True)).removed.get("activation_recipient") == 2
    assert run(apply(False)).removed.get("activation_recipient") == 2
    for pid in ids:
        assert [r["run_id"] for r in run(_recipients(pid))] == [new["id"]]
