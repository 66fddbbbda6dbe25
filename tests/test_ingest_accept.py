"""The accept path's quick check takes exactly the messages the full check takes, and gives
the same rejects by index; a batch accepted whole is sealed as received and processed like
a rebuilt one."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from sqlalchemy import select, text

from app.db import session_maker, table_of
from app.ingest.inbox import PURPOSE, RAW, Check, _batch_of, _binding, opened
from app.ingest.models import InboxBatch
from app.ingest.processor import drain
from app.ingest.service import BatchResult, checked_messages
from app.pii.review import cached_field_policy
from app.profiles.service import VaultContext
from app.vault.blobs import open_blob
from tests.conftest import Env, run
from tests.helpers import client, make_keys, sync_db

BASE: dict[str, Any] = {
    "userId": "u-1",
    "anonymousId": "a-1",
    "messageId": "m-1",
    "timestamp": "2026-11-25T10:00:00Z",
    "context": {"ip": "203.0.113.7", "library": {"name": "t", "version": "1"}},
}


def _variants() -> list[Any]:
    def m(**kw: Any) -> dict[str, Any]:
        out = copy.deepcopy(BASE)
        for k, v in kw.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = v
        return out

    deep: Any = {"x": 1}
    for _ in range(40):
        deep = {"d": deep}
    return [
        m(type="identify", traits={"email": "a@example.com", "phone": "+14155550100", "plan": "pro"}),
        m(type="identify", traits={"email": "not-an-email"}),
        m(type="identify", traits={"phone": "12"}),
        m(type="identify", traits={"phone": 4155550100}),
        m(type="identify", traits=["x"]),
        m(type="identify", traits={"email": "a@example.com", "Email": "b@example.com"}),
        m(type="identify", traits={"prefs": {"a": 1, "mail": "x@example.com"}}),
        m(type="identify", traits={}, context={"traits": {"email": "bad"}}),
        m(type="identify", context={"traits": "x"}),
        m(type="track", event="Order Completed", properties={"sku": "S", "price": 1.5}),
        m(type="track"),
        m(type="track", event="   "),
        m(type="track", event="x" * 201),
        m(type="track", event="someone@example.com"),
        m(type="track", event=5),
        m(type="track", event="E", properties=[1]),
        m(type="page", name="Home", properties={"path": "/"}),
        m(type="page", name=" "),
        m(type="screen", name=["x"]),
        m(type="group", groupId="g-1", traits={"name": "Acme"}),
        m(type="group"),
        m(type="group", groupId=7),
        m(type="alias", previousId="old"),
        m(type="alias", previousId="old", userId=None),
        m(type="alias"),
        m(type="track", event="E", userId=None, anonymousId=None),
        m(type="track", event="E", userId="null", anonymousId="anonymous"),
        m(type="track", event="E", userId=5, anonymousId=None),
        m(type="track", event="E", userId="u" * 300),
        m(type="track", event="E", userId="  padded  "),
        m(type="track", event="E", messageId="m" * 129),
        m(type="track", event="E", messageId="  "),
        m(type="track", event="E", messageId=None),
        m(type="track", event="E", messageId=12),
        m(type="track", event="E", timestamp="yesterday"),
        m(type="track", event="E", timestamp="1999-01-01T00:00:00Z"),
        m(type="track", event="E", timestamp="2999-01-01T00:00:00Z"),
        m(type="track", event="E", timestamp=17),
        m(type="track", event="E", timestamp=None, originalTimestamp="2026-11-25T09:00:00"),
        m(type="track", event="E", sentAt="2026-11-25T10:00:05+02:00"),
        m(type="nope"),
        m(type=None, event="E"),
        m(type="track", event="E", context="x"),
        m(type="track", event="E", context={"tcf": "garbage"}),
        m(type="track", event="E", properties={"note": "a\x00b"}),
        m(type="track", event="E", properties=deep),
        m(type="track", event="E", properties={"blob": "x" * 33000}),
        m(type="track", event="E", properties={"n": 10**30}),
        "not an object",
        [1, 2],
    ]


def _full(ctx: VaultContext, raws: list[Any], defaults: dict[str, Any], kind: str | None, ids: bool) -> Any:
    now = datetime(2026, 11, 25, 10, 0, 10, tzinfo=UTC)
    fp = cached_field_policy(ctx.policies, ctx.keys.index_key)
    taken, rejects = [], []
    for i, raw in enumerate(raws):
        result = BatchResult()
        for msg in checked_messages(ctx, [raw], result, defaults, kind, ids, now, fp):
            taken.append((i, None if msg.message_id.startswith("auto-") else msg.message_id))
        rejects += [(i, r.field, r.reason) for r in result.rejected]
    return taken, rejects


def _quick(ctx: VaultContext, raws: list[Any], defaults: dict[str, Any], kind: str | None, ids: bool) -> Any:
    now = datetime(2026, 11, 25, 10, 0, 10, tzinfo=UTC)
    fp = cached_field_policy(ctx.policies, ctx.keys.index_key)
    result = BatchResult()
    encoded = [msgspec.json.encode(r) for r in raws]
    found = Check(ctx, fp, defaults, kind, ids, now).messages(raws, encoded, result)
    taken = [(i, None if mid.startswith("auto-") else mid) for i, mid in found]
    return taken, [(r.index, r.field, r.reason) for r in result.rejected]


@pytest.mark.parametrize(
    ("defaults", "kind", "ids"),
    [
        ({}, None, True),
        ({"sentAt": "2026-11-25T10:00:01Z", "context": {"locale": "en-US"}}, None, True),
        ({"context": {"traits": {"email": "x@example.com"}}}, "identify", True),
        ({"context": "not an object"}, None, True),
        ({}, None, False),
    ],
)
def test_the_quick_check_takes_and_refuses_what_the_full_check_does(
    env: Env, defaults: dict[str, Any], kind: str | None, ids: bool
) -> None:
    ctx = VaultContext.from_settings()
    raws = _variants()
    if not ids:  # imports: identified by external ids, email or phone instead of user ids
        raws += [
            {"type": "identify", "messageId": "i-1", "context": {"externalIds": [{"type": "crm_id", "id": "C1"}]}},
            {"type": "identify", "messageId": "i-2", "traits": {"email": "i2@example.com"}},
            {"type": "identify", "messageId": "i-3", "traits": {"plan": "pro"}},
            {"type": "identify", "messageId": "i-4", "context": {"externalIds": [{"type": "crm_id", "id": "null"}]}},
        ]
    assert _quick(ctx, raws, defaults, kind, ids) == _full(ctx, raws, defaults, kind, ids)


def _count(sql: str) -> int:
    with sync_db() as conn:
        return int(conn.execute(text(sql)).scalar() or 0)


def test_a_batch_accepted_whole_is_sealed_as_received_and_processed(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import get_settings

    monkeypatch.setenv("CONSENTRY_INGEST_PROCESSOR", "0")
    monkeypatch.setenv("CONSENTRY_INGEST_WAIT", "0")
    get_settings.cache_clear()
    keys = make_keys()
    whole = [{**BASE, "type": "track", "event": "E", "messageId": f"w-{i}"} for i in range(3)]
    part = [{**BASE, "type": "track", "event": "E", "messageId": "p-1"}, {**BASE, "type": "track"}]
    body = {"batch": whole, "sentAt": "2026-11-25T10:00:01Z", "context": {"locale": "de-DE"}}
    with client() as c:
        assert c.post("/v1/batch", json=body, auth=(keys["ingest"], "")).json()["accepted"] == 3
        r = c.post("/v1/batch", json={"batch": part}, auth=(keys["ingest"], "")).json()
        assert r["accepted"] == 1 and [x["index"] for x in r["rejected"]] == [1]
    ctx = VaultContext.from_settings()

    async def rows() -> list[Any]:
        t = table_of(InboxBatch)
        async with session_maker()() as session:
            return list((await session.execute(select(t).order_by(t.c.id))).all())

    found = run(rows())
    plain = [open_blob(ctx.keys.master, PURPOSE, r.key_version, r.sealed, _binding(r._mapping)) for r in found]
    assert plain[0].startswith(RAW) and not plain[1].startswith(RAW)  # the second batch lost a message: rebuilt
    first, second = (opened(ctx, row) for row in found)
    assert [m["messageId"] for m in first.messages] == ["w-0", "w-1", "w-2"]
    assert first.defaults == {"context": {"locale": "de-DE"}, "sentAt": "2026-11-25T10:00:01Z"}
    assert [m["messageId"] for m in second.messages] == ["p-1"] and second.defaults == {}
    run(drain())
    assert _count("SELECT count(*) FROM event") == 4 and _count("SELECT count(*) FROM ingest_inbox") == 0


def test_both_blob_forms_read_alike() -> None:
    body = {"batch": [{"type": "track", "event": "E", "messageId": "x"}], "sentAt": "2026-11-25T10:00:01Z"}
    raw = _batch_of(RAW + msgspec.json.encode(body))
    rebuilt = _batch_of(msgspec.json.encode({"m": body["batch"], "d": {"sentAt": body["sentAt"]}, "r": True}))
    assert raw == rebuilt
