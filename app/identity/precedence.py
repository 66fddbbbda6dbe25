"""Which value of a trait a profile keeps when sources disagree."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any


def takes_precedence(
    trait: str,
    new_source: str | None,
    new_at: datetime,
    old_source: str | None,
    old_at: datetime | None,
    authority: Mapping[str, frozenset[str]],
) -> bool:
    """True if the new value replaces the old one.

    The most recent observation wins, unless a source ranked authoritative for the trait
    (``policies/identity.yaml: trait_authority``) set the old value and the new source is
    not authoritative; an authoritative source always replaces a non-authoritative one.
    """
    ranked = authority.get(trait, frozenset())
    old_auth, new_auth = old_source in ranked, new_source in ranked
    if old_auth and not new_auth:
        return False
    if new_auth and not old_auth:
        return True
    return old_at is None or new_at >= old_at


def recorded_at(entry: Mapping[str, Any] | None) -> datetime | None:
    """The time in a ``trait_sources`` entry (``{"source": …, "at": ISO time}``), if any."""
    return datetime.fromisoformat(entry["at"]) if entry and entry.get("at") else None
