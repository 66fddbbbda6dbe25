"""Accounts and products, fed by ingestion, and the SQL conditions segments test them with.

Ingestion hands over each stored event's non-personal part (``Seen``): a ``group`` call
makes or updates an account (its non-personal traits; personal ones were sealed into the
person's event by the field policy and are not copied here) and makes the person a member;
an event whose properties carry ``product_id`` (or a ``products`` list, as Order Completed
does) updates the products' attributes and links the event to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import table_of
from app.entities.models import Account, AccountMember, EventProduct, Product
from app.vault.blind_index import blind_index

PRODUCT_ATTRIBUTES = ("name", "product_name", "sku", "category", "brand", "variant", "price", "url", "image_url")
"""Properties of a product (top level of the event, or an item of ``products``) kept on it."""
MAX_PRODUCTS = 100
"""Products taken from one event's ``products`` list."""
MAX_ID = 200
MAX_TEXT = 512
Condition = Callable[[Any], ColumnElement[bool]]
"""A JSON column → a condition on it (the segments compiler builds these)."""


@dataclass(frozen=True)
class Seen:
    """One stored event as this domain sees it: ids, time and its non-personal parts."""

    event_id: str
    profile_id: str
    type: str
    occurred_at: datetime
    properties: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    group_id: str | None = None


def account_id(index_key: bytes, group_id: str) -> str:
    """The account's id: a keyed blind index of the group id (no plaintext id stored)."""
    return blind_index(index_key, "group_id", group_id.strip())


def _scalar(v: Any) -> bool:
    if isinstance(v, str):
        return len(v) <= MAX_TEXT and "\x00" not in v
    return isinstance(v, bool | int | float)


def _product_id(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, str | int):
        return None
    text = str(v).strip()
    return text if 0 < len(text) <= MAX_ID and "\x00" not in text else None


