"""The scheduled refresh of every computed trait (``traits.refresh``, exactly once across processes)."""

from __future__ import annotations

from typing import Any

from app.db import unit_of_work
from app.traits.service import refresh_traits


async def refresh_all_traits() -> dict[str, Any]:
    """Recompute every trait for everyone in one transaction (readers see the old values
    until it commits)."""
    async with unit_of_work() as session:
        return dict(await refresh_traits(session))
