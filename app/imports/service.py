"""Running an import: read rows, map them to Spec messages, and push them through the
same ingestion pipeline as the event API, a chunk per transaction.

Row ids (the mapping's ``id_column``, else the file's SHA-256 and the line number) become
message ids, so re-running an interrupted or finished import stores nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import inspect
import io
import json
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import IO, Any

import ijson

from app.access.service import Principal
from app.db import dispose_engines, unit_of_work
from app.errors import InvalidField
from app.imports.mapping import Mapping, message_builder
from app.ingest.inbox import accept_checked, accept_messages, checked_request
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
    workers: int | None = None,
) -> ImportSummary:
    """Import every row; rejected rows go to ``rejects`` as CSV (line, field, reason).

    Each chunk is accepted into the inbox in its own transaction (its rejects are final
    then); once every row is accepted, the inbox is processed (by this call, alongside any
    processor the service runs). ``progress`` is called (and awaited, if async) with the
    rows done after each chunk, and with 0 after each processed group.

    ``workers``: processes accepting chunks side by side (default: one per core, at most
    ``MAX_WORKERS``) when ``stream`` is a file on disk read from its start and no database
    connection is open yet (the command line); otherwise this process accepts every chunk.
    """
    ctx = VaultContext.from_settings()
    summary = ImportSummary()
    writer = csv.writer(rejects) if rejects is not None else None
    if writer is not None:
        writer.writerow(["line", "field", "reason"])

    async def done(rejected: list[tuple[int, str, str]], rows: int) -> None:
        if writer is not None:
            writer.writerows([[line, spreadsheet_safe(f), spreadsheet_safe(r)] for line, f, r in sorted(rejected)])
        await _report(progress, rows)

    path = _own_file(stream)
    count = _worker_count(workers) if path is not None else 1
    if path is not None and count > 1:
        await _accept_in_workers(path, fmt, mapping, principal, file_id, chunk_size, count, summary, done, progress)
    else:
        for chunk in _chunks(read_rows(stream, fmt), chunk_size):
            await done(await _accept_chunk(ctx, mapping, principal, file_id, chunk, summary), len(chunk))
    while (stored := await process_next(ctx)).batches:  # the same processor as events (with whatever else is queued)
        summary.profiles_created += stored.profiles_created
        summary.profiles_updated += stored.profiles_updated
        await _report(progress, 0)
    return summary


# --- accepting in worker processes -----------------------------------------------------------
#
# Checking a row (shape, identifiers, phone numbers parsed) costs several times what writing it
# does, and one process uses one core. An import of a file on disk forks workers that each
# read the file and accept every ``count``-th chunk, each chunk in its own transaction as
# above (SQLite's write lock is held only for the chunk's statements; the checks run
# outside it). The parent writes the rejects in line order and reports progress, then
# processes the inbox. A worker dies with its parent (kill -9 included): what it committed
# is accepted, the rest is accepted by the next run, whose ids make the committed rows
# duplicates.

MAX_WORKERS = 4
WORKERS_VARIABLE = "CONSENTRY_IMPORT_WORKERS"
"""Accepting processes of a command-line import (default: one per core, at most ``MAX_WORKERS``)."""


def _worker_count(workers: int | None) -> int:
    if workers is None and os.environ.get(WORKERS_VARIABLE, "").strip().isdigit():
        workers = int(os.environ[WORKERS_VARIABLE])
    if workers is not None:
        return max(1, min(MAX_WORKERS, workers))
    if sys.platform != "linux" or multiprocessing.parent_process() is not None:
        return 1
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def _own_file(stream: IO[str]) -> Path | None:
    """The regular file ``stream`` reads, when it has read nothing yet and this process holds no
    database connection (a fork must not share one); None otherwise."""
    from app import db

    name = getattr(stream, "name", None)
    if not isinstance(name, str) or db._async_engines or not os.path.isfile(name):
        return None
    try:
        if stream.tell() != 0:
            return None
    except (OSError, ValueError):
        return None
    return Path(name)


async def _accept_in_workers(
    path: Path,
    fmt: str,
    mapping: Mapping,
    principal: Principal,
    file_id: str,
    chunk_size: int,
    count: int,
    summary: ImportSummary,
    done: Callable[[list[tuple[int, str, str]], int], Any],
    progress: Callable[[int], Any] | None,
) -> None:
    """Accept every chunk of ``path`` in ``count`` forked workers (results in chunk order);
    on PostgreSQL the workers then process the inbox side by side."""
    context = multiprocessing.get_context("fork")
    sys.stdout.flush()
    sys.stderr.flush()
    procs: list[Any] = []
    inbound: dict[Connection, int] = {}
    parent = os.getpid()
    together = _shares_the_inbox()
    barrier = context.Barrier(count)
    turn = None if together else context.Lock()
    try:
        for k in range(count):
            recv, send = context.Pipe(duplex=False)
            share = _Share(
                path, fmt, mapping, principal, file_id, chunk_size, k, count, parent, together, barrier, turn
            )
            args = (share, send)
            proc = context.Process(target=_worker_main, args=args, name=f"import-worker-{k}", daemon=True)
            proc.start()  # from this (the main) thread: the child's death signal is tied to it
            send.close()
            procs.append(proc)
            inbound[recv] = k
        results: dict[int, tuple[ImportSummary, list[tuple[int, str, str]]]] = {}
        following = 0
        failure: str | None = None
        while inbound and failure is None:
            for conn in await asyncio.to_thread(wait, list(inbound)):
                assert isinstance(conn, Connection)
                try:
                    message = conn.recv()
                except EOFError:
                    failure = f"import worker {inbound.pop(conn)} stopped"
                    continue
                if message[0] == "chunk":
                    _, index, part, rejected = message
                    results[index] = (part, rejected)
                elif message[0] == "processed":  # a group of the inbox, by a worker (PostgreSQL)
                    summary.profiles_created += message[1]
                    summary.profiles_updated += message[2]
                    await _report(progress, 0)
                elif message[0] == "done":
                    del inbound[conn]
                else:
                    failure = message[1]
            while following in results:
                part, rejected = results.pop(following)
                _add(summary, part)
                await done(rejected, part.rows_read)
                following += 1
        for index in sorted(results):  # a worker failed: what the others accepted is final too
            part, rejected = results.pop(index)
            _add(summary, part)
            await done(rejected, part.rows_read)
        if failure is not None:
            raise RuntimeError(failure)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join()


def _add(summary: ImportSummary, part: ImportSummary) -> None:
    for name, value in part.__dict__.items():
        setattr(summary, name, getattr(summary, name) + value)


def _shares_the_inbox() -> bool:
    """Can several processes process the inbox side by side? PostgreSQL's claim skips the rows
    another worker locked; on SQLite they would claim the same rows and wait for one writer."""
    from app.db import is_sqlite
    from app.settings import get_settings

    return not is_sqlite(get_settings().database_url)


@dataclass
class _Share:
    """What a worker accepts (chunks ``k``, ``k + count``, …) and whether it then processes."""

    path: Path
    fmt: str
    mapping: Mapping
    principal: Principal
    file_id: str
    chunk_size: int
    k: int
    count: int
    parent: int
    process: bool
    barrier: Any
    """Passed by every worker once all chunks are accepted: processing starts after accepting."""
    turn: Any
    """Taken to write a chunk on SQLite (one writer: a worker waiting for the store's lock would
    sleep in SQLite's busy handler, 1 to 100 ms at a time); None on PostgreSQL."""


def _worker_main(share: _Share, send: Connection) -> None:
    _die_with(share.parent)
    try:
        asyncio.run(_work(share, send))
        send.send(("done",))
    except BaseException as exc:  # reported by kind (the message may quote a value: scrubbed)
        from app.logs import scrub_text

        send.send(("failed", f"import worker {share.k}: " + scrub_text(f"{type(exc).__name__}: {exc}")[:500]))
    finally:
        send.close()


def _die_with(parent: int) -> None:
    """Ask Linux to kill this process when its parent ends (PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the request was made
        os._exit(1)


async def _work(share: _Share, send: Connection) -> None:
    """Accept the worker's chunks (each worker reads the file whole); then, where processors
    share the inbox, process it with the others."""
    ctx = VaultContext.from_settings()
    try:
        with open_text(share.path) as stream:
            for index, chunk in enumerate(_chunks(read_rows(stream, share.fmt), share.chunk_size)):
                if index % share.count != share.k:
                    continue
                if os.getppid() != share.parent:
                    return
                part = ImportSummary()
                rejected = await _accept_chunk(
                    ctx, share.mapping, share.principal, share.file_id, chunk, part, share.turn
                )
                send.send(("chunk", index, part, rejected))
        if share.process:
            share.barrier.wait()
            while (stored := await process_next(ctx)).batches:
                send.send(("processed", stored.profiles_created, stored.profiles_updated))
    finally:
        await dispose_engines()


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
    turn: Any = None,
) -> list[tuple[int, str, str]]:
    """Accept one chunk's rows durably (a re-run finds them duplicates); returns its rejects.
    ``turn``: a lock the workers of an import take to write (checks run outside it)."""
    messages: list[dict[str, Any]] = []
    lines: list[int] = []
    rejected: list[tuple[int, str, str]] = []
    id_column = mapping.id_column
    fallback = file_id[:16]
    row_to_message = message_builder(mapping)
    for line, row in chunk:
        try:
            if row is None:
                raise InvalidField("the row could not be parsed", field="row")
            row_id = str(row.get(id_column) or "") if id_column else ""
            messages.append(row_to_message(row, row_id or f"{fallback}:{line}"))
            lines.append(line)
        except InvalidField as exc:
            rejected.append((line, exc.field or "", exc.detail))
    async with unit_of_work() as session:
        if turn is None:
            result = (await accept_messages(session, ctx, principal, messages, require_ids=False)).result
        else:
            req = await checked_request(session, ctx, principal, messages, require_ids=False)
            with turn:  # the workers take SQLite's write lock in turn: none sleeps in its busy handler
                result = (await accept_checked(session, req)).result
                await session.commit()
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
