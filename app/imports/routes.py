"""HTTP imports: upload a file (multipart), then poll its status resource."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath

from app.deps import Caller, Db
from app.errors import InvalidField, NotFound
from app.imports.jobs import process_import, upload_path
from app.imports.mapping import load_mapping
from app.imports.models import ImportJob
from app.imports.service import FORMATS, detect_format
from app.imports.upload import EncryptedWriter
from app.ledger.service import record
from app.settings import get_settings
from app.vault.cipher import new_data_key, wrap_key
from app.vault.keyring import key_material

MAX_UPLOAD = 2 * 1024**3


class ImportUpload(msgspec.Struct):
    file: UploadFile
    mapping: str | None = None
    """YAML mapping (see ``consentry import --help``); default: by column name."""
    format: str | None = None


class ImportOut(msgspec.Struct):
    id: str
    source: str
    filename: str
    status: str
    rows_read: int
    profiles_created: int
    profiles_updated: int
    events_stored: int
    duplicates: int
    rows_rejected: int
    error: str | None
    created_at: datetime
    finished_at: datetime | None


def _out(j: ImportJob) -> ImportOut:
    return ImportOut(
        j.id,
        j.source,
        j.filename,
        j.status,
        j.rows_read,
        j.profiles_created,
        j.profiles_updated,
        j.events_stored,
        j.duplicates,
        j.rows_rejected,
        j.error,
        j.created_at,
        j.finished_at,
    )


class ImportController(Controller):
    path = "/v1/imports"
    tags = ["imports"]
    opt = {"roles": ("ingest", "admin")}

    @post("/", operation_id="createImport", status_code=202, request_max_body_size=MAX_UPLOAD)
    async def create(
        self,
        data: Annotated[ImportUpload, Body(media_type=RequestEncodingType.MULTI_PART)],
        db: Db,
        principal: Caller,
    ) -> Response[ImportOut]:
        """Upload a CSV/NDJSON/JSON export; it is stored encrypted and imported in the background."""
        fmt = data.format or detect_format(data.file.filename or "upload.csv")
        if fmt not in FORMATS:
            raise InvalidField(f"must be one of {', '.join(FORMATS)}", field="format")
        if data.mapping:
            load_mapping(text=data.mapping)  # reject a bad mapping now, not in the background
        job_id = str(uuid.uuid4())
        ring = key_material(get_settings()).master
        mv, master = ring.current()
        file_key = new_data_key()
        writer = EncryptedWriter(upload_path(job_id), file_key, job_id)
        digest = hashlib.sha256()
        while block := await data.file.read(1 << 20):
            digest.update(block)
            writer.write(block)
        writer.close()
        source = principal.source or principal.name
        job = ImportJob(
            id=job_id,
            source=source,
            filename=(data.file.filename or "upload")[:255],
            file_sha256=digest.hexdigest(),
            status="queued",
            format=fmt,
            mapping=data.mapping,
            actor_key_id=principal.key_id,
            wrapped_key=wrap_key(master, mv, f"import:{job_id}", 1, file_key),
            master_version=mv,
            created_at=datetime.now(UTC),
        )
        db.add(job)
        await record(
            db,
            principal,
            "import.upload",
            purpose="essential.service",
            legal_basis="contract",
            details={"import_id": job_id, "format": fmt, "source": source},
        )
        await db.commit()
        return Response(_out(job), status_code=202, background=BackgroundTask(process_import, job_id))

    @get("/{import_id:str}", operation_id="getImport")
    async def status(self, import_id: FromPath[str], db: Db) -> ImportOut:
        """Progress and outcome: queued, running, done or failed, with counters."""
        job = await db.get(ImportJob, import_id)
        if job is None:
            raise NotFound("no import with this id", field="import_id")
        return _out(job)

    @get("/{import_id:str}/rejects", operation_id="getImportRejects", media_type="text/csv")
    async def rejects(self, import_id: FromPath[str], db: Db) -> Any:
        """Rejected rows as CSV: line, field, reason."""
        job = await db.get(ImportJob, import_id)
        if job is None:
            raise NotFound("no import with this id", field="import_id")
        return job.rejects_csv or "line,field,reason\n"
