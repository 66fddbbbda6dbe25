"""HTTP API for journeys: definitions (versioned, every change in the ledger) and their sends."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, post, put
from litestar.params import FromPath, JSONBody, QueryParameter

from app.deps import Caller, Db
from app.errors import InvalidField
from app.journeys import service
from app.journeys.models import Journey

READERS = ("admin", "compliance", "marketer")
OWNERS = ("admin", "marketer")


class JourneyIn(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    kind: str
    """``welcome``, ``abandoned_cart``, ``birthday`` or ``reengagement``."""
    destination_id: str
    """The destination (``/v1/destinations``) the messages go to."""
    definition: dict[str, Any] = msgspec.field(default_factory=dict)
    """Window, delay, send time, time zone, quiet hours, caps, condition (see app/journeys/rules.py)."""
    purpose: str | None = None
    active: bool = True


def _checked(data: JourneyIn) -> JourneyIn:
    if not data.name.strip() or len(data.name) > 200 or not data.name.isprintable():
        raise InvalidField("expects a name of 1 to 200 printable characters", field="name")
    if not 0 < len(data.destination_id) <= 36 or not data.destination_id.isprintable():
        raise InvalidField("expects a destination id", field="destination_id")
    return data


async def _view(db: Any, j: Journey) -> dict[str, Any]:
    return {
        "id": j.id,
        "name": j.name,
        "kind": j.kind,
        "purpose": j.purpose,
        "destination_id": j.destination_id,
        "definition": j.definition,
        "active": j.active,
        "version": j.version,
        "owner_key_id": j.owner_key_id,
        "created_at": j.created_at.isoformat(),
        "updated_at": j.updated_at.isoformat(),
        "pending": await service.pending_count(db, j.id),
    }


class JourneyController(Controller):
    path = "/v1/journeys"
    tags = ["journeys"]

    @post("/", opt={"roles": OWNERS}, operation_id="createJourney", status_code=201)
    async def create(self, data: JSONBody[JourneyIn], db: Db, principal: Caller) -> dict[str, Any]:
        """Save a journey (owned by the caller; its sends are made as the caller's role)."""
        d = _checked(data)
        j = await service.create_journey(
            db, principal, d.name, d.kind, d.destination_id, d.purpose, d.definition, d.active
        )
        return await _view(db, j)

    @get("/", opt={"roles": READERS}, operation_id="listJourneys")
    async def index(self, db: Db) -> list[dict[str, Any]]:
        """Journeys (current definitions, pending timer counts)."""
        return [await _view(db, j) for j in await service.live_journeys(db)]

    @get("/{journey_id:str}", opt={"roles": READERS}, operation_id="getJourney")
    async def read(self, journey_id: FromPath[str], db: Db) -> dict[str, Any]:
        """A journey with every version of its definition."""
        j = await service.get_journey(db, journey_id)
        return {**await _view(db, j), "versions": await service.versions(db, j.id)}

    @put("/{journey_id:str}", opt={"roles": OWNERS}, operation_id="updateJourney")
    async def update(
        self, journey_id: FromPath[str], data: JSONBody[JourneyIn], db: Db, principal: Caller
    ) -> dict[str, Any]:
        """A new version of the definition (owner or admin); ``active: false`` pauses it."""
        d = _checked(data)
        j = await service.update_journey(
            db, principal, journey_id, d.name, d.kind, d.destination_id, d.purpose, d.definition, d.active
        )
        return await _view(db, j)

    @delete("/{journey_id:str}", opt={"roles": OWNERS}, operation_id="deleteJourney", status_code=204)
    async def remove(self, journey_id: FromPath[str], db: Db, principal: Caller) -> None:
        """Retire a journey (owner or admin); its pending timers are dropped."""
        await service.delete_journey(db, principal, journey_id)

    @get("/{journey_id:str}/sends", opt={"roles": READERS}, operation_id="getJourneySends")
    async def sends(
        self,
        journey_id: FromPath[str],
        db: Db,
        principal: Caller,
        before: Annotated[datetime | None, QueryParameter(description="``next`` of the previous page")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        """Sends newest first: person, occasion, when, destination, outcome (and why)."""
        return await service.sends_page(db, principal, journey_id, before, limit)
