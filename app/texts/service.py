"""Ingesting texts: detect PII, redact, vault the values under the author's key; and
reading them back by role. Identifiers a text mentions never link anyone to anyone."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.access.service import Principal
from app.consent.gate import authorize, decide
from app.db import retry_conflicts, table_of
from app.errors import InvalidField, NotFound, SubjectErased
from app.identity.resolver import Resolver
from app.identity.service import Ident, is_blocked_value, make_ident, user_hash_valid
from app.identity.suppression import refuse_suppressed
from app.ledger.service import record, record_each
from app.pii.engine import Finding, pii_engine
from app.pii.redact import redact, restore
from app.profiles.service import VaultContext, resolve_merged
from app.texts.models import TextRecord, TextVaultEntry, vault_field
from app.vault.cipher import open_field, seal_field
from app.vault.normalize import normalize_email, normalize_phone
from app.vault.service import subject_keys

MAX_TEXT = 20_000


@dataclass
class TextIn:
    text: str
    channel: str
    occurred_at: datetime | None = None
    author: dict[str, str] | None = None
    """Author identifiers: user_id, anonymous_id, email, phone, wechat_openid…"""
    user_hash: str | None = None
    """HMAC-SHA256 of ``author.user_id`` under the key's identity secret (identity verification)."""


@dataclass
class StoredText:
    id: str
    profile_id: str
    """The author's profile (never shown to the ingest key that sent the text)."""
    language: str
    redacted: str
    entities: dict[str, int]
    refused: bool = False
    """The author is on the suppression list (erased): nothing was stored. The sender's
    answer looks the same (an ingest key learns nobody's erasure)."""


def _author_idents(ctx: VaultContext, author: dict[str, str], n: int) -> list[Ident]:
    idents = []
    for kind, value in author.items():
        if value is None or is_blocked_value(ctx.policies.identity, str(value)):
            continue
        if kind == "email":
            idents.append(make_ident(ctx, "email", normalize_email(value, f"texts[{n}].author.email")))
        elif kind == "phone":
            idents.append(make_ident(ctx, "phone", normalize_phone(value, ctx.region, f"texts[{n}].author.phone")))
        else:
            try:
                ctx.policies.identity.rule(kind)
            except KeyError as exc:
                raise InvalidField("is not an identifier kind", field=f"texts[{n}].author.{kind}") from exc
            idents.append(make_ident(ctx, kind, str(value).strip()))
    return idents


def _check(ctx: VaultContext, items: list[TextIn]) -> None:
    for n, item in enumerate(items):
        if not item.text.strip():
            raise InvalidField("must not be empty", field=f"texts[{n}].text")
        if len(item.text) > MAX_TEXT:
            raise InvalidField(f"is longer than {MAX_TEXT} characters", field=f"texts[{n}].text")
        if item.channel not in ctx.policies.text_channels:
            raise InvalidField(f"must be one of {', '.join(ctx.policies.text_channels)}", field=f"texts[{n}].channel")


async def ingest_texts(
    session: AsyncSession, ctx: VaultContext, principal: Principal, items: list[TextIn]
) -> list[StoredText]:
    """Store texts redacted; the values found go to the author's vault (a new profile if unknown).

    Only the author's own identifiers resolve the author, by the source's trust; what the
    text itself mentions (an email, a phone) never links or merges anyone."""
    _check(ctx, items)
    authors = [_author_idents(ctx, i.author or {}, n) for n, i in enumerate(items)]
    findings = await asyncio.to_thread(pii_engine().analyze_many, [i.text for i in items])
    trusted = [
        principal.trust == "server"
        or user_hash_valid(ctx, principal.key_id, (i.author or {}).get("user_id"), i.user_hash)
        for i in items
    ]

    async def store() -> list[StoredText]:
        return await _store(session, ctx, principal, items, authors, findings, trusted)

    return await retry_conflicts(session, store)


