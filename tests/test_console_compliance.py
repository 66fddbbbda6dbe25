"""The compliance officer's console over HTTP: the session cookie's flags, CSRF refusals,
the Content-Security-Policy, the request queue's filters and bulk actions, a request's page
from intake through verification to an access package and an erasure certificate, and the
audited reveal of a masked value."""

from __future__ import annotations

import io
import json
import re
import zipfile
from typing import Any

import pytest
from litestar.testing import TestClient

from tests.conftest import Env
from tests.console_helpers import csrf_of, post_form, sign_in
from tests.helpers import auth, client, fail_consent_forget_once, make_keys
from tests.test_dsr_erasure import with_dsr_dirs

QUEUE = "/console/compliance/requests"
ADA = {"email": "ada.lovelace@example.com", "phone": "+49 151 23456789"}


@pytest.fixture
def dsr_env(env: Env, monkeypatch: pytest.MonkeyPatch) -> Env:
    return with_dsr_dirs(env, monkeypatch)


def _ada(c: TestClient[Any], keys: dict[str, str]) -> None:
    body = {"userId": "ada-1", "traits": {**ADA, "firstName": "Ada"}}
    assert c.post("/v1/identify", json=body, auth=(keys["ingest"], "")).status_code == 200


def _intake(c: TestClient[Any], token: str, **fields: str) -> str:
    """A request entered in the console's intake form; returns its id."""
    r = post_form(c, f"{QUEUE}/intake", token, fields)
    assert r.status_code == 303, r.text
    return str(r.headers["location"]).rsplit("/", 1)[1]


def _api_intake(c: TestClient[Any], keys: dict[str, str], **body: Any) -> str:
    r = c.post("/v1/dsr", json=body, headers=auth(keys["compliance"]))
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _ids(html: str) -> set[str]:
    return set(re.findall(r'href="/console/compliance/requests/([0-9a-f-]{36})"', html))


def _ledger(c: TestClient[Any], keys: dict[str, str], action: str) -> list[dict[str, Any]]:
    r = c.get("/v1/audit/entries", params={"action": action}, headers=auth(keys["auditor"]))
    assert r.status_code == 200, r.text
    return list(r.json()["entries"])


