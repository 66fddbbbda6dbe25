"""The console under attack: what a signed-out visitor can make of the sign-in form."""

from __future__ import annotations

from tests.conftest import Env
from tests.console_helpers import csrf_of, post_form, sign_in
from tests.helpers import client, make_keys


def test_signing_in_with_a_key_holding_a_nul_character_is_refused_by_name_not_a_500(env: Env) -> None:
    with client() as c:
        token = csrf_of(c.get("/console/sign-in").text)
        r = c.post("/console/sign-in", data={"api_key": "csk_a\x00b_x", "_csrf_token": token}, follow_redirects=False)
        assert r.status_code == 422 and "api_key" in r.text
        assert "\x00" not in r.text and "csk_a" not in r.text


def test_console_forms_holding_a_nul_character_are_refused_by_name_not_a_500(env: Env) -> None:
    """PostgreSQL cannot hold a NUL in text: a form field carrying one is a 422 naming the field."""
    keys = make_keys()
    with client() as c:
        token = sign_in(c, keys["auditor"])
        r = post_form(c, "/console/auditor/ledger/filter", token, {"actor": "a\x00b"})
        assert r.status_code == 422 and "actor" in r.text and "a\x00b" not in r.text
        c.cookies.clear()
        token = sign_in(c, keys["marketer"])
        r = post_form(c, "/console/marketer/activation/runs", token, {"segment_id": "a\x00b", "destination_id": "x"})
        assert r.status_code == 422 and "segment_id" in r.text
