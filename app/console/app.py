"""The console's router (mounted by ``app.main`` under ``/console``) and its template engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request, Response, Router
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException, ValidationException
from litestar.plugins.htmx import HTMXRequest
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp, Receive, Scope, Send

from app.console.auditor import AuditorController
from app.console.compliance import ComplianceController
from app.console.core import ConsoleCore
from app.console.marketer import MarketerController
from app.console.render import page
from app.console.security import MIDDLEWARE, SECURITY_HEADERS, console_guard
from app.errors import DomainError
from app.logs import scrub_text

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
CONTROLLERS: list[Any] = [ConsoleCore, ComplianceController, AuditorController, MarketerController]
"""Add your page controller here (and its routes to ``registry.PAGES``)."""


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """Jinja templates under ``app/console/templates`` (autoescaped)."""
    return TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine)


def _is_htmx(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("hx-request") == "true"


def _error(request: Request[Any, Any, Any], status: int, message: str) -> Template:
    """An error as a page, or (for htmx) a fragment swapped into the page's message area."""
    if _is_htmx(request):
        fragment = page(request, "error_fragment.html", status=status, message=message, status_code=status)
        fragment.headers.update({**SECURITY_HEADERS, "HX-Retarget": "#messages", "HX-Reswap": "innerHTML"})
        return fragment
    # (errors raised in the console's middleware, a CSRF refusal, pass its headers by: set them here)
    full = page(request, "error.html", status=status, message=message, status_code=status)
    full.headers.update(SECURITY_HEADERS)
    return full


def _unauthorised(request: Request[Any, Any, Any], _: NotAuthorizedException) -> Response[Any] | Redirect:
    """Not signed in (or the session ended): to the sign-in page."""
    if _is_htmx(request):
        return Response(b"", status_code=401, headers={**SECURITY_HEADERS, "HX-Redirect": "/console/sign-in"})
    return Redirect("/console/sign-in", status_code=303, headers=SECURITY_HEADERS)


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Template:
    return _error(request, exc.status_code, scrub_text(str(exc.detail)))


def _domain(request: Request[Any, Any, Any], exc: DomainError) -> Template:
    named = f"{exc.field}: {exc.detail}" if exc.field else exc.detail
    return _error(request, exc.status, named)


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Template:
    names = sorted(
        {str(i.get("key") or "form") for i in exc.extra if isinstance(i, dict)}
        if isinstance(exc.extra, list)
        else set()
    )
    return _error(request, 400, "invalid value for: " + (", ".join(names) or "form"))


def _answered_here(app: ASGIApp) -> ASGIApp:
    """A refusal raised by the CSRF middleware (outside any handler) answered as a console page
    here, so the access log and headers see the 403 it is rather than an escaped error."""

    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        except PermissionDeniedException as exc:
            request: HTMXRequest = HTMXRequest(scope, receive)
            response = _error(request, 403, scrub_text(str(exc.detail)))
            await response.to_asgi_response(None, request)(scope, receive, send)  # type: ignore[arg-type]

    return call


def console_router() -> Router:
    """Every console page and the vendored static files, behind the console's guard."""
    static = create_static_files_router(path="/static", directories=[STATIC], include_in_schema=False)
    return Router(
        path="/console",
        route_handlers=[*CONTROLLERS, static],
        guards=[console_guard],
        middleware=[*MIDDLEWARE[:-1], _answered_here, MIDDLEWARE[-1]],  # (the last is CSRF)
        request_class=HTMXRequest,
        exception_handlers={
            NotAuthorizedException: _unauthorised,
            ValidationException: _validation,
            HTTPException: _http,
            DomainError: _domain,
        },
        include_in_schema=False,
    )
