"""The console's role matrix: every console route is in the page registry, and every role
sees exactly the pages the registry gives it (the API's version is tests/test_roles.py)."""

from __future__ import annotations

import re

from litestar.routes import HTTPRoute

from app.console.i18n import LANGUAGES, catalog
from app.console.registry import PAGES, navigation
from app.main import create_app
from tests.conftest import ROLES, Env
from tests.console_helpers import csrf_of, post_form, sign_in
from tests.helpers import client, make_keys

DUMMY = "00000000-0000-0000-0000-000000000000"


def _console_routes() -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for route in create_app().routes
        if isinstance(route, HTTPRoute) and route.path.startswith("/console")
        for method in route.methods
        if method not in {"HEAD", "OPTIONS"}
    }


def test_the_registry_covers_every_console_route() -> None:
    assert _console_routes() == {(p.method, p.path) for p in PAGES}, "add console routes to app/console/registry.py"


def test_every_label_has_english_and_chinese() -> None:
    labels = catalog()
    for key, texts in labels.items():
        assert all(texts.get(lang, "").strip() for lang in LANGUAGES), key
    for page in PAGES:
        assert page.nav is None or page.nav in labels, page


def _path(template: str) -> str:
    if "{file_path:path}" in template:
        return template.replace("{file_path:path}", "htmx.min.js")
    return re.sub(r"\{[^}]+\}", DUMMY, template)


def test_role_by_page_matrix(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        token = csrf_of(c.get("/console/sign-in").text)
        for page in PAGES:  # signed out: every page but the public ones sends you to sign in
            r = (
                c.get(_path(page.path), follow_redirects=False)
                if page.method == "GET"
                else post_form(c, _path(page.path), token)
            )
            if page.roles is None:  # (signing in with no key is a 401 page: not a refusal of the route)
                assert r.status_code != 403 and r.headers.get("location") != "/console/sign-in", (page, r.status_code)
            else:
                assert r.status_code == 303 and r.headers["location"] == "/console/sign-in", (page, r.status_code)
    for role in ROLES:
        with client() as c:
            if role == "ingest":  # a source's write key may not sign in
                token = csrf_of(c.get("/console/sign-in").text)
                r = post_form(c, "/console/sign-in", token, {"api_key": keys["ingest"]})
                assert r.status_code == 401 and "consentry_console" not in r.headers.get("set-cookie", "")
                assert c.get("/console", follow_redirects=False).status_code == 303
                continue
            token = sign_in(c, keys[role])
            home = c.get("/console").text
            for page in PAGES:
                if page.path in {"/console/sign-out", "/console/sign-in"}:  # (signing in again would sign out)
                    continue
                path = _path(page.path)
                r = c.get(path, follow_redirects=False) if page.method == "GET" else post_form(c, path, token)
                if page.roles is None:
                    assert r.status_code != 403, (role, page, r.status_code)
                elif role in page.roles:
                    assert r.status_code not in {401, 403} and r.headers.get("location") != "/console/sign-in", (
                        role,
                        page,
                        r.status_code,
                    )
                else:
                    assert r.status_code == 403, (role, page, r.status_code)
                    assert "text/html" in r.headers["content-type"]
                shown = f'href="{page.path}"' in home
                assert shown == (page in navigation(role)), (role, page)
            assert post_form(c, "/console/sign-out", token).status_code == 303
            assert c.get("/console", follow_redirects=False).status_code == 303
