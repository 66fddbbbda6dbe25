"""Blobs sealed under a service key rather than a person's: the ingest inbox holds each
accepted request this way until the processor has resolved whom it is about.

The inbox key is derived (HKDF-SHA256) from a master key version, so rotating the master
key changes it and no extra key file exists; the version a blob was sealed under is kept
beside it. The associated data binds a blob to its purpose and to what its row says in
the clear about it (``context``: who sent it, when, how many), so neither can be changed
or the blob moved to another row without the blob failing to open."""

from __future__ import annotations

from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.vault.cipher import _open, _seal
from app.vault.keyring import MasterKeyring


@lru_cache(maxsize=32)
def _derive(master: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"consentry:blob|{purpose}".encode()).derive(
        master
    )


def _aad(purpose: str, version: int, context: bytes) -> bytes:
    return f"consentry:blob|purpose={purpose}|mk={version}|".encode() + context


def seal_blob(ring: MasterKeyring, purpose: str, plaintext: bytes, context: bytes) -> tuple[int, bytes]:
    """Encrypt ``plaintext`` under the current master version's key for ``purpose``, bound to
    ``context``; (version, blob)."""
    version, master = ring.current()
    return version, _seal(_derive(master, purpose), plaintext, _aad(purpose, version, context))


def open_blob(ring: MasterKeyring, purpose: str, version: int, blob: bytes, context: bytes) -> bytes:
    """Decrypt a blob sealed by ``seal_blob`` with the same context; ``IntegrityFailure`` if
    the blob or its context was altered."""
    return _open(_derive(ring.get(version), purpose), blob, _aad(purpose, version, context), "sealed batch")
