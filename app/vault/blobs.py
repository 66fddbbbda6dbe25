"""Blobs sealed under a service key rather than a person's: the ingest inbox holds each
accepted request this way until the processor has resolved whom it is about.

The inbox key is derived (HKDF-SHA256) from a master key version, so rotating the master
key changes it and no extra key file exists; the version a blob was sealed under is kept
beside it. The associated data binds a blob to its purpose and row."""

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


def _aad(purpose: str, version: int) -> bytes:
    return f"consentry:blob|purpose={purpose}|mk={version}".encode()


def seal_blob(ring: MasterKeyring, purpose: str, plaintext: bytes) -> tuple[int, bytes]:
    """Encrypt ``plaintext`` under the current master version's key for ``purpose``; (version, blob)."""
    version, master = ring.current()
    return version, _seal(_derive(master, purpose), plaintext, _aad(purpose, version))


def open_blob(ring: MasterKeyring, purpose: str, version: int, blob: bytes) -> bytes:
    """Decrypt a blob sealed by ``seal_blob``; ``IntegrityFailure`` if it was altered."""
    return _open(_derive(ring.get(version), purpose), blob, _aad(purpose, version), "sealed batch")

