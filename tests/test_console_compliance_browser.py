"""The compliance officer in a real browser (Debian's chromium): a request from intake through
verification to an access package, and an erasure to its signed certificate; the reveal of a
masked value with a reason (htmx under the strict CSP); screenshots of each page and an
accessibility pass."""

from __future__ import annotations

import json
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.plugin import LiveServer, assert_accessible, screenshot

QUEUE = "/console/compliance/requests"


def _person(server: LiveServer) -> dict[str, str]:
    """A customer of this test's own (the live server's data is shared by the session)."""
    tag = uuid.uuid4().hex[:8]
    person = {"email": f"grace.{tag}@example.com", "phone": f"+4915{int(tag, 16) % 10**9:09d}"}
    body = {"userId": f"grace-{tag}", "traits": {**person, "firstName": "Grace"}}
    r = httpx.post(f"{server.url}/v1/identify", json=body, auth=(server.keys["ingest"], ""), timeout=30)
    assert r.status_code == 200, r.text
    return person


def _intake(page: Any, server: LiveServer, kind: str, person: dict[str, str], note: str | None = None) -> str:
    """Enter a request in the queue's intake form; returns its id (the page it lands on)."""
    page.goto(server.url + QUEUE)
    page.get_by_text("New request received by mail or phone").click()
    form = page.locator("form[action$='/intake']")
    form.locator("select[name=kind]").select_option(kind)
    form.locator("select[name=regulation]").select_option("gdpr")
    form.locator("input[name=jurisdiction]").fill("DE")
    form.locator("input[name=email]").fill(person["email"])
    form.locator("input[name=phone]").fill(person["phone"])
    if note:
        form.locator("input[name=skip_verification]").check()
        form.locator("input[name=verification_note]").fill(note)
    with page.expect_navigation():
        form.get_by_role("button", name="Record the request").click()
    return str(page.url.rsplit("/", 1)[1])


def _status(page: Any) -> str:
    return str(page.locator("#request-status").get_attribute("data-status"))


def _act(page: Any, action: str) -> None:
    page.locator("#status-action").select_option(action)
    with page.expect_navigation():
        page.locator("form[action$='/status']").get_by_role("button").click()


def _read_outbox(page: Any) -> Any:
    with page.expect_navigation():
        page.get_by_role("button", name="Read messages to the requester (demo channel)").click()
    return page.locator("#outbox")


@pytest.mark.slow
def test_the_officer_takes_an_access_request_from_intake_to_its_package(
    signed_in: Any, live_server: LiveServer
) -> None:
    person = _person(live_server)
    page = signed_in("compliance")
    rid = _intake(page, live_server, "access", person)
    assert _status(page) == "received" and person["email"] not in page.content()
    screenshot(page, "compliance-request-received")
    assert_accessible(page, "compliance request page")

    outbox = _read_outbox(page)
    code = outbox.locator(".outbox-code").first.inner_text()
    screenshot(page, "compliance-request-outbox")
    page.locator("#code").fill(code)
    with page.expect_navigation():
        page.get_by_role("button", name="Verify", exact=True).click()
    assert _status(page) == "verified"

    # revealing a masked value asks for a reason (htmx swaps the value in; the CSP allows it)
    item = page.locator("#identifier-1")
    item.locator("input[name=reason]").fill("requester on the phone confirms their address")
    item.get_by_role("button", name="Reveal").click()
    page.locator(".revealed").wait_for()
    assert person["email"] in page.locator(".revealed").inner_text()
    screenshot(page, "compliance-request-revealed")

    _act(page, "in_progress")
    with page.expect_navigation():
        page.locator("#run-request").click()
    assert _status(page) == "completed"
    assert page.locator("tr[data-step=done]").count() >= 1 and page.locator("tr[data-step=failed]").count() == 0
    _read_outbox(page)
    with page.expect_download() as got:
        page.locator("#download-package").click()
    path = got.value.path()
    with zipfile.ZipFile(path) as z:
        assert person["email"] in z.read("package.json").decode()
    screenshot(page, "compliance-request-package")

    page.goto(live_server.url + QUEUE + "?status=completed")
    assert page.locator(f"a[href='{QUEUE}/{rid}']").count() == 1
    screenshot(page, "compliance-queue")
    assert_accessible(page, "compliance queue")


@pytest.mark.slow
def test_the_officer_erases_a_person_and_downloads_the_certificate(signed_in: Any, live_server: LiveServer) -> None:
    person = _person(live_server)
    page = signed_in("compliance")
    rid = _intake(page, live_server, "erasure", person, note="identity card checked at the desk")
    assert _status(page) == "verified"
    _act(page, "in_progress")
    with page.expect_navigation():
        page.locator("#run-request").click()
    assert _status(page) == "completed"
    screenshot(page, "compliance-erasure-completed")
    with page.expect_download() as got:
        page.locator("#download-certificate").click()
    certificate = json.loads(Path(got.value.path()).read_text(encoding="utf-8"))
    assert rid in certificate["body"] and certificate["signature"]
    assert person["email"] not in page.content()
