"""Rendering a console page: the template plus what every page needs (labels in the reader's
language, the signed-in principal, the navigation their role may see, the CSRF token)."""

from __future__ import annotations

from functools import partial
from typing import Any

from litestar import Request
from litestar.response import Template

from app.access.service import Principal
from app.console.i18n import LANGUAGES, language, translate
from app.console.registry import navigation
from app.console.security import CSRF_HEADER


def principal_of(request: Request[Any, Any, Any]) -> Principal | None:
    """The signed-in principal the console guard set, if any."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal


def page(request: Request[Any, Any, Any], template: str, status: int = 200, **context: Any) -> Template:
    """A console template with the shared context; ``t("key")`` gives a label."""
    lang = language(request)
    principal = principal_of(request)
    shared = {
        "t": partial(translate, lang),
        "lang": lang,
        "languages": LANGUAGES,
        "principal": principal,
        "nav": navigation(principal.role) if principal else [],
        "here": request.scope.get("path_template", ""),
        "path": request.url.path,
        "csrf_header": CSRF_HEADER,
    }
    return Template(template_name=template, context={**shared, **context}, status_code=status)
