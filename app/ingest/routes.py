"""The Segment-compatible event API: ``/v1/identify``, ``/track``, ``/page``, ``/screen``,
``/group``, ``/alias`` and ``/batch``, authenticated with a source's write key."""

from __future__ import annotations

import zlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import structlog
from litestar import Controller, Request, get, post
from litestar.exceptions import HTTPException, ServiceUnavailableException
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.access.service import Principal
from app.db import RETRYABLE, session_maker, sqlstate
from app.deps import Caller, Db
from app.errors import InvalidField, NotFound, UnreadableBody
from app.ingest import jetstream
from app.ingest.inbox import (
    Accepted,
    StoreBusy,
    accept_checked,
    accept_writer,
    checked_request,
    requeue,
    status,
    wait_processed,
)
from app.ingest.processor import drain
from app.ingest.service import BatchResult
from app.ingest.spec import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_EVENT_BYTES, MAX_JSON_DEPTH, TYPES, json_depth
from app.inputs import check_json_body
from app.ledger.service import record
from app.profiles.service import VaultContext
from app.settings import get_settings

INGEST = ("ingest", "admin")
log = structlog.get_logger("consentry.ingest")


class PayloadTooLarge(HTTPException):
    status_code = 413


def _string(fmt: OpenAPIFormat | None = None) -> Schema:
    return Schema(type=OpenAPIType.STRING, format=fmt)


_OBJECT = Schema(type=OpenAPIType.OBJECT)
MESSAGE_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    description="A Segment Spec message (identify, track, page, screen, group or alias).",
    properties={
        "type": Schema(type=OpenAPIType.STRING, enum=list(TYPES)),
        **{name: _string() for name in ("userId", "anonymousId", "messageId", "event", "name")},
        **{name: _string() for name in ("groupId", "previousId")},
        **{name: _string(OpenAPIFormat.DATE_TIME) for name in ("timestamp", "sentAt")},
        **{name: _OBJECT for name in ("properties", "traits", "context")},
    },
    any_of=[Schema(required=["userId"]), Schema(required=["anonymousId"])],
)
BATCH_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["batch"],
    properties={
        "batch": Schema(type=OpenAPIType.ARRAY, items=MESSAGE_SCHEMA, max_items=MAX_BATCH_EVENTS),
        "context": _OBJECT,
        "sentAt": _string(OpenAPIFormat.DATE_TIME),
    },
)


def _json_body(schema: Schema) -> RequestBody:
    return RequestBody(required=True, content={"application/json": OpenAPIMediaType(schema=schema)})


@dataclass
class MessageOperation(Operation):
    """The body is read by hand (gzip, size limits), so it is described here."""

    def __post_init__(self) -> None:
        self.request_body = _json_body(MESSAGE_SCHEMA)


@dataclass
class BatchOperation(Operation):
    def __post_init__(self) -> None:
        self.request_body = _json_body(BATCH_SCHEMA)


class RejectedOut(msgspec.Struct):
    index: int
    field: str
    reason: str


class IngestOut(msgspec.Struct):
    success: bool
    accepted: int
    duplicates: int
    rejected: list[RejectedOut]


