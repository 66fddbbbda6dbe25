"""What the processor checks again when it stores an accepted message: what the field policy
decides (it may have changed since the message was accepted: a message it now refuses is
refused late, never stored half), not the message's size, nesting and NUL characters, which
were checked when it was accepted and depend on nothing else."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import text

from app.ingest import spec
from app.ingest.processor import drain
from app.profiles.service import VaultContext
from tests.conftest import Env, run
from tests.helpers import client, make_keys, sync_db


def _identify(tag: str, plan: str) -> dict[str, object]:
    return {
        "type": "identify",
        "userId": f"{tag}-user",
        "messageId": f"{tag}-m",
        "traits": {"email": f"{tag}@recheck-example.com", "plan": plan},
    }


def _accept(messages: list[dict[str, object]]) -> None:
    keys = make_keys()
    with client() as c:
        r = c.post("/v1/batch", json={"batch": messages}, auth=(keys["ingest"], ""))
        assert r.status_code == 200 and r.json()["accepted"] == len(messages)


def _stored() -> list[str]:
    with sync_db() as conn:
        return sorted(m for (m,) in conn.execute(text("SELECT message_id FROM event")))


def test_a_message_the_field_policy_refuses_by_processing_time_is_refused_late(no_processor: Env) -> None:
    _accept([_identify("a", "pro"), _identify("b", "b@recheck-example.com")])
    ctx = VaultContext.from_settings()
    # the policy now declares 'plan' an email address: "pro" no longer normalises
    email = ctx.policies.traits["email"]
    traits = {**ctx.policies.traits, "plan": dataclasses.replace(email, name="plan")}
    changed = dataclasses.replace(ctx, policies=dataclasses.replace(ctx.policies, traits=traits))
    run(drain(changed))
    assert _stored() == ["b-m"]
    with sync_db() as conn:
        assert conn.execute(text("SELECT count(*) FROM ingest_inbox")).scalar() == 0


def test_an_accepted_message_is_stored_whatever_the_size_limit_when_it_is_processed(
    no_processor: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _accept([_identify("c", "pro")])
    monkeypatch.setattr(spec, "MAX_EVENT_BYTES", 10)  # smaller than any message: checked again, it would be refused
    run(drain())
    assert _stored() == ["c-m"]
