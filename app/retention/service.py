"""Retention: ``policies/retention.yaml`` applied through the personal-data inventory.

One run (``run_retention``), in one transaction:

1. **Inactive people.** A surviving profile is inactive when nothing shows activity newer
   than ``inactive_profile_days``: the newest of what every holder reports through
   ``last_seen`` (events, texts, the profile's creation) and of what earlier runs remembered
   in ``retention_last_seen`` before deleting it. Inactive profiles are queued for erasure
   in ``erasure_queue`` (once: a queued profile is never queued again); the erasure itself
   is separate work.
2. **Remember what expires.** Each holder's ``expiring_activity`` (the newest activity
   among the rows about to go, per person) is kept in ``retention_last_seen``. Events are
   kept for less time (``user.behavior``) than a person counts as active, so without it a
   person whose last events just expired would look inactive since their profile's creation.
3. **Expire.** Every holder's ``expire`` removes its rows older than their data category's
   cutoff (``now`` minus the category's days; a category covers its sub-categories).

A dry run does steps 1 and 3 counting only, and changes nothing. Either way one ledger
entry (``retention.run``) records the counts by table and by category, the number queued,
the cutoffs, the policy version and the dry-run flag.

Purpose retention periods (``purposes:``) apply to the rows that carry their purpose (who an
activation run sent, by the run's purpose): holders get them among the cutoffs, under the
purpose's name. Other rows do not carry the purpose they were collected for, so the category
periods are the ones enforced for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.access.service import SYSTEM
from app.consent.rules import load_rules
from app.inventory import holders
from app.ledger.service import record
from app.profiles.holder import surviving_profiles
from app.retention.models import ErasureQueue, ExpiredActivity
from app.settings import get_settings

PAGE = 1000
INACTIVE = "inactive"


@dataclass
class RetentionReport:
    """What one run did (or, dry, would do)."""

    now: datetime
    dry_run: bool
    policy_version: str
    cutoffs: dict[str, datetime]
    inactive_cutoff: datetime | None
    removed: dict[str, int] = field(default_factory=dict)
    """Table → rows removed (or that would be)."""
    by_category: dict[str, int] = field(default_factory=dict)
    """Data category → rows removed (or that would be)."""
    queued: list[str] = field(default_factory=list)
    """Profiles queued for erasure by this run (or that would be)."""

    def details(self) -> dict[str, Any]:
        """The ledger entry's details: counts and pseudonymous ids only."""
        return {
            "dry_run": self.dry_run,
            "policy_version": self.policy_version,
            "cutoffs": {c: t.isoformat() for c, t in sorted(self.cutoffs.items())},
            "inactive_cutoff": self.inactive_cutoff.isoformat() if self.inactive_cutoff else None,
            "removed": dict(sorted(self.removed.items())),
            "by_category": dict(sorted(self.by_category.items())),
            "queued_for_erasure": len(self.queued),
        }

    def lines(self) -> list[str]:
        """The report as the CLI prints it."""
        verb = "would remove" if self.dry_run else "removed"
        out = [
            f"retention {'dry run' if self.dry_run else 'run'} at {self.now.isoformat()}"
            f" (policy version {self.policy_version})"
        ]
        for category, cutoff in sorted(self.cutoffs.items()):
            out.append(f"{category:<20} older than {cutoff.isoformat()}: {verb} {self.by_category.get(category, 0)}")
        for table, n in sorted(self.removed.items()):
            out.append(f"  {table:<18} {n}")
        queued = "would queue" if self.dry_run else "queued"
        out.append(f"inactive profiles {queued} for erasure: {len(self.queued)}")
        return out


def cutoffs_of(retention: Mapping[str, Any], now: datetime) -> dict[str, datetime]:
    """Data category → the oldest time kept, from the ``categories`` days of retention.yaml."""
    return {str(c): now - timedelta(days=int(days)) for c, days in (retention.get("categories") or {}).items()}


def purpose_cutoffs(retention: Mapping[str, Any], now: datetime) -> dict[str, datetime]:
    """Purpose → the oldest time kept, from the ``purposes`` days of retention.yaml."""
    return {str(p): now - timedelta(days=int(days)) for p, days in (retention.get("purposes") or {}).items()}


async def run_retention(
    session: AsyncSession, now: datetime, dry_run: bool, policy_dir: Path | None = None
) -> RetentionReport:
    """Apply retention as of ``now`` in the caller's transaction; see the module docstring."""
    rules = load_rules(policy_dir or get_settings().policy_dir)
    days = rules.retention.get("inactive_profile_days")
    report = RetentionReport(
        now,
        dry_run,
        rules.version,
        cutoffs_of(rules.retention, now),
        now - timedelta(days=int(days)) if days else None,
    )
    every = holders()
    if report.inactive_cutoff is not None:
        report.queued = await _queue_inactive(session, report.inactive_cutoff, now, dry_run)
    if not dry_run:
        await _remember(session, report.cutoffs)
    limits = {**purpose_cutoffs(rules.retention, now), **report.cutoffs}
    for h in every:
        for table, n in (await h.expire(session, limits, dry_run)).items():
            report.removed[table] = report.removed.get(table, 0) + n
            category = h.expiry_category(table) or "?"
            report.by_category[category] = report.by_category.get(category, 0) + n
    await record(session, SYSTEM, "retention.run", details=report.details())
    return report


async def _queue_inactive(session: AsyncSession, cutoff: datetime, now: datetime, dry_run: bool) -> list[str]:
    every = holders()
    queued: list[str] = []
    after = ""
    while page := await surviving_profiles(session, cutoff, after, PAGE):
        after = page[-1]
        already = set(
            (await session.execute(select(col(ErasureQueue.profile_id)).where(col(ErasureQueue.profile_id).in_(page))))
            .scalars()
            .all()
        )
        todo = [p for p in page if p not in already]
        if not todo:
            continue
        seen: dict[str, datetime] = {}
        q = select(col(ExpiredActivity.profile_id), col(ExpiredActivity.last_seen_at)).where(
            col(ExpiredActivity.profile_id).in_(todo)
        )
        found: list[Mapping[str, datetime]] = [{r[0]: r[1] for r in (await session.execute(q)).all()}]
        found += [await h.last_seen(session, todo) for h in every]
        for one in found:
            for who, at in one.items():
                if who not in seen or at > seen[who]:
                    seen[who] = at
        inactive = [p for p in todo if p not in seen or seen[p] < cutoff]
        if inactive and not dry_run:
            session.add_all(ErasureQueue(profile_id=p, queued_at=now, reason=INACTIVE) for p in inactive)
            await session.flush()
        queued += inactive
    return queued


async def _remember(session: AsyncSession, cutoffs: Mapping[str, datetime]) -> None:
    """Keep each person's newest activity among the rows about to expire."""
    newest: dict[str, datetime] = {}
    for h in holders():
        for who, at in (await h.expiring_activity(session, cutoffs)).items():
            if who not in newest or at > newest[who]:
                newest[who] = at
    people = sorted(newest)
    for i in range(0, len(people), PAGE):
        chunk = people[i : i + PAGE]
        rows = {
            r.profile_id: r
            for r in (
                await session.execute(select(ExpiredActivity).where(col(ExpiredActivity.profile_id).in_(chunk)))
            ).scalars()
        }
        for who in chunk:
            row = rows.get(who)
            if row is None:
                session.add(ExpiredActivity(profile_id=who, last_seen_at=newest[who]))
            elif newest[who] > row.last_seen_at:
                row.last_seen_at = newest[who]
    await session.flush()
