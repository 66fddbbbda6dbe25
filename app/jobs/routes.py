"""HTTP API: the scheduled jobs and their recent runs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.params import FromQuery, QueryParameter
from sqlalchemy import select

from app.deps import Db
from app.jobs.models import JobRun
from app.jobs.scheduler import product_jobs


class JobOut(msgspec.Struct):
    id: str
    interval_s: int
    description: str


class RunOut(msgspec.Struct):
    job_id: str
    slot: datetime
    owner: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    result: str | None


class JobController(Controller):
    path = "/v1/jobs"
    tags = ["jobs"]
    opt = {"roles": ("admin",)}

    @get("/", operation_id="listJobs")
    async def jobs(self) -> list[JobOut]:
        return [JobOut(j.id, j.interval_s, j.description) for j in product_jobs()]

    @get("/runs", operation_id="listJobRuns")
    async def runs(
        self, db: Db, job_id: FromQuery[str | None] = None, limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50
    ) -> list[RunOut]:
        """Most recent runs first, with status (``running``, ``ok``, ``failed``) and result or error."""
        q = select(JobRun).order_by(JobRun.started_at.desc()).limit(limit)  # type: ignore[attr-defined]
        if job_id:
            q = q.where(JobRun.job_id == job_id)  # type: ignore[arg-type]
        rows = (await db.execute(q)).scalars()
        return [RunOut(r.job_id, r.slot, r.owner, r.status, r.started_at, r.finished_at, r.result) for r in rows]
