"""Ingesting texts: detect PII, redact, vault the values under the author's key, link
typed identifiers when the channel's policy allows; and reading them back by role."""

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
from app.db import table_of
from app.errors import InvalidField, NotFound
from app.identity.service import Ident, Resolver
from app.ingest.service import is_blocked_value, make_ident
from app.ledger.service import record_each
from app.pii.engine import Finding, pii_engine
from app.pii.redact import redact, restore
from app.profiles.service import VaultContext, resolve_merged
from app.texts.models import TextRecord, TextVaultEntry
from app.texts.rekey import vault_field
from app.vault.cipher import open_field, seal_field
from app.vault.normalize import normalize_email, normalize_phone
from app.vault.service import subject_keys

LINKABLE = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "CN_MOBILE": "phone"}
MAX_TEXT = 20_000


@dataclass
class TextIn:
    text: str
    channel: str
    occurred_at: datetime | None = None
    author: dict[str, str] | None = None
    """Author identifiers: user_id, anonymous_id, email, phone, wechat_openid…"""


@dataclass
class StoredText:
    id: str
    profile_id: str
    language: str
    redacted: str
    entities: dict[str, int]
    linked: list[str]


def _author_idents(ctx: VaultContext, author: dict[str, str]) -> list[Ident]:
    idents = []
    for kind, value in author.items():
        if value is None or is_blocked_value(ctx, str(value)):
            continue
        if kind == "email":
            idents.append(make_ident(ctx, "email", normalize_email(value, "author.email")))
        elif kind == "phone":
            idents.append(make_ident(ctx, "phone", normalize_phone(value, ctx.region, "author.phone")))
        else:
            try:
                ctx.policies.identity.rule(kind)
            except KeyError as exc:
                raise InvalidField("is not an identifier kind", field=f"author.{kind}") from exc
            idents.append(make_ident(ctx, kind, str(value).strip()))
    return idents


def _found_idents(ctx: VaultContext, findings: list[Finding]) -> list[Ident]:
    out = []
    for f in findings:
        kind = LINKABLE.get(f.entity_type)
        try:
            if kind == "email":
                out.append(make_ident(ctx, "email", normalize_email(f.text)))
            elif kind == "phone":
                out.append(
                    make_ident(
                        ctx, "phone", normalize_phone(f.text, "CN" if f.entity_type == "CN_MOBILE" else ctx.region)
                    )
                )
        except InvalidField:
            continue
    return out


async def ingest_texts(
    session: AsyncSession, ctx: VaultContext, principal: Principal, items: list[TextIn]
) -> list[StoredText]:
    """Store texts redacted; the values found go to the author's vault (a new profile if unknown)."""
    source = principal.source or principal.name
    for n, item in enumerate(items):
        if not item.text.strip():
            raise InvalidField("must not be empty", field=f"texts[{n}].text")
        if len(item.text) > MAX_TEXT:
            raise InvalidField(f"is longer than {MAX_TEXT} characters", field=f"texts[{n}].text")
        if item.channel not in ctx.policies.text_channels:
            raise InvalidField(f"must be one of {', '.join(ctx.policies.text_channels)}", field=f"texts[{n}].channel")
    engine = pii_engine()
    findings = await asyncio.to_thread(engine.analyze_many, [i.text for i in items])
    now = datetime.now(UTC)
    authors = [_author_idents(ctx, i.author or {}) for i in items]
    linked = [
        _found_idents(ctx, f) if ctx.policies.text_channels[i.channel] else []
        for i, f in zip(items, findings, strict=True)
    ]
    resolver = Resolver(session, ctx.keys.master, ctx.policies.identity, principal, source)
    every = [x for group in authors + linked for x in group]
    await resolver.lock(every)
    await resolver.preload(every)
    pids = []
    for a, extra, item in zip(authors, linked, items, strict=True):
        pids.append((await resolver.resolve(a + extra, item.occurred_at or now)).profile_id)
    await resolver.flush()
    out, rows, vault = [], [], []
    for item, found, extra, pid in zip(items, findings, linked, pids, strict=True):
        pid = resolver.final(pid)
        dk = resolver.keys[pid]
        text_id = str(uuid.uuid4())
        redacted, values = redact(item.text, found)
        counts = dict(Counter(f.entity_type for f in found))
        lang = "zh" if any("\u4e00" <= c <= "\u9fff" for c in item.text) else "en"
        rows.append(
            {
                "id": text_id,
                "profile_id": pid,
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
                "profile_id": pid,
                "text_id": text_id,
                "placeholder": v.placeholder,
                "entity_type": v.entity_type,
                "key_version": dk.version,
                "sealed": seal_field(dk.key, pid, vault_field(text_id, v.placeholder), dk.version, v.value),
            }
            for v in values
        ]
        out.append(StoredText(text_id, pid, lang, redacted, counts, sorted({i.kind for i in extra})))
    await session.execute(insert(table_of(TextRecord)), rows)
    if vault:
        await session.execute(insert(table_of(TextVaultEntry)), vault)
    decision = decide(principal, None)
    await record_each(
        session,
        principal,
        "text.ingest",
        [
            (t.profile_id, {"text_id": t.id, "channel": item.channel, "entities": t.entities, "linked": t.linked})
            for t, item in zip(out, items, strict=True)
        ],
        purpose=decision.purpose,
        legal_basis=decision.legal_basis,
    )
    return out


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
        keys = await subject_keys(session, ctx.keys.master, [pid])
        if pid not in keys:
            from app.errors import SubjectErased

            raise SubjectErased("this subject's personal data was erased", field="text_id")
        dk = keys[pid]
        entries = (
            await session.execute(select(TextVaultEntry).where(col(TextVaultEntry.text_id) == text_id))
        ).scalars()
        values = {
            e.placeholder: open_field(
                dk.key, e.profile_id, vault_field(text_id, e.placeholder), e.key_version, e.sealed
            )
            for e in entries
        }
        out["text"] = restore(row.redacted, values)
    return out
