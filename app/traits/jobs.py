"""The scheduled refresh of computed traits (``traits.refresh``, exactly once across processes)."""

from __future__ import annotations

from typing import Any

from app.db import unit_of_work
from app.traits.service import refresh_due


async def refresh_all_traits() -> dict[str, Any]:
    """Bring computed traits up to date in one transaction (readers see the old values until
    it commits): the people whose values time has changed, and everything once a day
    (``refresh_due``)."""
    async with unit_of_work() as session:
        return dict(await refresh_due(session))
