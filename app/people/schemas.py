"""Request and response bodies of the profile API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class ProfileWrite(msgspec.Struct, forbid_unknown_fields=True):
    traits: dict[str, Any]
    """Segment-style traits; personal ones (email, phone, name…) are encrypted at rest."""


class ProfileWritten(msgspec.Struct):
    id: str
    created: bool
    fields: list[str]


class ProfileOut(msgspec.Struct):
    """The 360° view: traits (masked by role), their sources, identities, recent events, counts."""

    id: str
    created_at: datetime
    updated_at: datetime
    reveal: str
    """``plain`` (decrypted), ``masked`` or ``none``, as the purpose policy allowed."""
    traits: dict[str, Any]
    sources: dict[str, Any] = {}
    identities: list[dict[str, Any]] = []
    recent_events: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    tags: list[dict[str, Any]] = []
    """Tags the person carries (policies/tags.yaml): names in English and Chinese, sources, since when."""
    tag_history: list[dict[str, Any]] = []
    """When tags were gained or lost, newest first (at most 50)."""
    accounts: list[dict[str, Any]] = []
    """Accounts or households the person belongs to (Segment group calls), with their non-personal traits."""
    computed: dict[str, Any] = {}
    """Computed traits and scores (policies/computed_traits.yaml) as of their last refresh;
    profiling ones left out for a person refusing profiling."""


class ProfileLookup(msgspec.Struct, forbid_unknown_fields=True):
    """Find profiles by one identifier; sent in a body so it never lands in URLs or access logs.

    Give ``email`` or ``phone``, or ``kind`` (user_id, anonymous_id, device_id,
    wechat_unionid, wechat_openid, external:crm_id…) with ``value``.
    """

    email: str | None = None
    phone: str | None = None
    kind: str | None = None
    value: str | None = None


class ProfileList(msgspec.Struct):
    profiles: list[ProfileOut]


class EventPage(msgspec.Struct):
    events: list[dict[str, Any]]
    next_before: datetime | None
    """Pass as ``before`` for the next (older) page; null on the last page."""


class MergeOut(msgspec.Struct):
    profile_id: str
    merged_id: str
    via_kind: str
    rule: str
    source: str | None
    merged_at: datetime


class Unmerged(msgspec.Struct):
    restored: str
    """The profile that stands alone again."""
    survivor: str
    """The profile it had been merged into."""
