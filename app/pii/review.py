"""Review of field names no policy classifies: what was seen, and reviewers' decisions.

Unknown names are sealed as ``user.unknown`` (privacy by default) and recorded here by
keyed hash; a reviewer declares a name non-personal or maps it to a data category, and
every later payload follows that decision (each process re-reads decisions at most
``app.pii.fields.REFRESH_SECONDS`` after they change; the process that took the decision
at once)."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.consent.policy import PolicySet
from app.db import table_of
from app.errors import InvalidField
from app.ledger.service import record
from app.pii.fields import NON_PERSONAL, FieldPolicy, field_policy, needs_refresh, set_decisions
from app.pii.models import FieldDecision, FieldSighting
from app.settings import get_settings

CATEGORY_RE = re.compile(r"^user(?:\.[a-z][a-z_]*){1,4}$")
SCOPES = ("traits", "properties", "group_traits")


def _url() -> str:
    return get_settings().database_url


async def load_decisions(session: AsyncSession, *, force: bool = False) -> None:
    """Read reviewers' decisions into this process's cache when they may have changed."""
    url = _url()
    if force or needs_refresh(url):
        rows = (await session.execute(select(FieldDecision.key, FieldDecision.decision))).all()  # type: ignore[call-overload]
        set_decisions(url, {k: d for k, d in rows})


async def current_field_policy(session: AsyncSession, policies: PolicySet, index_key: bytes) -> FieldPolicy:
    """Name decisions with reviewers' decisions as this database holds them (re-read every few seconds)."""
    await load_decisions(session)
    return field_policy(policies, index_key, _url())


def cached_field_policy(policies: PolicySet, index_key: bytes) -> FieldPolicy:
    """Name decisions with the reviewers' decisions this process last read (no database access)."""
    return field_policy(policies, index_key, _url())


async def record_sightings(session: AsyncSession, fp: FieldPolicy, seen: Counter[tuple[str, str]]) -> None:
    """Append this batch's sightings of unknown names: ``{(name, scope): count}``."""
    if not seen:
        return
    now = datetime.now(UTC)
    rows = [
        {"id": str(uuid.uuid4()), "key": fp.key(name), "label": fp.label(name), "scope": scope, "seen": n, "at": now}
        for (name, scope), n in sorted(seen.items())
    ]
    await session.execute(insert(table_of(FieldSighting)), rows)


async def review_list(session: AsyncSession, include_decided: bool = False) -> list[dict[str, Any]]:
    """Unknown names, most seen first: key, name (None when personal-looking), counts by scope."""
    t = table_of(FieldSighting)
    q = select(
        t.c.key, t.c.scope, func.min(t.c.label), func.sum(t.c.seen), func.min(t.c.at), func.max(t.c.at)
    ).group_by(t.c.key, t.c.scope)
    decided = {
        k: (d, by, at)
        for k, d, by, at in (
            await session.execute(
                select(FieldDecision.key, FieldDecision.decision, FieldDecision.decided_by, FieldDecision.decided_at)  # type: ignore[call-overload]
            )
        ).all()
    }
    items: dict[str, dict[str, Any]] = {}
    for key, scope, label, n, first, last in (await session.execute(q)).all():
        item = items.setdefault(
            key,
            {
                "key": key,
                "name": None if label.startswith("h_") else label,
                "seen": 0,
                "where": {},
                "first_seen": first,
                "last_seen": last,
                "decision": None,
            },
        )
        item["seen"] += int(n)
        item["where"][scope] = int(n)
        item["first_seen"] = min(item["first_seen"], first)
        item["last_seen"] = max(item["last_seen"], last)
    for key, item in items.items():
        if key in decided:
            item["decision"] = decided[key][0]
    out = [i for i in items.values() if include_decided or i["decision"] is None]
    return sorted(out, key=lambda i: (-i["seen"], i["key"]))


async def decide_field(
    session: AsyncSession,
    principal: Principal,
    fp: FieldPolicy,
    decision: str,
    *,
    name: str | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """Record a reviewer's decision for a name (given as itself or as its key from the list)."""
    if decision != NON_PERSONAL and not CATEGORY_RE.match(decision):
        raise InvalidField("must be non_personal or a data category such as user.contact.email", field="decision")
    if (name is None) == (key is None):
        raise InvalidField("give either a name or a key", field="name")
    if name is not None:
        if not name.strip() or len(name) > 256:
            raise InvalidField("must be 1 to 256 characters", field="name")
        key, label = fp.key(name), fp.label(name)
    else:
        assert key is not None
        if not re.fullmatch(r"[0-9a-f]{32}", key):
            raise InvalidField("is not a key from the review list", field="key")
        t = table_of(FieldSighting)
        label = (await session.execute(select(func.min(t.c.label)).where(t.c.key == key))).scalar() or f"h_{key[:16]}"
    now = datetime.now(UTC)
    row = await session.get(FieldDecision, key)
    if row is None:
        session.add(
            FieldDecision(key=key, label=label, decision=decision, decided_by=principal.name[:64], decided_at=now)
        )
    else:
        row.decision, row.decided_by, row.decided_at = decision, principal.name[:64], now
    await session.flush()
    await record(session, principal, "fields.review", details={"key": key, "decision": decision})
    await load_decisions(session, force=True)
    return {"key": key, "name": None if label.startswith("h_") else label, "decision": decision}
