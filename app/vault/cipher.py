"""AES-256-GCM for data keys (wrapped under a master key) and for profile fields.

The associated data binds each ciphertext to where it belongs, so a ciphertext copied
to another profile, field or key version fails authentication instead of decrypting.
"""

from __future__ import annotations

import json
import os
from typing import Any

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.errors import IntegrityFailure

NONCE = 12


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


_ciphers: dict[bytes, AESGCM] = {}


def _cipher(key: bytes) -> AESGCM:
    """The AES-GCM object for a key, kept for the next use (a group of events seals several
    values under each person's key; making the object is half the cost of a short seal)."""
    cipher = _ciphers.get(key)
    if cipher is None:
        if len(_ciphers) >= 4096:
            _ciphers.clear()
        cipher = _ciphers[key] = AESGCM(key)
    return cipher


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE)  # what secrets.token_bytes returns, without its two calls
    return nonce + _cipher(key).encrypt(nonce, plaintext, aad)


def _decrypt(aead: AESGCM, blob: bytes, aad: bytes, what: str, field: str | None = None) -> bytes:
    try:
        return aead.decrypt(blob[:NONCE], blob[NONCE:], aad)
    except (InvalidTag, ValueError) as exc:
        raise IntegrityFailure(f"{what} failed authentication; the read was refused", field=field) from exc


def _open(key: bytes, blob: bytes, aad: bytes, what: str, field: str | None = None) -> bytes:
    return _decrypt(AESGCM(key), blob, aad, what, field)


def json_value(data: bytes | str) -> Any:
    """JSON decoded by msgspec (several times faster than ``json.loads``), or by ``json.loads``
    for what msgspec refuses (NaN, 1e400, a lone surrogate), so the value is what it always was."""
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return json.loads(data)


def _wrap_aad(profile_id: str, key_version: int, master_version: int) -> bytes:
    return f"consentry:dek|profile={profile_id}|kv={key_version}|mk={master_version}".encode()


def wrap_key(master: bytes, master_version: int, profile_id: str, key_version: int, data_key: bytes) -> bytes:
    return _seal(master, data_key, _wrap_aad(profile_id, key_version, master_version))


def unwrap_key(master: bytes, master_version: int, profile_id: str, key_version: int, wrapped: bytes) -> bytes:
    return _open(master, wrapped, _wrap_aad(profile_id, key_version, master_version), "data key")


def _field_aad(profile_id: str, field: str, key_version: int) -> bytes:
    return f"consentry:field|name={field}|profile={profile_id}|kv={key_version}".encode()


def seal_field(data_key: bytes, profile_id: str, field: str, key_version: int, value: Any) -> bytes:
    """Encrypt a JSON-serialisable value for (profile, field, key version)."""
    plaintext = msgspec.json.encode(value)  # the compact UTF-8 JSON json.dumps wrote, faster
    return _seal(data_key, plaintext, _field_aad(profile_id, field, key_version))


def open_field(data_key: bytes, profile_id: str, field: str, key_version: int, blob: bytes) -> Any:
    """Decrypt a field; raises ``IntegrityFailure`` naming the field if it was tampered with or moved."""
    plaintext = _open(data_key, blob, _field_aad(profile_id, field, key_version), f"field '{field}'", field)
    return json.loads(plaintext)


class FieldOpener:
    """Opens many values of one field sealed under one profile's data key (an access
    package's events) with one AES-GCM object, held only as long as this opener."""

    def __init__(self, data_key: bytes, profile_id: str, field: str) -> None:
        self._aead = AESGCM(data_key)
        self._profile_id, self._field = profile_id, field
        self._aads: dict[int, bytes] = {}

    def open(self, key_version: int, blob: bytes) -> Any:
        """As ``open_field``: the decrypted JSON value, or ``IntegrityFailure`` naming the field."""
        aad = self._aads.get(key_version)
        if aad is None:
            aad = self._aads[key_version] = _field_aad(self._profile_id, self._field, key_version)
        return json_value(_decrypt(self._aead, blob, aad, f"field '{self._field}'", self._field))


class KeyUnwrapper:
    """Unwraps many data keys wrapped under one master key version with one AES-GCM object
    (a run's chunk of people), held only as long as this unwrapper."""

    def __init__(self, master: bytes, master_version: int) -> None:
        self._aead, self._version = AESGCM(master), master_version

    def unwrap(self, profile_id: str, key_version: int, wrapped: bytes) -> bytes:
        """As ``unwrap_key``: the data key, or ``IntegrityFailure`` if it was tampered with or moved."""
        return _decrypt(self._aead, wrapped, _wrap_aad(profile_id, key_version, self._version), "data key")


class SubjectOpener:
    """Opens the fields sealed under one profile's data key (its email, name…) with one
    AES-GCM object, held only as long as this opener."""

    def __init__(self, data_key: bytes, profile_id: str) -> None:
        self._aead, self._profile_id = AESGCM(data_key), profile_id

    def open(self, field: str, key_version: int, blob: bytes) -> Any:
        """As ``open_field``: the decrypted JSON value, or ``IntegrityFailure`` naming the field."""
        aad = _field_aad(self._profile_id, field, key_version)
        return json_value(_decrypt(self._aead, blob, aad, f"field '{field}'", field))
