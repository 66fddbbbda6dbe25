"""The real-browser harness itself: the live server answers chromium, pages cannot reach
beyond this machine, screenshots are saved and axe-core reports what it finds."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.plugin import (
    LiveServer,
    OutsideRequests,
    TestSite,
    assert_accessible,
    axe_violations,
    new_context,
    screenshot,
)


def test_chromium_reaches_the_live_server(page: Any, live_server: LiveServer) -> None:
    response = page.goto(f"{live_server.url}/health")
    assert response is not None and response.status == 200
    assert '"status":"ok"' in page.content().replace(" ", "")


def test_signed_in_pages_carry_the_session_of_their_role(signed_in: Any, live_server: LiveServer) -> None:
    compliance = signed_in("compliance")
    assert compliance.url.startswith(f"{live_server.url}/console")
    cookies = {c["name"]: c for c in compliance.context.cookies()}
    assert cookies["consentry_console"]["httpOnly"] and cookies["consentry_console"]["sameSite"] == "Strict"
    anonymous = compliance.context.browser.new_context()
    try:
        anonymous_page = anonymous.new_page()
        anonymous_page.goto(f"{live_server.url}/console/")
        assert anonymous_page.url.endswith("/console/sign-in")
    finally:
        anonymous.close()


def test_a_page_cannot_reach_beyond_this_machine(chromium: Any, test_site: TestSite) -> None:
    outside = OutsideRequests()
    context = new_context(chromium, outside)
    try:
        context.new_page().goto(test_site.url("harness-check.html"))
    finally:
        context.close()
    assert outside.urls == ["https://example.invalid/pixel.gif"]


def test_screenshot_and_accessibility_helpers(chromium: Any, test_site: TestSite) -> None:
    context = new_context(chromium, OutsideRequests())
    try:
        page = context.new_page()
        page.goto(test_site.url("harness-check.html"))
        path = screenshot(page, "harness check")
        assert path.name == "harness-check.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert_accessible(page, "harness check")
        page.evaluate("() => { document.documentElement.removeAttribute('lang'); }")
        page.set_content("<html><body><img src='x.png'><button></button></body></html>")
        assert {"image-alt", "button-name"} <= {v["id"] for v in axe_violations(page)}
        with pytest.raises(AssertionError, match="critical button-name"):
            assert_accessible(page, "broken page")
    finally:
        context.close()
