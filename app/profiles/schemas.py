"""Request and response bodies of the profile API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class ProfileWrite(msgspec.Struct, forbid_unknown_fields=True):
    traits: dict[str, Any]
    """Segment-style traits; personal ones (email, phone, name…) are encrypted at rest."""


class ProfileWritten(msgspec.Struct):
    id: str
    created: bool
    fields: list[str]


class ProfileOut(msgspec.Struct):
    id: str
    created_at: datetime
    updated_at: datetime
    reveal: str
    """``plain`` (decrypted), ``masked`` or ``none``, as the purpose policy allowed."""
    traits: dict[str, Any]


class ProfileLookup(msgspec.Struct, forbid_unknown_fields=True):
    """Find profiles by an identifier; sent in a body so it never lands in URLs or access logs."""

    email: str | None = None
    phone: str | None = None


class ProfileList(msgspec.Struct):
    profiles: list[ProfileOut]
