"""Merging two profiles into one person, and undoing it.

A merge hands every row of the younger profile (and of what was folded into it) to the
older one through the personal-data inventory: each holder moves its rows' ``profile_id``
and keeps ``origin_id``, so nothing is re-encrypted or dropped and the merged-away key
stays. An unmerge moves the rows of the merged-away profile's origins back.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.access.service import Principal
from app.db import table_of
from app.errors import InvalidField, NotFound
from app.identity.models import ProfileMerge
from app.inventory import holders
from app.ledger.service import record
from app.profiles.service import VaultContext, fold_profile, lock_profiles, person_of, resolve_merged, unfold_profile


async def merge_profiles(
    session: AsyncSession, ctx: VaultContext, winner: str, loser: str, via: str, rule: str, source: str | None
) -> None:
    """Fold ``loser`` into ``winner``: every holder hands the loser's rows over, plain traits
    fold by precedence, and the merge is recorded (with what it displaced) for an unmerge."""
    person = await person_of(session, loser)
    for holder in holders():
        await holder.rekey(session, loser, winner, person.origins)
    displaced = await fold_profile(session, winner, loser, ctx.policies.identity.trait_authority)
    await session.execute(
        insert(table_of(ProfileMerge)),
        [
            {
                "id": str(uuid.uuid4()),
                "profile_id": winner,
                "merged_id": loser,
                "via_kind": via,
                "rule": rule,
                "source": source,
                "merged_at": datetime.now(UTC),
                "displaced": displaced,
                "unmerged_at": None,
            }
        ],
    )


async def active_merges(session: AsyncSession) -> list[ProfileMerge]:
    q = select(ProfileMerge).where(col(ProfileMerge.unmerged_at).is_(None)).order_by(col(ProfileMerge.merged_at))
    return list((await session.execute(q)).scalars())


def _descendants(edges: list[ProfileMerge], top: str) -> list[ProfileMerge]:
    """The merges below ``top`` in the merge tree, transitively, oldest first."""
    children: dict[str, list[ProfileMerge]] = defaultdict(list)
    for e in edges:
        children[e.profile_id].append(e)
    out, todo = [], [top]
    while todo:
        for e in children.get(todo.pop(), []):
            out.append(e)
            todo.append(e.merged_id)
    return sorted(out, key=lambda e: e.merged_at)


async def merge_history(session: AsyncSession, root: str) -> list[ProfileMerge]:
    """Every merge that folded a profile into this person, transitively (C→B→A lists both)."""
    return _descendants(await active_merges(session), root)


async def unmerge_profile(session: AsyncSession, principal: Principal, merged_id: str) -> tuple[str, str]:
    """Restore a merged-away profile with exactly its own rows; returns (restored, survivor)."""
    edges = await active_merges(session)
    merge = next((e for e in edges if e.merged_id == merged_id), None)
    if merge is None:
        raise NotFound("this profile was not merged into another", field="profile_id")
    root = await resolve_merged(session, merged_id)
    if root == merged_id:
        raise InvalidField("this profile is not merged", field="profile_id")
    await lock_profiles(session, [root, merged_id])
    origins = [merged_id, *(e.merged_id for e in _descendants(edges, merged_id))]
    for holder in holders():
        await holder.rekey(session, root, merged_id, origins)
    await unfold_profile(session, root, merged_id, origins, merge.displaced)
    merge.unmerged_at = datetime.now(UTC)
    await session.flush()
    await record(
        session,
        principal,
        "identity.unmerge",
        subject_id=merged_id,
        purpose="essential.service",
        legal_basis="contract",
        details={"from_profile": root, "restored_profiles": len(origins), "via": merge.via_kind},
    )
    return merged_id, root
