"""For the access package: which of the person's identifiers linked each event to them, and
whether a device-level id the event carries also belongs to someone else (a shared device).

An event is annotated with ``identified_by`` (the kinds of the identifiers it carries that the
person holds) and ``shared_device`` (a device-level id on it, ``stitch_only`` in
``policies/identity.yaml``, is held by a profile that is not theirs: the resolver refused to
join the two people through it). Identifiers are compared by their blind indexes; each
distinct one is looked up once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import InvalidField
from app.identity.service import Ident, lookup_ident, make_ident, profiles_holding
from app.ingest.service import EXTERNAL_ID_TRAITS
from app.inventory import Person
from app.profiles.service import VaultContext

_PLAIN_KINDS = ("email", "phone", "wechat_openid", "wechat_unionid")


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def carried(event: dict[str, Any]) -> list[tuple[str, Any]]:
    """(kind, value) of every identifier an opened event carries, as ingestion reads them."""
    found = [("user_id", event.get("userId")), ("anonymous_id", event.get("anonymousId"))]
    context = _mapping(event.get("context"))
    device = context.get("device")
    if isinstance(device, dict):
        found.append(("device_id", device.get("id") or device.get("advertisingId")))
    traits = _mapping(event.get("traits"))
    if traits:  # most events carry no traits: their kinds are not looked for one by one
        found += [(name, traits.get(name)) for name in _PLAIN_KINDS]
        found += [(f"external:{name}", traits.get(name)) for name in EXTERNAL_ID_TRAITS]
    external = context.get("externalIds")
    for item in external if isinstance(external, list) else []:
        if isinstance(item, dict) and isinstance(item.get("type"), str):
            found.append((f"external:{item['type']}", item.get("id")))
    return found


def signature(event: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """What an event carries that could identify someone, as (kind, value as text): events
    carrying the same are linked the same way (thousands of a person's events share one)."""
    return tuple((kind, str(v)) for kind, v in carried(event) if v is not None and not isinstance(v, dict | list))


class EventLinks:
    """Blind indexes of what the person holds, and memoised lookups of what events carry."""

    def __init__(self, ctx: VaultContext, identifiers: list[dict[str, Any]]) -> None:
        self.ctx = ctx
        self.held = {make_ident(ctx, i["kind"], str(i["value"])).key for i in identifiers if i.get("value") is not None}
        self.idents: dict[tuple[str, str], Ident | None] = {}

    def ident(self, kind: str, value: Any) -> Ident | None:
        if value is None or isinstance(value, dict | list):
            return None
        key = (kind, str(value))
        if key not in self.idents:
            try:
                self.idents[key] = lookup_ident(self.ctx, kind, str(value))
            except (InvalidField, KeyError, ValueError):
                self.idents[key] = None  # not an identifier ingestion would have used
        return self.idents[key]

    def devices(self) -> set[Ident]:
        return {
            i for i in self.idents.values() if i is not None and self.ctx.policies.identity.rule(i.kind).stitch_only
        }


async def annotate_events(
    session: AsyncSession, ctx: VaultContext, person: Person, events: list[dict[str, Any]], identifiers: list[Any]
) -> None:
    """Add ``identified_by`` and ``shared_device`` to each exported event, in place."""
    links = EventLinks(ctx, identifiers)
    signatures = [signature(e) for e in events]
    carried_by = {s: [i for kind, v in s if (i := links.ident(kind, v)) is not None] for s in set(signatures)}
    mine = set(person.origins)
    shared = {d.key for d in links.devices() if set(await profiles_holding(session, d)) - mine}
    linked = {
        s: (sorted({i.kind for i in idents if i.key in links.held}), any(i.key in shared for i in idents))
        for s, idents in carried_by.items()
    }
    for event, s in zip(events, signatures, strict=True):
        kinds, on_shared_device = linked[s]
        event["identified_by"] = list(kinds)
        event["shared_device"] = on_shared_device
