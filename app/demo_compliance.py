"""Compliance demo data: data-subject requests in every state (received, waiting, verified,
in progress, extended, completed with an access package or an erasure certificate, denied),
some received weeks ago so deadlines are near or past, and consent choices in several states
(granted, denied, withdrawn, expired) and jurisdictions (DE, GB, US-CA, CN), so the compliance
officer's pages are full on first start.

Everything goes through the services as the demo compliance officer (intake, codes, states,
fulfilment, consent records), so the ledger holds what real use would.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal, authenticate
from app.consent.records import Choice, record_choices
from app.consent.rules import load_rules
from app.db import unit_of_work
from app.dsr import fulfil, lifecycle
from app.dsr.demo import backdate
from app.dsr.intake import PUBLIC, Intake, check_intake, receive
from app.dsr.policy import load_policy
from app.identity.service import lookup_ident, profiles_holding
from app.ledger.service import record_each
from app.profiles.service import VaultContext
from app.settings import get_settings

MARKETING = "marketing.advertising.first_party.targeted"
ANALYTICS = "analytics.reporting"
JURISDICTIONS = {"DE": "GDPR", "GB": "GDPR", "US-CA": "CCPA", "CN": "PIPL"}


@dataclass(frozen=True)
class DemoRequest:
    """One demo request: who (a demo customer's number), what, and where its story stops."""

    customer: int
    kind: str
    regulation: str
    jurisdiction: str
    ends: str
    """received, waiting, verified, in_progress, extended, completed or denied."""
    days_ago: int = 0


REQUESTS = (
    DemoRequest(0, "access", "gdpr", "DE", "received", 2),
    DemoRequest(1, "access", "pipl", "CN", "verified", 9),
    DemoRequest(2, "rectification", "gdpr", "GB", "waiting", 12),
    DemoRequest(3, "erasure", "pipl", "CN", "in_progress", 17),
    DemoRequest(4, "portability", "ccpa", "US-CA", "in_progress", 41),
    DemoRequest(6, "access", "gdpr", "DE", "extended", 25),
    DemoRequest(8, "access", "ccpa", "US-CA", "completed", 20),
    DemoRequest(10, "erasure", "gdpr", "DE", "completed", 14),
    DemoRequest(12, "objection", "gdpr", "GB", "denied", 6),
    DemoRequest(14, "opt_out", "ccpa", "US-CA", "verified", 1),
    DemoRequest(16, "restriction", "gdpr", "DE", "verified", 33),
)


async def _root(session: AsyncSession, ctx: VaultContext, email: str) -> str | None:
    found = await profiles_holding(session, lookup_ident(ctx, "email", email))
    return found[0] if found else None


async def _story(session: AsyncSession, officer: Principal, d: DemoRequest, person: dict[str, Any]) -> None:
    """Take one request as far as its story goes."""
    ctx, policy = VaultContext.from_settings(), load_policy(get_settings().policy_dir)
    identifiers = {"email": person["email"], "phone": person["phone"]}
    staff = d.ends != "received"
    intake = Intake(
        d.kind, d.regulation, identifiers, d.jurisdiction, None, "email" if d.kind == "rectification" else None,
        None, not staff, "identity card checked at the desk (demo)" if staff else None,
    )  # fmt: skip
    got = await receive(session, ctx, policy, officer, check_intake(intake, staff=True))
    r = got.request
    if d.ends in {"in_progress", "extended", "completed"}:
        await lifecycle.set_status(session, officer, r, "in_progress", None)
    if d.ends == "extended":
        await lifecycle.extend(session, officer, policy, r, "the request covers several years of orders (demo)")
    elif d.ends == "waiting":
        await lifecycle.wait(session, officer, r, "asked the requester which field is wrong (demo)")
    elif d.ends == "denied":
        await lifecycle.set_status(session, officer, r, "denied", "processing is needed for a contract (demo)")
    elif d.ends == "completed":
        await fulfil.run(session, officer, r)
    if d.days_ago:
        await backdate(session, r.id, d.days_ago)


async def _public_request(session: AsyncSession) -> None:
    """A request from the web form about nobody we know: received, unverified."""
    ctx, policy = VaultContext.from_settings(), load_policy(get_settings().policy_dir)
    intake = Intake("access", "gdpr", {"email": "someone.unknown@example.org"}, "DE")
    await receive(session, ctx, policy, PUBLIC, check_intake(intake, staff=False))


def _choices(i: int, root: str, country: str, now: datetime) -> list[Choice]:
    """Consent choices of demo customer ``i`` in several states, per their jurisdiction."""
    law = JURISDICTIONS.get(country, "GDPR")
    basis = "consent"
    first = now - timedelta(days=60)
    kind = i % 4
    states: list[tuple[str, str, datetime, datetime | None]] = [(MARKETING, "granted", first, None)]
    if kind == 1:
        states.append((MARKETING, "withdrawn", now - timedelta(days=3), None))
    elif kind == 2:
        states = [(MARKETING, "granted", first, now - timedelta(days=1))]  # expired yesterday
    elif kind == 3:
        states = [(MARKETING, "denied", first, None)]
    states.append((ANALYTICS, "granted" if i % 3 else "denied", first, None))
    return [
        Choice(root, purpose, state, "form", "demo-consent-form", at, basis, country, f"{law}-2026-01", expires)
        for purpose, state, at, expires in states
    ]


async def _consents(session: AsyncSession, officer: Principal, people: list[dict[str, Any]]) -> None:
    ctx, now = VaultContext.from_settings(), datetime.now(UTC)
    purposes = load_rules(get_settings().policy_dir).purposes
    choices: list[Choice] = []
    for i, person in enumerate(people[18:34], start=18):
        root = await _root(session, ctx, str(person["email"]))
        if root is not None:
            country = str(person["country"]) if person["country"] in JURISDICTIONS else "DE"
            choices += _choices(i, root, country, now)
    for c in choices:
        c.check(purposes)
    stored = await record_choices(session, choices)
    await record_each(
        session, officer, "consent.record",
        [(r.profile_id, {"purpose": r.purpose, "state": r.state, "method": r.method, "demo": True}) for r in stored],
        purpose="legal.compliance.dsr", legal_basis="legal_obligation",
    )  # fmt: skip


async def load_compliance_demo(keys: dict[str, str], people: list[dict[str, Any]]) -> None:
    """Requests in every state and consent choices, once (skipped when any request exists)."""
    async with unit_of_work() as session:
        if await lifecycle.list_requests(session, lifecycle.Filter(), 1):
            return
        officer = await authenticate(session, keys["compliance"])
        assert officer is not None, "the demo compliance key is unknown"
        await _public_request(session)
        for d in REQUESTS:
            if d.customer < len(people):
                await _story(session, officer, d, people[d.customer])
        await _consents(session, officer, people)
        await lifecycle.flag_deadlines(session, load_policy(get_settings().policy_dir))
