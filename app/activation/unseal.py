"""Opening the fields a run sends, many people at a time, on every core.

The main process reads the sealed rows (the fields precedence shows, of the allowed
categories only, and the wrapped data keys of their origins); ``open_people`` unwraps each
key and opens each field, inline for a small run or in a pool of worker processes for a
large one, so decryption runs beside the database reads and the delivery. Workers get the
master key versions a chunk needs with the chunk (through a pipe, never a file) and keep
nothing between chunks.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import secrets
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from app.activation.delivery import Outbound, message_id
from app.activation.proof import leaf
from app.vault.blind_index import blind_index
from app.vault.cipher import open_field, unwrap_key

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
    data_keys: dict[str, bytes] = {}
    for origin, (mv, kv, wrapped) in chunk.keys.items():
        data_keys[origin] = unwrap_key(chunk.masters[mv], mv, origin, kv, wrapped)
    values: dict[str, dict[str, Any]] = {}
    for pid, name, origin, kv, blob in chunk.fields:
        dk = data_keys.get(origin)
        if dk is not None:
            values.setdefault(pid, {})[name] = open_field(dk, origin, name, kv, blob)
    salts = secrets.token_bytes(16 * len(chunk.people)).hex()
    at = f"activation:{chunk.destination_id}"
    out = []
    for n, pid in enumerate(chunk.people):
        ref = blind_index(chunk.index_key, at, pid)
        salt = salts[32 * n : 32 * n + 32]
        mid = message_id(chunk.run_id, ref)
        out.append(Outbound(pid, ref, mid, values.get(pid, {}), salt, leaf(chunk.run_id, pid, salt)))
    return out


class Opener:
    """Opens chunks inline, or in worker processes (``pooled``); a context manager."""

    def __init__(self, pooled: bool) -> None:
        self.pool: ProcessPoolExecutor | None = None
        if pooled:
            context = multiprocessing.get_context("forkserver")
            # workers fork from a server that imported this module alone: never the service's
            # main module (``python -m app`` runs the CLI at import), never its open connections
            context.set_forkserver_preload([__name__])
            self.pool = ProcessPoolExecutor(WORKERS, mp_context=context)

    async def start(self) -> None:
        """Start the workers (in a thread: starting them must not hold the event loop up)."""
        if self.pool is not None:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(self.pool, _ready) for _ in range(WORKERS)))

    async def open(self, chunk: SealedChunk) -> list[Outbound]:
        if self.pool is None:
            return open_chunk(chunk)
        return await asyncio.get_running_loop().run_in_executor(self.pool, open_chunk, chunk)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Opener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ready() -> bool:
    return True


def split(ids: Sequence[str], size: int) -> list[list[str]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]
