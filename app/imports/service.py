"""Running an import: read rows, map them to Spec messages, and push them through the
same ingestion pipeline as the event API, a chunk per transaction.

Row ids (the mapping's ``id_column``, else the file's SHA-256 and the line number) become
message ids, so re-running an interrupted or finished import stores nothing twice.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from app.access.service import Principal
from app.db import unit_of_work
from app.errors import InvalidField
from app.imports.mapping import Mapping, row_to_message
from app.ingest.service import ingest_messages
from app.profiles.service import VaultContext

FORMATS = ("csv", "ndjson", "json")


@dataclass
class ImportSummary:
    rows_read: int = 0
    profiles_created: int = 0
    profiles_updated: int = 0
    events_stored: int = 0
    duplicates: int = 0
    rows_rejected: int = 0

    def lines(self) -> list[str]:
        return [f"{k.replace('_', ' ')}: {v}" for k, v in self.__dict__.items()]


def detect_format(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1].lower()
    if suffix in ("ndjson", "jsonl"):
        return "ndjson"
    if suffix == "json":
        return "json"
    return "csv"


def read_rows(stream: IO[str], fmt: str) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, row) pairs; a row that cannot be parsed comes as None."""
    if fmt == "csv":
        reader = csv.DictReader(stream)
        for row in reader:
            yield reader.line_num, dict(row)
    elif fmt == "ndjson":
        for n, line in enumerate(stream, 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    yield n, None
                    continue
                yield n, obj if isinstance(obj, dict) else None
    else:
        data = json.load(stream)
        items: Any = data.get("data", data.get("records", [])) if isinstance(data, dict) else data
        for n, obj in enumerate(items or [], 1):
            yield n, obj if isinstance(obj, dict) else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _chunks(rows: Iterable[tuple[int, dict[str, Any] | None]], size: int) -> Iterator[list[tuple[int, Any]]]:
    chunk: list[tuple[int, Any]] = []
    for item in rows:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def run_import(
    stream: IO[str],
    fmt: str,
    mapping: Mapping,
    principal: Principal,
    file_id: str,
    rejects: IO[str] | None = None,
    chunk_size: int = 1000,
    progress: Callable[[int], Any] | None = None,
) -> ImportSummary:
    """Import every row; rejected rows go to ``rejects`` as CSV (line, field, reason).

    ``progress`` is called (and awaited, if async) with the rows done after each chunk.
    """
    ctx = VaultContext.from_settings()
    summary = ImportSummary()
    writer = csv.writer(rejects) if rejects is not None else None
    if writer is not None:
        writer.writerow(["line", "field", "reason"])
    for chunk in _chunks(read_rows(stream, fmt), chunk_size):
        messages: list[dict[str, Any]] = []
        lines: list[int] = []
        rejected: list[tuple[int, str, str]] = []
        for line, row in chunk:
            summary.rows_read += 1
            try:
                if row is None:
                    raise InvalidField("the row could not be parsed", field="row")
                row_id = str(row.get(mapping.id_column) or "") if mapping.id_column else ""
                messages.append(row_to_message(mapping, row, row_id or f"{file_id[:16]}:{line}"))
                lines.append(line)
            except InvalidField as exc:
                rejected.append((line, exc.field or "", exc.detail))
        async with unit_of_work() as session:
            result = await ingest_messages(session, ctx, principal, messages, require_ids=False)
        summary.events_stored += result.accepted
        summary.duplicates += result.duplicates
        summary.profiles_created += result.profiles_created
        summary.profiles_updated += result.profiles_updated
        rejected += [(lines[r.index], r.field, r.reason) for r in result.rejected]
        summary.rows_rejected += len(rejected)
        if writer is not None:
            writer.writerows(sorted(rejected))
        if progress is not None:
            outcome = progress(len(chunk))
            if inspect.isawaitable(outcome):
                await outcome
    return summary


def import_principal(source: str) -> Principal:
    """The actor recorded for command-line imports of a source."""
    return Principal(key_id=f"import:{source}"[:64], role="ingest", name=source, source=source)


def count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))


def open_text(path: Path) -> IO[str]:
    return io.open(path, encoding="utf-8-sig", newline="")  # noqa: UP020  (utf-8-sig drops Excel's BOM)
