"""A person's event timeline and summary counts, decrypted or masked as the decision allows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.ingest.models import Event
from app.pii.fields import deep_merge
from app.vault.cipher import open_field
from app.vault.service import DataKey


def event_view(ev: Event, keys: Mapping[str, DataKey], reveal: str) -> dict[str, Any]:
    """An event for the API: plain properties always, sealed parts only for ``plain``.

    ``keys`` are the person's data keys by origin profile id."""
    return open_event(ev, keys.get(ev.origin_id) if reveal == "plain" else None)


EVENT_HEAD = ("id", "type", "name", "source", "message_id", "occurred_at", "received_at")
"""The columns ``event_record`` takes, in its order."""


def open_event(ev: Any, dk: DataKey | None) -> dict[str, Any]:
    """The event (an ``Event`` or a row with its columns as attributes) with its sealed parts
    opened under ``dk`` (its origin's key), if given."""
    sealed = open_field(dk.key, ev.origin_id, "event", ev.key_version, ev.sealed) if dk is not None else None
    head = (ev.id, ev.type, ev.name, ev.source, ev.message_id, ev.occurred_at, ev.received_at)
    return event_record(head, dict(ev.properties), dict(ev.traits), sealed)


def event_record(
    head: Sequence[Any], properties: dict[str, Any], traits: dict[str, Any], sealed: Any
) -> dict[str, Any]:
    """The event as ``open_event`` returns it, from the values of its ``EVENT_HEAD`` columns,
    its plain ``properties`` and ``traits`` (taken over) and its opened sealed part (None:
    left sealed). Values, not a row: a row's attributes cost more than the rest (10,000 events)."""
    event_id, kind, name, source, message_id, occurred_at, received_at = head
    out: dict[str, Any] = {
        "id": event_id,
        "type": kind,
        "name": name,
        "source": source,
        "message_id": message_id,
        "timestamp": occurred_at.isoformat(),
        "received_at": received_at.isoformat(),
        "properties": properties,
        "traits": traits,
    }
    if sealed is not None:
        if personal := sealed.pop("properties", None):
            out["properties"] = deep_merge(properties, personal)
        if personal := sealed.pop("traits", None):
            out["traits"] = deep_merge(traits, personal)
        out.update({k: v for k, v in sealed.items() if v is not None})
    return out


async def events_page(
    session: AsyncSession, profile_id: str, limit: int = 50, before: datetime | None = None
) -> list[Event]:
    """Newest first; pass the last event's time as ``before`` for the next page."""
    q = select(Event).where(col(Event.profile_id) == profile_id)
    if before is not None:
        q = q.where(col(Event.occurred_at) < before)
    q = q.order_by(col(Event.occurred_at).desc(), col(Event.id)).limit(limit)
    return list((await session.execute(q)).scalars())


async def event_summary(session: AsyncSession, profile_id: str) -> dict[str, Any]:
    """Counts by type and by event name, first and last seen."""
    rows = (
        await session.execute(
            sa_select(
                col(Event.type),
                col(Event.name),
                func.count(),
                func.min(col(Event.occurred_at)),
                func.max(col(Event.occurred_at)),
            )
            .where(col(Event.profile_id) == profile_id)
            .group_by(col(Event.type), col(Event.name))
        )
    ).all()
    by_type: dict[str, int] = {}
    top: dict[str, int] = {}
    firsts, lasts = [], []
    for etype, name, n, first, last in rows:
        by_type[etype] = by_type.get(etype, 0) + n
        if etype == "track" and name:
            top[name] = n
        firsts.append(first)
        lasts.append(last)
    return {
        "events": sum(by_type.values()),
        "by_type": by_type,
        "tracked": dict(sorted(top.items(), key=lambda kv: -kv[1])[:20]),
        "first_seen": min(firsts).isoformat() if firsts else None,
        "last_seen": max(lasts).isoformat() if lasts else None,
    }
