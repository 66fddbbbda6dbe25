"""Property: personal data planted at any depth, under any name (personal-looking or not,
including names declared non-personal), inside free text or alone, is never stored in
plaintext, whatever the rest of the payload looks like."""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.pii.checksums import resident_id_check_char
from tests.conftest import Env
from tests.helpers import client, make_keys
from tests.test_no_plaintext import _database_bytes

NAMES = st.one_of(
    st.sampled_from(
        [
            "note", "sku", "order_id", "url", "query", "plan", "name", "title", "x", "data", "customer",
            "products", "comment", "备注", "说明", "ref", "value", "misc", "a_b", "Info", "tier", "currency",
        ]
    ),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
)  # fmt: skip
FILLER = st.text(alphabet="abcdefghij klmnopqrstuvwxyz", max_size=20)
PLAIN_LEAF = st.one_of(st.integers(-1000, 1000), st.booleans(), st.none(), FILLER)


def _pii(kind: str, rng: random.Random) -> str:
    if kind == "email":
        return f"p{rng.randrange(10**9)}.x{rng.randrange(10**6)}@example.org"
    if kind == "cn_mobile":
        return f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}"
    if kind == "resident_id":
        born = f"{rng.randrange(1950, 2005)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
        body = f"110105{born}{rng.randrange(1000):03d}"
        return body + resident_id_check_char(body)
    if kind == "card":
        digits = [4] + [rng.randrange(10) for _ in range(14)]
        total = sum(d if i % 2 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(digits)))
        return "".join(map(str, digits)) + str((10 - total % 10) % 10)
    return f"+44 20 7946 {rng.randrange(10000):04d}"  # a UK London number


@st.composite
def payloads(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """A nested properties object with one to three personal values planted in it."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    planted: list[str] = []

    def tree(depth: int) -> Any:
        if depth >= 4 or draw(st.integers(0, 3)) == 0:
            return draw(PLAIN_LEAF)
        if draw(st.booleans()):
            return {draw(NAMES): tree(depth + 1) for _ in range(draw(st.integers(0, 3)))}
        return [tree(depth + 1) for _ in range(draw(st.integers(0, 3)))]

    root: dict[str, Any] = {draw(NAMES): tree(1) for _ in range(draw(st.integers(0, 3)))}
    for _ in range(draw(st.integers(1, 3))):
        value = _pii(draw(st.sampled_from(["email", "cn_mobile", "resident_id", "card", "uk_phone"])), rng)
        planted.append(value)
        if draw(st.booleans()):
            value = f"{draw(FILLER)} {value} {draw(FILLER)}".strip()
        node: Any = root
        for _ in range(draw(st.integers(0, 4))):  # walk down to a random depth, making room as needed
            if isinstance(node, dict):
                name = draw(NAMES)
                if not isinstance(node.get(name), dict | list):
                    node[name] = {}
                node = node[name]
            else:
                if not node or draw(st.booleans()):
                    node.append({})
                node = node[-1] if isinstance(node[-1], dict | list) else node
        if isinstance(node, dict):
            node[draw(NAMES)] = value
        else:
            node.append(value)
    return root, planted


def test_planted_personal_data_is_never_stored_in_plaintext(env: Env) -> None:
    keys = make_keys()
    planted_all: list[str] = []
    counter = iter(range(10**6))
    with client() as c:

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
        @given(payloads(), st.sampled_from(["track", "identify", "group"]))
        def send(payload: tuple[dict[str, Any], list[str]], kind: str) -> None:
            props, planted = payload
            n = next(counter)
            event: dict[str, Any] = {"type": kind, "userId": f"prop-{n % 5}", "messageId": f"m-{n}"}
            if kind == "track":
                event.update(event="Something Happened", properties=props)
            elif kind == "identify":
                event["traits"] = props
            else:
                event.update(groupId="g1", traits=props)
            r = c.post("/v1/batch", json={"batch": [event]}, auth=(keys["ingest"], ""))
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["accepted"] + len(body["rejected"]) == 1, body
            for value in planted:
                assert value not in r.text
            planted_all.extend(planted)

        send()
    stored = _database_bytes(env)
    logs = env.log_file.read_bytes()
    assert planted_all
    for value in planted_all:
        for form in {value, json.dumps(value)[1:-1], value.replace(" ", "")}:
            assert form.encode() not in stored, f"{value!r} stored in plaintext"
            assert form.encode() not in logs, f"{value!r} logged"
