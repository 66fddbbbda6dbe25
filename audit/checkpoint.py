"""Signed checkpoints: an Ed25519 signature over (origin, size, head hash)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """Short fingerprint naming the signing key."""
    return hashlib.sha256(public_key_bytes(key)).hexdigest()[:16]


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public key from base64 of its 32 raw bytes."""
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text.strip()))


def note(origin: str, size: int, head_hash: str) -> bytes:
    """The signed text, after transparency-dev's checkpoint format."""
    return f"{origin}\n{size}\n{head_hash}\n".encode()


@dataclass(frozen=True)
class Checkpoint:
    """The ledger had ``size`` entries ending in ``head_hash`` when ``key_id`` signed it."""

    origin: str
    size: int
    head_hash: str
    signed_at: str
    key_id: str
    signature: str

    @classmethod
    def sign(cls, origin: str, size: int, head_hash: str, signed_at: str, key: Ed25519PrivateKey) -> Checkpoint:
        sig = key.sign(note(origin, size, head_hash))
        return cls(origin, size, head_hash, signed_at, key_id(key.public_key()), base64.b64encode(sig).decode())

    def signature_valid(self, public_key: Ed25519PublicKey) -> bool:
        try:
            public_key.verify(base64.b64decode(self.signature), note(self.origin, self.size, self.head_hash))
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(**{k: data[k] for k in ("origin", "size", "head_hash", "signed_at", "key_id", "signature")})
