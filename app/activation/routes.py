"""HTTP API for activation: destinations (secrets are write-only), runs and their reports,
dead letters and scheduled runs."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, delete, get, post, put
from litestar.background_tasks import BackgroundTask
from litestar.params import FromPath, JSONBody, QueryParameter

from app.activation import destinations as dests
from app.activation import jobs, runs, service
from app.deps import Caller, Db

READERS = ("admin", "compliance", "marketer")
OWNERS = ("admin", "marketer")


class DestinationBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    kind: str
    """webhook, file, ad_audience, wecom or sms."""
    purpose: str
    categories: list[str]
    """Data categories the destination may receive (within the purpose's)."""
    cross_border: bool = False
    """Data leaves the country: people need separate consent (PIPL Art. 39)."""
    config: dict[str, Any] = {}
    secret: str | None = None
    """Signing key (webhook, ``whsec_…``), bot URL (wecom) or token (sms); stored sealed, never shown."""

    def domain(self) -> dests.DestinationIn:
        return dests.DestinationIn(
            self.name, self.kind, self.purpose, self.categories, self.cross_border, self.config, self.secret
        )


class RunBody(msgspec.Struct, forbid_unknown_fields=True):
    segment_id: str
    destination_id: str


class ScheduleBody(msgspec.Struct, forbid_unknown_fields=True):
    segment_id: str
    destination_id: str
    cron: str
    """Five-field crontab in UTC (``0 6 * * 1``: Mondays at 06:00)."""


class DestinationController(Controller):
    path = "/v1/destinations"
    tags = ["activation"]

    @post("/", opt={"roles": OWNERS}, operation_id="createDestination", status_code=201)
    async def create(self, data: JSONBody[DestinationBody], db: Db, principal: Caller) -> dict[str, Any]:
        """Declare a destination: its purpose, the categories it may receive, whether data leaves the country."""
        return dests.view(await dests.create_destination(db, principal, data.domain()))

    @get("/", opt={"roles": READERS}, operation_id="listDestinations")
    async def index(self, db: Db) -> list[dict[str, Any]]:
        return [dests.view(d) for d in await dests.live_destinations(db)]

    @get("/{destination_id:str}", opt={"roles": READERS}, operation_id="getDestination")
    async def read(self, destination_id: FromPath[str], db: Db) -> dict[str, Any]:
        return dests.view(await dests.get_destination(db, destination_id))

    @put("/{destination_id:str}", opt={"roles": OWNERS}, operation_id="updateDestination")
    async def update(
        self, destination_id: FromPath[str], data: JSONBody[DestinationBody], db: Db, principal: Caller
    ) -> dict[str, Any]:
        """Replace the declaration (owner or admin); without ``secret`` the stored one stays."""
        return dests.view(await dests.update_destination(db, principal, destination_id, data.domain()))

    @delete("/{destination_id:str}", opt={"roles": OWNERS}, operation_id="deleteDestination", status_code=204)
    async def remove(self, destination_id: FromPath[str], db: Db, principal: Caller) -> None:
        """Retire a destination (its secret is dropped; its runs stay as proof)."""
        await dests.delete_destination(db, principal, destination_id)

    @get("/{destination_id:str}/dead-letters", opt={"roles": READERS}, operation_id="getDeadLetters")
    async def dead(self, destination_id: FromPath[str], db: Db) -> list[dict[str, Any]]:
        """Batches the destination kept refusing after every retry."""
        await dests.get_destination(db, destination_id, retired=True)
        return await service.dead_letters(db, destination_id=destination_id)


class ActivationController(Controller):
    path = "/v1/activations"
    tags = ["activation"]

    @post("/", opt={"roles": OWNERS}, operation_id="createActivation", status_code=202)
    async def create(self, data: JSONBody[RunBody], db: Db, principal: Caller) -> Response[dict[str, Any]]:
        """Send a segment to a destination now; consent is decided again at send time. Poll
        ``GET /v1/activations/{id}`` for progress and the report."""
        run = await service.start_run(db, principal, data.segment_id, data.destination_id)
        body = await service.report(db, principal, run)
        await db.commit()
        return Response(body, status_code=202, background=BackgroundTask(runs.execute_run, run.id))

    @get("/", opt={"roles": READERS}, operation_id="listActivations")
    async def index(
        self, db: Db, principal: Caller, limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50
    ) -> list[dict[str, Any]]:
        return [await service.report(db, principal, r) for r in await service.runs(db, limit)]

    @get("/{activation_id:str}", opt={"roles": READERS}, operation_id="getActivation")
    async def read(self, activation_id: FromPath[str], db: Db, principal: Caller) -> dict[str, Any]:
        """Status and report: sent, failed, excluded by reason, dead letters, Merkle root, ledger entry."""
        return await service.report(db, principal, await service.get_run(db, activation_id))


class ScheduleController(Controller):
    path = "/v1/activation-schedules"
    tags = ["activation"]

    @post("/", opt={"roles": OWNERS}, operation_id="createActivationSchedule", status_code=201)
    async def create(self, data: JSONBody[ScheduleBody], db: Db, principal: Caller) -> dict[str, Any]:
        """Send a segment to a destination on a cron schedule (exactly once per due time)."""
        return jobs.view(await jobs.create_schedule(db, principal, data.segment_id, data.destination_id, data.cron))

    @get("/", opt={"roles": READERS}, operation_id="listActivationSchedules")
    async def index(self, db: Db) -> list[dict[str, Any]]:
        return [jobs.view(s) for s in await jobs.live_schedules(db)]

    @delete("/{schedule_id:str}", opt={"roles": OWNERS}, operation_id="deleteActivationSchedule", status_code=204)
    async def remove(self, schedule_id: FromPath[str], db: Db, principal: Caller) -> None:
        await jobs.delete_schedule(db, principal, schedule_id)
