"""HTTP API for auditors: list, export, checkpoint and verify the ledger."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream

from app.db import session_maker
from app.deps import Caller, Db
from app.ledger.service import record
from app.settings import get_settings
from app.vault.keyring import key_material
from audit import store
from audit.checkpoint import key_id as signing_key_id
from audit.checkpoint import public_key_bytes
from audit.verify import verify_ledger

AUDITORS = ("auditor", "admin")


class EntryPage(msgspec.Struct):
    entries: list[dict[str, Any]]
    next_after: int | None
    """Pass as ``after`` to get the next page; null on the last page."""


class VerifyOut(msgspec.Struct):
    ok: bool
    entries: int
    checkpoints: int
    bad_seq: int | None
    reason: str
    summary: str


class PublicKeyOut(msgspec.Struct):
    key_id: str
    public_key: str
    algorithm: str = "Ed25519"


def _pubkey() -> PublicKeyOut:
    import base64

    pub = key_material(get_settings()).signing_key.public_key()
    return PublicKeyOut(signing_key_id(pub), base64.b64encode(public_key_bytes(pub)).decode())


class AuditController(Controller):
    path = "/v1/audit"
    tags = ["audit"]
    opt = {"roles": AUDITORS}

    @get("/entries", operation_id="listAuditEntries")
    async def entries(
        self,
        db: Db,
        after: Annotated[int, QueryParameter(ge=0)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        actor: FromQuery[str | None] = None,
        action: FromQuery[str | None] = None,
        subject: FromQuery[str | None] = None,
        request_id: FromQuery[str | None] = None,
        since: Annotated[str | None, QueryParameter(description="ISO time, inclusive")] = None,
        until: Annotated[str | None, QueryParameter(description="ISO time, exclusive")] = None,
    ) -> EntryPage:
        """Entries in sequence order, filtered; page with ``after``."""
        rows = await store.list_entries(
            db,
            after_seq=after,
            limit=limit,
            actor_id=actor,
            action=action,
            subject_id=subject,
            request_id=request_id,
            since=since,
            until=until,
        )
        return EntryPage([e.to_json() for e in rows], rows[-1].seq if len(rows) == limit else None)

    @get("/export", operation_id="exportAuditLedger", media_type="application/x-ndjson")
    async def export(self, db: Db, principal: Caller) -> Stream:
        """The whole ledger as NDJSON (entries, then checkpoints) for ``python -m audit verify``."""
        await record(db, principal, "audit.export", purpose="audit.review", legal_basis="legal_obligation")
        await db.commit()

        async def lines() -> AsyncIterator[bytes]:
            async with session_maker()() as session:
                async for entry in store.stream_entries(session):
                    yield (json.dumps({"kind": "entry", **entry.to_json()}, ensure_ascii=False) + "\n").encode()
                for cp in await store.list_checkpoints(session):
                    yield (json.dumps({"kind": "checkpoint", **cp.to_json()}) + "\n").encode()

        return Stream(lines(), media_type="application/x-ndjson")

    @get("/checkpoints", operation_id="listAuditCheckpoints")
    async def checkpoints(self, db: Db) -> list[dict[str, Any]]:
        return [cp.to_json() for cp in await store.list_checkpoints(db)]

    @post("/checkpoints", operation_id="createAuditCheckpoint", status_code=201)
    async def checkpoint(self, db: Db) -> dict[str, Any]:
        """Sign the current chain head now."""
        s = get_settings()
        cp = await store.create_checkpoint(db, key_material(s).signing_key, s.audit_origin)
        return cp.to_json()

    @get("/public-key", operation_id="getAuditPublicKey")
    async def public_key(self) -> PublicKeyOut:
        """The Ed25519 key that checkpoints are signed with (give it to the verifier)."""
        return _pubkey()

    @get("/verify", operation_id="verifyAuditLedger")
    async def verify(self, db: Db) -> VerifyOut:
        """Verify the whole chain and every checkpoint on the server."""
        entries = [e async for e in store.stream_entries(db)]
        pub = key_material(get_settings()).signing_key.public_key()
        report = verify_ledger(entries, await store.list_checkpoints(db), pub)
        return VerifyOut(report.ok, report.entries, report.checkpoints, report.bad_seq, report.reason, report.summary())
