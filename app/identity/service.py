"""Identity resolution: identifiers (blind indexes) → one master profile per person.

``Resolver`` works on a whole batch: one query finds every profile the batch's
identifiers point at, then events are resolved in order in memory, creating profiles,
linking new identifiers within their caps and merging profiles that turn out to be one
person. Merges and refusals are written to the ledger with the rule that decided.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.access.service import Principal
from app.consent.policy import IdentityPolicy
from app.db import table_of
from app.identity.models import Identifier, ProfileMerge, identifier_aad_name
from app.identity.precedence import recorded_at, takes_precedence
from app.ingest.models import ConsentSignal, Event
from app.ledger.service import record
from app.profiles.models import Profile, ProfileField
from app.texts.rekey import move_texts
from app.vault.cipher import open_field, seal_field
from app.vault.keyring import MasterKeyring
from app.vault.models import SubjectKey
from app.vault.service import DataKey, new_subject_key, shred_subject_key, subject_keys

Key = tuple[str, str]
"""(kind, digest)"""


@dataclass(frozen=True)
class Ident:
    """One normalised identifier of an event: its kind, value and blind index."""

    kind: str
    value: str
    digest: str

    @property
    def key(self) -> Key:
        return (self.kind, self.digest)


@dataclass
class Resolution:
    profile_id: str
    created: bool


@dataclass
class Resolver:
    session: AsyncSession
    ring: MasterKeyring
    policy: IdentityPolicy
    principal: Principal
    source: str
    purpose: str = "essential.service"
    legal_basis: str = "contract"
    owners: dict[Key, set[str]] = field(default_factory=lambda: defaultdict(set))
    held: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    """profile id → kind → digests it holds (for caps)."""
    created_at: dict[str, datetime] = field(default_factory=dict)
    keys: dict[str, DataKey] = field(default_factory=dict)
    redirect: dict[str, str] = field(default_factory=dict)
    new_profiles: list[str] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    pending_profiles: list[dict[str, Any]] = field(default_factory=list)
    pending_keys: list[dict[str, Any]] = field(default_factory=list)
    blocked: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    merges: int = 0

    async def lock(self, idents: list[Ident]) -> None:
        """Serialise concurrent batches that share identifiers (PostgreSQL advisory locks,
        taken in sorted order so two batches never deadlock). SQLite serialises writers anyway."""
        bind = self.session.bind
        if bind is None or bind.dialect.name != "postgresql" or not idents:
            return
        ids = sorted({int(i.digest[:15], 16) for i in idents})
        await self.session.execute(
            text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:ids AS bigint[])) AS k"), {"ids": ids}
        )

    async def preload(self, idents: list[Ident]) -> None:
        """Load who owns these identifiers (call ``lock`` first), what those profiles hold, and their keys."""
        keys = sorted({i.key for i in idents})
        pids: set[str] = set()
        for start in range(0, len(keys), 500):
            q = select(col(Identifier.profile_id)).where(
                tuple_(col(Identifier.kind), col(Identifier.digest)).in_(keys[start : start + 500])
            )
            pids.update((await self.session.execute(q)).scalars())
        await self._load_profiles(pids)

    async def _load_profiles(self, pids: set[str]) -> None:
        pids = {p for p in pids if p not in self.held}
        if not pids:
            return
        q = select(Identifier.profile_id, Identifier.kind, Identifier.digest).where(
            col(Identifier.profile_id).in_(list(pids))
        )
        for pid, kind, digest in (await self.session.execute(q)).all():
            self.held.setdefault(pid, defaultdict(set))[kind].add(digest)
            self.owners[(kind, digest)].add(pid)
        rows = await self.session.execute(select(Profile.id, Profile.created_at).where(col(Profile.id).in_(list(pids))))
        for pid, created in rows.all():
            self.created_at[pid] = created
            self.held.setdefault(pid, defaultdict(set))
        self.keys.update(await subject_keys(self.session, self.ring, list(pids)))

    def final(self, pid: str) -> str:
        while pid in self.redirect:
            pid = self.redirect[pid]
        return pid

    def _owner(self, key: Key) -> str | None:
        owners = {self.final(p) for p in self.owners.get(key, ())}
        return next(iter(owners)) if len(owners) == 1 else None  # shared identifiers resolve nobody

    def _conflict(self, kept: list[Ident]) -> str | None:
        """Why these identifiers cannot all belong to one profile (None: they can).

        Joining means: every profile they point at, merged, plus the new identifiers;
        every kind must stay within its cap, and a kind that joins two profiles must
        be allowed to merge.
        """
        profiles: list[str] = []
        joined: dict[str, set[str]] = defaultdict(set)
        for i in kept:
            owner = self._owner(i.key)
            if owner is None:
                joined[i.kind].add(i.digest)
            elif owner not in profiles:
                if profiles and not self.policy.rule(i.kind).merge:
                    return f"merge:{i.kind}=false"
                profiles.append(owner)
                for kind, digests in self.held[owner].items():
                    joined[kind] |= digests
        external = sum(len(d) for k, d in joined.items() if k.startswith("external:"))
        for kind, digests in joined.items():
            cap = self.policy.rule(kind).cap
            if len(digests) > cap or (kind.startswith("external:") and external > cap):
                return f"cap:{kind.split(':')[0]}={cap}"
        return None

    async def resolve(self, idents: list[Ident], at: datetime) -> Resolution:
        """The profile these identifiers belong to, creating, linking or merging as the rules allow.

        Identifiers are taken in priority order; one that would push the joined profile
        over a cap (or join profiles through a kind that may not merge) is dropped from
        this event, and the ledger records which rule refused it.
        """
        ordered = sorted(set(idents), key=lambda i: self.policy.rule(i.kind).priority)
        kept: list[Ident] = []
        for i in ordered:
            if self.owners.get(i.key) and self._owner(i.key) is None:
                continue  # already shared by several profiles: identifies nobody
            reason = self._conflict([*kept, i])
            if reason is None:
                kept.append(i)
                continue
            other = self._owner(i.key)
            action = "identity.merge_blocked" if other is not None else "identity.identifier_dropped"
            details = {"via": i.kind, "rule": reason, "source": self.source}
            if other is not None:
                details["other_profile"] = other
            self.blocked.append((action, details))
        owners: list[str] = []
        for i in kept:
            owner = self._owner(i.key)
            if owner is not None and owner not in owners:
                owners.append(owner)
        created = not owners
        pid = await self._create(at) if created else owners[0]
        for other, via in [(o, next(i.kind for i in kept if self._owner(i.key) == o)) for o in owners[1:]]:
            pid = await self.merge(self.final(pid), self.final(other), via, f"shared {via}")
        pid = self.final(pid)
        for action, details in self.blocked:
            await record(
                self.session,
                self.principal,
                action,
                subject_id=pid,
                purpose=self.purpose,
                legal_basis=self.legal_basis,
                details=details,
            )
        self.blocked = []
        for i in kept:
            if not self.owners.get(i.key):
                self._link(pid, i, at)
        return Resolution(pid, created)

    async def _create(self, at: datetime) -> str:
        pid = str(uuid.uuid4())
        now = datetime.now(UTC)
        self.pending_profiles.append(
            {"id": pid, "created_at": now, "updated_at": now, "traits": {}, "trait_sources": {}, "merged_into": None}
        )
        self.keys[pid], key_row = new_subject_key(self.ring, pid)
        self.pending_keys.append(key_row)
        self.held[pid] = defaultdict(set)
        self.created_at[pid] = now
        self.new_profiles.append(pid)
        return pid

    def _link(self, pid: str, i: Ident, at: datetime) -> None:
        dk = self.keys[pid]
        self.pending.append(
            {
                "profile_id": pid,
                "kind": i.kind,
                "digest": i.digest,
                "first_seen": at,
                "source": self.source,
                "key_version": dk.version,
                "sealed": seal_field(dk.key, pid, identifier_aad_name(i.kind), dk.version, i.value),
            }
        )
        self.held[pid][i.kind].add(i.digest)
        self.owners[i.key].add(pid)

    async def flush(self) -> None:
        """Write new profiles, their keys and pending identifier links (bulk inserts)."""
        for model, rows in (
            (Profile, self.pending_profiles),
            (SubjectKey, self.pending_keys),
            (Identifier, self.pending),
        ):
            if rows:
                await self.session.execute(insert(table_of(model)), rows)
        self.pending_profiles, self.pending_keys, self.pending = [], [], []

    async def merge(self, a: str, b: str, via: str, rule: str) -> str:
        """Fold the younger of two profiles into the older; returns the survivor."""
        await self.flush()
        winner, loser = (
            (a, b)
            if self.created_at.get(a, datetime.max.replace(tzinfo=UTC))
            <= self.created_at.get(b, datetime.max.replace(tzinfo=UTC))
            else (b, a)
        )
        await merge_profiles(self.session, self.ring, self.policy, winner, loser, self.keys[winner], self.keys[loser])
        for kind, digests in self.held.pop(loser).items():
            for d in digests:
                self.held[winner][kind].add(d)
                self.owners[(kind, d)].discard(loser)
                self.owners[(kind, d)].add(winner)
        self.redirect[loser] = winner
        self.keys.pop(loser, None)
        self.merges += 1
        self.session.add(
            ProfileMerge(
                id=str(uuid.uuid4()),
                profile_id=winner,
                merged_id=loser,
                via_kind=via,
                rule=rule,
                source=self.source,
                merged_at=datetime.now(UTC),
            )
        )
        await record(
            self.session,
            self.principal,
            "identity.merge",
            subject_id=winner,
            purpose=self.purpose,
            legal_basis=self.legal_basis,
            details={"merged_profile": loser, "via": via, "rule": rule, "source": self.source},
        )
        return winner


async def merge_profiles(
    session: AsyncSession,
    ring: MasterKeyring,
    policy: IdentityPolicy,
    winner: str,
    loser: str,
    wkey: DataKey,
    lkey: DataKey,
) -> None:
    """Move everything of ``loser`` to ``winner``, re-encrypting under the winner's key,
    then shred the loser's key and leave its row as an alias (``merged_into``)."""
    w_ids = {
        (r.kind, r.digest)
        for r in (await session.execute(select(Identifier).where(col(Identifier.profile_id) == winner))).scalars()
    }
    for row in list((await session.execute(select(Identifier).where(col(Identifier.profile_id) == loser))).scalars()):
        if (row.kind, row.digest) not in w_ids:
            value = (
                open_field(lkey.key, loser, identifier_aad_name(row.kind), row.key_version or 1, row.sealed)
                if row.sealed
                else None
            )
            session.add(
                Identifier(
                    profile_id=winner,
                    kind=row.kind,
                    digest=row.digest,
                    first_seen=row.first_seen,
                    source=row.source,
                    key_version=wkey.version,
                    sealed=seal_field(wkey.key, winner, identifier_aad_name(row.kind), wkey.version, value)
                    if value is not None
                    else None,
                )
            )
    await session.execute(
        delete(Identifier).where(col(Identifier.profile_id) == loser).execution_options(synchronize_session=False)
    )

    await move_texts(session, lkey, wkey)
    for ev in (await session.execute(select(Event).where(col(Event.profile_id) == loser))).scalars():
        payload = open_field(lkey.key, loser, "event", ev.key_version, ev.sealed)
        ev.sealed = seal_field(wkey.key, winner, "event", wkey.version, payload)
        ev.profile_id, ev.key_version = winner, wkey.version

    wfields = {
        f.name: f
        for f in (await session.execute(select(ProfileField).where(col(ProfileField.profile_id) == winner))).scalars()
    }
    for f in list((await session.execute(select(ProfileField).where(col(ProfileField.profile_id) == loser))).scalars()):
        value = open_field(lkey.key, loser, f.name, f.key_version, f.ciphertext)
        old = wfields.get(f.name)
        at = f.observed_at or f.updated_at
        if old is None or takes_precedence(
            f.name, f.source, at, old.source, old.observed_at or old.updated_at, policy.trait_authority
        ):
            if old is not None:
                await session.delete(old)
                await session.flush()
            session.add(
                ProfileField(
                    profile_id=winner,
                    name=f.name,
                    category=f.category,
                    key_version=wkey.version,
                    ciphertext=seal_field(wkey.key, winner, f.name, wkey.version, value),
                    updated_at=f.updated_at,
                    source=f.source,
                    observed_at=f.observed_at,
                )
            )
        await session.delete(f)

    wp, lp = await session.get(Profile, winner), await session.get(Profile, loser)
    assert wp is not None and lp is not None
    traits, sources = dict(wp.traits), dict(wp.trait_sources)
    for name, value in lp.traits.items():
        ls, ws = lp.trait_sources.get(name, {}), sources.get(name)
        l_at = recorded_at(ls) or lp.updated_at
        w_at = recorded_at(ws)
        if name not in traits or takes_precedence(
            name, ls.get("source"), l_at, (ws or {}).get("source"), w_at, policy.trait_authority
        ):
            traits[name] = value
            if ls:
                sources[name] = ls
    wp.traits, wp.trait_sources, wp.updated_at = traits, sources, datetime.now(UTC)
    lp.traits, lp.trait_sources, lp.merged_into = {}, {}, winner
    await session.execute(
        update(ConsentSignal)
        .where(col(ConsentSignal.profile_id) == loser)
        .values(profile_id=winner)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(Profile)
        .where(col(Profile.merged_into) == loser)
        .values(merged_into=winner)
        .execution_options(synchronize_session=False)
    )
    await session.flush()
    await shred_subject_key(session, loser)
