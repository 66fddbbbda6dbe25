"""Keyed blind indexes (CipherSweet-style): HMAC-SHA256 of a normalised value under a
key derived per identifier kind, so the same email gives the same index while the
index alone reveals nothing without the key."""

from __future__ import annotations

import hmac
from functools import lru_cache

from app.vault.memo import memo


@lru_cache(maxsize=256)
def kind_key(index_key: bytes, kind: str) -> bytes:
    """The key for one identifier kind (derived once per process and kind)."""
    return hmac.digest(index_key, b"consentry:blind-index:" + kind.encode(), "sha256")


def blind_index(index_key: bytes, kind: str, normalized: str) -> str:
    """128-bit hex index of ``normalized`` for identifier ``kind`` (``email``, ``phone``…)."""
    table = memo("blind_index")
    if table is None:
        return hmac.digest(kind_key(index_key, kind), normalized.encode("utf-8"), "sha256").hex()[:32]
    found: str | None = table.get((index_key, kind, normalized))
    if found is None:
        found = table[(index_key, kind, normalized)] = blind_index_of(index_key, kind, normalized)
    return found


def blind_index_of(index_key: bytes, kind: str, normalized: str) -> str:
    """``blind_index`` computed, never memoised."""
    return hmac.digest(kind_key(index_key, kind), normalized.encode("utf-8"), "sha256").hex()[:32]
