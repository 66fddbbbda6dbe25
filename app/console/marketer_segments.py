"""What the marketer's segment pages ask of the segments and reports services.

Nothing here counts, decides or reads a person itself: counts and samples come from
``app.segments.service.preview`` (the decision engine, masking by role, a ledger entry per
preview), saved segments' overlap from ``app.reports.service.overlap`` and sizes over time
from ``app.segments.service.sizes``. The draft's overlap with a saved segment is the
preview of both trees at once (``all`` of the draft and membership of the saved one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.consent.gate import decide
from app.decisions.service import current_rules
from app.errors import InvalidField, NotFound
from app.reports import service as reports
from app.segments import service as segments

SAMPLE = 5


def usable_purposes(principal: Principal) -> list[str]:
    """Purposes the role may use (what the builder offers to count for), its default first."""
    default = decide(principal, None).purpose
    allowed = [p for p in sorted(current_rules().purposes) if decide(principal, p).allowed]
    return sorted(allowed, key=lambda p: p != default)


def chosen_purpose(principal: Principal, purpose: str | None) -> str:
    """The purpose asked for, when the role may use it (else a 422 naming ``purpose``)."""
    offered = usable_purposes(principal)
    if not purpose:
        return offered[0] if offered else ""
    if purpose not in offered:
        raise InvalidField("is not a purpose this role may use", field="purpose")
    return purpose


async def draft_count(
    session: AsyncSession, principal: Principal, tree: dict[str, Any], purpose: str, sample: int = SAMPLE
) -> dict[str, Any]:
    """The draft's preview: total, usable for the purpose, denied by reason, a masked sample."""
    return await segments.preview(session, principal, tree, chosen_purpose(principal, purpose), sample)


@dataclass(frozen=True)
class Overlap:
    """A saved segment and how many of the draft's people are in it (as the role may see the counts)."""

    segment_id: str
    name: str
    saved: Any
    """The saved segment's members at its last refresh."""
    both: Any
    usable_both: Any


async def draft_overlap(
    session: AsyncSession, principal: Principal, tree: dict[str, Any], segment_id: str, purpose: str
) -> Overlap:
    """How many of the draft's people are in a saved segment (matching now, against its
    members at its last refresh), counted by the segments service."""
    use = chosen_purpose(principal, purpose)
    try:
        seg = await segments.get_segment(session, segment_id)
    except NotFound:
        raise InvalidField("refers to a segment that does not exist", field="overlap") from None
    both = await segments.preview(session, principal, {"all": [tree, {"segment": seg.id}]}, use, 0)
    size = await segments.latest_size(session, seg.id)
    masked = decide(principal, use).reveal != "plain"
    saved = segments.shown(size.members, masked) if size else None
    return Overlap(seg.id, seg.name, saved, both["total"], both["usable"])


async def saved_overlap(
    session: AsyncSession, principal: Principal, a: str, b: str, purpose: str | None
) -> dict[str, Any]:
    """Two saved segments: each, both, either, with usable counts (the reports service)."""
    return await reports.overlap(session, principal, a, b, purpose)


async def size_history(session: AsyncSession, principal: Principal, segment_id: str) -> list[dict[str, Any]]:
    """The segment's sizes at each refresh (newest first), masked for the role."""
    return await segments.sizes(session, principal, segment_id, 200)


async def saved_list(session: AsyncSession, principal: Principal) -> list[dict[str, Any]]:
    """Saved segments with their last sizes as the role may see them."""
    out = []
    for seg in await segments.live_segments(session):
        size = await segments.latest_size(session, seg.id)
        masked = decide(principal, seg.purpose).reveal != "plain"
        out.append(
            {
                "id": seg.id,
                "name": seg.name,
                "purpose": seg.purpose,
                "version": seg.version,
                "refreshed_at": seg.refreshed_at,
                "members": segments.shown(size.members, masked) if size else None,
                "usable": segments.shown(size.usable, masked) if size else None,
            }
        )
    return sorted(out, key=lambda s: str(s["name"]).lower())


async def save(
    session: AsyncSession, principal: Principal, segment_id: str | None, name: str, purpose: str, tree: dict[str, Any]
) -> str:
    """Save the draft as a new segment, or as a new version of ``segment_id``; its id."""
    clean = name.strip()
    if not clean or len(clean) > 200 or not clean.isprintable():
        raise InvalidField("expects a name of 1 to 200 printable characters", field="name")
    use = chosen_purpose(principal, purpose)
    if segment_id:
        seg = await segments.update_segment(session, principal, segment_id, clean, use, tree)
    else:
        seg = await segments.create_segment(session, principal, clean, use, tree)
    return seg.id
