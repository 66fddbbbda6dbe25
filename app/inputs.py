"""Checks every request passes before a handler sees it: a body that is UTF-8 and not nested
too deep (400 otherwise), no NUL characters in the URL or a form, and a ``purpose`` a ledger can hold.

Handlers that read their body themselves (the event API, which also inflates gzip) opt out
with ``opt={"checks_own_body": True}`` and call :func:`check_json_body` on what they read.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import msgspec
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from app.errors import InvalidField, TooLarge, UnknownParameter, UnreadableBody
from app.ingest.spec import MAX_JSON_DEPTH, has_nul, json_depth

MAX_PURPOSE_LEN = 128
CHECKED_BODY_LIMIT = 1024 * 1024
"""Bodies up to this size are checked whole; larger ones are refused later by the app's own limit."""
_UNCHECKED_TYPES = ("multipart/", "application/octet-stream")
FORM_TYPE = "application/x-www-form-urlencoded"


def refuse_unknown_params(query: Any, allowed: frozenset[str]) -> None:
    """Refuse (400) a query parameter the route does not take: a misspelt filter must not be ignored."""
    for name in query:
        if name not in allowed:
            raise UnknownParameter("not a parameter of this route", field=name)


def check_json_body(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse (400) a body that is not UTF-8 or nests objects and arrays deeper than ``max_depth``."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableBody("the body is not valid UTF-8", field="body") from exc
    if json_depth(body, max_depth) > max_depth:
        raise UnreadableBody(f"the body is nested deeper than {max_depth} levels", field="body")


def check_no_nul(body: bytes) -> None:
    """422 naming the top-level field when a JSON string or key holds NUL (no database stores it)."""
    if b"\\u0000" not in body:
        return
    try:
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return  # not JSON: the handler's own decoding answers
    if isinstance(data, dict):
        for key, value in data.items():
            if has_nul(key) or has_nul(value):
                name = key if key.isidentifier() and len(key) <= 64 else "body"
                raise InvalidField("contains a NUL character", field=name)
    elif has_nul(data):
        raise InvalidField("contains a NUL character", field="body")


def check_query(query_string: bytes) -> None:
    """A ``purpose`` longer than a ledger entry holds, or any NUL in the query, is refused by name."""
    if not query_string:
        return
    try:
        pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise UnreadableBody("the query string is not valid UTF-8", field="query") from exc
    for name, value in pairs:
        known = name if name.isidentifier() and len(name) <= 64 else "query"
        if "\x00" in value or "\x00" in name:
            raise InvalidField("contains a NUL character", field=known)
        if name == "purpose" and len(value) > MAX_PURPOSE_LEN:
            raise InvalidField(f"is longer than {MAX_PURPOSE_LEN} characters", field="purpose")


def _content_type(scope: Scope) -> str:
    for key, value in scope.get("headers", []):
        if key == b"content-type":
            return str(value.decode("latin-1").lower())
    return ""


def _has_header(scope: Scope, name: bytes) -> bool:
    return any(key == name for key, _ in scope.get("headers", []))


def input_checks_middleware(app: ASGIApp) -> ASGIApp:
    """Litestar middleware factory: the checks above, before the handler (and its body parsing) runs."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        path = scope.get("path", "")
        if "\x00" in path:
            names = [k for k, v in (scope.get("path_params") or {}).items() if isinstance(v, str) and "\x00" in v]
            raise InvalidField("contains a NUL character", field=names[0] if names else "path")
        check_query(scope.get("query_string", b""))
        handler: Any = scope.get("route_handler")
        opt = getattr(handler, "opt", {}) or {}
        ctype = _content_type(scope)
        if (
            scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE")
            or opt.get("checks_own_body")
            or ctype.startswith(_UNCHECKED_TYPES)
            or _has_header(scope, b"content-encoding")
        ):
            await app(scope, receive, send)
            return
        # read the body (up to the checked limit), check it, then replay it to the app
        chunks: list[bytes] = []
        size, more, first_other = 0, True, None
        while more and size <= CHECKED_BODY_LIMIT:
            message = await receive()
            if message["type"] != "http.request":
                first_other = message
                break
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if not more and first_other is None and ctype.startswith(FORM_TYPE):
            check_query(body)  # a form (the console's) is checked as a query string is
        elif not more and first_other is None:
            check_json_body(body)
            check_no_nul(body)
        replay: list[ReceiveMessage] = [{"type": "http.request", "body": body, "more_body": more}]
        if first_other is not None:
            replay.append(first_other)

        async def replaying_receive() -> ReceiveMessage:
            if replay:
                return replay.pop(0)
            return await receive()

        await app(scope, replaying_receive, send)

    return middleware


MAX_TEXT_CHARS = 200_000
"""Free text one request may hand to PII detection (all its texts together)."""


def check_text_size(texts: list[str], field: str) -> None:
    """413 naming ``field`` when the texts of one request hold more than ``MAX_TEXT_CHARS`` characters."""
    if sum(len(t) for t in texts) > MAX_TEXT_CHARS:
        raise TooLarge(f"the texts of one request may hold {MAX_TEXT_CHARS:,} characters", field=field)
