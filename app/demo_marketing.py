"""Marketing demo data: shoppers with months of orders, saved segments with a size history,
destinations with past runs, and journeys with their sends, so the marketer's console pages
are full on first start.

Everything goes through the domains' services as the demo marketer (the segments service
materialises, the activation service runs and delivers, the journeys service fires), so the
ledger, consent decisions and masking are those of real use. Nothing needs a network: the
exports are files under ``CONSENTRY_ACTIVATION_DIR``, and the webhook destination points at
a name that never resolves (``.invalid``, RFC 6761): its one run ends as a dead letter, as it
would with the receiver down, and nothing waits for it.
"""

from __future__ import annotations

import base64
import random
import secrets
from datetime import UTC, date, datetime, timedelta
from typing import Any

from app.access.service import Principal, authenticate
from app.activation import destinations
from app.activation import service as activation
from app.activation.destinations import DestinationIn
from app.db import unit_of_work
from app.ingest.service import ingest_messages
from app.journeys import service as journeys
from app.profiles.service import VaultContext
from app.segments import service as segments

MARKETING = "marketing.advertising.first_party.targeted"
REPORTING = "analytics.reporting"
CATEGORIES = ["basketball shoes", "basketball shoes", "running shoes", "outdoor jackets", "yoga wear"]
COUNTRIES = ["CN", "CN", "DE", "US-CA", "GB"]
HOOPS: dict[str, Any] = {
    "all": [
        {"event": "Order Completed", "where": {"category": {"eq": "basketball shoes"}}, "within": {"days": 90}},
        {"age": {"between": [18, 30]}},
    ]
}
WEEKS = 8
FULL_DEMO = 40
"""Demo customers of a full demo (``consentry demo load``'s default)."""
"""How many weekly sizes each saved segment gets before today's."""
UNREACHABLE_URL = "https://crm.example.invalid/consentry"
"""The demo webhook's receiver: a reserved name that never resolves, so delivery fails fast."""


def _birthday(rng: random.Random, today: date, i: int) -> str:
    if i in (3, 7):  # two shoppers have their birthday today (the birthday journey)
        return today.replace(year=today.year - 25).isoformat()
    years = rng.randint(18, 30) if rng.random() < 0.5 else rng.randint(31, 60)
    day = today - timedelta(days=365 * years + rng.randint(10, 350))
    return day.isoformat()


def shopper_events(i: int, now: datetime) -> list[dict[str, Any]]:
    """Shopper ``i``: who they are (an identify with the cookie banner's answer), orders over
    the last five months, and for some a cart left yesterday."""
    rng = random.Random(1000 + i)
    uid = f"demo-shopper-{i:03d}"
    traits = {
        "email": f"shopper{i:03d}@example.com",
        "birthday": _birthday(rng, now.date(), i),
        "plan": rng.choice(["free", "plus", "pro"]),
        "loyalty_tier": rng.choice(["bronze", "silver", "gold"]),
        "country": rng.choice(COUNTRIES),
    }
    consent = {"categoryPreferences": {"Advertising": rng.random() < 0.6, "Analytics": rng.random() < 0.85}}
    events: list[dict[str, Any]] = [
        {
            "type": "identify",
            "userId": uid,
            "messageId": f"shop-{i}-id",
            "traits": traits,
            "context": {"consent": consent},
        }
    ]
    for n in range(rng.choice([0, 1, 1, 2, 3])):
        at = now - timedelta(days=rng.uniform(1, 150))
        props = {"category": rng.choice(CATEGORIES), "revenue": rng.choice([59, 89, 129, 199])}
        events.append(_track(uid, f"shop-{i}-o{n}", "Order Completed", at, props))
    if rng.random() < 0.2:
        props = {"category": rng.choice(CATEGORIES), "price": 129}
        events.append(_track(uid, f"shop-{i}-cart", "Product Added", now - timedelta(hours=30), props))
    return events


def _track(uid: str, mid: str, name: str, at: datetime, props: dict[str, Any]) -> dict[str, Any]:
    stamp = at.isoformat().replace("+00:00", "Z")
    return {"type": "track", "userId": uid, "event": name, "messageId": mid, "timestamp": stamp, "properties": props}


