"""The residue scan: is anything of an erased person left, anywhere we can look?

It looks for the person's identifiers in plain text (case-insensitive), their blind
indexes, and their profile ids:

- every holder's ``residue`` (rows still keyed to them, per store);
- on SQLite, the bytes of the database file and its WAL (freed pages included); on
  PostgreSQL, the text of every table's rows;
- the import (upload) folder, activation's file exports, the access-package folder (inside
  the zips) and the log file.

Skipped by design, and said so in the result: the suppression list (keyed hashes under
their own key, matching nothing else), and profile ids in the ledger (pseudonymous
entries kept as the record of processing; they hold no personal data).
"""

from __future__ import annotations

import asyncio
import re
import zipfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import String, Text, cast, func, inspect, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.inventory import Person, holders
from app.schema import METADATA
from app.settings import get_settings
from app.vault.blind_index import blind_index
from app.vault.keyring import key_material

SUPPRESSION_TABLE = "suppressed_identifier"
LEDGER_TABLES = frozenset({"audit_entry", "audit_subject"})
SKIPPED = {
    SUPPRESSION_TABLE: "by design: keyed hashes under the suppression key, which match no identifier, "
    "blind index or id elsewhere (they refuse the person's identifiers if sent again)",
    "ledger (profile ids)": "by design: pseudonymous entries kept as the record of processing and of the "
    "erasure; identifiers and blind indexes are still looked for there",
}
CHUNK = 8 << 20


