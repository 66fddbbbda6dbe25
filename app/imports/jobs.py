"""Processing uploaded imports: claimed through the database, so any service process may
run them, and a run that died (stale heartbeat) is picked up again by ``resume_imports``."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import or_, update
from sqlmodel import col, select

from app.access.service import Principal
from app.db import unit_of_work
from app.imports.mapping import load_mapping_async
from app.imports.models import ImportJob
from app.imports.service import run_import
from app.imports.upload import open_decrypted_text
from app.logs import scrub_text
from app.settings import get_settings
from app.vault.cipher import unwrap_key
from app.vault.keyring import key_material

log = structlog.get_logger("consentry.imports")
STALE = timedelta(minutes=2)


def upload_path(import_id: str) -> Any:
    return get_settings().import_dir / f"{import_id}.enc"


async def _claim(import_id: str) -> ImportJob | None:
    now = datetime.now(UTC)
    async with unit_of_work() as session:
        claimed = await session.execute(
            update(ImportJob)
            .where(col(ImportJob.id) == import_id)
            .where(
                or_(
                    col(ImportJob.status) == "queued",
                    (col(ImportJob.status) == "running") & (col(ImportJob.heartbeat_at) < now - STALE),
                )
            )
            .values(status="running", heartbeat_at=now)
            .execution_options(synchronize_session=False)
        )
        if not claimed.rowcount:  # type: ignore[attr-defined]
            return None
        return await session.get(ImportJob, import_id)


async def process_import(import_id: str) -> str:
    """Run one uploaded import to the end (or until it fails); returns its final status."""
    job = await _claim(import_id)
    if job is None:
        return "skipped"
    keys = key_material(get_settings())
    assert job.wrapped_key is not None and job.master_version is not None
    file_key = unwrap_key(
        keys.master.get(job.master_version), job.master_version, f"import:{job.id}", 1, job.wrapped_key
    )
    principal = Principal(
        key_id=job.actor_key_id, role="ingest", name=job.source, source=job.source, trust=job.actor_trust
    )
    rejects = io.StringIO()

    async def heartbeat(_rows: int) -> None:
        async with unit_of_work() as session:
            await session.execute(
                update(ImportJob).where(col(ImportJob.id) == job.id).values(heartbeat_at=datetime.now(UTC))
            )

    status, error = "done", None
    try:
        mapping = await load_mapping_async(job.mapping or None)
        with open_decrypted_text(upload_path(job.id), file_key, job.id) as stream:
            summary = await run_import(
                stream,
                job.format,
                mapping,
                principal,
                job.file_sha256,
                rejects,
                progress=heartbeat,
            )
    except Exception as exc:  # recorded on the job; the upload is kept for a retry
        status, error = "failed", scrub_text(f"{type(exc).__name__}: {exc}")[:1000]
        log.error("import_failed", import_id=job.id, error=error)
        summary = None
    async with unit_of_work() as session:
        stored = await session.get(ImportJob, job.id)
        assert stored is not None
        stored.status, stored.error, stored.finished_at = status, error, datetime.now(UTC)
        if summary is not None:
            for name, value in summary.__dict__.items():
                setattr(stored, name, value)
            stored.rejects_csv = rejects.getvalue()
    if status == "done":
        upload_path(job.id).unlink(missing_ok=True)
    log.info("import_finished", import_id=job.id, status=status)
    return status


async def resume_imports() -> dict[str, Any]:
    """Scheduled: run imports that are queued or whose runner stopped sending heartbeats."""
    now = datetime.now(UTC)
    async with unit_of_work() as session:
        ids = list(
            (
                await session.execute(
                    select(ImportJob.id).where(
                        or_(
                            col(ImportJob.status) == "queued",
                            (col(ImportJob.status) == "running") & (col(ImportJob.heartbeat_at) < now - STALE),
                        )
                    )
                )
            ).scalars()
        )
    results = {i: await process_import(i) for i in ids}
    return {"imports": results}
