"""An accessibility pass over the console: every page of the page registry, signed in as the role
whose work it is (``_owner``), on the demo data (a server and database of this module's own),
checked by axe-core with no serious or critical violation, and a screenshot of each.

One role per page: the templates do not change with the role beyond the navigation, and the
admin's home carries the whole navigation, so checking a page again under every other role
that may open it (the admin opens them all) found nothing new and doubled the crawl."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from app.console.registry import PAGES, STAFF
from tests.browser.plugin import (
    SCREENSHOT_DIR,
    LiveServer,
    OutsideRequests,
    TestSite,
    assert_accessible,
    new_context,
    off_loop,
    point_at,
    screenshot,
    separate_live_server,
    signed_in_pages,
)
from tests.conftest import run

MAX_VISITS = 150
"""Pages opened per role while looking for links to every parameterised page."""
FILTERED = ("/console/compliance/requests?status=completed",)
"""Filtered lists an officer opens by the filter form (not a link): where the certificates are."""


def _pattern(template: str) -> re.Pattern[str]:
    """``/console/x/{id:str}`` -> a regex matching the paths of that route."""
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("^" + "".join(_group(p) if p.startswith("{") else re.escape(p) for p in parts) + "$")


def _group(part: str) -> str:
    return f"(?P<{part[1:-1].split(':')[0]}>[^/]+)"


def _fill(template: str, known: dict[str, str]) -> str | None:
    """The template with every parameter taken from ids seen in links, or None."""
    names = re.findall(r"\{(\w+)(?::[^}]*)?\}", template)
    if not all(n in known for n in names):
        return None
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: known[m.group(1)], template)


def _owner(roles: frozenset[str]) -> str:
    """The role a page is checked under: the one role besides the admin that may open it (the
    officer's, the marketer's, the auditor's pages), else the admin (the home: every entry in
    its navigation)."""
    others = sorted(roles - {"admin"})
    return others[0] if len(others) == 1 else "admin"


def _pages_of(role: str) -> list[str]:
    """The console pages (GET, signed in) checked under ``role``."""
    return [p.path for p in PAGES if p.method == "GET" and p.roles is not None and _owner(p.roles) == role]


OWNERS = sorted({_owner(p.roles) for p in PAGES if p.method == "GET" and p.roles is not None})


@pytest.fixture(scope="module")
def demo_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, test_site: TestSite
) -> Iterator[LiveServer]:
    """A live server of this module's own with ``scripts/serve``'s demo data (keys: the demo's)."""
    from app.demo import load_demo
    from app.demo_marketing import FULL_DEMO

    with separate_live_server(tmp_path_factory, request, test_site, "browser_demo") as server:
        patch = pytest.MonkeyPatch()
        try:
            point_at(server.environ, patch)
            keys = off_loop(run, load_demo(FULL_DEMO))
        finally:
            patch.undo()
        yield LiveServer(server.url, server.env, {**server.keys, **keys}, server.log, server.environ)


LINK = re.compile(r"""(?:href|hx-get)=["']([^"']+)["']""")


def _links(html: str) -> list[str]:
    """Console paths the page links to or fetches with htmx (with their query)."""
    out = []
    for raw in LINK.findall(html):
        url = urlsplit(raw.replace("&amp;", "&"))
        if not url.netloc and url.path.startswith("/console"):
            out.append(url.path + (f"?{url.query}" if url.query else ""))
    return out


class Refused(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _visit(page: Any, server: LiveServer, role: str, template: str, path: str, problems: list[str] | None) -> list[str]:
    """Fetch ``path`` (of route ``template``) in the signed-in context and return its links; with
    ``problems``, also open it, screenshot it and check it with axe-core (full HTML pages only:
    an htmx fragment is checked inside its page; a download or a data stream is no page)."""
    probe = page.request.get(server.url + path)
    if probe.status != 200:
        said = re.sub(r"<[^>]+>|\s+", " ", probe.text())[-300:]
        raise Refused(f"{role} {template} ({path}): HTTP {probe.status}: {said}", probe.status)
    if not probe.headers.get("content-type", "").startswith("text/html"):
        return []
    html = probe.text()
    if problems is not None and "<html" in html[:2000].lower():
        page.goto(server.url + path)
        with contextlib.suppress(PlaywrightTimeout):  # htmx fragments loaded with the page
            page.wait_for_load_state("networkidle", timeout=5000)
        screenshot(page, f"a11y-{role}-{template.removeprefix('/console/') or 'home'}")
        try:
            assert_accessible(page, f"{role} {template}")
        except AssertionError as exc:
            problems.append(str(exc))
    return _links(html)


def _untyped(template: str) -> str:
    return re.sub(r"\{(\w+):[^}]+\}", r"{\1}", template)


def _most_promising(spare: list[str], patterns: dict[str, re.Pattern[str]], unchecked: set[str]) -> int:
    """The index of a spare page whose route is a prefix of a route not reached yet (a request
    page may link to its certificate), else 0."""
    prefixes = {_untyped(t) for t in unchecked}
    for i, link in enumerate(spare):
        template = next((t for t, rx in patterns.items() if rx.match(link.split("?")[0])), None)
        if template and any(u.startswith(_untyped(template) + "/") for u in prefixes):
            return i
    return 0


def _crawl(page: Any, server: LiveServer, role: str) -> tuple[list[str], set[str]]:
    """Visit every registry page the role may see: plain ones directly, parameterised ones
    through the first link to them found on the pages visited so far."""
    templates = _pages_of(role)
    patterns = {t: _pattern(t) for t in templates}
    checked: set[str] = set()
    problems: list[str] = []
    queue = [t for t in templates if "{" not in t]
    queue += [f for f in FILTERED if any(rx.match(f.split("?")[0]) for rx in patterns.values())]
    seen: set[str] = set(queue)
    spare: list[str] = []  # more pages of checked routes, opened only to find links
    known: dict[str, str] = {}  # path parameters seen in links (e.g. a run id for its report fragment)
    filled: set[str] = set()  # paths made from those, for routes no link led to
    denied: dict[str, str] = {}  # routes whose items seen so far were all refused to the role
    visits = 0
    while len(checked) < len(templates) and visits < MAX_VISITS:
        if not queue and not spare:
            queue = [p for t in templates if t not in checked and (p := _fill(t, known)) and p not in seen]
            filled.update(queue)
            seen.update(queue)
            if not queue:
                break
        path = queue.pop(0) if queue else spare.pop(_most_promising(spare, patterns, set(templates) - checked))
        visits += 1
        template = next((t for t, rx in patterns.items() if rx.match(path.split("?")[0])), None)
        if template is None:
            continue
        first = template not in checked
        try:
            links = _visit(page, server, role, template, path, problems if first else None)
        except Refused as exc:
            if path in filled and exc.status == 404:
                continue  # a path made up from another page's id, meaningless for that id
            if exc.status == 403 and "{" in template:  # this item may be refused by policy: try another
                if first:
                    denied.setdefault(template, str(exc))
                continue
            problems.append(str(exc))
            links = []
        checked.add(template)
        for link in links:
            match = next((t for t, rx in patterns.items() if rx.match(link.split("?")[0])), None)
            if match is None or link in seen:
                continue
            known.update(patterns[match].match(link.split("?")[0]).groupdict())  # type: ignore[union-attr]
            seen.add(link)
            (spare if match in checked else queue).append(link)
    problems += [why for t, why in denied.items() if t not in checked]
    return problems, set(templates) - checked - set(denied)


def test_every_signed_in_page_is_checked_under_a_role_that_may_open_it() -> None:
    pages = {p.path: p.roles for p in PAGES if p.method == "GET" and p.roles is not None}
    checked = {path: role for role in OWNERS for path in _pages_of(role)}
    assert checked.keys() == pages.keys()
    assert all(role in pages[path] and role in STAFF for path, role in checked.items())
    assert "/console" in _pages_of("admin")  # the home with every navigation entry


@pytest.mark.slow
@pytest.mark.parametrize("role", OWNERS)
def test_every_console_page_under_its_role_has_no_serious_accessibility_violation(
    chromium: Any, demo_server: LiveServer, role: str
) -> None:
    with signed_in_pages(chromium, demo_server) as signed_in:
        problems, unreached = _crawl(signed_in(role), demo_server, role)
    assert not unreached, f"{role}: no link leads to {sorted(unreached)} on the demo data"
    assert not problems, "\n".join(problems)
    assert any(SCREENSHOT_DIR.glob(f"a11y-{role}-*.png"))


def test_the_sign_in_page_has_no_serious_accessibility_violation(chromium: Any, demo_server: LiveServer) -> None:
    outside = OutsideRequests()
    context = new_context(chromium, outside)
    try:
        page = context.new_page()
        page.goto(demo_server.url + "/console/sign-in")
        screenshot(page, "a11y-signed-out-sign-in")
        assert_accessible(page, "sign-in")
    finally:
        context.close()
    assert not outside.urls
