"""Every table of the product, for migrations and test set-up."""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlmodel import SQLModel

import app.access.models
import app.activation.models
import app.consent.models
import app.console.models
import app.dsr.models
import app.entities.models
import app.identity.models
import app.imports.models
import app.ingest.models
import app.jobs.models
import app.journeys.models
import app.profiles.models
import app.retention.models
import app.segments.models
import app.tags.models
import app.texts.models
import app.traits.models
import app.vault.models  # noqa: F401  (registers the tables)
from audit.store import metadata as audit_metadata

METADATA: list[MetaData] = [SQLModel.metadata, audit_metadata]
