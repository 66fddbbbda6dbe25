"""Console sessions end on the server: a session cookie copied before sign-out (or before its
key is revoked) no longer opens a page afterwards."""

from __future__ import annotations

from tests.conftest import Env
from tests.console_helpers import post_form, sign_in
from tests.helpers import auth, client, make_keys

COOKIE = "consentry_console"


def test_a_cookie_copied_before_sign_out_no_longer_opens_the_console(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        token = sign_in(c, keys["auditor"])
        copied = c.cookies.get(COOKIE)
        assert copied
        assert c.get("/console", follow_redirects=False).status_code == 200
        assert post_form(c, "/console/sign-out", token).status_code == 303
    with client() as thief:
        thief.cookies.set(COOKIE, copied, path="/console")
        r = thief.get("/console", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/console/sign-in"


def test_signing_out_one_browser_leaves_another_signed_in(env: Env) -> None:
    keys = make_keys()
    with client() as a, client() as b:
        token_a = sign_in(a, keys["auditor"])
        sign_in(b, keys["auditor"])
        assert post_form(a, "/console/sign-out", token_a).status_code == 303
        assert a.get("/console", follow_redirects=False).status_code == 303
        assert b.get("/console", follow_redirects=False).status_code == 200


def test_revoking_the_key_ends_its_sessions_for_good(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        sign_in(c, keys["compliance"])
        assert c.get("/console", follow_redirects=False).status_code == 200
        key_id = keys["compliance"].split("_")[1]
        assert c.delete(f"/v1/keys/{key_id}", headers=auth(keys["admin"])).status_code == 200
        assert c.get("/console", follow_redirects=False).status_code == 303