async def load_marketing_demo(keys: dict[str, str], customers: int = FULL_DEMO, shoppers: int | None = None) -> None:
    """Load the marketing demo once (skipped when a saved segment exists), as the demo marketer,
    with ``shoppers`` (default four per demo customer). A demo of fewer than ``FULL_DEMO``
    customers (a quick one, as the tests load) gets none of it."""
    if customers < FULL_DEMO and shoppers is None:
        return
    shoppers = customers * 4 if shoppers is None else shoppers
    async with unit_of_work() as session:
        if await segments.live_segments(session):
            return
        marketer = await authenticate(session, keys.get("marketer", ""))
    if marketer is None:
        return
    dests = await _destinations(marketer)
    await _journeys(marketer, dests["journeys"])
    now = datetime.now(UTC)
    web = Principal(key_id="demo", role="ingest", name="demo-web", source="demo-web")
    for start in range(0, shoppers, 40):
        async with unit_of_work() as session:
            batch = [e for i in range(start, min(start + 40, shoppers)) for e in shopper_events(i, now)]
            await ingest_messages(session, VaultContext.from_settings(), web, batch)
    saved = await _segments(marketer, now)
    for seg, dest in ((saved["hoops"], "csv"), (saved["pro"], "csv"), (saved["hoops"], "ads"), (saved["hoops"], "crm")):
        async with unit_of_work() as session:
            run = await activation.start_run(session, marketer, seg, dests[dest])
        await activation.execute_run(run.id)
    await journeys.run_triggers()


async def _destinations(marketer: Principal) -> dict[str, str]:
    signing = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    contact = ["user.contact.email", "user.name"]
    specs = {
        "csv": DestinationIn(
            "Weekly audience export (CSV)", "file", MARKETING, contact, False, {"format": "csv"}, None
        ),
        "ads": DestinationIn(
            "Google Customer Match", "ad_audience", MARKETING, ["user.contact"], False, {"platform": "google"}, None
        ),
        "crm": DestinationIn(
            "CRM webhook",
            "webhook",
            MARKETING,
            contact,
            False,
            {"url": UNREACHABLE_URL, "max_attempts": 1, "backoff_s": 0, "timeout_s": 2},
            signing,
        ),
        "journeys": DestinationIn(
            "Journey messages (NDJSON)", "file", MARKETING, contact, False, {"format": "ndjson"}, None
        ),
    }
    out = {}
    async with unit_of_work() as session:
        for key, spec in specs.items():
            out[key] = (await destinations.create_destination(session, marketer, spec)).id
    return out


async def _journeys(marketer: Principal, destination_id: str) -> None:
    plans: list[tuple[str, str, dict[str, Any]]] = [
        ("Welcome", "welcome", {"delay_minutes": 0}),
        ("Abandoned cart, 24 h", "abandoned_cart", {"hours": 24, "quiet_hours": {"start": "22:00", "end": "08:00"}}),
        ("Birthday greeting", "birthday", {"send_at": "09:00", "timezone": "Asia/Shanghai"}),
    ]
    async with unit_of_work() as session:
        for name, kind, definition in plans:
            caps = {"person": {"count": 2, "hours": 24}}
            await journeys.create_journey(
                session, marketer, name, kind, destination_id, MARKETING, {**definition, "caps": caps}
            )


async def _segments(marketer: Principal, now: datetime) -> dict[str, str]:
    """Saved segments, then their sizes week by week over the last ``WEEKS`` weeks and today
    (each a refresh by the segments service at that time)."""
    out: dict[str, str] = {}
    async with unit_of_work() as session:
        hoops = await segments.create_segment(session, marketer, "Basketball shoes, aged 18-30", MARKETING, HOOPS)
        pro = await segments.create_segment(session, marketer, "Pro plan", MARKETING, {"trait": "plan", "eq": "pro"})
        recent = {"event": "Order Completed", "within": {"days": 30}}
        await segments.create_segment(session, marketer, "Bought in the last 30 days", REPORTING, recent)
        await segments.create_segment(
            session,
            marketer,
            "Basketball fans not on Pro",
            MARKETING,
            {"all": [{"segment": hoops.id}, {"not": {"segment": pro.id}}]},
        )
        out = {"hoops": hoops.id, "pro": pro.id}
    for week in range(WEEKS, 0, -1):
        async with unit_of_work() as session:
            for seg in await segments.live_segments(session):
                await segments.refresh(session, seg, now - timedelta(days=7 * week))
    async with unit_of_work() as session:
        for seg in await segments.live_segments(session):
            await segments.refresh(session, seg)
    return out
