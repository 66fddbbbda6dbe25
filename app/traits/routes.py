"""HTTP API for computed traits: the definitions, and an admin's refresh on demand."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, get, post
from litestar.params import JSONBody

from app.deps import Caller, Db
from app.errors import InvalidField
from app.traits.service import definitions, refresh_traits

MAX_IDS = 10_000


class RefreshIn(msgspec.Struct, forbid_unknown_fields=True):
    profile_ids: list[str] | None = None
    """The people to refresh (None: everyone)."""


class TraitController(Controller):
    path = "/v1/traits"
    tags = ["traits"]

    @get("/", opt={"roles": ("admin", "compliance", "marketer", "auditor")}, operation_id="listTraits")
    async def list_traits(self) -> dict[str, Any]:
        """The computed traits of policies/computed_traits.yaml with their formulas and profiling flag."""
        return {"traits": definitions()}

    @post("/refresh", opt={"roles": ("admin",)}, operation_id="refreshTraits", status_code=200)
    async def refresh(self, data: JSONBody[RefreshIn], db: Db, principal: Caller) -> dict[str, Any]:
        """Compute the traits again now, for these people or everyone (the job does it on a schedule)."""
        ids = data.profile_ids
        if ids is not None and (len(ids) > MAX_IDS or not all(0 < len(i) <= 36 for i in ids)):
            raise InvalidField(f"expects at most {MAX_IDS} profile ids", field="profile_ids")
        return {"values": await refresh_traits(db, ids, actor=principal)}
