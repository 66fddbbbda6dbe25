"""The one inventory of personal data: every table that holds a person's data, by domain.

Each domain that keeps personal data declares a holder in its own ``holder.py`` and
registers it here. Merge and unmerge (``rekey``), erasure (``forget``), access requests
(``export``), retention (``expire``) and the residue scan (``residue``) iterate over
``holders()``; none of them names another domain's tables.

A person is one surviving profile id (``root``) plus every profile id folded into it by
merges (``origins``). Rows keep two columns: ``profile_id`` (the person they belong to
now) and ``origin_id`` (the profile they were written for, which also names the data key
they are sealed under). A merge moves ``profile_id`` and never re-encrypts or drops a
row, so an unmerge can move each row back to where it came from.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import ColumnElement, Table, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.vault.service import DataKey

PERSON_COLUMNS = frozenset({"profile_id", "origin_id", "subject_id", "merged_id", "merged_into"})
"""Column names that say a table holds rows about a person (the inventory test reads them)."""


@dataclass(frozen=True)
class Person:
    """A surviving profile and every profile id merged into it (itself included)."""

    root: str
    origins: tuple[str, ...]


@runtime_checkable
class PersonalDataHolder(Protocol):
    """What a domain must be able to do with the personal data it holds."""

    @property
    def domain(self) -> str:
        """The domain folder that owns the tables (the one writer of each)."""
        ...

    @property
    def tables(self) -> tuple[Table, ...]:
        """Every table of the domain that holds rows about a person."""
        ...

    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        """Everything held about the person, decrypted with ``keys`` (by origin id)."""
        ...

    async def rekey(self, session: AsyncSession, from_id: str, to_id: str, origins: Collection[str]) -> int:
        """Hand the rows of ``origins`` that belong to ``from_id`` over to ``to_id`` (merge, unmerge)."""
        ...

    async def forget(self, session: AsyncSession, person: Person) -> int:
        """Delete what is held about the person (erasure); returns rows removed."""
        ...

    async def expire(self, session: AsyncSession, cutoffs: Mapping[str, datetime], dry_run: bool) -> dict[str, int]:
        """Retention: delete the rows whose data category has a cutoff in ``cutoffs`` (data
        category → oldest time kept; a category covers its sub-categories) and whose time is
        older than it. Returns, by table, the rows removed (or, with ``dry_run``, that would be)."""
        ...

    def expiry_category(self, table: str) -> str | None:
        """The data category retention expires ``table``'s rows under (None: never expires)."""
        ...

    async def last_seen(self, session: AsyncSession, roots: Collection[str]) -> dict[str, datetime]:
        """For each of these surviving profile ids, the newest activity this domain holds
        (events, texts, the profile's creation); people it knows nothing of are left out."""
        ...

    async def expiring_activity(self, session: AsyncSession, cutoffs: Mapping[str, datetime]) -> dict[str, datetime]:
        """Person → the newest activity among the rows ``expire`` is about to remove, so the
        inactivity check still knows of it once the rows are gone."""
        ...

    async def residue(self, session: AsyncSession, person: Person) -> dict[str, int]:
        """Rows still held about the person, by table (empty after a complete erasure)."""
        ...


def person_columns(table: Table) -> list[str]:
    """The columns of ``table`` that name a person."""
    return [name for name in sorted(PERSON_COLUMNS) if name in table.c]


def person_clause(table: Table, person: Person, columns: Collection[str] = ()) -> ColumnElement[bool]:
    """Rows of ``table`` about the person: any person column naming one of its origins.

    Where a row has both ``profile_id`` and ``origin_id``, ``profile_id`` alone finds it: the
    rows of an origin always belong to whoever holds that origin now (merges and unmerges
    move them together), so ``origin_id`` in the origins implies ``profile_id`` is one of
    them too. The clause then uses the ``profile_id`` index instead of scanning the table
    for an ``OR`` over an unindexed ``origin_id`` (an erasure among 10 million events)."""
    names = list(columns or person_columns(table))
    if "profile_id" in names and "origin_id" in names:
        names.remove("origin_id")
    return or_(*(table.c[name].in_(person.origins) for name in names))


