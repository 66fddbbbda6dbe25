"""Ledger entries, their canonical serialisation and hash (RFC 6962-style leaf hash)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of the first entry."""

HASHED_FIELDS = (
    "seq",
    "recorded_at",
    "actor_id",
    "actor_role",
    "action",
    "subject_id",
    "purpose",
    "legal_basis",
    "request_id",
    "details",
    "prev_hash",
)


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def utc_timestamp(moment: datetime | None = None) -> str:
    """ISO 8601 UTC time with microseconds, the only time format the ledger stores."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Entry:
    """One ledger entry. ``details`` holds no personal data, only ids, counts and types."""

    seq: int
    recorded_at: str
    actor_id: str
    actor_role: str
    action: str
    subject_id: str | None
    purpose: str | None
    legal_basis: str | None
    request_id: str | None
    details: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS_HASH
    entry_hash: str = ""

    def hashed_payload(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in HASHED_FIELDS}

    def to_json(self) -> dict[str, Any]:
        return {**self.hashed_payload(), "entry_hash": self.entry_hash}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(**{k: data.get(k) for k in (*HASHED_FIELDS, "entry_hash")})  # type: ignore[arg-type]


def subjects_digest(subject_ids: Iterable[str]) -> dict[str, Any]:
    """What a group entry's ``details["subjects"]`` holds: how many subjects it names and
    SHA-256 over their sorted, distinct ids joined by newlines. The ids themselves sit in
    the ``audit_subject`` index, which the verifier checks against this digest."""
    ids = sorted(set(subject_ids))
    return {"count": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()}


def entry_hash(entry: Entry) -> str:
    """SHA-256 over 0x00 || canonical JSON of the hashed fields (hex)."""
    payload = canonical_json(entry.hashed_payload()).encode("utf-8")
    return hashlib.sha256(b"\x00" + payload).hexdigest()


def seal(entry: Entry) -> Entry:
    """The same entry with its ``entry_hash`` filled in."""
    return Entry(**{**entry.hashed_payload(), "entry_hash": entry_hash(entry)})
