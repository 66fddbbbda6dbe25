"""The request id: taken from ``X-Request-ID`` or made up, bound to logs and the ledger."""

from __future__ import annotations

import re
import time
import uuid
from contextvars import ContextVar

import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
_VALID = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""A plain token; anything else a client sends (text, a trailing newline) is replaced."""
log = structlog.get_logger("consentry.access")


_KEY_IN_PATH = re.compile(r"^(/v1/projects/)[^/]+(/.*)?$")


def public_path(path: str) -> str:
    """The path as logs and problem answers show it: a write key in it (analytics.js asks for
    ``/v1/projects/{writeKey}/settings``) is replaced, so a key pasted there is never echoed."""
    return _KEY_IN_PATH.sub(r"\1{writeKey}\2", path)


def current_request_id() -> str | None:
    return request_id_var.get()


def new_request_id(given: str | None = None) -> str:
    """Use the caller's id if it is safe to log, else a fresh one; bind it for this context."""
    rid = given if given and _VALID.fullmatch(given) else uuid.uuid4().hex
    request_id_var.set(rid)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=rid)
    return rid


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: bind the request id, echo it in ``X-Request-ID``, log one access line."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1") or None
        rid = new_request_id(given)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            log.info(
                "request",
                method=scope.get("method"),
                path=public_path(str(scope.get("path", ""))),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )

    return middleware
