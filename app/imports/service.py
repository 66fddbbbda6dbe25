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

import ijson

from app.access.service import Principal
from app.db import unit_of_work
from app.errors import InvalidField
from app.imports.mapping import Mapping, row_to_message
from app.ingest.inbox import accept_messages
from app.ingest.processor import process_next
from app.profiles.service import VaultContext

FORMATS = ("csv", "ndjson", "json")
MAX_ROW_CHARS = 1024 * 1024
"""An NDJSON line or JSON record larger than this is rejected as a row, not read into memory whole."""
MAX_ROW_DEPTH = 32
JSON_ROW_PREFIXES = ("item", "data.item", "records.item")
"""Rows of a JSON import: a top-level array, or the array under ``data`` or ``records``."""
FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r")


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


def spreadsheet_safe(cell: Any) -> Any:
    """A CSV cell a spreadsheet will show as text: formula-leading text gets a ``'`` prefix."""
    return "'" + cell if isinstance(cell, str) and cell.startswith(FORMULA_LEAD) else cell


def _bounded_lines(stream: IO[str], limit: int) -> Iterator[str | None]:
    """Lines of ``stream``; a line longer than ``limit`` is skipped and comes as None."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith("\n"):
            while (rest := stream.readline(limit)) and not rest.endswith("\n"):
                pass
            yield None
            continue
        yield line


class _Utf8Bytes:
    """A text stream read as UTF-8 bytes (ijson parses bytes)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def read(self, size: int = 65536) -> bytes:
        if size == 0:  # ijson probes the type of the stream with an empty read
            return b""
        return self._stream.read(max(1, size // 4)).encode("utf-8", "surrogatepass")


def _json_rows(stream: IO[str]) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """Records of a JSON document, one at a time (the document is never loaded whole).

    A record nested deeper than ``MAX_ROW_DEPTH`` or with more than ``MAX_ROW_CHARS`` parse
    events comes as None; a document broken part-way ends with one None after the good records.
    """
    n = 0
    builder: Any = None
    depth = events = 0
    oversized = False
    taken: str | None = None  # "data" or "records" under a top-level object: the first one seen
    try:
        for prefix, event, value in ijson.parse(_Utf8Bytes(stream), use_float=True):
            if builder is None and not oversized:
                if prefix not in JSON_ROW_PREFIXES or event in ("end_map", "end_array", "map_key"):
                    continue
                if prefix != "item":
                    if taken is None:
                        taken = prefix
                    elif prefix != taken:
                        continue
                n += 1
                if event not in ("start_map", "start_array"):
                    yield n, None  # a scalar is not a record
                    continue
                builder, depth, events = ijson.ObjectBuilder(), 0, 0
            if event in ("start_map", "start_array"):
                depth += 1
            elif event in ("end_map", "end_array"):
                depth -= 1
            if not oversized:
                events += 1
                if depth > MAX_ROW_DEPTH or events > MAX_ROW_CHARS // 8:
                    oversized, builder = True, None
                else:
                    builder.event(event, value)
            if depth == 0:
                if oversized:
                    yield n, None
                else:
                    row = builder.value
                    yield n, row if isinstance(row, dict) else None
                builder, oversized = None, False
    except (ijson.JSONError, UnicodeDecodeError, ValueError):
        yield n + 1, None  # the document breaks here: what came before is imported


def read_rows(stream: IO[str], fmt: str) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, row) pairs; a row that cannot be parsed comes as None."""
    if fmt == "csv":
        reader = csv.DictReader(stream)
        try:
            for row in reader:
                yield reader.line_num, dict(row)
        except csv.Error:
            yield reader.line_num + 1, None  # e.g. a field over the size limit: the rest is unreadable
    elif fmt == "ndjson":
        for n, line in enumerate(_bounded_lines(stream, MAX_ROW_CHARS), 1):
            if line is None:
                yield n, None
            elif line.strip():
                try:
                    obj = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    yield n, None
                    continue
                yield n, obj if isinstance(obj, dict) else None
    else:
        yield from _json_rows(stream)


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

    Each chunk is accepted into the inbox in its own transaction (its rejects are final
    then); once every row is accepted, the inbox is processed (by this call, alongside any
    processor the service runs). ``progress`` is called (and awaited, if async) with the
    rows done after each chunk, and with 0 after each processed group.
    """
    ctx = VaultContext.from_settings()
    summary = ImportSummary()
    writer = csv.writer(rejects) if rejects is not None else None
    if writer is not None:
        writer.writerow(["line", "field", "reason"])
    for chunk in _chunks(read_rows(stream, fmt), chunk_size):
        rejected = await _accept_chunk(ctx, mapping, principal, file_id, chunk, summary)
        if writer is not None:
            writer.writerows([[line, spreadsheet_safe(f), spreadsheet_safe(r)] for line, f, r in sorted(rejected)])
        await _report(progress, len(chunk))
    while (stored := await process_next(ctx)).batches:  # the same processor as events (with whatever else is queued)
        summary.profiles_created += stored.profiles_created
        summary.profiles_updated += stored.profiles_updated
        await _report(progress, 0)
    return summary


async def _report(progress: Callable[[int], Any] | None, rows: int) -> None:
    if progress is not None:
        outcome = progress(rows)
        if inspect.isawaitable(outcome):
            await outcome


async def _accept_chunk(
    ctx: VaultContext,
    mapping: Mapping,
    principal: Principal,
    file_id: str,
    chunk: list[tuple[int, Any]],
    summary: ImportSummary,
) -> list[tuple[int, str, str]]:
    """Accept one chunk's rows durably (a re-run finds them duplicates); returns its rejects."""
    messages: list[dict[str, Any]] = []
    lines: list[int] = []
    rejected: list[tuple[int, str, str]] = []
    id_column = mapping.id_column
    fallback = file_id[:16]
    for line, row in chunk:
        try:
            if row is None:
                raise InvalidField("the row could not be parsed", field="row")
            row_id = str(row.get(id_column) or "") if id_column else ""
            messages.append(row_to_message(mapping, row, row_id or f"{fallback}:{line}"))
            lines.append(line)
        except InvalidField as exc:
            rejected.append((line, exc.field or "", exc.detail))
    async with unit_of_work() as session:
        result = (await accept_messages(session, ctx, principal, messages, require_ids=False)).result
    summary.rows_read += len(chunk)
    summary.events_stored += result.accepted
    summary.duplicates += result.duplicates
    rejected += [(lines[r.index], r.field, r.reason) for r in result.rejected]
    summary.rows_rejected += len(rejected)
    return rejected


def import_principal(source: str) -> Principal:
    """The actor recorded for command-line imports of a source."""
    return Principal(key_id=f"import:{source}"[:64], role="ingest", name=source, source=source)


def count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))


def open_text(path: Path) -> IO[str]:
    return io.open(path, encoding="utf-8-sig", newline="")  # noqa: UP020  (utf-8-sig drops Excel's BOM)
