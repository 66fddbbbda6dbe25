"""HTTP API for consent: record choices (grant, deny, withdraw — each one call), read a
person's consents, and ask the decision engine about a person or a population."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from app.consent.policy import load_policies
from app.consent.records import Choice, consent_receipt, consent_view, record_choices, set_flags
from app.consent.rules import load_rules
from app.consent.snapshots import rules_at
from app.decisions.engine import Ask
from app.decisions.service import decide_person, decide_population
from app.deps import Caller, Db
from app.errors import InvalidField, NotFound
from app.ingest.outbox import publish
from app.ledger.service import record_each, record_group
from app.profiles.service import lock_profiles, resolve_many, resolve_merged
from app.settings import get_settings

STAFF = ("admin", "compliance")


class ConsentIn(msgspec.Struct, forbid_unknown_fields=True):
    profile_id: str
    purpose: str
    state: str
    """granted, denied or withdrawn."""
    method: str = "api"
    """form, banner, api, import, gpc, tcf, gpp, guardian or event."""
    decided_at: datetime | None = None
    """When the person chose (default: now). A grant older than the current state changes nothing."""
    client_id: str | None = None
    """Your id for this record: sending it again stores nothing twice."""
    legal_basis: str | None = None
    jurisdiction: str | None = None
    notice_version: str | None = None
    expires_at: datetime | None = None


class ConsentBody(msgspec.Struct, forbid_unknown_fields=True):
    consents: list[ConsentIn] = []
    flags: dict[str, dict[str, bool]] = {}
    """Profile id → flag → on/off (restricted, suppressed, profiling_refused, minor_under_14, minor_under_16)."""


class ConsentStored(msgspec.Struct):
    stored: int
    duplicates: int
    ids: list[str]


class DecisionIn(msgspec.Struct, forbid_unknown_fields=True):
    purpose: str
    person: str | None = None
    """A profile id; without it, the decision is over every person (counts by reason)."""
    categories: list[str] = []
    cross_border: bool = False


def _root(roots: dict[str, str], profile_id: str, where: str) -> str:
    if profile_id not in roots:
        raise NotFound("no profile with this id", field=f"{where}.profile_id")
    return roots[profile_id]


def _choice(c: ConsentIn, root: str, source: str, n: int) -> Choice:
    choice = Choice(
        root,
        c.purpose,
        c.state,
        c.method,
        source,
        c.decided_at or datetime.now(UTC),
        c.legal_basis,
        c.jurisdiction,
        c.notice_version,
        c.expires_at,
        c.client_id,
    )
    choice.check(load_rules(get_settings().policy_dir).purposes, f"consents[{n}].")
    return choice


async def _locked_roots(db: Any, ids: list[str]) -> dict[str, str]:
    """Each id's surviving profile, locked (in id order) for the rest of the write, so two
    writes for the same people take turns and each sees the other's result."""
    for _ in range(3):
        roots = await resolve_many(db, ids)
        locked = await lock_profiles(db, set(roots.values()))
        if all(p.merged_into is None for p in locked.values()):
            return roots
    return roots  # merged again meanwhile, three times: the rows still follow the merge


async def _record_consents(db: Any, principal: Caller, stored: list[Any], flags: dict[str, Any]) -> None:
    """The ledger's record of a consent write: an entry per person with what was recorded,
    or, for a bulk write naming several people, one group entry with counts (the consent
    history rows hold each choice) whose subjects are indexed."""
    version = load_rules(get_settings().policy_dir).version
    items = [
        (r.profile_id, {"purpose": r.purpose, "state": r.state, "method": r.method, "applied": r.applied})
        for r in stored
    ] + [(pid, {"flags": f}) for pid, f in flags.items()]
    basis = {"purpose": "legal.compliance.dsr", "legal_basis": "legal_obligation"}
    subjects = {pid for pid, _ in items}
    if len(subjects) <= 1:
        await record_each(
            db, principal, "consent.record", [(p, {**d, "policy_version": version}) for p, d in items], **basis
        )
        return
    counts: dict[str, int] = {}
    for r in stored:
        key = f"{r.purpose}:{r.state}:{'applied' if r.applied else 'history only'}"
        counts[key] = counts.get(key, 0) + 1
    details = {"records": len(stored), "flags": len(flags), "by_purpose_state": counts, "policy_version": version}
    await record_group(db, principal, "consent.record", sorted(subjects), details=details, **basis)