@dataclass
class ResidueResult:
    """Where something of the person was found (never the values themselves)."""

    findings: list[dict[str, Any]] = field(default_factory=list)
    """``{"where": ..., "what": "identifier" | "blind index" | "profile id", "count": n}``"""
    stores: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per store, rows still keyed to the person (the inventory's ``residue``)."""
    scanned: dict[str, int] = field(default_factory=dict)
    """What was looked at: bytes of files, tables, rows."""
    skipped: dict[str, str] = field(default_factory=lambda: dict(SKIPPED))

    @property
    def clean(self) -> bool:
        return not self.findings and not any(self.stores.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "findings": self.findings,
            "stores": {k: v for k, v in self.stores.items() if v},
            "scanned": self.scanned,
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class Needles:
    """What to look for, as bytes, by what it is."""

    by_kind: dict[str, tuple[bytes, ...]]

    def pattern(self, kinds: Iterable[str]) -> re.Pattern[bytes] | None:
        found = sorted({n for k in kinds for n in self.by_kind.get(k, ()) if n}, key=len, reverse=True)
        return re.compile(b"|".join(re.escape(n) for n in found), re.IGNORECASE) if found else None

    def kind_of(self, hit: bytes) -> str:
        low = hit.lower()
        return next(k for k, ns in self.by_kind.items() if any(n.lower() == low for n in ns))


def needles(identifiers: Iterable[tuple[str, str]], ids: Collection[str]) -> Needles:
    """Plain values, their blind indexes (the current index key) and the profile ids."""
    key = key_material(get_settings()).index_key
    pairs = sorted(set(identifiers))
    return Needles(
        {
            "identifier": tuple(v.encode() for _k, v in pairs if len(v) >= 3),
            "blind index": tuple(blind_index(key, k, v).encode() for k, v in pairs),
            "profile id": tuple(i.encode() for i in sorted(ids)),
        }
    )


def _scan_bytes(chunks: Iterator[bytes], pattern: re.Pattern[bytes], found: Needles) -> dict[str, int]:
    """Count hits by kind over a stream of chunks (overlapping, so none is cut in two)."""
    counts: dict[str, int] = {}
    tail = b""
    overlap = 256
    for chunk in chunks:
        buf = tail + chunk
        for m in pattern.finditer(buf):
            if m.end() > len(tail) or not tail:  # a hit wholly inside the overlap was counted before
                kind = found.kind_of(m.group(0))
                counts[kind] = counts.get(kind, 0) + 1
        tail = buf[-overlap:]
    return counts


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def _zip_chunks(path: Path) -> Iterator[bytes]:
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                yield z.read(name)
    except (OSError, zipfile.BadZipFile):
        yield from _file_chunks(path)


def scan_files(
    paths: Iterable[tuple[str, Path]], found: Needles, kinds: Iterable[str]
) -> tuple[list[dict[str, Any]], int]:
    """Findings in these files (``(label, path)``; zips are looked into) and bytes scanned."""
    pattern = found.pattern(kinds)
    out: list[dict[str, Any]] = []
    scanned = 0
    if pattern is None:
        return out, 0
    for label, path in paths:
        if not path.is_file():
            continue
        scanned += path.stat().st_size
        chunks = _zip_chunks(path) if path.suffix == ".zip" else _file_chunks(path)
        for what, n in sorted(_scan_bytes(chunks, pattern, found).items()):
            out.append({"where": label, "what": what, "count": n})
    return out, scanned


def _folder_files(label: str, folder: Path) -> list[tuple[str, Path]]:
    if not folder.is_dir():
        return []
    return [(f"{label}/{p.relative_to(folder)}", p) for p in sorted(folder.rglob("*")) if p.is_file()]


def places() -> list[tuple[str, Path]]:
    """The files outside the database to look into: uploads, access packages, the log file."""
    s = get_settings()
    out = _folder_files("imports", s.import_dir) + _folder_files("dsr-exports", s.dsr_export_dir)
    out += _folder_files("activation", s.activation_dir)
    if s.log_file:
        log = Path(s.log_file)
        out += [("log", log)] + [(f"log/{p.name}", p) for p in sorted(log.parent.glob(log.name + ".*"))]
    return out


def sqlite_files() -> list[tuple[str, Path]]:
    db = get_settings().database_url.split("///", 1)[-1]
    path = Path(db)
    return [("database file", path), ("database WAL", path.with_name(path.name + "-wal"))]


def _text_columns(table: Any) -> list[Any]:
    """Columns holding text (strings, SQLModel's ``AutoString`` decorator, JSON)."""
    return [
        c
        for c in table.c
        if isinstance(getattr(c.type, "impl", c.type), String | Text) or type(c.type).__name__ == "JSON"
    ]


async def scan_tables(session: AsyncSession, found: Needles) -> tuple[list[dict[str, Any]], int]:
    """Rows whose text holds any needle, per table (PostgreSQL: every column as text; SQLite:
    profile ids only, the file scan covers the rest). Suppression table skipped; ledger
    tables searched for identifiers and blind indexes only."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    existing = set(await session.run_sync(lambda s: inspect(s.connection()).get_table_names()))
    out: list[dict[str, Any]] = []
    tables = 0
    for meta in METADATA:
        for table in meta.sorted_tables:
            if table.name == SUPPRESSION_TABLE or table.name not in existing:
                continue
            kinds = ["identifier", "blind index", "profile id"] if dialect == "postgresql" else ["profile id"]
            if table.name in LEDGER_TABLES:
                kinds.remove("profile id")
            tables += 1
            for what in kinds:
                n = await _count_rows(session, table, found.by_kind.get(what, ()), dialect, what == "identifier")
                if n:
                    out.append({"where": f"table {table.name}", "what": what, "count": n})
    return out, tables


async def _count_rows(session: AsyncSession, table: Any, values: Iterable[bytes], dialect: str, fold: bool) -> int:
    words = [v.decode() for v in values]
    if not words:
        return 0
    if dialect == "postgresql":
        row_text = func.lower(cast(text(f'"{table.name}"'), Text)) if fold else cast(text(f'"{table.name}"'), Text)
        cond = or_(*(row_text.contains(w.lower() if fold else w, autoescape=True) for w in words))
    else:
        cols = _text_columns(table)
        if not cols:
            return 0
        cond = or_(*(cast(c, Text).contains(w, autoescape=True) for c in cols for w in words))
    q = select(func.count()).select_from(table).where(cond)
    return int((await session.execute(q)).scalar() or 0)


async def residue_scan(
    session: AsyncSession, identifiers: Iterable[tuple[str, str]], ids: Collection[str]
) -> ResidueResult:
    """Look for the person's identifiers (``(kind, normalised value)``), their blind indexes
    and their profile ids everywhere; the result names places and counts, never values."""
    found = needles(identifiers, ids)
    result = ResidueResult()
    if ids:
        ordered = sorted(ids)
        person = Person(ordered[0], tuple(ordered))
        result.stores = {h.domain: await h.residue(session, person) for h in holders()}
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    files = places()
    if dialect == "sqlite":
        files = sqlite_files() + files
    hits, size = await asyncio.to_thread(scan_files, files, found, ["identifier", "blind index"])
    result.findings += hits
    result.scanned["bytes"] = size
    rows, tables = await scan_tables(session, found)
    result.findings += rows
    result.scanned["tables"] = tables
    return result
