"""The journeys job (``journeys.fire``, every ``TICK_S`` seconds, exactly once across processes):
timers from new events and birthdays, then every due timer fired. A timer is at most one
tick plus a round's work late."""

from __future__ import annotations

from typing import Any

from app.journeys.service import run_triggers

TICK_S = 10


async def fire_journeys() -> dict[str, Any]:
    return dict(await run_triggers())