def products_of(properties: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(product id, attributes) of every product an event names, in order."""
    items: list[Any] = [properties] if "product_id" in properties else []
    listed = properties.get("products")
    if isinstance(listed, list):
        items += listed[:MAX_PRODUCTS]
    out = []
    for item in items:
        pid = _product_id(item.get("product_id")) if isinstance(item, dict) else None
        if pid is not None:
            attrs = {k: item[k] for k in PRODUCT_ATTRIBUTES if k in item and _scalar(item[k])}
            out.append((pid, {"product_id": pid, **attrs}))
    return out


def _upsert(session: AsyncSession, table: Table) -> Any:
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


async def _merge_json(
    session: AsyncSession, table: Table, column: str, updates: dict[str, tuple[dict[str, Any], datetime]]
) -> None:
    """Insert or update rows by id, the new keys merged over the stored ones (ids in order,
    so two batches never lock the same rows in opposite orders)."""
    if not updates:
        return
    ids = sorted(updates)
    stored = dict((await session.execute(select(table.c.id, table.c[column]).where(table.c.id.in_(ids)))).all())
    rows = [
        {
            "id": i,
            column: {**(stored.get(i) or {}), **updates[i][0]},
            "created_at": updates[i][1],
            "updated_at": updates[i][1],
        }
        for i in ids
    ]
    stmt = _upsert(session, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["id"], set_={column: stmt.excluded[column], "updated_at": stmt.excluded.updated_at}
    )
    await session.execute(stmt, rows)


async def observe(session: AsyncSession, index_key: bytes, seen: Iterable[Seen]) -> None:
    """Update accounts, memberships and products from a batch of stored events."""
    accounts: dict[str, tuple[dict[str, Any], datetime]] = {}
    members: dict[tuple[str, str], tuple[datetime, datetime]] = {}
    products: dict[str, tuple[dict[str, Any], datetime]] = {}
    links: list[dict[str, Any]] = []
    for s in sorted(seen, key=lambda s: s.occurred_at):
        if s.type == "group" and s.group_id:
            aid = account_id(index_key, s.group_id)
            traits = {k: v for k, v in s.traits.items() if v is not None}
            accounts[aid] = ({**accounts.get(aid, ({}, s.occurred_at))[0], **traits}, s.occurred_at)
            first = members.get((aid, s.profile_id), (s.occurred_at, s.occurred_at))[0]
            members[(aid, s.profile_id)] = (first, s.occurred_at)
        for n, (pid, attrs) in enumerate(products_of(s.properties)):
            products[pid] = ({**products.get(pid, ({}, s.occurred_at))[0], **attrs}, s.occurred_at)
            links.append(
                {
                    "event_id": s.event_id,
                    "position": n,
                    "product_id": pid,
                    "profile_id": s.profile_id,
                    "origin_id": s.profile_id,
                    "occurred_at": s.occurred_at,
                }
            )
    await _merge_json(session, table_of(Account), "traits", accounts)
    await _merge_json(session, table_of(Product), "attributes", products)
    if members:
        m = table_of(AccountMember)
        stmt = _upsert(session, m)
        stmt = stmt.on_conflict_do_update(
            index_elements=["account_id", "origin_id"], set_={"seen_at": stmt.excluded.seen_at}
        )
        rows = [
            {"account_id": a, "origin_id": p, "profile_id": p, "joined_at": first, "seen_at": last}
            for (a, p), (first, last) in sorted(members.items())
        ]
        await session.execute(stmt, rows)
    if links:
        await session.execute(insert(table_of(EventProduct)), links)


def account_clause(person: Any, where: Condition) -> ColumnElement[bool]:
    """SQL: the person (a column holding the surviving profile id) belongs to an account
    whose traits satisfy ``where``."""
    m, a = table_of(AccountMember), table_of(Account)
    accounts = select(a.c.id).where(where(a.c.traits))  # uncorrelated: found once
    q = select(m.c.account_id).where(m.c.profile_id == person, m.c.account_id.in_(accounts))
    return q.correlate_except(m).exists()


def product_clause(event_id: Any, where: Condition) -> ColumnElement[bool]:
    """SQL: the event (a column holding its id) was about a product whose attributes satisfy
    ``where``. The matching products are an uncorrelated subquery: the database finds them
    once (the catalogue is small) instead of reading a product's attributes per event."""
    ep, p = table_of(EventProduct), table_of(Product)
    products = select(p.c.id).where(where(p.c.attributes))
    q = select(ep.c.event_id).where(ep.c.event_id == event_id, ep.c.product_id.in_(products))
    return q.correlate_except(ep).exists()


def person_product_clause(person: Any, where: Condition) -> ColumnElement[bool]:
    """SQL: some event of the person (a column holding the surviving profile id) was about a
    product whose attributes satisfy ``where``."""
    ep, p = table_of(EventProduct), table_of(Product)
    products = select(p.c.id).where(where(p.c.attributes))
    q = select(ep.c.event_id).where(ep.c.profile_id == person, ep.c.product_id.in_(products))
    return q.correlate_except(ep).exists()


async def person_accounts(session: AsyncSession, profile_id: str) -> list[dict[str, Any]]:
    """The accounts a surviving profile belongs to, with their non-personal traits."""
    m, a = table_of(AccountMember), table_of(Account)
    q = (
        select(a.c.id, a.c.traits, m.c.joined_at)
        .select_from(m)
        .join(a, a.c.id == m.c.account_id)
        .where(m.c.profile_id == profile_id)
        .order_by(m.c.joined_at, a.c.id)
    )
    out: dict[str, dict[str, Any]] = {}
    for aid, traits, joined in (await session.execute(q)).all():
        out.setdefault(aid, {"account_id": aid, "traits": traits, "since": joined.isoformat()})
    return list(out.values())


async def event_products(session: AsyncSession, event_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Event id → the products it was about (id and attributes), for the in-memory evaluator."""
    ids = sorted(set(event_ids))
    if not ids:
        return {}
    ep, p = table_of(EventProduct), table_of(Product)
    q = (
        select(ep.c.event_id, p.c.id, p.c.attributes)
        .join(p, p.c.id == ep.c.product_id)
        .where(ep.c.event_id.in_(ids))
        .order_by(ep.c.event_id, ep.c.position)
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for eid, pid, attrs in (await session.execute(q)).all():
        out.setdefault(eid, []).append({**attrs, "product_id": pid})
    return out


def seen_of(event: dict[str, Any], group_id: str | None) -> Seen:
    """An event row as ingestion stores it (plain columns) → what this domain reads of it."""
    return Seen(
        event["id"],
        event["profile_id"],
        event["type"],
        event["occurred_at"],
        event.get("properties") or {},
        event.get("traits") or {},
        group_id,
    )
