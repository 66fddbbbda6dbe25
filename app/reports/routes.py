"""HTTP API for dashboard reports: aggregated figures only, masked below the threshold."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, get
from litestar.params import QueryParameter

from app.deps import Caller, Db
from app.reports import service

READERS = ("admin", "compliance", "marketer")
SegmentId = Annotated[str, QueryParameter(min_length=1, max_length=64, description="a saved segment's id")]


class ReportController(Controller):
    path = "/v1/reports"
    tags = ["reports"]

    @get("/segment-sizes", opt={"roles": READERS}, operation_id="reportSegmentSizes")
    async def segment_sizes(
        self,
        db: Db,
        principal: Caller,
        segment_id: SegmentId,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """A segment's size at each refresh (oldest first) and now, with how many may be used."""
        return await service.segment_sizes(db, principal, segment_id, limit)

    @get("/consent-rates", opt={"roles": READERS}, operation_id="reportConsentRates")
    async def consent_rates(self, db: Db, principal: Caller) -> dict[str, Any]:
        """Per purpose: people who may be used for it and the rate, by jurisdiction and region."""
        return await service.consent_rates(db, principal)

    @get("/reach", opt={"roles": READERS}, operation_id="reportReach")
    async def reach(self, db: Db, principal: Caller) -> dict[str, Any]:
        """Per purpose: how many people the caller's role may use, and why not the others."""
        return await service.reach(db, principal)

    @get("/overlap", opt={"roles": READERS}, operation_id="reportOverlap")
    async def overlap(
        self,
        db: Db,
        principal: Caller,
        a: SegmentId,
        b: SegmentId,
        purpose: Annotated[str | None, QueryParameter(max_length=128)] = None,
    ) -> dict[str, Any]:
        """Two segments' members: each, both and either, with how many may be used for the purpose."""
        return await service.overlap(db, principal, a, b, purpose)
