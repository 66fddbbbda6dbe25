"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from sqlalchemy.exc import IntegrityError

from app.errors import DomainError
from app.logs import scrub_text
from app.request_context import current_request_id, public_path

PROBLEM_TYPE_BASE = "https://consentry.dev/problems/"
log = structlog.get_logger("consentry.errors")


def problem(
    status: int,
    title: str,
    detail: str,
    slug: str,
    request: Request[Any, Any, Any],
    invalid_params: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": public_path(request.url.path),
        "request_id": current_request_id(),
    }
    if invalid_params:
        body["invalid-params"] = invalid_params
    return Response(body, status_code=status, media_type="application/problem+json", headers=headers)


def _validation_params(extra: Any) -> list[dict[str, str]]:
    params: list[dict[str, str]] = []
    for item in extra if isinstance(extra, list) else []:
        if isinstance(item, dict):
            name = str(item.get("key") or item.get("source") or "body")
            # messages from the decoder name types and paths, never values; scrub anyway
            params.append({"name": name, "reason": scrub_text(str(item.get("message", "invalid")))})
    return params


def handle_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    params = _validation_params(exc.extra)
    names = ", ".join(p["name"] for p in params) or "request"
    return problem(400, "Invalid request", f"invalid value for: {names}", "validation", request, params)


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    titles = {
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not found",
        405: "Method not allowed",
        413: "Payload too large",
        415: "Unsupported media type",
        429: "Too many requests",
        503: "Service unavailable",
    }
    status = exc.status_code
    slug = titles.get(status, "http-error").lower().replace(" ", "-")
    headers = dict(exc.headers or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", 'Basic realm="consentry"')
    return problem(
        status, titles.get(status, "HTTP error"), scrub_text(str(exc.detail)), slug, request, headers=headers
    )


def handle_domain(request: Request[Any, Any, Any], exc: DomainError) -> Response[Any]:
    params = [{"name": exc.field, "reason": exc.detail}] if exc.field else None
    if exc.status >= 500:
        log.error("integrity_failure", field=exc.field, detail=exc.detail)
    return problem(exc.status, exc.title, exc.detail, exc.type_slug, request, params)


def handle_integrity(request: Request[Any, Any, Any], exc: IntegrityError) -> Response[Any]:
    return problem(409, "Conflict", "the change conflicts with existing data", "conflict", request)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled_error", error_type=type(exc).__name__)
    return problem(
        HTTP_500_INTERNAL_SERVER_ERROR,
        "Internal server error",
        "the server failed to complete the request",
        "internal",
        request,
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ValidationException: handle_validation,
    HTTPException: handle_http,
    DomainError: handle_domain,
    IntegrityError: handle_integrity,
    Exception: handle_unexpected,
}

__all__ = ["EXCEPTION_HANDLERS", "MediaType", "problem"]
