"""Opening the fields a run sends, many people at a time, on every core.

A small run reads the sealed rows in the main process (the fields precedence shows, of the
allowed categories only, and the wrapped data keys of their origins) and ``open_chunk``
unwraps each key and opens each field inline. A large run hands each chunk's ids to a pool
of worker processes: a worker reads the chunk's rows itself (``fetch_chunk``: one statement
for the fields, one for the keys, through its own blocking connection and the same query
builders) and opens them, so reading and decryption run on every core beside the delivery
and the recording in the main process. Workers get the master key versions with the job
(through a pipe, never a file) and keep nothing personal between chunks (only a connection).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import secrets
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from app.activation.delivery import Outbound, message_id
from app.activation.proof import leaf
from app.vault.blind_index import blind_index
from app.vault.cipher import KeyUnwrapper, SubjectOpener

POOL_FROM = 20_000
"""People from which a run opens its fields in worker processes (below: in the event loop)."""
WORKERS = 2


@dataclass(frozen=True)
class SealedChunk:
    """What opening a chunk needs: the people (in order), their fields (person, name, origin,
    key version, ciphertext), each origin's wrapped key (master version, key version, wrapped
    key), the master key versions and what names a person at the destination."""

    people: list[str]
    fields: list[tuple[str, str, str, int, bytes]]
    keys: dict[str, tuple[int, int, bytes]]
    masters: dict[int, bytes]
    run_id: str
    destination_id: str
    index_key: bytes


def open_chunk(chunk: SealedChunk) -> list[Outbound]:
    """The people as the destination receives them, each with a fresh salt and its leaf;
    fields of a shredded origin (no key) are left out."""
    unwrappers = {mv: KeyUnwrapper(master, mv) for mv, master in chunk.masters.items()}
    openers: dict[str, SubjectOpener] = {}
    for origin, (mv, kv, wrapped) in chunk.keys.items():
        openers[origin] = SubjectOpener(unwrappers[mv].unwrap(origin, kv, wrapped), origin)
    values: dict[str, dict[str, Any]] = {}
    for pid, name, origin, kv, blob in chunk.fields:
        opener = openers.get(origin)
        if opener is not None:
            values.setdefault(pid, {})[name] = opener.open(name, kv, blob)
    salts = secrets.token_bytes(16 * len(chunk.people)).hex()
    at = f"activation:{chunk.destination_id}"
    out = []
    for n, pid in enumerate(chunk.people):
        ref = blind_index(chunk.index_key, at, pid)
        salt = salts[32 * n : 32 * n + 32]
        mid = message_id(chunk.run_id, ref)
        out.append(Outbound(pid, ref, mid, values.get(pid, {}), salt, leaf(chunk.run_id, pid, salt)))
    return out


@dataclass(frozen=True)
class FetchJob:
    """A chunk for a worker to read and open: the people (in order), the categories the
    destination may receive, the database, every master key version, the trait authority
    (field precedence) and what names a person at the destination."""

    people: list[str]
    categories: tuple[str, ...]
    database_url: str
    masters: dict[int, bytes]
    authority: Mapping[str, frozenset[str]]
    run_id: str
    destination_id: str
    index_key: bytes


_ENGINES: dict[str, Any] = {}
"""A worker's blocking engine per database (its one connection, kept between chunks)."""


def fetch_chunk(job: FetchJob) -> list[Outbound]:
    """In a worker: read the chunk's sealed fields and keys (``read_rows``) and open them."""
    from app.db import create_sync_engine

    engine = _ENGINES.get(job.database_url)
    if engine is None:
        engine = _ENGINES[job.database_url] = create_sync_engine(job.database_url, pool_size=1)
    with engine.connect() as conn:
        fields, keys = read_rows(conn, job.people, job.categories, job.authority)
    masters = {mv: job.masters[mv] for mv in {k[0] for k in keys.values()}}
    chunk = SealedChunk(job.people, fields, keys, masters, job.run_id, job.destination_id, job.index_key)
    return open_chunk(chunk)


def read_rows(
    conn: Any, ids: list[str], categories: Sequence[str], authority: Mapping[str, frozenset[str]]
) -> tuple[list[tuple[str, str, str, int, bytes]], dict[str, tuple[int, int, bytes]]]:
    """Through a blocking connection: the sealed fields precedence shows of these people, of
    these categories only, and the wrapped keys of their origins (a shredded origin has none);
    precedence is read only for a trait held more than once (merged profiles)."""
    from app.profiles.service import current_fields, sealed_fields_queries
    from app.vault.service import wrapped_keys_query

    if not categories:
        return [], {}
    dialect = conn.dialect.name
    fields_q, stamps_q = sealed_fields_queries(tuple(categories), dialect)
    shown: dict[tuple[str, str], Any] = {}
    twice: set[str] = set()
    for r in conn.execute(fields_q, {"ids": ids}).all():
        if (r[0], r[1]) in shown:
            twice.add(r[0])
        shown[(r[0], r[1])] = r
    if twice:
        shown.update(current_fields(conn.execute(stamps_q, {"ids": sorted(twice)}).all(), authority))
    origins = sorted({r[2] for r in shown.values()})
    keys: dict[str, tuple[int, int, bytes]] = {}
    if origins:
        rows = conn.execute(wrapped_keys_query(dialect), {"ids": origins}).all()
        keys = {pid: (mv, kv, w) for pid, mv, kv, w in rows}
    return [tuple(r[:5]) for r in shown.values()], keys


class Opener:
    """Opens chunks inline, or in worker processes (``pooled``); a context manager."""

    def __init__(self, pooled: bool) -> None:
        self.pool: ProcessPoolExecutor | None = None
        self.started: asyncio.Future[None] | None = None
        if pooled:
            context = multiprocessing.get_context("forkserver")
            # workers fork from a server that imported this module alone: never the service's
            # main module (``python -m app`` runs the CLI at import), never its open connections
            context.set_forkserver_preload([__name__])
            self.pool = ProcessPoolExecutor(WORKERS, mp_context=context)

    def begin(self) -> None:
        """Start the workers in a thread: the first chunk handed over waits for them, the event
        loop does not (a worker is spawned by the submitting thread, which waits for the fork
        server: 0.5-1.8 s for the first, loaded, which held the run's screen up)."""
        if self.pool is not None and self.started is None:
            self.started = asyncio.ensure_future(asyncio.to_thread(self._spawn))
            self.started.add_done_callback(_seen)  # a run that ends first closes the pool under it

    def _spawn(self) -> None:
        assert self.pool is not None
        for started in [self.pool.submit(_ready) for _ in range(WORKERS)]:
            started.result()

    async def start(self) -> None:
        """Start the workers (``begin``) and wait until they are up."""
        self.begin()
        if self.started is not None:
            await self.started

    async def open(self, chunk: SealedChunk) -> list[Outbound]:
        if self.pool is None:
            return open_chunk(chunk)
        await self.start()
        return await asyncio.get_running_loop().run_in_executor(self.pool, open_chunk, chunk)

    async def fetch(self, job: FetchJob) -> list[Outbound]:
        """Read and open a chunk in a worker (``pooled`` only)."""
        assert self.pool is not None, "fetch needs worker processes"
        await self.start()
        return await asyncio.get_running_loop().run_in_executor(self.pool, fetch_chunk, job)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Opener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ready() -> bool:
    return True


def _seen(started: asyncio.Future[None]) -> None:
    if not started.cancelled():
        started.exception()  # retrieved: what failed is raised to whoever waits for the workers


def split(ids: Sequence[str], size: int) -> list[list[str]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]
