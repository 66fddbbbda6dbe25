"""Browser collection under attack: what a page (or a script) holding a public write key can do."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import Env
from tests.helpers import client, make_keys

SHOP = "http://shop.example"
TEXT = {"Content-Type": "text/plain", "Origin": SHOP}


@pytest.fixture
def keys(env: Env, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("CONSENTRY_BROWSER_ORIGINS", f"test-web={SHOP}")
    return make_keys()


@pytest.mark.parametrize(
    "body",
    [
        {"batch": [{"writeKey": {"x": 1}, "type": "track"}]},
        {"batch": [{"writeKey": ["k"], "type": "track"}]},
        {"writeKey": 5, "batch": [{"writeKey": {"a": []}}]},
    ],
)
def test_a_batch_whose_messages_carry_a_write_key_that_is_not_text_is_refused_not_a_500(
    keys: dict[str, str], body: dict[str, object]
) -> None:
    with client() as c:
        r = c.post("/v1/b", content=json.dumps(body), headers=TEXT)
        assert r.status_code == 401, r.text
        assert r.headers["content-type"].startswith("application/problem+json")


def test_a_write_key_with_a_nul_character_is_refused_not_a_500(keys: dict[str, str]) -> None:
    """PostgreSQL cannot hold a NUL in text: the key's id must not reach the database."""
    basic = "Basic " + base64.b64encode(b"csk_a\x00b_x:").decode()
    with client() as c:
        r = c.post("/v1/b", content=b'{"writeKey": "csk_a\\u0000b_x", "batch": []}', headers=TEXT)
        assert r.status_code == 401, r.text
        r = c.post("/v1/b", content=b'{"batch": []}', headers={**TEXT, "Authorization": basic})
        assert r.status_code == 401, r.text
        r = c.post("/v1/batch", json={"batch": []}, headers={"Authorization": basic})
        assert r.status_code == 401, r.text
