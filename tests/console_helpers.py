"""Console test helpers: sign a test client in with an API key, and read the CSRF token a
page carries (every form posts it as ``_csrf_token``; htmx sends it as ``x-csrftoken``)."""

from __future__ import annotations

import re
from typing import Any

from litestar.testing import TestClient

CSRF_FIELD = re.compile(r'name="_csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token in a console page."""
    found = CSRF_FIELD.search(html)
    assert found, "the page carries no CSRF token"
    return found.group(1)


def sign_in(c: TestClient[Any], key: str) -> str:
    """Sign the client in (the session cookie is kept by the client); returns the CSRF token."""
    token = csrf_of(c.get("/console/sign-in").text)
    r = c.post("/console/sign-in", data={"api_key": key, "_csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return token


def post_form(c: TestClient[Any], path: str, token: str, data: dict[str, Any] | None = None, **kw: Any) -> Any:
    """POST a console form with its CSRF token, as the browser would."""
    return c.post(path, data={**(data or {}), "_csrf_token": token}, follow_redirects=False, **kw)
