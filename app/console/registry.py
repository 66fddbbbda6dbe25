"""The page registry: every console route with the roles that may use it, and the navigation.

The console's guard admits a request only when its (method, route) is listed here, so a route
missing from the registry is refused to everyone (and ``tests/test_console_roles.py`` fails).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STAFF = frozenset({"admin", "compliance", "marketer", "auditor"})
"""Every role that may sign in to the console (an ``ingest`` write key may not)."""
COMPLIANCE = frozenset({"admin", "compliance"})
MARKETER = frozenset({"admin", "marketer"})
AUDITOR = frozenset({"admin", "auditor"})
PUBLIC = None


@dataclass(frozen=True)
class Page:
    """One console route: ``path`` is Litestar's route template (``{request_id:str}``);
    ``roles`` None means public (sign-in, static files); ``nav`` is the label key when the page
    is a navigation entry."""

    method: str
    path: str
    roles: frozenset[str] | None
    nav: str | None = None


PAGES: tuple[Page, ...] = (
    Page("GET", "/console/static/{file_path:path}", PUBLIC),
    Page("GET", "/console/sign-in", PUBLIC),
    Page("POST", "/console/sign-in", PUBLIC),
    Page("POST", "/console/language", PUBLIC),
    Page("POST", "/console/sign-out", STAFF),
    Page("GET", "/console", STAFF, nav="nav.home"),
    # compliance officer
    Page("GET", "/console/compliance/requests", COMPLIANCE, nav="nav.requests"),
    Page("POST", "/console/compliance/requests/bulk", COMPLIANCE),
    Page("POST", "/console/compliance/requests/intake", COMPLIANCE),
    Page("POST", "/console/compliance/requests/search", COMPLIANCE),
    Page("GET", "/console/compliance/requests/{request_id:str}", COMPLIANCE),
    Page("POST", "/console/compliance/requests/{request_id:str}/status", COMPLIANCE),
    Page("POST", "/console/compliance/requests/{request_id:str}/extend", COMPLIANCE),
    Page("POST", "/console/compliance/requests/{request_id:str}/codes", COMPLIANCE),
    Page("POST", "/console/compliance/requests/{request_id:str}/outbox", COMPLIANCE),
    Page("POST", "/console/compliance/requests/{request_id:str}/verify", COMPLIANCE),
    Page("POST", "/console/compliance/requests/{request_id:str}/run", COMPLIANCE),
    Page("POST", "/console/compliance/requests/{request_id:str}/steps/{store:str}/retry", COMPLIANCE),
    Page("POST", "/console/compliance/requests/{request_id:str}/reveal", COMPLIANCE),
    Page("GET", "/console/compliance/requests/{request_id:str}/certificate", COMPLIANCE),
    Page("POST", "/console/compliance/requests/{request_id:str}/package", COMPLIANCE),
    # auditor
    Page("GET", "/console/auditor/ledger", AUDITOR, nav="nav.ledger"),
    Page("POST", "/console/auditor/ledger/filter", AUDITOR),
    Page("GET", "/console/auditor/ledger/stream", AUDITOR),
    Page("GET", "/console/auditor/verify", AUDITOR, nav="nav.verify"),
    Page("GET", "/console/auditor/activity", AUDITOR, nav="nav.activity"),
    # marketer
    Page("GET", "/console/marketer/segments", MARKETER, nav="nav.segments"),
    Page("GET", "/console/marketer/segments/{segment_id:str}", MARKETER),
    Page("POST", "/console/marketer/segments/{segment_id:str}/overlap", MARKETER),
    Page("GET", "/console/marketer/builder", MARKETER, nav="nav.builder"),
    Page("GET", "/console/marketer/builder/{segment_id:str}", MARKETER),
    Page("POST", "/console/marketer/builder/edit", MARKETER),
    Page("POST", "/console/marketer/builder/count", MARKETER),
    Page("POST", "/console/marketer/builder/overlap", MARKETER),
    Page("POST", "/console/marketer/builder/save", MARKETER),
    Page("GET", "/console/marketer/activation", MARKETER, nav="nav.activation"),
    Page("POST", "/console/marketer/activation/runs", MARKETER),
    Page("GET", "/console/marketer/activation/runs/{run_id:str}", MARKETER),
    Page("GET", "/console/marketer/activation/runs/{run_id:str}/report", MARKETER),
    Page("GET", "/console/marketer/journeys", MARKETER, nav="nav.journeys"),
    Page("GET", "/console/marketer/journeys/{journey_id:str}", MARKETER),
)
"""Add a page here (and its nav label in ``labels/*.json``) when you add a console route."""


def _untyped(path: str) -> str:
    """``{request_id:str}`` -> ``{request_id}``, as the request's ``path_template`` names it."""
    return re.sub(r"\{(\w+):[^}]+\}", r"{\1}", path)


_BY_ROUTE = {(p.method, _untyped(p.path)): p for p in PAGES}


def page_for(method: str, path_template: str) -> Page | None:
    """The registry entry of a route (HEAD counts as GET), or None when it is not registered."""
    return _BY_ROUTE.get(("GET" if method == "HEAD" else method, _untyped(path_template)))


def navigation(role: str) -> list[Page]:
    """The navigation entries a role may see, in registry order."""
    return [p for p in PAGES if p.nav and p.roles is not None and role in p.roles]
