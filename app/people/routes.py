"""HTTP API for profiles: the 360° view, lookups, staff corrections, merge history and unmerge."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from litestar import Controller, get, patch, post
from litestar.params import FromPath, JSONBody, QueryParameter

from app.deps import Caller, Db
from app.entities.service import person_accounts
from app.errors import InvalidField
from app.identity.merges import merge_history, unmerge_profile
from app.identity.service import lookup_ident, profile_identities, profiles_holding
from app.ingest.outbox import publish
from app.ingest.timeline import event_summary, event_view, events_page
from app.people.schemas import (
    EventPage,
    MergeOut,
    ProfileList,
    ProfileLookup,
    ProfileOut,
    ProfileWrite,
    ProfileWritten,
    Unmerged,
)
from app.people.service import open_person, usable, write_profile
from app.profiles.service import ProfileView, VaultContext, read_profiles
from app.tags.service import person_tag_history, person_tags
from app.traits.service import values_of

WRITERS = ("admin", "compliance")
"""Ingest keys write events, texts and imports only: never a profile, never a read."""
READERS = ("admin", "compliance", "marketer")
Purpose = Annotated[str | None, QueryParameter(description="Purpose of use (policies/purposes.yaml); default per role")]


def _out(view: ProfileView) -> ProfileOut:
    return ProfileOut(view.id, view.created_at, view.updated_at, view.reveal, view.traits, view.sources)


class ProfileController(Controller):
    path = "/v1/profiles"
    tags = ["profiles"]

    @post("/", opt={"roles": WRITERS}, operation_id="createProfile", status_code=201)
    async def create(
        self, data: JSONBody[ProfileWrite], db: Db, principal: Caller, purpose: Purpose = None
    ) -> ProfileWritten:
        """Create a profile; personal traits are normalised, encrypted and indexed."""
        r = await write_profile(db, VaultContext.from_settings(), principal, data.traits, purpose=purpose)
        return ProfileWritten(r.id, r.created, r.fields)

    @patch("/{profile_id:str}", opt={"roles": WRITERS}, operation_id="updateProfile")
    async def update(
        self,
        profile_id: FromPath[str],
        data: JSONBody[ProfileWrite],
        db: Db,
        principal: Caller,
        purpose: Purpose = None,
    ) -> ProfileWritten:
        """Set traits (``null`` removes one)."""
        r = await write_profile(db, VaultContext.from_settings(), principal, data.traits, profile_id, purpose)
        return ProfileWritten(r.id, r.created, r.fields)

    @get("/{profile_id:str}", opt={"roles": READERS}, operation_id="getProfile")
    async def read(self, profile_id: FromPath[str], db: Db, principal: Caller, purpose: Purpose = None) -> ProfileOut:
        """The 360° view. Compliance/admin see decrypted values, marketers masked ones; audited.

        A merged-away id answers with the surviving profile.
        """
        p = await open_person(db, VaultContext.from_settings(), principal, profile_id, purpose)
        out = _out(p.view)
        out.identities = await profile_identities(db, p.keys, p.view.id, p.view.reveal)
        out.recent_events = [event_view(e, p.keys, p.view.reveal) for e in await events_page(db, p.view.id, 20)]
        out.summary = await event_summary(db, p.view.id)
        if p.view.reveal != "none":  # tags and accounts describe the person: not for ids-only purposes
            out.tags = await person_tags(db, p.view.id)
            out.tag_history = await person_tag_history(db, p.view.id)
            out.accounts = await person_accounts(db, p.view.id)
        if p.view.reveal != "none":  # computed traits describe the person: not for ids-only purposes
            out.computed = await values_of(db, p.view.id)
        return out

    @get("/{profile_id:str}/events", opt={"roles": READERS}, operation_id="getProfileEvents")
    async def events(
        self,
        profile_id: FromPath[str],
        db: Db,
        principal: Caller,
        purpose: Purpose = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        before: Annotated[datetime | None, QueryParameter(description="events strictly older than this")] = None,
    ) -> EventPage:
        """The timeline, newest first, page by page."""
        p = await open_person(db, VaultContext.from_settings(), principal, profile_id, purpose)
        rows = await events_page(db, p.view.id, limit, before)
        return EventPage(
            [event_view(e, p.keys, p.view.reveal) for e in rows], rows[-1].occurred_at if len(rows) == limit else None
        )

    @get("/{profile_id:str}/identities", opt={"roles": READERS}, operation_id="getProfileIdentities")
    async def identities(
        self, profile_id: FromPath[str], db: Db, principal: Caller, purpose: Purpose = None
    ) -> list[dict[str, object]]:
        """Identifiers linked to the profile, with the source that linked each."""
        p = await open_person(db, VaultContext.from_settings(), principal, profile_id, purpose)
        return await profile_identities(db, p.keys, p.view.id, p.view.reveal)  # type: ignore[return-value]

    @get("/{profile_id:str}/merges", opt={"roles": READERS}, operation_id="getProfileMerges")
    async def merges(
        self, profile_id: FromPath[str], db: Db, principal: Caller, purpose: Purpose = None
    ) -> list[MergeOut]:
        """Every profile folded into this person, transitively (C→B→A lists both), with the
        identifier kind and rule that caused each merge."""
        p = await open_person(db, VaultContext.from_settings(), principal, profile_id, purpose)
        rows = await merge_history(db, p.view.id)
        return [MergeOut(r.profile_id, r.merged_id, r.via_kind, r.rule, r.source, r.merged_at) for r in rows]

    @post("/{profile_id:str}/unmerge", opt={"roles": ("admin",)}, operation_id="unmergeProfile", status_code=200)
    async def unmerge(self, profile_id: FromPath[str], db: Db, principal: Caller) -> Unmerged:
        """Undo the merge that folded this (merged-away) profile into another: it gets back
        exactly its own identifiers, events, texts and traits, and what was folded into it. Audited."""
        restored, survivor = await unmerge_profile(db, principal, profile_id)
        await publish(db, [restored, survivor], "unmerge")
        return Unmerged(restored, survivor)

    @post("/lookup", opt={"roles": READERS}, operation_id="lookupProfiles", status_code=200)
    async def lookup(
        self, data: JSONBody[ProfileLookup], db: Db, principal: Caller, purpose: Purpose = None
    ) -> ProfileList:
        """Find profiles by email, phone or any identifier kind, through blind indexes."""
        given = [(k, v) for k, v in (("email", data.email), ("phone", data.phone)) if v is not None]
        if data.kind is not None or data.value is not None:
            if not data.kind or data.value is None:
                raise InvalidField("kind and value go together", field="kind")
            given.append((data.kind, data.value))
        if len(given) != 1:
            raise InvalidField("give exactly one of email, phone, or kind with value", field="email")
        ctx = VaultContext.from_settings()
        ids = await usable(db, principal, await profiles_holding(db, lookup_ident(ctx, *given[0])), purpose)
        views = await read_profiles(db, ctx, principal, ids, purpose) if ids else []
        return ProfileList([_out(v) for v in views])
