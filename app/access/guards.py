"""Authentication and role guard.

Routes declare the roles they admit in ``opt={"roles": (...)}``; a route without
``roles`` is public. Keys arrive as ``Authorization: Bearer KEY``, ``X-API-Key: KEY``
or HTTP Basic with the key as user name (how Segment/RudderStack SDKs send write keys).
"""

from __future__ import annotations

import base64
import binascii

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from app.access.service import Principal, authenticate
from app.db import session_maker


def token_from_headers(connection: ASGIConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    if scheme.lower() == "basic" and value:
        try:
            user = base64.b64decode(value.strip()).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user or None
    return connection.headers.get("x-api-key")


async def require_role(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """401 without a valid key, 403 when the key's role is not among the route's roles."""
    roles = handler.opt.get("roles")
    if roles is None:
        return
    token = token_from_headers(connection)
    if not token:
        raise NotAuthorizedException(detail="an API key is required")
    async with session_maker()() as session:
        principal = await authenticate(session, token)
    if principal is None:
        raise NotAuthorizedException(detail="the API key is unknown or revoked")
    connection.state.principal = principal
    if principal.role not in roles:
        raise PermissionDeniedException(detail=f"role '{principal.role}' may not call this endpoint")


def current_principal(connection: ASGIConnection) -> Principal:
    """The principal the guard authenticated for this request."""
    principal: Principal = connection.state.principal
    return principal
