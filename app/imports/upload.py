"""Uploaded import files at rest: AES-256-GCM in 1 MiB chunks under a per-upload key.

Each chunk's associated data names the upload, the chunk's index and whether it is the
last, so chunks cannot be reordered, dropped or truncated without detection.
"""

from __future__ import annotations

import io
import os
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.errors import IntegrityFailure

CHUNK = 1 << 20


def _aad(upload_id: str, index: int, last: bool) -> bytes:
    return f"consentry:upload|{upload_id}|{index}|{int(last)}".encode()


class EncryptedWriter:
    """Write plaintext in; encrypted chunks go to ``path``."""

    def __init__(self, path: Path, key: bytes, upload_id: str) -> None:
        private_dir(path.parent)
        self._path = path
        self._fh = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
        os.chmod(path, 0o600)  # also when the file was there before
        self._aead, self._id, self._index, self._buf = AESGCM(key), upload_id, 0, bytearray()

    def _emit(self, data: bytes, last: bool) -> None:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, data, _aad(self._id, self._index, last))
        self._fh.write(struct.pack(">I", len(sealed)) + nonce + sealed)
        self._index += 1

    def write(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) > CHUNK:
            self._emit(bytes(self._buf[:CHUNK]), last=False)
            del self._buf[:CHUNK]

    def close(self) -> None:
        self._emit(bytes(self._buf), last=True)
        self._fh.close()

    def discard(self) -> None:
        """Drop an upload that will not be imported (bad request, client gone)."""
        self._buf.clear()
        if not self._fh.closed:
            self._fh.close()
        self._path.unlink(missing_ok=True)


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) readable by this user only (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)
    except PermissionError:  # not ours: leave it to its owner
        pass


def decrypted_chunks(path: Path, key: bytes, upload_id: str) -> Iterator[bytes]:
    aead = AESGCM(key)
    with path.open("rb") as fh:
        index = 0
        while header := fh.read(4):
            (size,) = struct.unpack(">I", header)
            nonce, sealed = fh.read(12), fh.read(size)
            last = fh.peek(1)[:1] == b"" if hasattr(fh, "peek") else False
            try:
                yield aead.decrypt(nonce, sealed, _aad(upload_id, index, last))
            except Exception as exc:
                raise IntegrityFailure("the stored upload failed its integrity check", field="file") from exc
            index += 1


class _ChunkStream(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._pending = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def open_decrypted_text(path: Path, key: bytes, upload_id: str) -> IO[str]:
    """The upload as a text stream (UTF-8, BOM dropped), decrypted as it is read."""
    raw = io.BufferedReader(_ChunkStream(decrypted_chunks(path, key, upload_id)))
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