def test_sign_in_gives_an_httponly_strict_cookie_holding_no_key(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        token = csrf_of(c.get("/console/sign-in").text)
        r = post_form(c, "/console/sign-in", token, {"api_key": keys["compliance"]})
        assert r.status_code == 303 and r.headers["location"] == "/console"
        cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("consentry_console="))
        flags = {f.strip().split("=")[0].lower() for f in cookie.split(";")[1:]}
        assert {"httponly", "path", "samesite", "max-age"} <= flags and "samesite=strict" in cookie.lower()
        secret = keys["compliance"].split("_", 2)[2]  # csk_<id>_<secret>; the secret itself may hold "_"
        assert keys["compliance"] not in cookie and secret not in cookie
        assert "Compliance officer" in c.get("/console").text
        # a wrong key is refused on the page, with no session
        with client() as other:
            t = csrf_of(other.get("/console/sign-in").text)
            bad = post_form(other, "/console/sign-in", t, {"api_key": "csk_000000000000_nope"})
            assert bad.status_code == 401 and "consentry_console=" not in bad.headers.get("set-cookie", "")
        # revoking the key ends the session at the next request
        key_id = keys["compliance"].split("_")[1]
        assert c.delete(f"/v1/keys/{key_id}", headers=auth(keys["admin"])).status_code == 200
        r = c.get(QUEUE, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/console/sign-in"


def test_a_form_without_its_csrf_token_is_refused(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        c.get("/console/sign-in")
        r = c.post("/console/sign-in", data={"api_key": keys["compliance"]}, follow_redirects=False)
        assert r.status_code == 403 and "consentry_console=" not in r.headers.get("set-cookie", "")
        assert "x-request-id" in r.headers and '"status": 403' in env.log_file.read_text()  # logged as what it is
        token = sign_in(c, keys["compliance"])
        rid = _api_intake(
            c, keys, kind="erasure", regulation="GDPR", identifiers={"email": "x@example.com"}, verify=False,
            verification_note="passport seen at the desk",
        )  # fmt: skip
        path = f"{QUEUE}/{rid}/status"
        assert c.post(path, data={"status": "in_progress"}, follow_redirects=False).status_code == 403
        forged = {"status": "in_progress", "_csrf_token": "0" * len(token)}
        assert c.post(path, data=forged, follow_redirects=False).status_code == 403
        assert c.get(f"/v1/dsr/{rid}", headers=auth(keys["compliance"])).json()["status"] == "verified"
        # htmx sends the token as a header
        r = c.post(path, data={"status": "in_progress"}, headers={"x-csrftoken": token}, follow_redirects=False)
        assert r.status_code == 303
        assert c.get(f"/v1/dsr/{rid}", headers=auth(keys["compliance"])).json()["status"] == "in_progress"


def test_every_console_response_carries_a_strict_content_security_policy(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        pages = [c.get("/console/sign-in"), c.post("/console/sign-in", data={"api_key": "x"})]  # the second: 403
        sign_in(c, keys["marketer"])
        pages += [c.get("/console"), c.get(QUEUE)]  # the last: 403 for a marketer
        assert [p.status_code for p in pages] == [200, 403, 200, 403]
        for p in pages:
            csp = p.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
            assert "unsafe-inline" not in csp and p.headers["x-content-type-options"] == "nosniff"
            assert "<script>" not in p.text and "style=" not in p.text


def test_the_queue_filters_hides_unverified_requests_and_colours_deadlines(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        token = sign_in(c, keys["compliance"])
        staff = {"verify": False, "verification_note": "identity card checked"}
        erasure = _api_intake(
            c, keys, kind="erasure", regulation="GDPR", identifiers={"email": "a@example.com"}, **staff
        )
        access = _api_intake(
            c, keys, kind="access", regulation="PIPL", identifiers={"phone": "+8613812345678"}, **staff
        )
        unverified = _api_intake(c, keys, kind="access", regulation="CCPA", identifiers={"email": "b@example.com"})
        assert _ids(c.get(QUEUE).text) == {erasure, access}
        assert _ids(c.get(QUEUE, params={"unverified": "1"}).text) == {erasure, access, unverified}
        assert _ids(c.get(QUEUE, params={"kind": "erasure"}).text) == {erasure}
        assert _ids(c.get(QUEUE, params={"regulation": "pipl"}).text) == {access}
        assert _ids(c.get(QUEUE, params={"status": "received"}).text) == {unverified}
        post_form(c, f"{QUEUE}/{erasure}/status", token, {"status": "denied", "reason": "no such customer"})
        assert erasure not in _ids(c.get(QUEUE).text)  # closed: left out unless asked for
        assert erasure in _ids(c.get(QUEUE, params={"status": "all"}).text)
        assert _ids(c.get(QUEUE, params={"status": "denied"}).text) == {erasure}
        assert _ids(c.get(QUEUE, params={"due": "overdue"}).text) == set()
        within_30 = _ids(c.get(QUEUE, params={"due": "30", "unverified": "1"}).text)
        assert access in within_30 and unverified not in within_30  # PIPL: 15 working days; CCPA: 45 days
        page = c.get(QUEUE).text
        assert 'class="due-ok"' in page or 'class="due-soon"' in page
        bad = c.get(QUEUE, params={"kind": "ada@example.com"})
        assert bad.status_code == 422 and "kind" in bad.text and "ada@example.com" not in bad.text
        # a bulk action on the PIPL filter moves only that request
        r = post_form(c, f"{QUEUE}/bulk", token, {"regulation": "pipl", "action": "in_progress"})
        assert r.status_code == 200 and "1 changed, 0 refused" in r.text
        statuses = {
            rid: c.get(f"/v1/dsr/{rid}", headers=auth(keys["compliance"])).json()["status"] for rid in (erasure, access)
        }
        assert statuses == {erasure: "denied", access: "in_progress"}
        # a refusal is reported on its own (a received request cannot be completed)
        r = post_form(c, f"{QUEUE}/bulk", token, {"status": "received", "action": "completed"})
        assert "0 changed, 1 refused" in r.text and unverified[:8] in r.text


def test_revealing_a_masked_value_needs_a_reason_that_goes_to_the_ledger(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        _ada(c, keys)
        token = sign_in(c, keys["compliance"])
        rid = _intake(c, token, kind="access", regulation="gdpr", email=ADA["email"])
        page = c.get(f"{QUEUE}/{rid}").text
        assert ADA["email"] not in page and "a***@example.com" in page
        assert _ledger(c, keys, "dsr.viewed")  # the view itself is recorded
        r = post_form(c, f"{QUEUE}/{rid}/reveal", token, {"field": "email", "reason": "  "})
        assert r.status_code == 422 and "reason" in r.text and ADA["email"] not in r.text
        assert _ledger(c, keys, "dsr.revealed") == []
        why = "requester called to confirm the address on file"
        r = post_form(
            c, f"{QUEUE}/{rid}/reveal", token, {"field": "email", "reason": why}, headers={"hx-request": "true"}
        )
        assert r.status_code == 200 and ADA["email"] in r.text and "<html" not in r.text
        [entry] = _ledger(c, keys, "dsr.revealed")
        assert entry["details"]["reason"] == why and entry["details"]["field"] == "email"
        assert entry["details"]["dsr"] == rid and ADA["email"] not in json.dumps(entry)
        assert entry["actor_id"] == keys["compliance"].split("_")[1]


def _read_outbox(c: TestClient[Any], token: str, rid: str) -> str:
    r = post_form(c, f"{QUEUE}/{rid}/outbox", token)
    assert r.status_code == 200, r.text
    return r.text


def test_a_request_goes_from_intake_through_verification_to_an_access_package(dsr_env: Env) -> None:
    keys = make_keys()
    with client() as c:
        _ada(c, keys)
        token = sign_in(c, keys["compliance"])
        rid = _intake(c, token, kind="access", regulation="gdpr", email=ADA["email"], phone=ADA["phone"])
        assert rid not in c.get(QUEUE).text  # not verified yet: hidden by default
        outbox = _read_outbox(c, token, rid)
        [code] = re.findall(r'class="outbox-code">(\d{6})<', outbox)
        assert ADA["email"] not in outbox  # the contact is masked
        assert post_form(c, f"{QUEUE}/{rid}/verify", token, {"code": code}).status_code == 303
        page = c.get(f"{QUEUE}/{rid}").text
        assert 'data-status="verified"' in page and rid in c.get(QUEUE).text
        assert post_form(c, f"{QUEUE}/{rid}/status", token, {"status": "in_progress"}).status_code == 303
        assert post_form(c, f"{QUEUE}/{rid}/run", token).status_code == 303
        page = c.get(f"{QUEUE}/{rid}").text
        assert 'data-status="completed"' in page and 'data-step="done"' in page
        outbox = _read_outbox(c, token, rid)
        [link] = re.findall(r'name="token" value="([^"]+)"', outbox)
        r = post_form(c, f"{QUEUE}/{rid}/package", token, {"token": link})
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            body = json.loads(z.read("package.json"))
        assert ADA["email"] in json.dumps(body)
        assert _ledger(c, keys, "dsr.package_downloaded")
        cert = c.get(f"{QUEUE}/{rid}/certificate")
        assert cert.status_code == 200 and json.loads(cert.content)["signature"]


def test_an_erasure_ends_with_a_signed_certificate_to_download(dsr_env: Env) -> None:
    keys = make_keys()
    with client() as c:
        _ada(c, keys)
        token = sign_in(c, keys["compliance"])
        rid = _intake(
            c, token, kind="erasure", regulation="gdpr", email=ADA["email"], phone=ADA["phone"], skip_verification="1",
            verification_note="identity card checked at the desk",
        )  # fmt: skip
        assert post_form(c, f"{QUEUE}/{rid}/status", token, {"status": "in_progress"}).status_code == 303
        assert post_form(c, f"{QUEUE}/{rid}/run", token).status_code == 303
        page = c.get(f"{QUEUE}/{rid}").text
        assert 'data-status="completed"' in page and 'id="download-certificate"' in page
        assert ADA["email"] not in page and "a***@" not in page  # the requester's data is gone
        cert = c.get(f"{QUEUE}/{rid}/certificate")
        assert "attachment" in cert.headers["content-disposition"]
        body = json.loads(json.loads(cert.content)["body"])
        assert body["request_id"] == rid if "request_id" in body else rid in json.dumps(body)
        # the API says the same
        assert c.get(f"/v1/dsr/{rid}/certificate", headers=auth(keys["compliance"])).json() == json.loads(cert.content)


@pytest.mark.slow
def test_the_demo_fills_the_queue_with_requests_in_every_state(dsr_env: Env) -> None:
    from app.demo import load_demo
    from tests.conftest import run

    keys = run(load_demo(17, dsr_env.tmp / "demo-keys.json"))
    with client() as c:
        sign_in(c, keys["compliance"])
        page = c.get(QUEUE, params={"unverified": "1"}).text
        for status in ("received", "waiting", "verified", "in_progress", "extended", "completed", "denied"):
            assert c.get(QUEUE, params={"status": status}).text.count('href="/console/compliance/requests/') >= 1, (
                status
            )
        assert 'class="due-overdue"' in page and ('class="due-urgent"' in page or 'class="due-soon"' in page)
        states = c.get("/v1/dsr", params={"limit": 100}, headers=auth(keys["compliance"])).json()
        assert {"completed"} <= {s["status"] for s in states}


def test_labels_follow_the_language_toggle_and_accept_language(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        assert "API 密钥" in c.get("/console/sign-in", headers={"Accept-Language": "zh-CN,zh;q=0.9"}).text
        token = sign_in(c, keys["compliance"])
        assert "Requests" in c.get(QUEUE).text
        r = post_form(c, "/console/language", token, {"lang": "zh", "next": QUEUE})
        assert r.status_code == 303 and r.headers["location"] == QUEUE
        page = c.get(QUEUE).text
        assert "数据主体请求" in page and 'lang="zh-CN"' in page
        # the way back goes only to a console page (no open redirect)
        r = post_form(c, "/console/language", token, {"lang": "en", "next": "//evil.example/console"})
        assert r.headers["location"] == "/console"


def test_no_console_form_sends_personal_data_in_a_url(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        _ada(c, keys)
        token = sign_in(c, keys["compliance"])
        rid = _intake(c, token, kind="access", regulation="gdpr", email=ADA["email"])
        for html in (c.get(QUEUE).text, c.get(f"{QUEUE}/{rid}").text, _read_outbox(c, token, rid)):
            for form in re.findall(r"<form\b.*?</form>", html, flags=re.S):
                method = re.search(r'method="(\w+)"', form)
                fields = set(re.findall(r'name="(\w+)"', form))
                if method is None or method.group(1).lower() == "get":
                    assert not fields & {"email", "phone", "name", "code", "token", "reason", "api_key"}, form


def test_a_failed_store_shows_on_the_checklist_and_is_retried_from_the_page(
    dsr_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_consent_forget_once(monkeypatch)
    keys = make_keys()
    with client() as c:
        _ada(c, keys)
        token = sign_in(c, keys["compliance"])
        rid = _intake(
            c, token, kind="erasure", regulation="gdpr", email=ADA["email"], phone=ADA["phone"], skip_verification="1",
            verification_note="identity card checked at the desk",
        )  # fmt: skip
        post_form(c, f"{QUEUE}/{rid}/status", token, {"status": "in_progress"})
        post_form(c, f"{QUEUE}/{rid}/run", token)
        page = c.get(f"{QUEUE}/{rid}").text
        assert 'data-store="consent" data-step="failed"' in page and "ConnectionError" in page
        assert 'data-status="in_progress"' in page and 'id="download-certificate"' not in page
        assert f'action="{QUEUE}/{rid}/steps/consent/retry"' in page
        assert f'action="{QUEUE}/{rid}/steps/identity/retry"' not in page  # done: nothing to retry
        assert c.get(f"{QUEUE}/{rid}/certificate").status_code == 404  # no certificate while a store failed
        assert post_form(c, f"{QUEUE}/{rid}/steps/consent/retry", token).status_code == 303
        page = c.get(f"{QUEUE}/{rid}").text
        assert 'data-status="completed"' in page and 'data-step="failed"' not in page
        assert 'id="download-certificate"' in page
        again = post_form(c, f"{QUEUE}/{rid}/steps/consent/retry", token)  # done now: refused on the page
        assert again.status_code == 409 and "text/html" in again.headers["content-type"]


def test_a_search_by_email_goes_by_post_finds_the_persons_requests_and_is_recorded(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        _ada(c, keys)
        token = sign_in(c, keys["compliance"])
        mine = _intake(c, token, kind="access", regulation="gdpr", email=ADA["email"])
        other = _api_intake(c, keys, kind="access", regulation="gdpr", identifiers={"email": "nobody@example.com"})
        r = post_form(c, f"{QUEUE}/search", token, {"query": ADA["email"].upper()})
        assert r.status_code == 200 and _ids(r.text) == {mine} and other not in r.text
        assert str(r.url).endswith("/search") and ADA["email"] not in r.text  # the value is neither echoed nor in a URL
        [entry] = _ledger(c, keys, "dsr.searched")
        assert entry["details"] == {"by": "email", "found": 1} and ADA["email"] not in json.dumps(entry)
        assert entry["subject_id"]  # names the person found
        assert _ids(post_form(c, f"{QUEUE}/search", token, {"query": "+49 30 0000000"}).text) == set()
        bad = post_form(c, f"{QUEUE}/search", token, {"query": "not a phone"})
        assert bad.status_code == 422 and "query" in bad.text and "not a phone" not in bad.text
        assert c.get(f"{QUEUE}/search").status_code in {404, 405}  # there is no GET form of it
