"""A fuzz pass (schemathesis) over every operation of the OpenAPI schema, in process, with a valid
key of a role the operation admits: whatever the generated input, no answer is a 5xx, and every
error is a problem document."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from litestar.routes import HTTPRoute
from schemathesis.python import asgi

from app.main import create_app
from app.settings import get_settings
from tests.conftest import Env
from tests.helpers import make_keys


def _schema() -> dict[str, Any]:
    app = create_app()
    get_settings.cache_clear()  # built before any test's environment: forget what it read
    return app.openapi_schema.to_schema()


def _roles() -> dict[tuple[str, str], tuple[str, ...]]:
    """(method, OpenAPI path) -> roles the operation admits (in the order the route lists them)."""
    out: dict[tuple[str, str], tuple[str, ...]] = {}
    for route in create_app().routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            roles = handler.opt.get("roles")
            path = "/".join(p.split(":")[0] + "}" if p.startswith("{") else p for p in route.path.split("/"))
            for method in handler.http_methods:
                out[(method.upper(), path)] = tuple(roles) if roles else ()
    get_settings.cache_clear()
    return out


SCHEMA = schemathesis.openapi.from_dict(_schema())
ROLES = _roles()


@pytest.fixture
def fuzz(env: Env) -> Iterator[tuple[Any, dict[str, str], Iterator[int]]]:
    keys = make_keys()
    with asgi.get_client(create_app()) as session:
        yield session, keys, itertools.count()


@pytest.mark.slow
@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx(case: Any, fuzz: tuple[Any, dict[str, str], Iterator[int]]) -> None:
    session, keys, counter = fuzz
    roles = ROLES.get((case.method.upper(), case.path), ())
    headers: dict[str, str] = {}
    if roles:
        role = roles[next(counter) % len(roles)]
        headers["Authorization"] = f"Bearer {keys[role]}"
    response = case.call(session=session, headers=headers)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])
    if response.status_code >= 400:
        ctype = (response.headers.get("content-type") or [""])[0]
        assert ctype.startswith("application/problem+json"), (case.method, case.path, response.status_code, ctype)
