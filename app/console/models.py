"""Console sign-ins kept on the server, so that signing out (or revoking the key) ends them
in every service process. No personal data: only an API key's id and times."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class ConsoleSession(SQLModel, table=True):
    """One signed-in console session; its id travels only inside the encrypted cookie."""

    __tablename__ = "console_session"

    id: str = Field(primary_key=True, max_length=64)
    key_id: str = Field(max_length=24, index=True)
    created_at: datetime = Field(sa_type=UtcDateTime)
    expires_at: datetime = Field(sa_type=UtcDateTime, index=True)
