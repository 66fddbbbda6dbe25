"""HTTP API for profiles."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, patch, post
from litestar.params import FromPath, JSONBody, QueryParameter

from app.deps import Caller, Db
from app.errors import InvalidField
from app.profiles.schemas import ProfileList, ProfileLookup, ProfileOut, ProfileWrite, ProfileWritten
from app.profiles.service import ProfileView, VaultContext, lookup_profile_ids, read_profiles, write_profile

WRITERS = ("admin", "ingest", "compliance")
READERS = ("admin", "compliance", "marketer")
Purpose = Annotated[str | None, QueryParameter(description="Purpose of use (policies/purposes.yaml); default per role")]


def _out(view: ProfileView) -> ProfileOut:
    return ProfileOut(view.id, view.created_at, view.updated_at, view.reveal, view.traits)


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
        """Read a profile: compliance/admin see decrypted values, marketers masked ones (audited)."""
        views = await read_profiles(db, VaultContext.from_settings(), principal, [profile_id], purpose)
        return _out(views[0])

    @post("/lookup", opt={"roles": READERS}, operation_id="lookupProfiles", status_code=200)
    async def lookup(
        self, data: JSONBody[ProfileLookup], db: Db, principal: Caller, purpose: Purpose = None
    ) -> ProfileList:
        """Find profiles by email or phone through their blind index."""
        if (data.email is None) == (data.phone is None):
            raise InvalidField("give exactly one of email or phone", field="email")
        ctx = VaultContext.from_settings()
        kind, value = ("email", data.email) if data.email is not None else ("phone", data.phone)
        ids = await lookup_profile_ids(db, ctx, kind, value)
        views = await read_profiles(db, ctx, principal, ids, purpose) if ids else []
        return ProfileList([_out(v) for v in views])
