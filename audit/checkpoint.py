"""Signed tree heads (RFC 9162 STH) and the older signed checkpoints over the chain head.

A tree head signs, with Ed25519, the canonical text::

    consentry-tree-head/v1
    <origin>
    <size>
    <root hash, hex>        (RFC 9162 Merkle tree head over the first <size> entries)
    <chain hash, hex>       (``entry_hash`` of entry <size>, or 64 zeros)
    <signed_at>             (ISO 8601 UTC)
    <key id>

Rows written before tree heads existed carry no ``root_hash``: they are *checkpoints*
that signed ``origin\\nsize\\nhead_hash\\n`` and are still verified the old way.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

NOTE_HEADER = "consentry-tree-head/v1"
FIELDS = ("origin", "size", "root_hash", "head_hash", "signed_at", "key_id", "signature")


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """Short fingerprint naming the signing key."""
    return hashlib.sha256(public_key_bytes(key)).hexdigest()[:16]


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public key from base64 of its 32 raw bytes."""
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text.strip(), validate=True))


def note(origin: str, size: int, head_hash: str) -> bytes:
    """The text a (pre-tree-head) checkpoint signed, after transparency-dev's checkpoint format."""
    return f"{origin}\n{size}\n{head_hash}\n".encode()


def tree_head_note(origin: str, size: int, root_hash: str, head_hash: str, signed_at: str, kid: str) -> bytes:
    """The canonical text a tree head signs."""
    return f"{NOTE_HEADER}\n{origin}\n{size}\n{root_hash}\n{head_hash}\n{signed_at}\n{kid}\n".encode()


@dataclass(frozen=True)
class TreeHead:
    """The ledger had ``size`` entries with Merkle root ``root_hash`` when ``key_id`` signed it.

    ``root_hash`` is None only for checkpoints made before tree heads (signed over the
    chain hash alone).
    """

    origin: str
    size: int
    head_hash: str
    signed_at: str
    key_id: str
    signature: str
    root_hash: str | None = None

    @property
    def is_tree_head(self) -> bool:
        return self.root_hash is not None

    def signed_bytes(self) -> bytes:
        if self.root_hash is None:
            return note(self.origin, self.size, self.head_hash)
        return tree_head_note(self.origin, self.size, self.root_hash, self.head_hash, self.signed_at, self.key_id)

    @classmethod
    def sign(
        cls,
        origin: str,
        size: int,
        head_hash: str,
        signed_at: str,
        key: Ed25519PrivateKey,
        root_hash: str | None = None,
    ) -> TreeHead:
        """Sign a tree head (or, without ``root_hash``, an old-style checkpoint)."""
        unsigned = cls(origin, size, head_hash, signed_at, key_id(key.public_key()), "", root_hash)
        sig = key.sign(unsigned.signed_bytes())
        return cls(origin, size, head_hash, signed_at, unsigned.key_id, base64.b64encode(sig).decode(), root_hash)

    def signature_valid(self, public_key: Ed25519PublicKey) -> bool:
        try:
            public_key.verify(base64.b64decode(self.signature, validate=True), self.signed_bytes())
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in FIELDS}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TreeHead:
        """Parse a tree head; ``ValueError`` if a field is missing or of the wrong type."""
        if not isinstance(data, dict):
            raise ValueError("a tree head is a JSON object")
        size = data.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("size must be a non-negative integer")
        values: dict[str, Any] = {"size": size}
        for name in ("origin", "head_hash", "signed_at", "key_id", "signature"):
            value = data.get(name)
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
            values[name] = value
        root_hash = data.get("root_hash")
        if root_hash is not None and not isinstance(root_hash, str):
            raise ValueError("root_hash must be a string")
        return cls(root_hash=root_hash, **values)


Checkpoint = TreeHead
"""The older name, kept for callers that still say checkpoint."""
