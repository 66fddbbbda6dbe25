"""Request-scoped dependencies shared by all controllers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

from litestar import Request
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.db import session_maker


async def provide_session() -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the handler returns, rolled back on error."""
    async with session_maker()() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


def provide_principal(request: Request) -> Principal:  # type: ignore[type-arg]
    """The authenticated caller (set by ``require_role``)."""
    principal: Principal = request.state.principal
    return principal


Db: TypeAlias = NamedDependency[AsyncSession]
"""The request's database session."""
Caller: TypeAlias = NamedDependency[Principal]
"""The authenticated principal."""
