"""Which observed value of a trait a person keeps when sources disagree (the one rule)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

PINNED = "pinned"
"""The trust of a value a rectification set: it stands until rectified or corrected again."""


class Stamp(NamedTuple):
    """Where a value came from: its source, that source's trust and when it was observed
    (a named tuple: a group makes one per message, a frozen dataclass costs ten times more)."""

    source: str | None
    trust: str
    at: datetime | None


def takes_precedence(trait: str, new: Stamp, old: Stamp | None, authority: Mapping[str, frozenset[str]]) -> bool:
    """True if the new value replaces the old one.

    A value a ``server`` source set is never replaced by a ``client`` source. Then: a
    source ranked authoritative for the trait (``policies/identity.yaml: trait_authority``)
    is never replaced by one that is not, and always replaces one that is not. Otherwise
    the most recent observation wins. Before all that, a value a data-subject request
    rectified (trust ``pinned``) is replaced only by a newer pinned one (staff corrections
    bypass precedence), so a later import cannot revert it.
    """
    if old is None:
        return True
    if PINNED in (new.trust, old.trust):
        return new.trust == PINNED and (
            old.trust != PINNED or old.at is None or (new.at is not None and new.at >= old.at)
        )
    if old.trust == "server" and new.trust == "client":
        return False
    ranked = authority.get(trait, frozenset())
    old_auth, new_auth = old.source in ranked, new.source in ranked
    if old_auth != new_auth:
        return new_auth
    return old.at is None or (new.at is not None and new.at >= old.at)


def stamp_of(entry: Mapping[str, Any] | None) -> Stamp | None:
    """The stamp in a ``trait_sources`` entry (``{"source", "trust", "at", "origin"}``), if any."""
    if not entry:
        return None
    at = datetime.fromisoformat(entry["at"]) if entry.get("at") else None
    return Stamp(entry.get("source"), entry.get("trust", "server"), at)


def stamp_entry(stamp: Stamp, origin: str) -> dict[str, Any]:
    """A ``trait_sources`` entry for a plain trait value."""
    return {
        "source": stamp.source,
        "trust": stamp.trust,
        "at": stamp.at.isoformat() if stamp.at else None,
        "origin": origin,
    }
