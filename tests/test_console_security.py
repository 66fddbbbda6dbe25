"""The console under attack: what a signed-out visitor can make of the sign-in form."""

from __future__ import annotations

from tests.conftest import Env
from tests.console_helpers import csrf_of
from tests.helpers import client


def test_signing_in_with_a_key_holding_a_nul_character_is_refused_not_a_500(env: Env) -> None:
    with client() as c:
        token = csrf_of(c.get("/console/sign-in").text)
        r = c.post("/console/sign-in", data={"api_key": "csk_a\x00b_x", "_csrf_token": token}, follow_redirects=False)
        assert r.status_code == 401
        assert "\x00" not in r.text and "csk_a" not in r.text