class ConsentController(Controller):
    path = "/v1"
    tags = ["consent"]

    @post("/consents", opt={"roles": STAFF}, operation_id="recordConsents", status_code=201)
    async def record(self, data: JSONBody[ConsentBody], db: Db, principal: Caller) -> ConsentStored:
        """Record consent choices (single or bulk, idempotent by ``client_id``) and privacy flags.
        Withdrawing is the same one call as granting."""
        if not data.consents and not data.flags:
            raise InvalidField("send consents or flags", field="consents")
        if len(data.consents) > 5000:
            raise InvalidField("at most 5000 consents a request", field="consents")
        source = principal.source or f"api:{principal.name}"
        roots = await _locked_roots(db, [c.profile_id for c in data.consents] + list(data.flags))
        choices = [
            _choice(c, _root(roots, c.profile_id, f"consents[{n}]"), source, n) for n, c in enumerate(data.consents)
        ]
        stored = await record_choices(db, choices)
        for pid, flags in data.flags.items():
            await set_flags(db, _root(roots, pid, "flags"), flags, source)
        await _record_consents(db, principal, stored, data.flags)
        changed = [r.profile_id for r in stored] + [_root(roots, pid, "flags") for pid in data.flags]
        await publish(db, changed, "consent")  # segments deciding on consent re-evaluate them
        return ConsentStored(len(stored), len(choices) - len(stored), [r.id for r in stored])

    @get("/profiles/{profile_id:str}/consents", opt={"roles": STAFF}, operation_id="getProfileConsents")
    async def consents(self, profile_id: FromPath[str], db: Db, principal: Caller) -> dict[str, Any]:
        """Current consent per purpose (most restrictive over merged profiles, conflicts marked),
        flags and the whole history."""
        root = await resolve_merged(db, profile_id)
        await record_each(
            db, principal, "consent.read", [(root, {})], purpose="legal.compliance.dsr", legal_basis="legal_obligation"
        )
        return {"profile_id": root, **await consent_view(db, root)}

    @get("/consents/{record_id:str}/receipt", opt={"roles": STAFF}, operation_id="getConsentReceipt")
    async def receipt(self, record_id: FromPath[str], db: Db, principal: Caller) -> dict[str, Any]:
        """The consent receipt of one recorded choice (Kantara Consent Receipt v1.1 fields)."""
        settings = get_settings()
        descriptions = {k: v.description for k, v in load_policies(settings.policy_dir).purposes.items()}
        found = await consent_receipt(
            db, record_id, load_rules(settings.policy_dir), settings.audit_origin, descriptions
        )
        if found is None:
            raise NotFound("no consent record with this id", field="record_id")
        await record_each(
            db,
            principal,
            "consent.receipt",
            [(found["piiPrincipalId"], {"record_id": record_id})],
            purpose="legal.compliance.dsr",
            legal_basis="legal_obligation",
        )
        return found

    @post("/decisions", opt={"roles": ("admin", "compliance", "marketer")}, operation_id="decide", status_code=200)
    async def decide(self, data: JSONBody[DecisionIn], db: Db, principal: Caller) -> dict[str, Any]:
        """Allow or deny a purpose for a person (with the reason, the policy version and the
        categories allowed), or counts by reason over everyone. Denials are recorded."""
        ask = Ask(data.purpose, tuple(data.categories), data.cross_border)
        if data.person is None:
            p = await decide_population(db, principal, ask)
            return {"total": p.total, "allowed": p.allowed, "denied": p.denied, "policy_version": p.policy_version}
        v = await decide_person(db, principal, ask, data.person)
        return {
            "decision": "allow" if v.allowed else "deny",
            "reason": v.reason,
            "jurisdiction": v.jurisdiction,
            "categories": v.categories,
            "policy_version": v.policy_version,
        }

    @get("/decisions/explain", opt={"roles": ("admin", "compliance", "auditor")}, operation_id="explainDecision")
    async def explain(
        self,
        db: Db,
        principal: Caller,
        person: Annotated[str, QueryParameter(max_length=64)],
        purpose: Annotated[str, QueryParameter(max_length=128)],
        at: Annotated[datetime | None, QueryParameter(description="replay the policy in force then (ISO time)")] = None,
    ) -> dict[str, Any]:
        """Which rule decided for this person and purpose: under the current policy version, or
        with ``at`` under the version that was in force then (against the person's consent
        state as it stands now: ``state_as_of`` says so)."""
        rules = None
        if at is not None:
            rules = await rules_at(db, at if at.tzinfo else at.replace(tzinfo=UTC))
            if rules is None:
                raise InvalidField("no policy version was recorded as in force at this time", field="at")
        v = await decide_person(db, principal, Ask(purpose), person, explain=True, rules=rules)
        root = await resolve_merged(db, person)
        view = await consent_view(db, root)
        await record_each(
            db,
            principal,
            "decision.explain",
            [(root, {"purpose": purpose, "reason": v.reason})],
            purpose="audit.review",
            legal_basis="legal_obligation",
        )
        return {
            "decision": "allow" if v.allowed else "deny",
            "reason": v.reason,
            "rule": v.rule,
            "jurisdiction": v.jurisdiction,
            "policy_version": v.policy_version,
            "state_as_of": "now",
            "consent": view["current"].get(purpose),
            "flags": view["flags"],
        }
