"""The console's protections: the session cookie (AES-GCM, HttpOnly, SameSite=Strict, holding
only the API key's id, the server-side session's id and the sign-in time), CSRF double-submit
tokens on every unsafe request, security headers (a strict Content-Security-Policy) and the
guard that checks the page registry.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.middleware.session.client_side import CookieBackendConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.access.service import Principal, principal_for_key
from app.console.registry import page_for
from app.console.sessions import end_sessions_of_key, session_is_live
from app.db import unit_of_work
from app.settings import get_settings
from app.vault.keyring import key_material

SESSION_COOKIE = "consentry_console"
CSRF_COOKIE = "consentry_csrf"
CSRF_HEADER = "x-csrftoken"
SESSION_SECONDS = 8 * 3600
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}


def _secure_cookies() -> bool:
    """``CONSENTRY_CONSOLE_SECURE_COOKIES=1`` marks the cookies Secure (serve the console over HTTPS)."""
    return get_settings().console_secure_cookies


def _secret(purpose: str) -> bytes:
    """A 32-byte key for one console purpose, derived from the index key (nothing more stored)."""
    index_key = key_material(get_settings()).index_key
    return hmac.new(index_key, b"consentry:console:" + purpose.encode(), hashlib.sha256).digest()


def _lazy(build: Callable[[ASGIApp], ASGIApp]) -> Callable[[ASGIApp], ASGIApp]:
    """Middleware whose keys are read at the first request (not when the app is built)."""

    def middleware(app: ASGIApp) -> ASGIApp:
        inner: ASGIApp | None = None

        async def call(scope: Scope, receive: Receive, send: Send) -> None:
            nonlocal inner
            if inner is None:
                inner = build(app)
            await inner(scope, receive, send)

        return call

    return middleware


def _session(app: ASGIApp) -> ASGIApp:
    config = CookieBackendConfig(
        secret=_secret("session"),
        key=SESSION_COOKIE,
        path="/console",
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=_secure_cookies(),
    )
    define: DefineMiddleware = config.middleware
    return define(app)


def _csrf(app: ASGIApp) -> ASGIApp:
    config = CSRFConfig(
        secret=_secret("csrf").hex(),
        cookie_name=CSRF_COOKIE,
        cookie_path="/console",
        header_name=CSRF_HEADER,
        cookie_httponly=True,
        cookie_samesite="strict",
        cookie_secure=_secure_cookies(),
    )
    return CSRFMiddleware(app=app, config=config)


def security_headers(app: ASGIApp) -> ASGIApp:
    """Adds the CSP and friends to every console response; pages are never cached."""

    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        static = scope.get("path", "").startswith("/console/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if not static:
                    headers["cache-control"] = "no-store"
            await send(message)

        await app(scope, receive, send_with_headers)

    return call


MIDDLEWARE = [security_headers, _lazy(_session), _lazy(_csrf)]
"""Outermost first: headers, session, CSRF."""


def session_data(key_id: str, sid: str) -> dict[str, Any]:
    """What the session cookie holds: the key's id, the server-side session's id (``sessions``)
    and when it signed in (never the secret)."""
    return {"key_id": key_id, "sid": sid, "at": int(time.time())}


async def signed_in(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
    """The principal of a live session: not signed out (its row is in ``console_session``), the
    key still exists, is not revoked (else its sessions end), and signed in less than
    ``SESSION_SECONDS`` ago."""
    data = connection.scope.get("session")
    if not isinstance(data, dict):
        return None
    key_id, sid, at = data.get("key_id"), data.get("sid"), data.get("at")
    if not isinstance(key_id, str) or not isinstance(sid, str) or not isinstance(at, int):
        return None
    if time.time() - at > SESSION_SECONDS:
        return None
    async with unit_of_work() as session:
        if not await session_is_live(session, sid, key_id):
            return None
        principal = await principal_for_key(session, key_id)
        if principal is None:
            await end_sessions_of_key(session, key_id)
    return principal if principal is not None and principal.role != "ingest" else None


async def console_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Admit a request only to a registered route, signed in with a role the registry lists."""
    page = page_for(str(connection.scope.get("method", "")), connection.scope.get("path_template", ""))
    if page is None:
        raise PermissionDeniedException(detail="this console route is not in the page registry")
    if page.roles is None:
        return
    principal = await signed_in(connection)
    if principal is None:
        raise NotAuthorizedException(detail="sign in to the console")
    connection.state.principal = principal
    if principal.role not in page.roles:
        raise PermissionDeniedException(detail=f"role '{principal.role}' may not open this page")
