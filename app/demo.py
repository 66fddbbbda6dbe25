"""Synthetic demo customers (English and Chinese names) and one API key per role."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from faker import Faker
from sqlalchemy import func, select

from app.access.models import ROLES
from app.access.service import SYSTEM, Principal, authenticate, create_api_key
from app.db import unit_of_work
from app.demo_compliance import load_compliance_demo
from app.demo_marketing import load_marketing_demo
from app.ingest.service import ingest_messages
from app.ledger.heads import make_tree_head
from app.people.service import write_profile
from app.profiles.models import Profile
from app.profiles.service import VaultContext

CATEGORIES = ["basketball shoes", "running shoes", "outdoor jackets", "yoga wear", "kids' sneakers"]


def demo_customers(count: int, seed: int = 7) -> list[dict[str, object]]:
    """Deterministic synthetic customers, half with Chinese names and mainland mobiles."""
    rng = random.Random(seed)
    en, zh = Faker("en_US"), Faker("zh_CN")
    en.seed_instance(seed)
    zh.seed_instance(seed)
    people: list[dict[str, object]] = []
    for i in range(count):
        chinese = i % 2 == 1
        fake = zh if chinese else en
        first, last = fake.first_name(), fake.last_name()
        phone = (
            f"+86 1{rng.choice('3578')}{rng.randrange(10**8, 10**9)}"
            if chinese
            else f"+1 {rng.randrange(201, 989)} {rng.randrange(200, 999)} {rng.randrange(1000, 9999)}"
        )
        traits: dict[str, object] = {
            "email": f"{'zh' if chinese else 'en'}.customer{i:03d}@{fake.free_email_domain()}",
            "phone": phone,
            "firstName": first,
            "lastName": last,
            "name": f"{last}{first}" if chinese else f"{first} {last}",
            "birthday": fake.date_of_birth(minimum_age=16, maximum_age=70).isoformat(),
            "plan": rng.choice(["free", "plus", "pro"]),
            "loyalty_tier": rng.choice(["bronze", "silver", "gold"]),
            "favourite_category": rng.choice(CATEGORIES),
            "country": "CN" if chinese else rng.choice(["US-CA", "DE", "GB"]),
            "demo": True,
        }
        people.append(traits)
    return people


def demo_events(i: int, email: str, profile_id: str) -> list[dict[str, object]]:
    """A short browsing and buying history for demo customer ``i``."""
    rng = random.Random(i)
    category = rng.choice(CATEGORIES)
    anon = f"demo-anon-{i:03d}"
    events: list[dict[str, object]] = [
        {"type": "page", "anonymousId": anon, "name": "Home", "messageId": f"demo-{i}-1", "properties": {"path": "/"}},
        {
            "type": "track",
            "anonymousId": anon,
            "event": "Product Viewed",
            "messageId": f"demo-{i}-2",
            "properties": {"category": category, "sku": f"SKU-{rng.randrange(100, 999)}"},
        },
        {
            "type": "identify",
            "anonymousId": anon,
            "userId": f"demo-user-{i:03d}",
            "messageId": f"demo-{i}-3",
            "traits": {"email": email},
            # the cookie banner's answer: two in three accept advertising, most accept analytics
            "context": {
                "consent": {
                    "categoryPreferences": {"Advertising": rng.random() < 0.67, "Analytics": rng.random() < 0.8}
                }
            },
        },
    ]
    if rng.random() < 0.6:
        events.append(
            {
                "type": "track",
                "userId": f"demo-user-{i:03d}",
                "event": "Order Completed",
                "messageId": f"demo-{i}-4",
                "properties": {"category": category, "revenue": rng.choice([59, 89, 129, 199])},
            }
        )
    return events


async def _ensure_keys(keys_file: Path | None) -> dict[str, str]:
    if keys_file and keys_file.exists():
        saved: dict[str, str] = json.loads(keys_file.read_text())
        async with unit_of_work() as session:
            if all([await authenticate(session, saved.get(role, "")) for role in ROLES]):
                return saved
    keys: dict[str, str] = {}
    async with unit_of_work() as session:
        for role in ROLES:
            _, token = await create_api_key(session, role, f"demo-{role}", "demo-web" if role == "ingest" else None)
            keys[role] = token
    if keys_file:
        keys_file.parent.mkdir(parents=True, exist_ok=True)
        keys_file.unlink(missing_ok=True)
        fd = os.open(keys_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(keys, fh)
    return keys


async def load_demo(count: int = 40, keys_file: Path | None = None) -> dict[str, str]:
    """Create the demo customers once (skipped if any exist) and return a key per role."""
    async with unit_of_work() as session:
        existing = (await session.execute(select(func.count()).select_from(Profile))).scalar_one()
        if not existing:
            ctx = VaultContext.from_settings()
            web = Principal(key_id="demo", role="ingest", name="demo-web", source="demo-web")
            for i, traits in enumerate(demo_customers(count)):
                written = await write_profile(session, ctx, SYSTEM, traits)
                await ingest_messages(session, ctx, web, demo_events(i, str(traits["email"]), written.id))
    keys = await _ensure_keys(keys_file)
    await load_marketing_demo(keys, customers=count)  # segments, destinations, runs, journeys
    await load_compliance_demo(keys, demo_customers(count))  # requests in every state, consents
    async with unit_of_work() as session:  # so the ledger verifies from the first minute
        await make_tree_head(session)
    return keys