async def _store(
    session: AsyncSession,
    ctx: VaultContext,
    principal: Principal,
    items: list[TextIn],
    authors: list[list[Ident]],
    findings: list[list[Finding]],
    trusted: list[bool],
) -> list[StoredText]:
    source = principal.source or principal.name
    now = datetime.now(UTC)
    resolver = Resolver(session, ctx, principal, source)
    await resolver.prepare([x for group in authors for x in group])
    refused = await _refused(session, ctx, principal, source, authors)
    pids: list[str | None] = []
    for n, (a, item, t) in enumerate(zip(authors, items, trusted, strict=True)):
        pids.append(None if n in refused else (await resolver.resolve(a, item.occurred_at or now, t)).profile_id)
    await resolver.flush_rows()
    out: list[StoredText] = []
    rows: list[dict[str, Any]] = []
    vault: list[dict[str, Any]] = []
    for item, found, pid in zip(items, findings, pids, strict=True):
        text_id = str(uuid.uuid4())
        redacted, values = redact(item.text, found)
        counts = dict(Counter(f.entity_type for f in found))
        lang = "zh" if any("\u4e00" <= c <= "\u9fff" for c in item.text) else "en"
        if pid is None:
            out.append(StoredText(text_id, "", lang, redacted, counts, refused=True))
            continue
        pid = resolver.final(pid)
        dk = resolver.keys[pid]
        rows.append(
            {
                "id": text_id,
                "profile_id": pid,
                "origin_id": pid,
                "source": source,
                "channel": item.channel,
                "language": lang,
                "redacted": redacted,
                "entity_counts": counts,
                "occurred_at": item.occurred_at or now,
                "received_at": now,
            }
        )
        vault += [
            {
                "text_id": text_id,
                "placeholder": v.placeholder,
                "profile_id": pid,
                "origin_id": pid,
                "entity_type": v.entity_type,
                "key_version": dk.version,
                "sealed": seal_field(dk.key, pid, vault_field(text_id, v.placeholder), dk.version, v.value),
            }
            for v in values
        ]
        out.append(StoredText(text_id, pid, lang, redacted, counts))
    if rows:
        await session.execute(insert(table_of(TextRecord)), rows)
    if vault:
        await session.execute(insert(table_of(TextVaultEntry)), vault)
    await resolver.finish()
    decision = decide(principal, None)
    await record_each(
        session,
        principal,
        "text.ingest",
        [
            (t.profile_id, {"text_id": t.id, "channel": item.channel, "entities": t.entities})
            for t, item in zip(out, items, strict=True)
            if not t.refused
        ],
        purpose=decision.purpose,
        legal_basis=decision.legal_basis,
    )
    return out


async def _refused(
    session: AsyncSession, ctx: VaultContext, principal: Principal, source: str, authors: list[list[Ident]]
) -> set[int]:
    """Indexes of the texts whose author carries an identifier on the suppression list (an
    erased person): counted on the entries and recorded; checked under the identity locks."""
    suppressed = await refuse_suppressed(session, ctx.keys.master, [i for group in authors for i in group])
    if not suppressed:
        return set()
    out = {n for n, group in enumerate(authors) if any(i.key in suppressed for i in group)}
    details = {"source": source, "refused": len(out), "kinds": sorted({k for k, _d in suppressed}), "what": "texts"}
    await record(session, principal, "ingest.suppressed", purpose="legal.compliance.dsr", details=details)
    return out


async def text_author(session: AsyncSession, text_id: str) -> str:
    """The person a text belongs to now (404 if there is no such text)."""
    row = await session.get(TextRecord, text_id)
    if row is None:
        raise NotFound("no text with this id", field="text_id")
    return await resolve_merged(session, row.profile_id)


async def read_text(
    session: AsyncSession, ctx: VaultContext, principal: Principal, text_id: str, purpose: str | None = None
) -> dict[str, Any]:
    """A text as this principal may see it: restored for ``plain`` decisions, else redacted."""
    row = await session.get(TextRecord, text_id)
    if row is None:
        raise NotFound("no text with this id", field="text_id")
    pid = await resolve_merged(session, row.profile_id)
    decision = await authorize(session, principal, "text.read", [pid], purpose, details={"text_id": text_id})
    out = {
        "id": row.id,
        "profile_id": pid,
        "channel": row.channel,
        "language": row.language,
        "occurred_at": row.occurred_at.isoformat(),
        "entities": row.entity_counts,
        "reveal": decision.reveal,
        "text": row.redacted,
    }
    if decision.reveal == "plain":
        keys = await subject_keys(session, ctx.keys.master, [row.origin_id])
        if row.origin_id not in keys:
            raise SubjectErased("this subject's personal data was erased", field="text_id")
        dk = keys[row.origin_id]
        entries = (
            await session.execute(select(TextVaultEntry).where(col(TextVaultEntry.text_id) == text_id))
        ).scalars()
        values = {
            e.placeholder: open_field(dk.key, e.origin_id, vault_field(text_id, e.placeholder), e.key_version, e.sealed)
            for e in entries
        }
        out["text"] = restore(row.redacted, values)
    return out
