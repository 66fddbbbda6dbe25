"""Cost of the sealing pass per event: the old ``_prepare`` (exact trait names, top-level
property names and whole strings only) against the new one (names by policy after
normalising, nested properties leaf by leaf, every string through the pattern detectors),
on the same generated events in the same run, alternating rounds so noise hits both.

    .venv/bin/python scripts/bench/seal_pass.py [--events 20000] [--rounds 5]

Two mixes: ``bench`` (the events of scripts/bench/ingest.py: 20% identify, 55% track,
25% page) and ``rich`` (Segment e-commerce events with products, a nested customer and
free-text notes, some with phone numbers in them). Prints µs/event (median of rounds).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.errors import InvalidField
from app.ingest.service import Prepared, _prepare, extract_identifiers
from app.ingest.spec import Message, validate
from app.pii.classify import classify_property
from app.pii.fields import FieldPolicy
from app.profiles.service import VaultContext, normalize_trait


def old_prepare(ctx: VaultContext, msg: Message) -> Prepared:
    """``_prepare`` as it was before the sealing pass (commit ca99e97)."""
    personal: dict[str, tuple[Any, Any]] = {}
    plain: dict[str, Any] = {}
    for name, value in msg.traits.items():
        rule = ctx.policies.traits.get(ctx.policies.aliases.get(name, name))
        if rule is None:
            plain[name] = value
        elif value is not None:
            personal[rule.name] = (rule, normalize_trait(rule, value, ctx.region, f"traits.{name}"))
    link_only: dict[str, tuple[Any, Any]] = {}
    ctx_traits = msg.context.get("traits")
    if msg.type != "identify" and isinstance(ctx_traits, dict):
        for name in ("email", "phone"):
            rule = ctx.policies.traits.get(name)
            if rule is not None and name in ctx_traits:
                with contextlib.suppress(InvalidField):
                    link_only[name] = (rule, normalize_trait(rule, ctx_traits[name], ctx.region, name))
    props_plain: dict[str, Any] = {}
    props_personal: dict[str, Any] = {}
    flagged: list[str] = []
    for name, value in msg.properties.items():
        exempt = name in ctx.policies.properties_not_personal
        if not exempt and ctx.policies.traits.get(ctx.policies.aliases.get(name, name)) is not None:
            props_personal[name] = value
        elif not exempt and classify_property(name, value):
            props_personal[name] = value
            flagged.append(name)
        else:
            props_plain[name] = value
    idents = extract_identifiers(ctx, msg, {**link_only, **personal})
    if msg.type != "identify":
        personal = {}
        plain = plain if msg.type == "group" else {}
    return Prepared(msg, idents, personal, plain, props_plain, props_personal, flagged)


def bench_events(n: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for e in range(n):
        person = rng.randrange(50_000)
        base = {
            "userId": f"user-{person}",
            "anonymousId": f"anon-{person}",
            "messageId": f"m-{e}",
            "context": {"ip": "203.0.113.7", "userAgent": "Mozilla/5.0", "locale": "en-US"},
        }
        r = rng.random()
        if r < 0.2:
            traits = {
                "email": f"user{person}@example.com",
                "phone": f"+1415{person:07d}",
                "firstName": f"First{person}",
                "plan": rng.choice(["free", "pro"]),
            }
            out.append({**base, "type": "identify", "traits": traits})
        elif r < 0.75:
            props = {"sku": f"SKU-{rng.randrange(500)}", "price": 19.99}
            out.append({**base, "type": "track", "event": "Product Viewed", "properties": props})
        else:
            out.append({**base, "type": "page", "name": "Home", "properties": {"path": "/", "title": "Home"}})
    return out


def rich_events(n: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for e in range(n):
        person = rng.randrange(50_000)
        note = rng.choice(
            ["leave at the door", "gift wrap please", f"call me on +1 415 555 {person % 10000:04d}", "", "ring twice"]
        )
        props = {
            "order_id": f"ORD-{e}",
            "revenue": 59.9,
            "currency": "EUR",
            "coupon": "SPRING",
            "products": [
                {"product_id": f"P-{i}", "sku": f"SKU-{i}", "name": "Trail Shoe", "price": 29.95, "quantity": 1}
                for i in range(rng.randrange(1, 4))
            ],
            "customer": {"email": f"c{person}@example.org", "tier": "gold", "name": f"Customer {person}"},
            "note": note,
            "gift": rng.random() < 0.1,
        }
        out.append(
            {
                "userId": f"user-{person}",
                "messageId": f"r-{e}",
                "type": "track",
                "event": "Order Completed",
                "properties": props,
            }
        )
    return out


def run(fn: Any, ctx: VaultContext, msgs: list[Message]) -> float:
    start = time.perf_counter()
    for m in msgs:
        with contextlib.suppress(InvalidField):
            fn(ctx, m)
    return (time.perf_counter() - start) / len(msgs) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    ctx = VaultContext.from_settings()
    fp = FieldPolicy(ctx.policies, ctx.keys.index_key)
    now = datetime.now(UTC)
    rng = random.Random(7)
    mixes = {"bench": bench_events(args.events, rng), "rich": rich_events(args.events, rng)}
    print(f"{'mix':6} {'old µs/event':>13} {'new µs/event':>13} {'extra µs':>9}")
    for mix, raw in mixes.items():
        msgs = [m for i, r in enumerate(raw) if isinstance(m := validate(r, i, now, None, None, True), Message)]

        def new(c: VaultContext, m: Message) -> Prepared:
            return _prepare(c, m, fp)

        run(old_prepare, ctx, msgs[:500])  # warm caches (name decisions, regexes) for both
        run(new, ctx, msgs[:500])
        old_t, new_t = [], []
        for _ in range(args.rounds):
            old_t.append(run(old_prepare, ctx, msgs))
            new_t.append(run(new, ctx, msgs))
        o, n = statistics.median(old_t), statistics.median(new_t)
        print(f"{mix:6} {o:13.1f} {n:13.1f} {n - o:9.1f}")


if __name__ == "__main__":
    main()