@dataclass(frozen=True)
class TableHolder:
    """A holder whose tables name the person in ``profile_id``/``origin_id`` (and the like):
    moving, forgetting, expiring and counting rows is the same for all of them; a domain
    overrides ``export`` to open what it sealed."""

    domain: str
    tables: tuple[Table, ...]
    expires_by: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Table name → (time column, data category): retention removes rows older than the
    category's cutoff (tables not listed never expire)."""
    seen_by: Mapping[str, str] = field(default_factory=dict)
    """Table name → the time column that shows a person was active (the inactivity check)."""
    keyed_by: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Table name → the columns naming the person, where not the usual ``profile_id``/``origin_id``."""

    def about(self, table: Table, person: Person) -> ColumnElement[bool]:
        return person_clause(table, person, self.keyed_by.get(table.name, ()))

    async def export(self, session: AsyncSession, keys: Mapping[str, DataKey], person: Person) -> dict[str, Any]:
        return {t.name: await self.rows(session, t, person) for t in self.tables}

    async def rows(self, session: AsyncSession, table: Table, person: Person) -> list[dict[str, Any]]:
        """The person's rows of one table as plain mappings (sealed columns still sealed)."""
        q = select(table).where(self.about(table, person))
        return [dict(r._mapping) for r in (await session.execute(q)).all()]

    async def rekey(self, session: AsyncSession, from_id: str, to_id: str, origins: Collection[str]) -> int:
        moved = 0
        for t in self.tables:
            if "origin_id" not in t.c or "profile_id" not in t.c:
                continue  # history rows (who was merged into whom) stay as they were written
            stmt = (
                update(t)
                .where(t.c.profile_id == from_id, t.c.origin_id.in_(list(origins)))
                .values(profile_id=to_id)
                .execution_options(synchronize_session=False)
            )
            moved += _count(await session.execute(stmt))
        return moved

    async def forget(self, session: AsyncSession, person: Person) -> int:
        removed = 0
        for t in self.tables:
            removed += _count(await session.execute(delete(t).where(self.about(t, person))))
        return removed

    def expiry_category(self, table: str) -> str | None:
        spec = self.expires_by.get(table)
        return spec[1] if spec else None

    def expired(self, table: Table, cutoffs: Mapping[str, datetime]) -> ColumnElement[bool] | None:
        """Rows of ``table`` that retention removes now (None: none of them expire)."""
        spec = self.expires_by.get(table.name)
        cutoff = cutoff_for(cutoffs, spec[1]) if spec else None
        if spec is None or cutoff is None:
            return None
        return table.c[spec[0]] < cutoff

    async def expire(self, session: AsyncSession, cutoffs: Mapping[str, datetime], dry_run: bool) -> dict[str, int]:
        out = {}
        for t in self.tables:
            where = self.expired(t, cutoffs)
            if where is not None:
                out[t.name] = await _remove(session, t, where, dry_run)
        return out

    async def last_seen(self, session: AsyncSession, roots: Collection[str]) -> dict[str, datetime]:
        seen: dict[str, datetime] = {}
        for t in self.tables:
            column = self.seen_by.get(t.name)
            if column is None or not roots:
                continue
            key = t.c[self.keyed_by.get(t.name, ("profile_id",))[0]]
            q = select(key, func.max(t.c[column])).where(key.in_(list(roots))).group_by(key)
            for who, at in (await session.execute(q)).all():
                if at is not None and (who not in seen or at > seen[who]):
                    seen[who] = at
        return seen

    async def expiring_activity(self, session: AsyncSession, cutoffs: Mapping[str, datetime]) -> dict[str, datetime]:
        seen: dict[str, datetime] = {}
        for t in self.tables:
            column = self.seen_by.get(t.name)
            where = self.expired(t, cutoffs) if column is not None else None
            if column is None or where is None:
                continue
            key = t.c[self.keyed_by.get(t.name, ("profile_id",))[0]]
            q = select(key, func.max(t.c[column])).where(where).group_by(key)
            for who, at in (await session.execute(q)).all():
                if at is not None and (who not in seen or at > seen[who]):
                    seen[who] = at
        return seen

    async def residue(self, session: AsyncSession, person: Person) -> dict[str, int]:
        out = {}
        for t in self.tables:
            q = select(func.count()).select_from(t).where(self.about(t, person))
            n = int((await session.execute(q)).scalar() or 0)
            if n:
                out[t.name] = n
        return out


def _count(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def _remove(session: AsyncSession, table: Table, where: ColumnElement[bool], dry_run: bool) -> int:
    """Delete the rows of ``table`` matching ``where``, or only count them (``dry_run``)."""
    if dry_run:
        return int((await session.execute(select(func.count()).select_from(table).where(where))).scalar() or 0)
    return _count(await session.execute(delete(table).where(where)))


remove_rows = _remove
"""For holders that override ``expire`` (dependent rows first)."""


def within(category: str, parent: str) -> bool:
    """Whether data category ``category`` is ``parent`` or one of its sub-categories."""
    return category == parent or category.startswith(parent + ".")


def cutoff_for(cutoffs: Mapping[str, datetime], category: str) -> datetime | None:
    """The cutoff of ``category``: its own, else that of its nearest parent category listed."""
    parts = category.split(".")
    for n in range(len(parts), 0, -1):
        found = cutoffs.get(".".join(parts[:n]))
        if found is not None:
            return found
    return None


_registered: dict[str, PersonalDataHolder] = {}
_loaded: list[bool] = []


def register(holder: PersonalDataHolder) -> PersonalDataHolder:
    """Add a domain's holder to the inventory (called once, at import of its ``holder.py``)."""
    _registered[holder.domain] = holder
    return holder


def holders() -> Sequence[PersonalDataHolder]:
    """Every registered holder, in a stable order. Loads each domain's ``holder.py`` on first
    use, so a domain joins the inventory by having one (no list to keep in step). Loading
    does not stop at holders already imported on their own (retention imports one)."""
    if not _loaded:
        import app

        for mod in pkgutil.iter_modules(app.__path__):
            if mod.ispkg:
                try:
                    importlib.import_module(f"app.{mod.name}.holder")
                except ModuleNotFoundError as exc:
                    if exc.name != f"app.{mod.name}.holder":
                        raise
        _loaded.append(True)
    return [_registered[d] for d in sorted(_registered)]