async def read_body(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The request body, gunzipped if sent with ``Content-Encoding: gzip``, at most ``limit`` bytes."""
    body = await request.body()
    if request.headers.get("content-encoding", "").lower() == "gzip":
        try:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            body = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise InvalidField("is not valid gzip", field="body") from exc
    if len(body) > limit:
        raise PayloadTooLarge(detail=f"the body is larger than {limit // 1024} KB")
    return body


def decode_json(body: bytes, type: Any = Any) -> Any:
    """``body`` decoded as ``type``; a body that is not JSON is a 400 naming the defect."""
    try:
        return msgspec.json.decode(body, type=type)
    except (UnicodeDecodeError, RecursionError):
        check_json_body(body)  # names the defect: not UTF-8, or nested too deep (400)
        raise
    except msgspec.ValidationError:
        raise
    except msgspec.DecodeError as exc:
        check_json_body(body)  # bytes that are not UTF-8 are a 400, like invalid UTF-8 inside strings
        raise InvalidField("is not valid JSON", field="body") from exc


async def read_json(request: Request[Any, Any, Any], limit: int) -> Any:
    """The request body (see ``read_body``), decoded."""
    return decode_json(await read_body(request, limit))


class BatchIn(msgspec.Struct):
    """A ``/v1/batch`` body with each message left as the JSON it came as."""

    batch: Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_BATCH_EVENTS)]
    context: Any = None
    sentAt: Any = None
    integrations: Any = None


def _batch_parts(body: bytes) -> tuple[list[Any], list[bytes] | None, dict[str, Any]]:
    """(messages, each message's JSON as received or None, the batch's defaults)."""
    try:
        parts = decode_json(body, BatchIn)
    except msgspec.ValidationError:  # not the usual shape: read as any JSON, refused below by name
        data = decode_json(body)
        if not isinstance(data, dict) or not isinstance(data.get("batch"), list):
            raise InvalidField("must be an array of messages", field="batch") from None
        if len(data["batch"]) > MAX_BATCH_EVENTS:
            raise PayloadTooLarge(detail=f"more than {MAX_BATCH_EVENTS} messages in one batch") from None
        return data["batch"], None, {k: data[k] for k in ("context", "sentAt", "integrations") if k in data}
    encoded = [bytes(raw) for raw in parts.batch]
    messages = [decode_json(raw) for raw in encoded]
    given = msgspec.structs.asdict(parts)
    defaults = {k: given[k] for k in ("context", "sentAt", "integrations") if given[k] is not None}
    return messages, encoded, defaults


def _out(result: BatchResult) -> IngestOut:
    return IngestOut(
        True, result.accepted, result.duplicates, [RejectedOut(r.index, r.field, r.reason) for r in result.rejected]
    )


RETRY_AFTER_S = 1
"""What a 503 asks the client to wait when the store is too busy to accept a batch now."""


def _overloaded(exc: Exception) -> bool:
    """Is ``exc`` the store being busy (SQLite's lock wait ran out, a PostgreSQL deadlock or
    serialization conflict, no pooled connection free) rather than a defect?"""
    if isinstance(exc, PoolTimeout):
        return True
    if isinstance(exc, OperationalError) and "locked" in str(exc.orig):
        return True
    return isinstance(exc, DBAPIError) and sqlstate(exc) in RETRYABLE


def _busy(exc: Exception) -> ServiceUnavailableException:
    log.warning("ingest_store_busy", error_type=type(exc).__name__, exc_info=True)
    return ServiceUnavailableException(
        detail=f"the event store is busy; retry in {RETRY_AFTER_S} s",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def _accept(db: Db, accept: Awaitable[Accepted]) -> Accepted:
    """Run ``accept`` (in the request's transaction) and commit it: a busy store is a 503 with
    Retry-After (the transaction is rolled back, so nothing was acknowledged and a retry is
    safe), never a 500."""
    try:
        accepted = await accept
        await db.commit()
    except (DBAPIError, PoolTimeout) as exc:
        if not _overloaded(exc):
            raise
        await db.rollback()
        raise _busy(exc) from exc
    return accepted


async def _accept_grouped(db: Db, principal: Principal, messages: list[Any], **options: Any) -> Accepted:
    """Check the messages, then store them durably through this process's accept writer (with
    the requests waiting beside them, one commit; ``inbox.AcceptWriter``), or in the request's
    own transaction where there is none. A busy store is a 503 with Retry-After."""
    req = await checked_request(db, VaultContext.from_settings(), principal, messages, **options)
    writer = accept_writer()
    if writer is None:
        return await _accept(db, accept_checked(db, req))
    try:
        return await writer.accept(req)
    except StoreBusy as exc:
        raise _busy(exc) from exc


async def _accepted(request: Request[Any, Any, Any], accepted: Accepted) -> BatchResult:
    """Wake the in-service processor for the durable batch and, with ``CONSENTRY_INGEST_WAIT``,
    wait until it is processed (read-your-writes); a service without its own processor then
    processes the queue itself."""
    if not accepted.result.accepted:
        return accepted.result
    processor = getattr(request.app.state, "ingest_processor", None)
    if processor is not None:
        processor.wake()
    wait = get_settings().ingest_wait_s
    if accepted.batch_id is None:  # spooled (never with a wait: see inbox._SqliteStore)
        return accepted.result
    if wait > 0 and processor is None:
        await drain()
    if wait > 0 and jetstream.enabled():
        await jetstream.wait_empty(wait)
    elif wait > 0:
        await wait_processed(session_maker(), accepted.batch_id, wait)
    return accepted.result


async def _single(request: Request[Any, Any, Any], db: Db, principal: Caller, kind: str) -> IngestOut:
    data = await read_json(request, MAX_EVENT_BYTES)
    gpc = request.headers.get("sec-gpc") == "1"
    result = await _accepted(request, await _accept_grouped(db, principal, [data], expected_type=kind, gpc=gpc))
    if result.rejected:
        r = result.rejected[0]
        raise InvalidField(r.reason, field=r.field or "body")
    return _out(result)


class EventController(Controller):
    path = "/v1"
    tags = ["events"]
    opt = {"roles": INGEST, "checks_own_body": True}

    @post("/batch", operation_id="batch", status_code=200, operation_class=BatchOperation)
    async def batch(self, request: Request[Any, Any, Any], db: Db, principal: Caller) -> IngestOut:
        """Up to 2,500 messages (500 KB); invalid ones are reported by index, the rest accepted:
        durable in the inbox when this answers, stored in people's profiles by the processor."""
        body = await read_body(request, MAX_BATCH_BYTES)
        messages, encoded, defaults = _batch_parts(body)
        if defaults and json_depth(msgspec.json.encode(defaults)) > MAX_JSON_DEPTH:
            raise UnreadableBody(f"the body is nested deeper than {MAX_JSON_DEPTH} levels", field="context")
        accepted = await _accept_grouped(
            db,
            principal,
            messages,
            defaults=defaults,
            gpc=request.headers.get("sec-gpc") == "1",
            encoded=encoded,
            body=None if encoded is None else body,
        )
        return _out(await _accepted(request, accepted))

    @post("/identify", operation_id="identify", status_code=200, operation_class=MessageOperation)
    async def identify(self, request: Request[Any, Any, Any], db: Db, principal: Caller) -> IngestOut:
        """Who the user is, with traits (email, phone, name… are encrypted)."""
        return await _single(request, db, principal, "identify")

    @post("/track", operation_id="track", status_code=200, operation_class=MessageOperation)
    async def track(self, request: Request[Any, Any, Any], db: Db, principal: Caller) -> IngestOut:
        """An action the user took (``event``, ``properties``)."""
        return await _single(request, db, principal, "track")

    @post("/page", operation_id="page", status_code=200, operation_class=MessageOperation)
    async def page(self, request: Request[Any, Any, Any], db: Db, principal: Caller) -> IngestOut:
        return await _single(request, db, principal, "page")

    @post("/screen", operation_id="screen", status_code=200, operation_class=MessageOperation)
    async def screen(self, request: Request[Any, Any, Any], db: Db, principal: Caller) -> IngestOut:
        return await _single(request, db, principal, "screen")

    @post("/group", operation_id="group", status_code=200, operation_class=MessageOperation)
    async def group(self, request: Request[Any, Any, Any], db: Db, principal: Caller) -> IngestOut:
        return await _single(request, db, principal, "group")

    @post("/alias", operation_id="alias", status_code=200, operation_class=MessageOperation)
    async def alias(self, request: Request[Any, Any, Any], db: Db, principal: Caller) -> IngestOut:
        """Join a previous id (often the anonymousId) to a userId."""
        return await _single(request, db, principal, "alias")


class FailureOut(msgspec.Struct):
    id: int
    received_at: str
    source: str | None
    events: int
    attempts: int
    reason: str | None


class IngestStatusOut(msgspec.Struct):
    queued_batches: int
    queued_events: int
    lag_seconds: float
    """Age of the oldest batch still waiting."""
    failed_batches: int
    failed_events: int
    failures: list[FailureOut]
    """Batches set aside after repeated failures (newest first), with the reason."""


class RetryOut(msgspec.Struct):
    id: int
    events: int
    status: str


class IngestController(Controller):
    path = "/v1/ingest"
    tags = ["events"]
    opt = {"roles": ("admin",)}

    @get("/status", operation_id="ingestStatus")
    async def ingest_status(self, db: Db) -> IngestStatusOut:
        """Inbox depth, processing lag and the batches set aside after failing (admin)."""
        out = await status(db)
        if jetstream.enabled():  # batches waiting in the stream (their events are counted when processed)
            out["queued_batches"] += await jetstream.pending()
            out["lag_seconds"] = round(max(out["lag_seconds"], await jetstream.lag_seconds()), 3)
        return msgspec.convert(out, IngestStatusOut)

    @post("/failures/{batch_id:str}/retry", operation_id="ingestRetry", status_code=200)
    async def retry(
        self, request: Request[Any, Any, Any], db: Db, principal: Caller, batch_id: FromPath[str]
    ) -> RetryOut:
        """Queue a set-aside batch again (admin; recorded in the ledger)."""
        if not batch_id.isdigit() or len(batch_id) > 18:
            raise NotFound("no set-aside batch with this id", field="batch_id")
        events = await requeue(db, int(batch_id))
        await record(db, principal, "ingest.batch_requeued", details={"batch": int(batch_id), "events": events})
        await db.commit()
        processor = getattr(request.app.state, "ingest_processor", None)
        if processor is not None:
            processor.wake()
        return RetryOut(int(batch_id), events, "queued")
