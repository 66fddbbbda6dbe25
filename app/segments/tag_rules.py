"""Rule and threshold tags (``tags.apply``): each tag of ``policies/tags.yaml`` with a rule is
given to the surviving profiles its segment tree matches and taken from the others.

It lives here, above the tags domain, because a rule is a segment tree: tags stay below
segments so that segments can test tags. Tags are applied in the order the file lists
them, each in its own transaction; a rule that policy no longer allows (a field no longer
non-personal) is skipped and counted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog

from app.access.service import SYSTEM
from app.db import unit_of_work
from app.errors import DomainError
from app.ledger.service import record
from app.segments.service import matching, parse_tree
from app.tags.service import apply_condition
from app.tags.taxonomy import TagSpec, load_taxonomy

log = structlog.get_logger("consentry.tags")


def threshold_tree(spec: TagSpec) -> dict[str, Any] | None:
    """A threshold tag as a segment tree over its computed trait (None: not a threshold tag)."""
    if spec.threshold is None:
        return None
    return {"computed": spec.threshold.trait, **dict(spec.threshold.bounds)}


async def apply_tag(spec: TagSpec, now: datetime) -> dict[str, int]:
    """Apply one tag's rule and threshold in one transaction; returns what changed."""
    out = {"gained": 0, "lost": 0}
    async with unit_of_work() as session:
        for source, tree in (("rule", spec.rule), ("threshold", threshold_tree(spec))):
            if tree is None:
                continue
            parsed = await parse_tree(session, tree, f"{spec.name}.{source}")
            changed = await apply_condition(session, spec, source, matching(parsed.node, now), now)
            out = {k: out[k] + changed[k] for k in out}
        await record(session, SYSTEM, "tag.refresh", details={"tag": spec.name, **out})
    return out


async def apply_tags(now: datetime | None = None) -> dict[str, Any]:
    """Apply every rule and threshold tag (the scheduled job)."""
    now = now or datetime.now(UTC)
    done, failed, gained, lost = 0, 0, 0, 0
    for spec in load_taxonomy().tags.values():
        if spec.rule is None and spec.threshold is None:
            continue
        try:
            changed = await apply_tag(spec, now)
        except DomainError as exc:
            failed += 1
            log.warning("tag_rule_failed", tag=spec.name, field=exc.field)
            continue
        done, gained, lost = done + 1, gained + changed["gained"], lost + changed["lost"]
    return {"applied": done, "failed": failed, "gained": gained, "lost": lost}
