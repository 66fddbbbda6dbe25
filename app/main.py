"""The Litestar application: routes, guards, error map, scheduler lifespan."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from litestar import Litestar, get
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from sqlalchemy import text

from app.access.guards import require_role
from app.access.routes import ApiKeyController
from app.activation.routes import ActivationController, DestinationController, ScheduleController
from app.consent.check import PolicyError, check_policies
from app.consent.snapshots import remember_policy
from app.console.app import console_router, template_config
from app.db import dispose_engines, unit_of_work
from app.decisions.routes import ConsentController
from app.deps import provide_principal, provide_session
from app.dsr.policy import check_dsr_policy
from app.dsr.routes import DsrController
from app.imports.routes import ImportController
from app.ingest import jetstream
from app.ingest.browser import BrowserCollectionController
from app.ingest.inbox import close_writers, resume_spool
from app.ingest.processor import Processor, service_processor
from app.ingest.routes import EventController, IngestController
from app.inputs import input_checks_middleware
from app.jobs.routes import JobController
from app.jobs.scheduler import build_scheduler, product_jobs
from app.journeys.routes import JourneyController
from app.ledger.routes import AuditController
from app.logs import configure_logging
from app.people.routes import ProfileController
from app.pii.engine import resolve_ner_model
from app.pii.routes import FieldReviewController
from app.problems import EXCEPTION_HANDLERS
from app.process import tune_garbage_collector
from app.ratelimit import STORE_NAME, rate_limit_middleware, rate_limit_store
from app.reports.routes import ReportController
from app.request_context import request_id_middleware
from app.segments.jobs import apply_outbox_job
from app.segments.routes import SegmentController
from app.settings import get_settings
from app.tags.routes import TagController
from app.tags.taxonomy import check_tags_policy
from app.texts.routes import TextController
from app.traits.catalog import check_traits_policy
from app.traits.routes import TraitController
from app.vault.keyring import key_material

log = structlog.get_logger("consentry")


@get("/health", operation_id="health", tags=["service"])
async def health() -> dict[str, str]:
    """Liveness and database reachability (no authentication)."""
    async with unit_of_work() as session:
        await session.execute(text("SELECT 1"))
    return {"status": "ok", "database": "ok"}


def check_policy_files(policy_dir: Path) -> None:
    """Validate every policy file before anything uses one; on problems log each (file, line,
    problem), print them on stderr and raise ``PolicyError``: the service does not start."""
    problems = check_policies(policy_dir) + check_dsr_policy(policy_dir) + check_traits_policy(policy_dir)
    problems += check_tags_policy(policy_dir)
    if not problems:
        log.info("policy_checked", policy_dir=str(policy_dir))
        return
    for p in problems:
        log.error("policy_invalid", file=p.file, line=p.line, problem=p.problem)
        print(f"policy error: {p}", file=sys.stderr, flush=True)
    raise PolicyError(policy_dir, problems)


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    settings = get_settings()
    check_policy_files(settings.policy_dir)  # refuse to start on a broken policy (file:line: problem)
    async with unit_of_work() as session:  # so a decision can be replayed under the rules of its day
        await remember_policy(session, settings.policy_dir)
    key_material(settings)  # fail fast on bad key configuration; create dev keys once
    model, has_ner = resolve_ner_model(settings.ner_model, settings.nlp_dir)
    log.info("pii_ner_model", model=model if has_ner else None, names_and_places=has_ner)
    tune_garbage_collector()
    scheduler = build_scheduler(product_jobs()) if settings.scheduler_enabled else None
    if scheduler is not None:
        scheduler.start()
    processor = service_processor(settings.ingest_processor)
    if isinstance(processor, Processor):  # (a ChildProcessor's worker adds it itself)
        processor.followers.append(apply_outbox_job)
    app.state.ingest_processor = processor
    if processor is not None:
        processor.start()
    await resume_spool()  # accepted batches a killed service left in the accept spool
    log.info("service_started", scheduler=bool(scheduler), ingest_processor=bool(processor))
    try:
        yield
    finally:
        if processor is not None:
            await processor.stop()
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        await jetstream.close()  # the JetStream inbox's connection, if this loop made one
        await close_writers()  # the accept writers' own connections
        await dispose_engines()


def create_app() -> Litestar:
    """Build the application from the current ``CONSENTRY_*`` settings."""
    configure_logging(get_settings())
    openapi = OpenAPIConfig(
        title="Consentry",
        version="0.1.0",
        description="Privacy-first customer data platform.",
        path="/docs",
        render_plugins=[SwaggerRenderPlugin(path="/")],
        components=Components(
            security_schemes={
                "apiKey": SecurityScheme(type="http", scheme="bearer", description="Consentry API key"),
                "writeKey": SecurityScheme(type="http", scheme="basic", description="Source write key as user name"),
            }
        ),
        security=[{"apiKey": []}, {"writeKey": []}],
    )
    return Litestar(
        route_handlers=[
            health,
            ProfileController,
            EventController,
            IngestController,
            BrowserCollectionController,
            ImportController,
            ApiKeyController,
            AuditController,
            JobController,
            TextController,
            ConsentController,
            FieldReviewController,
            SegmentController,
            ReportController,
            DestinationController,
            ActivationController,
            ScheduleController,
            DsrController,
            JourneyController,
            TraitController,
            TagController,
            console_router(),
        ],
        template_config=template_config(),
        guards=[require_role],
        dependencies={"db": Provide(provide_session), "principal": Provide(provide_principal, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        stores={STORE_NAME: rate_limit_store(get_settings())},
        middleware=[request_id_middleware, *rate_limit_middleware(get_settings()), input_checks_middleware],
        openapi_config=openapi,
        lifespan=[lifespan],
        request_max_body_size=1024 * 1024,
        logging_config=None,
    )
