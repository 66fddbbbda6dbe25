"""A processor group reuses what it decided for properties it has seen before in the group:
equal-looking values of other types (1, 1.0, true, "1") must still be stored as sent, and a
value the detectors seal stays sealed for every event that carries it."""

from __future__ import annotations

import json

from sqlalchemy import text

from app.ingest.processor import drain
from tests.conftest import Env, run
from tests.helpers import client, make_keys, sync_db

SENT = [1, True, 1.0, "1", 1, True, 0.0, False, None, 1.5, "1.5"]


def test_properties_of_one_group_are_stored_as_sent_whatever_repeats(no_processor: Env) -> None:
    keys = make_keys()
    events = [
        {"type": "track", "event": "Tried", "userId": f"g-{i}", "messageId": f"g-m{i}", "properties": {"price": v}}
        for i, v in enumerate(SENT)
    ]
    events += [
        {
            "type": "track",
            "event": "Referred",
            "userId": f"r-{i}",
            "messageId": f"r-m{i}",
            "properties": {"ref": "friend.one@group-example.com", "plan": "pro"},
        }
        for i in range(3)
    ]
    with client() as c:
        r = c.post("/v1/batch", json={"batch": events}, auth=(keys["ingest"], ""))
        assert r.status_code == 200 and r.json()["accepted"] == len(events)
    assert run(drain()) == len(events)  # one group
    with sync_db() as conn:
        rows = conn.execute(text("SELECT message_id, properties FROM event")).all()
    stored = {m: (json.loads(p) if isinstance(p, str) else p) for m, p in rows}
    for i, v in enumerate(SENT):
        got = stored[f"g-m{i}"].get("price", "MISSING")
        assert got == v and type(got) is type(v), (i, v, got)
    for i in range(3):
        assert stored[f"r-m{i}"] == {"plan": "pro"}  # the email is sealed each time, never plain
