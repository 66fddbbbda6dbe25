"""The ingestion pipeline for a batch of messages: validate → de-duplicate → resolve
identities → encrypt → store → audit, with the database work done per batch."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import msgspec
from sqlalchemy import String, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.consent.gate import authorize, decide
from app.consent.policy import TraitRule
from app.consent.rules import load_rules
from app.db import UtcDateTime, insert_rows, retry_conflicts, table_of
from app.entities.service import observe, seen_of
from app.errors import InvalidField
from app.identity.resolver import Resolver
from app.identity.service import Ident, is_blocked_value, make_ident, new_id, user_hash_valid
from app.identity.suppression import refuse_suppressed
from app.ingest.consent_signals import decode_consent_strings, device_keys, event_choices, record_event_signals
from app.ingest.models import ConsentSignal, Event
from app.ingest.outbox import publish
from app.ingest.spec import Message, Rejection, validate
from app.ledger.service import record, record_group
from app.pii.fields import FieldPolicy, Split, Splitter, name_key, split_traits_by_policy
from app.pii.review import cached_field_policy, current_field_policy, record_sightings
from app.profiles.precedence import Stamp
from app.profiles.service import Observation, VaultContext, apply_observations, normalize_trait
from app.settings import get_settings
from app.vault.blind_index import blind_index
from app.vault.cipher import seal_field
from app.vault.memo import memo
from app.vault.service import DataKey

EXTERNAL_ID_TRAITS = ("crm_id", "shop_id", "loyalty_id", "pos_customer_id")


@dataclass
class BatchResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    profiles_created: int = 0
    profiles_updated: int = 0
    merges: int = 0
    profile_ids: list[str | None] = field(default_factory=list)
    """For each accepted or duplicate message in order, the profile it resolved to (None for duplicates)."""
    by_message: dict[str, str] = field(default_factory=dict)
    suppressed: int = 0
    """Messages refused because they carry an identifier of an erased person (suppression list)."""


NO_NAMES: Mapping[Any, Any] = MappingProxyType({})
"""An empty mapping no message may change, shared by the many with nothing to list."""


@dataclass
class Prepared:
    msg: Message
    idents: list[Ident]
    personal: dict[str, tuple[Any, Any]]
    plain_traits: dict[str, Any]
    plain_props: dict[str, Any]
    personal_props: dict[str, Any]
    undeclared: list[str] = field(default_factory=list)
    """Property names that were not declared personal data but look like it."""
    unknown: Mapping[tuple[str, str], int] = field(default_factory=lambda: NO_NAMES)
    """Names sealed as ``user.unknown``, by (name, scope), for review."""
    categories: Mapping[str, str] = field(default_factory=dict)
    """Path → data category of each sealed property and trait (read only, sealed with the event)."""
    trusted: bool = False
    """Did a ``server`` source (or a verified user hash) send it?"""
    consent_strings: dict[str, Any] = field(default_factory=dict)
    """Its TCF/GPP strings, decoded once while validating."""
    received_at: datetime | None = None
    """When its request was accepted (the store's ``received_at``)."""
    gpc: bool = False
    """Did its request carry ``Sec-GPC: 1``?"""


def extract_identifiers(ctx: VaultContext, msg: Message, personal: dict[str, tuple[Any, Any]]) -> list[Ident]:
    """Every identifier a message carries, normalised, minus blocked junk values."""
    out: list[Ident] = []
    blocked = ctx.policies.identity.blocked_values
    index_key = ctx.keys.index_key

    def add(kind: str, value: Any) -> None:
        if value is None or isinstance(value, dict | list):
            return
        text = str(value).strip()
        if text.lower() not in blocked:  # is_blocked_value, the policy looked up once per message
            out.append(Ident(kind, text, blind_index(index_key, kind, text)))

    add("user_id", msg.user_id)
    add("anonymous_id", msg.anonymous_id)
    if "email" in personal and personal["email"][1] is not None:
        add("email", personal["email"][1])
    if "phone" in personal and personal["phone"][1] is not None:
        add("phone", personal["phone"][1])
    device = msg.context.get("device")
    if isinstance(device, dict):
        add("device_id", device.get("id") or device.get("advertisingId"))
    ctx_traits = msg.context.get("traits")
    for traits in (msg.traits, ctx_traits if isinstance(ctx_traits, dict) else None):
        if not traits:  # most events (tracks, pages) carry none
            continue
        for name in EXTERNAL_ID_TRAITS:
            if name in traits:
                add(f"external:{name}", traits[name])
        add("wechat_openid", traits.get("wechat_openid"))
        add("wechat_unionid", traits.get("wechat_unionid"))
    wechat = msg.context.get("wechat")
    if isinstance(wechat, dict):
        add("wechat_openid", wechat.get("openid"))
        add("wechat_unionid", wechat.get("unionid"))
    external = msg.context.get("externalIds")
    if isinstance(external, list):
        for item in external:
            if isinstance(item, dict) and isinstance(item.get("type"), str) and len(item["type"]) <= 32:
                add(f"external:{item['type']}", item.get("id"))
    return out


def _prepare(ctx: VaultContext, msg: Message, fp: FieldPolicy | None = None) -> Prepared:
    """Split a message into what identifies, what is personal (sealed, with its category)
    and what stays plain: names by policy, then string values by the pattern detectors."""
    fp = fp or cached_field_policy(ctx.policies, ctx.keys.index_key)
    _check_event_name(fp, msg)
    region = ctx.region

    def normalize(rule: TraitRule, value: Any, where: str) -> Any:
        return normalize_trait(rule, value, region, where)

    scope = "group_traits" if msg.type == "group" else "traits"
    traits = split_traits_by_policy(fp, msg.traits, normalize, keep_none=False)
    personal, plain = traits.personal, traits.plain
    link_only: dict[str, tuple[Any, Any]] = {}
    ctx_traits = msg.context.get("traits")
    if msg.type != "identify" and isinstance(ctx_traits, dict):
        for name, value in ctx_traits.items():  # a tracked event's context.traits still identify the person
            rule = ctx.policies.trait(name) if isinstance(name, str) else None
            if rule is not None and rule.name in ("email", "phone") and rule.name not in link_only:
                with contextlib.suppress(InvalidField):
                    link_only[rule.name] = (rule, normalize_trait(rule, value, region, rule.name))
    props = _split_properties(ctx, fp, msg.properties)
    idents = extract_identifiers(ctx, msg, {**link_only, **personal})
    unknown: Mapping[tuple[str, str], int] = NO_NAMES
    categories = props.categories  # read only: a split may be shared (``_split_properties``)
    if msg.type in ("identify", "group"):
        if traits.unknown:
            unknown = Counter((name, scope) for name in traits.unknown)
        categories = {**categories, **{f"traits.{name}": rule.category for name, (rule, _v) in personal.items()}}
    else:
        personal, plain = {}, {}  # only identify sets profile traits; group traits stay on the event
    if props.unknown:
        unknown = Counter(unknown) + Counter((name, "properties") for name in props.unknown)
    return Prepared(
        msg, idents, personal, plain, props.plain, props.sealed, props.flagged, unknown=unknown, categories=categories
    )


_SCALARS = (str, int, float, bool, type(None))


def _split_properties(ctx: VaultContext, fp: FieldPolicy, properties: dict[str, Any]) -> Split:
    """``properties`` split into plain and sealed parts; within a processor's group (a memo
    scope) flat properties seen before (the same names, types and values: a page's path and
    title, a product's sku and price) reuse the first split, read-only, instead of passing
    the detectors again."""
    table = memo("properties_split") if properties else None
    key: tuple[Any, ...] | None = None
    if table is not None:
        items = []
        for name, value in properties.items():
            if type(value) not in _SCALARS:
                break
            items.append((name, type(value), repr(value) if type(value) is float else value))
        else:
            key = (fp, *items)  # types kept apart: 1, 1.0 and True are equal keys otherwise
            found: Split | None = table.get(key)
            if found is not None:
                return found
    split = Splitter(fp, ctx.policies.properties_not_personal).split(properties, "properties")
    if key is not None and table is not None:
        table[key] = split
    return split


def _check_event_name(fp: FieldPolicy, msg: Message) -> None:
    """An event name that carries personal data (an email, a phone number…) is refused, never stored."""
    if msg.name and fp.value_category(msg.name) is not None:
        where = "event" if msg.type == "track" else "name"
        raise InvalidField("looks like personal data (an email, phone number or id): not stored", field=where)


_REGISTER = {
    "sqlite": "INSERT INTO ingested_message (source, message_id, received_at) SELECT :source, value, :at "
    "FROM json_each(:ids) WHERE true ON CONFLICT DO NOTHING RETURNING message_id",
    "postgresql": "INSERT INTO ingested_message (source, message_id, received_at) SELECT :source, m, :at "
    "FROM unnest(CAST(:ids AS text[])) AS m ON CONFLICT DO NOTHING RETURNING message_id",
}
_registers: dict[str, Any] = {}


async def _new_message_ids(session: AsyncSession, source: str, ids: list[str], now: datetime) -> set[str]:
    """Register message ids; returns those not seen before (safe against concurrent replays).
    One statement with the ids as one parameter (``json_each``/``unnest``): no per-row
    parameter processing, whatever the batch's size."""
    if not ids:
        return set()
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    stmt = _registers.get(dialect)
    if stmt is None:
        listed = String() if dialect == "sqlite" else ARRAY(String)
        stmt = _registers[dialect] = text(_REGISTER[dialect]).bindparams(
            bindparam("source", type_=String()), bindparam("at", type_=UtcDateTime()), bindparam("ids", type_=listed)
        )
    param = msgspec.json.encode(ids).decode() if dialect == "sqlite" else ids
    return set((await session.execute(stmt, {"source": source, "at": now, "ids": param})).scalars())


async def ingest_messages(
    session: AsyncSession,
    ctx: VaultContext,
    principal: Principal,
    raw_messages: list[Any],
    *,
    defaults: dict[str, Any] | None = None,
    gpc: bool = False,
    expected_type: str | None = None,
    received_at: datetime | None = None,
    require_ids: bool = True,
) -> BatchResult:
    """Store a batch of Spec messages from ``principal``'s source; invalid ones are reported by index.

    On PostgreSQL the database work runs in a savepoint that is retried when it loses a
    deadlock or a serialization conflict to a concurrent batch (never a 500)."""
    now = received_at or datetime.now(UTC)
    if not decide(principal, None).allowed:
        await authorize(session, principal, "ingest.events", [], None)
    result = BatchResult()
    fp = await current_field_policy(session, ctx.policies, ctx.keys.index_key)
    prepared = _validated(ctx, principal, raw_messages, result, defaults, expected_type, require_ids, now, fp)
    seen: set[str] = set()
    unique = []
    for p in prepared:
        if p.msg.message_id in seen:
            result.duplicates += 1
        else:
            seen.add(p.msg.message_id)
            unique.append(p)
    for p in unique:
        p.gpc = gpc
    stored = await retry_conflicts(session, lambda: store_prepared(session, ctx, principal, unique))
    stored.duplicates += result.duplicates
    stored.rejected = result.rejected
    by_msg = stored.by_message
    stored.profile_ids = [by_msg.get(p.msg.message_id) for p in prepared]
    sightings: Counter[tuple[str, str]] = Counter()
    for p in unique:
        if p.unknown and p.msg.message_id in by_msg:
            sightings.update(p.unknown)
    await record_sightings(session, fp, sightings)
    return stored


def _validated(
    ctx: VaultContext,
    principal: Principal,
    raw_messages: list[Any],
    result: BatchResult,
    defaults: dict[str, Any] | None,
    expected_type: str | None,
    require_ids: bool,
    now: datetime,
    fp: FieldPolicy | None = None,
    sized: bool = False,
) -> list[Prepared]:
    """The messages that pass, prepared; the others' rejects go to ``result`` by index.
    ``sized``: they were accepted into the inbox (``validate``'s size checks passed then)."""
    prepared: list[Prepared] = []
    for i, raw in enumerate(raw_messages):
        checked = validate(raw, i, now, defaults, expected_type, require_ids, sized)
        if isinstance(checked, Rejection):
            result.rejected.append(checked)
            continue
        try:
            ready = _prepare(ctx, checked, fp)
        except InvalidField as exc:
            result.rejected.append(Rejection(i, exc.field or "", exc.detail))
            continue
        ready.consent_strings, refused = decode_consent_strings(checked.context)
        if refused is not None:
            result.rejected.append(Rejection(i, *refused))
            continue
        if not ready.idents:
            result.rejected.append(Rejection(i, "userId", "no identifier: give a user id, email, phone or external id"))
            continue
        ready.trusted = principal.trust == "server" or user_hash_valid(
            ctx, principal.key_id, checked.user_id, checked.context.get("userHash")
        )
        ready.received_at = now
        prepared.append(ready)
    return prepared


def checked_messages(
    ctx: VaultContext,
    raw_messages: list[Any],
    result: BatchResult,
    defaults: dict[str, Any] | None,
    expected_type: str | None,
    require_ids: bool,
    now: datetime,
    fp: FieldPolicy,
) -> list[Message]:
    """What an accepting request checks: each message's shape, and everything storing it would
    refuse it for (the rejects of ``_validated``, by index) — without the work only storing
    needs (blind indexes, splitting properties for sealing), which the processor does once."""
    out: list[Message] = []
    for i, raw in enumerate(raw_messages):
        checked = validate(raw, i, now, defaults, expected_type, require_ids)
        if isinstance(checked, Rejection):
            result.rejected.append(checked)
            continue
        refused = _refusal(ctx, checked, fp)
        if refused is not None:
            result.rejected.append(Rejection(i, *refused))
            continue
        out.append(checked)
    return out


def _refusal(ctx: VaultContext, msg: Message, fp: FieldPolicy) -> tuple[str, str] | None:
    """(field, reason) if ``_validated`` would refuse this valid-shaped message, else None."""
    policy = ctx.policies.identity
    identified = not is_blocked_value(policy, msg.user_id) or not is_blocked_value(policy, msg.anonymous_id)
    try:
        if not identified:  # rare over HTTP (imports): the full preparation finds every identifier
            identified = bool(_prepare(ctx, msg, fp).idents)
        _check_event_name(fp, msg)
        if msg.traits:  # declared traits must normalise (an invalid email is refused by index)
            region = ctx.region
            split_traits_by_policy(fp, msg.traits, lambda r, v, w: normalize_trait(r, v, region, w), keep_none=False)
    except InvalidField as exc:
        return exc.field or "", exc.detail
    _strings, refused = decode_consent_strings(msg.context)
    if refused is not None:
        return refused
    if not identified:
        return "userId", "no identifier: give a user id, email, phone or external id"
    return None


def _alias_idents(ctx: VaultContext, p: Prepared) -> list[Ident]:
    if not p.msg.previous_id or is_blocked_value(ctx.policies.identity, p.msg.previous_id):
        return []
    return [make_ident(ctx, "user_id", p.msg.previous_id), make_ident(ctx, "anonymous_id", p.msg.previous_id)]


async def store_prepared(
    session: AsyncSession,
    ctx: VaultContext,
    principal: Principal,
    unique: list[Prepared],
    *,
    registered: bool = False,
) -> BatchResult:
    """De-duplicate, resolve, store events and traits, and record the group in the ledger.
    ``registered``: the message ids were registered when the requests were accepted (the inbox)."""
    result = BatchResult()
    source = principal.source or principal.name
    now = max((p.received_at for p in unique if p.received_at), default=None) or datetime.now(UTC)
    resolver = Resolver(session, ctx, principal, source)
    all_idents = [i for p in unique for i in [*p.idents, *_alias_idents(ctx, p)]]
    await resolver.prepare(all_idents)
    unique = await _drop_suppressed(session, ctx, principal, source, unique, result)
    todo = unique
    if not registered:
        fresh = await _new_message_ids(session, source, [p.msg.message_id for p in unique], now)
        todo = [p for p in unique if p.msg.message_id in fresh]
    result.duplicates = len(unique) - len(todo)
    if not todo:
        return result
    resolved: list[tuple[Prepared, str]] = []
    for p in todo:
        idents = list(p.idents)
        alias = _alias_idents(ctx, p)
        if alias:
            idents.append(alias[0] if resolver.owners.get(alias[0].key) else alias[1])
        res = await resolver.resolve(idents, p.msg.occurred_at, p.trusted)
        resolved.append((p, res.profile_id))
    await resolver.flush_rows()
    final = [(p, resolver.final(pid)) for p, pid in resolved]
    await apply_observations(
        session, resolver.keys, _observations(source, final), ctx.policies.identity.trait_authority
    )
    events, signals = _event_rows(source, final, resolver.keys, now)
    await insert_rows(session, table_of(Event), events)
    seen = [seen_of(e, p.msg.group_id) for (p, _pid), e in zip(final, events, strict=True)]
    await observe(session, ctx.keys.index_key, seen)  # accounts, memberships, products
    if signals:
        await insert_rows(session, table_of(ConsentSignal), signals)
    await _consent_signals(session, source, final, now)
    await resolver.finish()
    await publish(session, [*(pid for _p, pid in final), *resolver.redirect], "event")
    live_new = {pid for pid in resolver.new_profiles if pid not in resolver.redirect}
    touched = Counter(pid for _p, pid in final)
    result.accepted = len(final)
    result.profiles_created = len(live_new)
    result.profiles_updated = len([pid for pid in touched if pid not in live_new])
    result.merges = resolver.merges
    await _record_batch(session, ctx, principal, source, final)
    result.by_message = {p.msg.message_id: pid for p, pid in final}
    return result


async def _drop_suppressed(
    session: AsyncSession,
    ctx: VaultContext,
    principal: Principal,
    source: str,
    unique: list[Prepared],
    result: BatchResult,
) -> list[Prepared]:
    """Messages carrying an identifier on the suppression list (an erased person) are dropped,
    counted and recorded; checked once the identity locks are held, so a batch that waited
    for an erasure sees its entries."""
    idents = {p.msg.message_id: [*p.idents, *_alias_idents(ctx, p)] for p in unique}
    refused = await refuse_suppressed(session, ctx.keys.master, [i for ids in idents.values() for i in ids])
    if not refused:
        return unique
    kept = [p for p in unique if not any(i.key in refused for i in idents[p.msg.message_id])]
    result.suppressed = len(unique) - len(kept)
    details = {"source": source, "refused": result.suppressed, "kinds": sorted({k for k, _d in refused})}
    await record(session, principal, "ingest.suppressed", purpose="legal.compliance.dsr", details=details)
    return kept


async def _consent_signals(
    session: AsyncSession, source: str, final: list[tuple[Prepared, str]], now: datetime
) -> None:
    """Consent preferences in the events' context become consent records; GPC marks the devices."""
    rules = load_rules(get_settings().policy_dir)
    choices = [
        c
        for p, pid in final
        if p.consent_strings or "consent" in p.msg.context or "consentManagement" in p.msg.context
        for c in event_choices(
            rules, source, pid, p.msg.message_id, p.msg.context, p.consent_strings, p.msg.occurred_at
        )
    ]
    devices = [k for p, _pid in final if p.gpc for k in device_keys(p.idents)]
    await record_event_signals(session, choices, devices, now)


def _observations(source: str, final: list[tuple[Prepared, str]]) -> list[Observation]:
    """Identify traits as observations for the profiles they resolved to."""
    out = []
    for p, pid in final:
        if p.msg.type != "identify":
            continue
        stamp = Stamp(source, "server" if p.trusted else "client", p.msg.occurred_at)
        for name, (rule, value) in p.personal.items():
            out.append(Observation(pid, name, rule.category, value, stamp))
        for name, value in p.plain_traits.items():
            if value is not None:
                out.append(Observation(pid, name, None, value, stamp))
    return out


def _event_rows(
    source: str, final: list[tuple[Prepared, str]], keys: dict[str, DataKey], now: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    signals: list[dict[str, Any]] = []
    gpc_done: set[str] = set()
    for p, pid in final:
        dk = keys[pid]
        m = p.msg
        sealed = {
            "userId": m.user_id,
            "anonymousId": m.anonymous_id,
            "previousId": m.previous_id,
            "groupId": m.group_id,
            "context": m.context,
            "properties": p.personal_props,
            "traits": {k: v for k, (_r, v) in p.personal.items()},
            "categories": p.categories,
        }
        events.append(
            {
                "id": new_id(),
                "profile_id": pid,
                "origin_id": pid,
                "source": source,
                "message_id": m.message_id,
                "type": m.type,
                "name": m.name,
                "occurred_at": m.occurred_at,
                "received_at": p.received_at or now,
                "properties": p.plain_props,
                "traits": p.plain_traits,
                "key_version": dk.version,
                "sealed": seal_field(dk.key, pid, "event", dk.version, sealed),
            }
        )
        found = [("gpc", {"Sec-GPC": "1"})] if p.gpc and pid not in gpc_done else []
        if p.gpc:
            gpc_done.add(pid)
        for kind, key in (("segment.consent", "consent"), ("rudderstack.consent", "consentManagement")):
            if isinstance(m.context.get(key), dict):
                found.append((kind, m.context[key]))
        signals += [
            {
                "id": new_id(),
                "profile_id": pid,
                "origin_id": pid,
                "source": source,
                "kind": kind,
                "payload": payload,
                "message_id": m.message_id,
                "received_at": p.received_at or now,
            }
            for kind, payload in found
        ]
    return events, signals


async def _record_batch(
    session: AsyncSession, ctx: VaultContext, principal: Principal, source: str, final: list[tuple[Prepared, str]]
) -> None:
    """One ledger entry for the group, listing every person it touched (indexed, so a
    data-subject request finds it) with event counts by type. Undeclared fields that held
    personal data are named by the keyed hash ``GET /v1/fields/review`` lists them by, never
    verbatim (a client chose those names)."""
    types: Counter[str] = Counter(p.msg.type for p, _pid in final)
    undeclared = {n for p, _pid in final for n in p.undeclared}
    people = sorted({pid for _p, pid in final})
    details: dict[str, Any] = {"source": source, "events": dict(types), "people": len(people)}
    if undeclared:
        details["undeclared_pii"] = sorted({name_key(ctx.keys.index_key, n) for n in undeclared})
    decision = decide(principal, None)
    await record_group(
        session,
        principal,
        "ingest.events",
        people,
        purpose=decision.purpose,
        legal_basis=decision.legal_basis,
        details=details,
    )
