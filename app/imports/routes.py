"""HTTP imports: upload a file (multipart), then poll its status resource.

The upload is read from the request as it streams in and encrypted chunk by chunk
(``app.imports.multipart``): no plaintext byte of it is ever written to disk, the temporary
folder included. Status and rejects belong to the source that uploaded them.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath

from app.access.service import Principal
from app.deps import Caller, Db
from app.errors import InvalidField, NotFound, TooLarge
from app.imports.jobs import process_import, upload_path
from app.imports.mapping import MAX_MAPPING_BYTES, load_mapping_async
from app.imports.models import ImportJob
from app.imports.multipart import PartData, PartEnd, PartStart, boundary_of, read_parts
from app.imports.service import FORMATS, detect_format
from app.imports.upload import EncryptedWriter
from app.ledger.service import record
from app.settings import get_settings
from app.vault.cipher import new_data_key, wrap_key
from app.vault.keyring import key_material

MAX_UPLOAD = 2 * 1024**3
FIELD_LIMITS = {"mapping": MAX_MAPPING_BYTES, "format": 16}


@dataclass
class UploadOperation(Operation):
    """The upload is read by hand (streamed and encrypted), so its body is described here."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            content={
                "multipart/form-data": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        required=["file"],
                        properties={
                            "file": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
                            "mapping": Schema(
                                type=OpenAPIType.STRING,
                                description="YAML mapping (see `consentry import --help`); default: by column name",
                            ),
                            "format": Schema(type=OpenAPIType.STRING, enum=list(FORMATS)),
                        },
                    )
                )
            },
        )


class ImportOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    source: str
    filename: str
    status: str
    rows_read: int
    events_stored: int
    duplicates: int
    rows_rejected: int
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    profiles_created: int | None = None
    """Admins only: whether people were new or known is not told to a source's key."""
    profiles_updated: int | None = None
    """Admins only."""


def _source_of(principal: Principal) -> str:
    return principal.source or principal.name


def _out(j: ImportJob, principal: Principal) -> ImportOut:
    admin = principal.role == "admin"
    return ImportOut(
        id=j.id,
        source=j.source,
        filename=j.filename,
        status=j.status,
        rows_read=j.rows_read,
        events_stored=j.events_stored,
        duplicates=j.duplicates,
        rows_rejected=j.rows_rejected,
        error=j.error,
        created_at=j.created_at,
        finished_at=j.finished_at,
        profiles_created=j.profiles_created if admin else None,
        profiles_updated=j.profiles_updated if admin else None,
    )


async def _job_for(db: Db, import_id: str, principal: Principal) -> ImportJob:
    """The import, if the caller may see it: admins see all, a source only its own (404 otherwise)."""
    job = await db.get(ImportJob, import_id) if len(import_id) <= 36 else None
    if job is None or (principal.role != "admin" and job.source != _source_of(principal)):
        raise NotFound("no import with this id", field="import_id")
    return job


@dataclass
class _Received:
    filename: str
    sha256: str
    fields: dict[str, str]


async def _receive(request: Request[Any, Any, Any], writer_for: Any) -> _Received:
    """Read the multipart body as it arrives: the file part goes to an encrypted writer, the
    small text parts (mapping, format) are kept in memory within their size limits."""
    boundary = boundary_of(request.headers.get("content-type", ""))
    digest = hashlib.sha256()
    writer: EncryptedWriter | None = None
    filename = "upload"
    fields: dict[str, bytearray] = {}
    current: str | None = None
    async for event in read_parts(request.stream(), boundary):
        if isinstance(event, PartStart):
            if event.name == "file":
                if writer is not None:
                    raise InvalidField("send one file", field="file")
                writer = writer_for()
                filename = (event.filename or "upload")[:255]
                current = "file"
            elif event.name in FIELD_LIMITS:
                fields[event.name] = bytearray()
                current = event.name
            else:
                current = None  # unknown parts are read past, never kept
        elif isinstance(event, PartData):
            if current == "file":
                assert writer is not None
                digest.update(event.data)
                writer.write(event.data)
            elif current is not None:
                fields[current] += event.data
                if len(fields[current]) > FIELD_LIMITS[current]:
                    raise TooLarge(f"is larger than {FIELD_LIMITS[current] // 1024 or 1} KB", field=current)
        elif isinstance(event, PartEnd):
            current = None
    if writer is None:
        raise InvalidField("is required", field="file")
    writer.close()
    texts: dict[str, str] = {}
    for name, raw in fields.items():
        try:
            texts[name] = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidField("is not valid UTF-8", field=name) from exc
    return _Received(filename, digest.hexdigest(), texts)


class ImportController(Controller):
    path = "/v1/imports"
    tags = ["imports"]
    opt = {"roles": ("ingest", "admin")}

    @post(
        "/",
        operation_id="createImport",
        status_code=202,
        request_max_body_size=MAX_UPLOAD,
        operation_class=UploadOperation,
    )
    async def create(self, request: Request[Any, Any, Any], db: Db, principal: Caller) -> Response[ImportOut]:
        """Upload a CSV/NDJSON/JSON export (multipart ``file``, optional ``mapping`` and ``format``);
        it is encrypted as it arrives and imported in the background."""
        job_id = str(uuid.uuid4())
        ring = key_material(get_settings()).master
        mv, master = ring.current()
        file_key = new_data_key()
        path = upload_path(job_id)
        writers: list[EncryptedWriter] = []

        def writer_for() -> EncryptedWriter:
            writers.append(EncryptedWriter(path, file_key, job_id))
            return writers[-1]

        try:
            got = await _receive(request, writer_for)
            fmt = got.fields.get("format") or detect_format(got.filename)
            if fmt not in FORMATS:
                raise InvalidField(f"must be one of {', '.join(FORMATS)}", field="format")
            mapping = got.fields.get("mapping") or None
            await load_mapping_async(mapping)  # reject a bad mapping now, not in the background
        except BaseException:
            for w in writers:
                w.discard()
            raise
        source = _source_of(principal)
        job = ImportJob(
            id=job_id,
            source=source,
            filename=got.filename,
            file_sha256=got.sha256,
            status="queued",
            format=fmt,
            mapping=mapping,
            actor_key_id=principal.key_id,
            actor_trust=principal.trust,
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
        return Response(_out(job, principal), status_code=202, background=BackgroundTask(process_import, job_id))

    @get("/{import_id:str}", operation_id="getImport")
    async def status(self, import_id: FromPath[str], db: Db, principal: Caller) -> ImportOut:
        """Progress and outcome: queued, running, done or failed, with counters (your source's imports)."""
        return _out(await _job_for(db, import_id, principal), principal)

    @get("/{import_id:str}/rejects", operation_id="getImportRejects", media_type="text/csv")
    async def rejects(self, import_id: FromPath[str], db: Db, principal: Caller) -> Any:
        """Rejected rows as CSV: line, field, reason (your source's imports)."""
        job = await _job_for(db, import_id, principal)
        return job.rejects_csv or "line,field,reason\n"
