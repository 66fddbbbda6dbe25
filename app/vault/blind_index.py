"""Keyed blind indexes (CipherSweet-style): HMAC-SHA256 of a normalised value under a
key derived per identifier kind, so the same email gives the same index while the
index alone reveals nothing without the key."""

from __future__ import annotations

import hashlib
import hmac


def kind_key(index_key: bytes, kind: str) -> bytes:
    return hmac.new(index_key, b"consentry:blind-index:" + kind.encode(), hashlib.sha256).digest()


def blind_index(index_key: bytes, kind: str, normalized: str) -> str:
    """128-bit hex index of ``normalized`` for identifier ``kind`` (``email``, ``phone``…)."""
    mac = hmac.new(kind_key(index_key, kind), normalized.encode("utf-8"), hashlib.sha256)
    return mac.hexdigest()[:32]
