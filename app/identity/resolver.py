"""Identity resolution: identifiers (blind indexes) → one surviving profile per person.

``Resolver`` works on a whole batch: ``prepare`` locks and loads every profile the batch's
identifiers point at, then events are resolved in order in memory, creating profiles,
linking new identifiers within their caps and merging profiles that turn out to be one
person. What a source may do depends on its trust (``policies/identity.yaml``):

- every source: a device-level id (``stitch_only``) never joins two known profiles, and
  never joins a profile holding another user id (a shared device);
- ``client`` sources (public write keys): an identifier that already belongs to another
  profile is never linked or merged; it is kept as an unverified claim and recorded.

Merges, refusals and claims go to the ledger with the rule that decided.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.access.service import Principal
from app.db import insert_rows, table_of
from app.identity.merges import merge_profiles
from app.identity.models import Identifier, IdentityClaim, identifier_aad_name
from app.identity.service import Ident, Key, holders_of, new_id
from app.ledger.service import record_each
from app.profiles.service import VaultContext, create_profiles, lock_profile_rows, new_profile_row
from app.vault.cipher import seal_field
from app.vault.service import DataKey, new_subject_key, store_subject_keys, subject_keys

LOOKUP_CHUNK = 500
SQLITE_LOOKUP_CHUNK = 10_000
"""On SQLite the identifiers arrive as one JSON text, whatever their number: a group's
owners are found in a few statements (each probe is the same index search)."""
LOCK_SPACE = 0x1D3
"""The advisory locks' first key: identity resolution's own space."""
LOCK_BUCKETS = 512
"""Digests are locked by bucket (digest mod this): a group of thousands of events takes at
most this many advisory locks. One lock per digest overflowed PostgreSQL's shared lock table
(``max_locks_per_transaction`` 64 × connections): a 5,000-event group failed with "out of
shared memory" and was then processed batch by batch. Two digests in one bucket only
serialise their batches (a false conflict), never admit two at once."""


def _origin(row: dict[str, Any]) -> str:
    return str(row["origin_id"])


@dataclass
class Resolution:
    profile_id: str
    created: bool


@dataclass
class Resolver:
    session: AsyncSession
    ctx: VaultContext
    principal: Principal
    source: str
    purpose: str = "essential.service"
    legal_basis: str = "contract"
    owners: dict[Key, set[str]] = field(default_factory=lambda: defaultdict(set))
    held: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    """profile id → kind → digests it holds (for caps and the trust rules)."""
    created_at: dict[str, datetime] = field(default_factory=dict)
    keys: dict[str, DataKey] = field(default_factory=dict)
    redirect: dict[str, str] = field(default_factory=dict)
    new_profiles: list[str] = field(default_factory=list)
    pending_links: list[dict[str, Any]] = field(default_factory=list)
    pending_claims: list[dict[str, Any]] = field(default_factory=list)
    pending_profiles: list[dict[str, Any]] = field(default_factory=list)
    pending_keys: list[dict[str, Any]] = field(default_factory=list)
    notes: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    """Ledger entries to write: (action, profile id, details)."""
    merges: int = 0
    capped: dict[str, str | None] = field(default_factory=dict)
    """profile id → the cap its identifiers already exceed (None: none), until it changes."""
    _ranks: dict[tuple[str, bool], tuple[int, int]] = field(default_factory=dict)
    _least_cap: int | None = None

    @property
    def policy(self) -> Any:
        return self.ctx.policies.identity

    # --- locking and loading ------------------------------------------------------------

    async def prepare(self, idents: list[Ident]) -> None:
        """Lock what this batch may touch, then load it.

        On PostgreSQL, advisory locks on the identifiers' digests (sorted; by bucket, see
        ``LOCK_BUCKETS``) serialise batches that introduce the same new identifier; then the
        rows of every profile holding one of them are locked (``FOR UPDATE``) in the statement
        that finds them, again while a locked row turns out merged away (a concurrent merge
        moved its identifiers). On SQLite the batch takes the database's write lock first, so
        nothing it reads can change before it commits.
        """
        keys = sorted({i.key for i in idents})
        sqlite = await self._writer_lock(keys)
        rows = await self._lock_owners(keys)
        for _ in range(20):
            if sqlite or all(r.merged_into is None for r in rows.values()):
                break
            rows = await self._lock_owners(keys)  # a concurrent merge moved identifiers: follow them
        await self._load_profiles({p: r for p, r in rows.items() if r.merged_into is None})

    async def _writer_lock(self, keys: list[Key]) -> bool:
        """Take the database's write lock (SQLite) or the digests' advisory locks (PostgreSQL);
        True on SQLite."""
        bind = self.session.bind
        if bind is not None and bind.dialect.name == "sqlite":
            await self.session.execute(text("UPDATE profile SET id = id WHERE id = ''"))  # by key: no scan
            return True
        if bind is None or not keys:
            return False
        ids = sorted({int(digest[:15], 16) % LOCK_BUCKETS for _kind, digest in keys})
        await self.session.execute(
            text("SELECT pg_advisory_xact_lock(:space, k) FROM unnest(CAST(:ids AS integer[])) AS k"),
            {"space": LOCK_SPACE, "ids": ids},
        )
        return False

    async def _lock_owners(self, keys: list[Key]) -> dict[str, Any]:
        """Lock and return the profile rows holding any of these identifiers (one statement a chunk)."""
        rows: dict[str, Any] = {}
        dialect = self.session.bind.dialect.name if self.session.bind else "sqlite"
        chunk = SQLITE_LOOKUP_CHUNK if dialect == "sqlite" else LOOKUP_CHUNK
        for start in range(0, len(keys), chunk):
            owners = holders_of(dialect, keys[start : start + chunk])
            rows.update(await lock_profile_rows(self.session, owners))
        return rows

    async def _load_profiles(self, rows: dict[str, Any]) -> None:
        """Load what the locked profiles (``rows``: id → locked profile row) hold, and their keys."""
        pids = [p for p in rows if p not in self.held]
        if not pids:
            return
        q = select(Identifier.profile_id, Identifier.kind, Identifier.digest).where(
            col(Identifier.profile_id).in_(pids)
        )
        for pid, kind, digest in (await self.session.execute(q)).all():
            self.held.setdefault(pid, defaultdict(set))[kind].add(digest)
            self.owners[(kind, digest)].add(pid)
        for pid in pids:
            self.created_at[pid] = rows[pid].created_at
            self.held.setdefault(pid, defaultdict(set))
        self.keys.update(await subject_keys(self.session, self.ctx.keys.master, pids))

    # --- in-memory view -----------------------------------------------------------------

    def final(self, pid: str) -> str:
        while pid in self.redirect:
            pid = self.redirect[pid]
        return pid

    def _owner(self, key: Key) -> str | None:
        owners = {self.final(p) for p in self.owners.get(key, ())}
        return next(iter(owners)) if len(owners) == 1 else None  # shared identifiers resolve nobody

    def _known(self, pid: str) -> bool:
        """Does the profile hold anything but device-level ids?"""
        return any(d and not self.policy.rule(k).stitch_only for k, d in self.held.get(pid, {}).items())

    def _profiles_of(self, kept: list[Ident]) -> list[str]:
        out: list[str] = []
        for i in kept:
            owner = self._owner(i.key)
            if owner is not None and owner not in out:
                out.append(owner)
        return out

    # --- rules --------------------------------------------------------------------------

    def _caps(self, kept: list[Ident]) -> str | None:
        """Why these identifiers cannot all belong to one profile by the caps (None: they can)."""
        joined: dict[str, set[str]] = defaultdict(set)
        profiles: list[str] = []
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
        return self._over_caps(joined)

    def _shared_device(self, kept: list[Ident], owner: str) -> bool:
        """Would a device-level id owned by ``owner`` join two different people?"""
        own_users = self.held.get(owner, {}).get("user_id", set())
        users = {i.digest for i in kept if i.kind == "user_id"}
        if own_users and users and not users <= own_users:
            return True
        others = [p for p in self._profiles_of(kept) if p != owner]
        return bool(others) and self._known(owner) and any(self._known(p) for p in others)

    def _refusal(self, kept: list[Ident], i: Ident, trusted: bool) -> tuple[str, str] | None:
        """(ledger action, rule) if ``i`` may not join the identifiers kept so far."""
        owner = self._owner(i.key)
        profiles = self._profiles_of(kept)
        if owner is not None and owner not in profiles:
            if self.policy.rule(i.kind).stitch_only:
                if self._shared_device(kept, owner):
                    return ("identity.merge_blocked", "shared_device")
            elif not trusted and (profiles or i.kind != "user_id"):
                return ("identity.claim_unverified", "client_trust")
        reason = self._caps([*kept, i])
        if reason is None:
            return None
        return ("identity.merge_blocked" if owner is not None else "identity.identifier_dropped", reason)

    def _order(self, idents: list[Ident], trusted: bool) -> list[Ident]:
        """Priority order; an untrusted source is placed by its user id and device ids first,
        so what it claims beyond them is checked against the profile they lead to."""
        ranks = self._ranks

        def rank(i: Ident) -> tuple[int, int]:
            found = ranks.get((i.kind, trusted))
            if found is None:
                rule = self.policy.rule(i.kind)
                tier = 0 if trusted or i.kind == "user_id" else (1 if rule.stitch_only else 2)
                found = ranks[(i.kind, trusted)] = (tier, rule.priority)
            return found

        return sorted(set(idents), key=rank)

    def _within_caps(self, ordered: list[Ident]) -> bool:
        """Do these distinct identifiers fit in one profile by the caps? Known at once when each
        kind comes once, with at most one external id, and no cap is below one."""
        if self._least_cap is None:
            self._least_cap = min((r.cap for r in self.policy.rules.values()), default=0)
        kinds = {i.kind for i in ordered}
        if self._least_cap >= 1 and len(kinds) == len(ordered) and sum(k.startswith("external:") for k in kinds) <= 1:
            return True
        joined: dict[str, set[str]] = defaultdict(set)
        for i in ordered:
            joined[i.kind].add(i.digest)
        return self._over_caps(joined) is None

    # --- resolving ----------------------------------------------------------------------

    def _sole_owner(self, idents: list[Ident], trusted: bool) -> str | None:
        """Fast path: the profile owning every one of these identifiers alone, when the
        rules would keep them all and change nothing (no link, claim, refusal or merge);
        None when the full rules must decide."""
        pid: str | None = None
        anchored = trusted
        for i in idents:
            found = self.owners.get(i.key)
            if not found or len(found) != 1:
                return None
            owner = self.final(next(iter(found)))
            if pid is None:
                pid = owner
            elif owner != pid:
                return None
            anchored = anchored or i.kind == "user_id" or self.policy.rule(i.kind).stitch_only
        if pid is None or not anchored or self._profile_over_caps(pid) is not None:
            return None  # an untrusted claim, or a profile already over a cap: the full rules
        return pid

    def _profile_over_caps(self, pid: str) -> str | None:
        if pid not in self.capped:
            self.capped[pid] = self._over_caps(self.held[pid])
        return self.capped[pid]

    def _over_caps(self, joined: dict[str, set[str]]) -> str | None:
        """The cap these identifiers by kind exceed (``cap:kind=n``), or None."""
        external = sum(len(d) for k, d in joined.items() if k.startswith("external:"))
        for kind, digests in joined.items():
            cap = self.policy.rule(kind).cap
            if len(digests) > cap or (kind.startswith("external:") and external > cap):
                return f"cap:{kind.split(':')[0]}={cap}"
        return None

    async def resolve(self, idents: list[Ident], at: datetime, trusted: bool) -> Resolution:
        """The profile these identifiers belong to, creating, linking or merging as the rules allow."""
        sole = self._sole_owner(idents, trusted)
        if sole is not None:
            return Resolution(sole, False)
        if not any(self.owners.get(i.key) for i in idents):
            return await self._new_person(idents, at, trusted)
        kept: list[Ident] = []
        refused: list[tuple[Ident, str, str]] = []
        for i in self._order(idents, trusted):
            if self.owners.get(i.key) and self._owner(i.key) is None:
                continue  # already shared by several profiles: identifies nobody
            why = self._refusal(kept, i, trusted)
            if why is None:
                kept.append(i)
            else:
                refused.append((i, *why))
        owners = self._profiles_of(kept)
        created = not owners
        pid = await self._create() if created else owners[0]
        for other in owners[1:]:
            via = next(i.kind for i in kept if self._owner(i.key) == other)
            pid = await self.merge(self.final(pid), self.final(other), via, f"shared {via}")
        pid = self.final(pid)
        for i, action, rule in refused:
            self._refused(pid, i, action, rule, at)
        for i in kept:
            if not self.owners.get(i.key):
                self._link(pid, i, at, trusted)
        return Resolution(pid, created)

    async def _new_person(self, idents: list[Ident], at: datetime, trusted: bool) -> Resolution:
        """Identifiers nobody holds yet: a new profile with those the caps allow (the full
        rules' outcome when no identifier has an owner, without their per-identifier scans)."""
        kept: list[Ident] = []
        refused: list[tuple[Ident, str]] = []
        ordered = self._order(idents, trusted)
        if self._within_caps(ordered):  # the usual case: all within the caps, none refused
            ordered, kept = [], ordered  # (caps only fill up: every prefix is within them too)
        joined: dict[str, set[str]] = defaultdict(set)
        for i in ordered:
            fresh = i.digest not in joined[i.kind]
            joined[i.kind].add(i.digest)
            reason = self._over_caps(joined)
            if reason is None:
                kept.append(i)
                continue
            if fresh:
                joined[i.kind].discard(i.digest)
            refused.append((i, reason))
        pid = await self._create()
        for i, rule in refused:
            self._refused(pid, i, "identity.identifier_dropped", rule, at)
        for i in kept:
            if not self.owners.get(i.key):
                self._link(pid, i, at, trusted)
        return Resolution(pid, True)

    def _refused(self, pid: str, i: Ident, action: str, rule: str, at: datetime) -> None:
        details: dict[str, Any] = {"via": i.kind, "rule": rule, "source": self.source}
        other = self._owner(i.key)
        if other is not None:
            details["other_profile"] = other
        self.notes.append((action, pid, details))
        if action == "identity.claim_unverified":
            dk = self.keys[pid]
            self.pending_claims.append(
                {
                    "id": str(uuid.uuid4()),
                    "profile_id": pid,
                    "origin_id": pid,
                    "kind": i.kind,
                    "digest": i.digest,
                    "source": self.source,
                    "rule": rule,
                    "claimed_at": at,
                    "key_version": dk.version,
                    "sealed": seal_field(dk.key, pid, f"claim:{i.kind}", dk.version, i.value),
                }
            )

    async def _create(self) -> str:
        pid = new_id()
        now = datetime.now(UTC)
        self.pending_profiles.append(new_profile_row(pid, now))
        self.keys[pid], key_row = new_subject_key(self.ctx.keys.master, pid)
        self.pending_keys.append(key_row)
        self.held[pid] = defaultdict(set)
        self.created_at[pid] = now
        self.new_profiles.append(pid)
        return pid

    def _link(self, pid: str, i: Ident, at: datetime, trusted: bool) -> None:
        dk = self.keys[pid]
        self.pending_links.append(
            {
                "origin_id": pid,
                "kind": i.kind,
                "digest": i.digest,
                "profile_id": pid,
                "first_seen": at,
                "source": self.source,
                "trust": "server" if trusted else "client",
                "key_version": dk.version,
                "sealed": seal_field(dk.key, pid, identifier_aad_name(i.kind), dk.version, i.value),
            }
        )
        self.held[pid][i.kind].add(i.digest)
        self.capped.pop(pid, None)
        self.owners[i.key].add(pid)

    async def flush_rows(self) -> None:
        """Write new profiles, their keys, identifier links and claims (bulk inserts)."""
        await create_profiles(self.session, self.pending_profiles)
        await store_subject_keys(self.session, self.pending_keys)
        # a profile's links side by side (in their order): the primary key's pages fill in sequence
        self.pending_links.sort(key=_origin)
        for model, rows in ((Identifier, self.pending_links), (IdentityClaim, self.pending_claims)):
            if rows:
                await insert_rows(self.session, table_of(model), rows)
        self.pending_profiles, self.pending_keys, self.pending_links, self.pending_claims = [], [], [], []

    async def finish(self) -> None:
        """Write everything pending, and the ledger entries for merges, refusals and claims."""
        await self.flush_rows()
        if self.notes:
            by_action: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
            for action, pid, details in self.notes:
                by_action[action].append((self.final(pid), details))
            for action, items in by_action.items():
                await record_each(
                    self.session, self.principal, action, items, purpose=self.purpose, legal_basis=self.legal_basis
                )
        self.notes = []

    async def merge(self, a: str, b: str, via: str, rule: str) -> str:
        """Fold the younger of two profiles into the older; returns the survivor."""
        await self.flush_rows()
        oldest = datetime.max.replace(tzinfo=UTC)
        winner, loser = (a, b) if self.created_at.get(a, oldest) <= self.created_at.get(b, oldest) else (b, a)
        await merge_profiles(self.session, self.ctx, winner, loser, via, rule, self.source)
        for kind, digests in self.held.pop(loser).items():
            for d in digests:
                self.held[winner][kind].add(d)
                self.owners[(kind, d)].discard(loser)
                self.owners[(kind, d)].add(winner)
        self.redirect[loser] = winner
        self.capped.pop(winner, None)
        self.merges += 1
        self.notes.append(
            ("identity.merge", winner, {"merged_profile": loser, "via": via, "rule": rule, "source": self.source})
        )
        return winner
