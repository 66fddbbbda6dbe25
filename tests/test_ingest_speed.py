"""The fast accept path answers what the full pipeline would: the same rejects by index, the
same duplicates; a key believed for a moment is still refused at once once revoked."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.access.service import Principal
from app.ingest.service import BatchResult, _validated, checked_messages
from app.pii.review import cached_field_policy
from app.profiles.service import VaultContext
from tests.conftest import Env
from tests.helpers import auth, client, make_keys

TCF_TRUNCATED = "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA"[:20]

MESSAGES: list[Any] = [
    {"type": "track", "userId": "u1", "event": "Signed Up"},
    {"type": "track", "userId": "u1"},  # no event name
    {"type": "identify", "anonymousId": "x", "traits": {"email": "not-an-email"}},
    {"type": "identify", "userId": "u2", "traits": {"phone": "12"}},  # too short to be a phone number
    {"type": "identify", "userId": "u3", "traits": {"email": "A@Example.com", "Email": "b@example.com"}},
    {"type": "track", "userId": "undefined", "event": "Blocked"},  # a blocked value identifies nobody
    {"type": "identify", "userId": "null", "traits": {"email": "c@example.com"}},  # ...but the email does
    {"type": "track", "anonymousId": "a1", "event": "alice@example.com"},  # an event name with PII
    {"type": "page", "anonymousId": "a1", "name": "+1 415 555 0142"},
    {"type": "track", "userId": "u4", "event": "Consent", "context": {"tcf": TCF_TRUNCATED}},
    {"type": "track", "userId": "u4", "event": "Consent", "context": {"gpp": 7}},
    {"type": "group", "userId": "u5", "groupId": "g1", "traits": {"email": "nope"}},
    {"type": "alias", "userId": "u6", "previousId": "anon-6"},
    {"type": "page", "name": "Home"},  # neither userId nor anonymousId
    {"type": "teleport", "userId": "u7"},
    {"type": "track", "userId": "u8", "event": "Big", "properties": {"blob": "x" * 40_000}},
    {"type": "identify", "userId": "u9", "traits": {"birthday": "31/02/1990", "plan": "pro"}},
    {"type": "identify", "userId": "u10", "traits": {"firstName": "Ada", "plan": None}},
]


def test_the_accept_check_refuses_exactly_what_the_pipeline_would(env: Env) -> None:
    ctx = VaultContext.from_settings()
    fp = cached_field_policy(ctx.policies, ctx.keys.index_key)
    now = datetime.now(UTC)
    principal = Principal("k", "ingest", "web", "web", "client")
    for require_ids in (True, False):
        fast, full = BatchResult(), BatchResult()
        valid = checked_messages(ctx, MESSAGES, fast, None, None, require_ids, now, fp)
        prepared = _validated(ctx, principal, MESSAGES, full, None, None, require_ids, now, fp)
        assert [(r.index, r.field, r.reason) for r in fast.rejected] == [
            (r.index, r.field, r.reason) for r in full.rejected
        ]
        assert [m.index for m in valid] == [p.msg.index for p in prepared]
        assert len(valid) >= 5 and len(fast.rejected) >= 10  # both kinds really occur


def test_a_key_used_a_moment_ago_is_refused_once_revoked(env: Env) -> None:
    keys = make_keys()
    batch = {"batch": [{"type": "track", "userId": "u1", "event": "Signed Up"}]}
    with client() as c:
        made = c.post("/v1/keys", json={"role": "ingest", "name": "web"}, headers=auth(keys["admin"])).json()
        assert c.post("/v1/batch", json=batch, headers=auth(made["key"])).status_code == 200
        assert c.delete(f"/v1/keys/{made['id']}", headers=auth(keys["admin"])).status_code == 200
        assert c.post("/v1/batch", json=batch, headers=auth(made["key"])).status_code == 401
