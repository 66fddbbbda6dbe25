"""HTTP API for free text: ingest (redacted + vaulted), read by role, and scan without storing."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath, FromQuery, JSONBody

from app.consent.gate import authorize
from app.decisions.service import require_consent
from app.deps import Caller, Db
from app.errors import InvalidField
from app.inputs import check_text_size
from app.ledger.service import record
from app.pii.engine import detect_language, pii_engine
from app.profiles.service import VaultContext
from app.texts.service import TextIn, ingest_texts, read_text, text_author


class TextItem(msgspec.Struct, forbid_unknown_fields=True):
    text: str
    channel: str
    """chat, ticket, email, social, review or survey (policies/text_channels.yaml)."""
    timestamp: datetime | None = None
    author: dict[str, str] | None = None
    """Author identifiers if known: user_id, anonymous_id, email, phone, wechat_openid…"""
    user_hash: str | None = None
    """Identity verification: hex HMAC-SHA256 of ``author.user_id`` under the key's identity secret."""


class TextBody(msgspec.Struct, forbid_unknown_fields=True):
    """One text (``text``, ``channel``…) or several (``texts``)."""

    text: str | None = None
    channel: str | None = None
    timestamp: datetime | None = None
    author: dict[str, str] | None = None
    user_hash: str | None = None
    texts: list[TextItem] | None = None


class TextStored(msgspec.Struct):
    """A stored text: its id, never the author's profile (an ingest key learns nobody's existence)."""

    id: str
    language: str
    redacted: str
    entities: dict[str, int]


class ScanIn(msgspec.Struct, forbid_unknown_fields=True):
    text: str | None = None
    texts: list[str] | None = None


def _items(data: TextBody) -> list[TextIn]:
    if data.texts is not None:
        items = data.texts
    elif data.text is not None and data.channel is not None:
        items = [TextItem(data.text, data.channel, data.timestamp, data.author, data.user_hash)]
    else:
        raise InvalidField("send text and channel, or texts", field="text")
    if not items or len(items) > 500:
        raise InvalidField("send 1 to 500 texts", field="texts")
    check_text_size([i.text for i in items], "texts")
    return [TextIn(i.text, i.channel, i.timestamp, i.author, i.user_hash) for i in items]


class TextController(Controller):
    path = "/v1"
    tags = ["texts"]

    @post("/texts", opt={"roles": ("ingest", "admin")}, operation_id="ingestTexts", status_code=201)
    async def ingest(self, data: JSONBody[TextBody], db: Db, principal: Caller) -> list[TextStored]:
        """Store one text or ``{"texts": [...]}``: PII is replaced by ``<TYPE_n>`` and vaulted encrypted."""
        stored = await ingest_texts(db, VaultContext.from_settings(), principal, _items(data))
        return [TextStored(s.id, s.language, s.redacted, s.entities) for s in stored]

    @get("/texts/{text_id:str}", opt={"roles": ("admin", "compliance", "marketer")}, operation_id="getText")
    async def read(
        self, text_id: FromPath[str], db: Db, principal: Caller, purpose: FromQuery[str | None] = None
    ) -> dict[str, Any]:
        """Compliance/admin get the restored text (audited); marketers the redacted one, and only
        of people who may be used for their purpose (the decision engine decides, and records a refusal)."""
        await require_consent(db, principal, await text_author(db, text_id), purpose)
        return await read_text(db, VaultContext.from_settings(), principal, text_id, purpose)

    @post("/pii/scan", opt={"roles": ("compliance", "admin")}, operation_id="scanPii", status_code=200)
    async def scan(self, data: JSONBody[ScanIn], db: Db, principal: Caller) -> dict[str, Any]:
        """Analyse without storing: entities with offsets, scores and the detected language."""
        texts = ([data.text] if data.text is not None else []) + (data.texts or [])
        if not texts or len(texts) > 500:
            raise InvalidField("send text or 1 to 500 texts", field="text")
        check_text_size(texts, "text")
        await authorize(db, principal, "pii.scan", [], purpose="legal.compliance.dsr")  # refusals are recorded
        engine = pii_engine()
        results = await asyncio.to_thread(engine.analyze_many, texts)
        await record(
            db,
            principal,
            "pii.scan",
            purpose="legal.compliance.dsr",
            legal_basis="legal_obligation",
            details={"texts": len(texts), "entities": sum(len(r) for r in results)},
        )
        return {
            "model": engine.model,
            "results": [
                {
                    "language": detect_language(t),
                    "entities": [
                        {"type": f.entity_type, "start": f.start, "end": f.end, "score": f.score, "text": f.text}
                        for f in found
                    ],
                }
                for t, found in zip(texts, results, strict=True)
            ],
        }
