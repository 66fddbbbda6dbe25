"""HTTP API for segments: preview a tree, save and version segments, page through members."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, post, put
from litestar.params import FromPath, JSONBody, QueryParameter

from app.deps import Caller, Db
from app.errors import InvalidField
from app.segments import service
from app.segments.models import Segment

READERS = ("admin", "compliance", "marketer")
OWNERS = ("admin", "marketer")


class PreviewIn(msgspec.Struct, forbid_unknown_fields=True):
    tree: dict[str, Any]
    """The condition tree (all / any / not, trait, consent, segment, event, funnel)."""
    purpose: str | None = None
    """What the people are for (default: the role's purpose); counts are decided for it."""
    sample: int = 5
    """How many usable people to show (0 to 20), masked as the role sees them."""


class SegmentIn(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    tree: dict[str, Any]
    purpose: str | None = None


def _name(name: str) -> str:
    if not name.strip() or len(name) > 200 or not name.isprintable():
        raise InvalidField("expects a name of 1 to 200 printable characters", field="name")
    return name


async def _view(db: Any, seg: Segment, masked_for: Any) -> dict[str, Any]:
    size = await service.latest_size(db, seg.id)
    masked = service.decide(masked_for, seg.purpose).reveal != "plain"
    return {
        "id": seg.id,
        "name": seg.name,
        "purpose": seg.purpose,
        "tree": seg.tree,
        "version": seg.version,
        "owner_key_id": seg.owner_key_id,
        "created_at": seg.created_at.isoformat(),
        "updated_at": seg.updated_at.isoformat(),
        "refreshed_at": seg.refreshed_at.isoformat() if seg.refreshed_at else None,
        "members": service.shown(size.members, masked) if size else None,
        "usable": service.shown(size.usable, masked) if size else None,
    }


class SegmentController(Controller):
    path = "/v1/segments"
    tags = ["segments"]

    @post("/preview", opt={"roles": READERS}, operation_id="previewSegment", status_code=200)
    async def preview(self, data: JSONBody[PreviewIn], db: Db, principal: Caller) -> dict[str, Any]:
        """Total matching, how many may be used for the purpose (counts by denial reason, from
        the decision engine) and a masked sample. Counts below the threshold read ``<10`` to
        roles that see masked values."""
        if not 0 <= data.sample <= service.MAX_SAMPLE:
            raise InvalidField(f"expects 0 to {service.MAX_SAMPLE}", field="sample")
        return await service.preview(db, principal, data.tree, data.purpose, data.sample)

    @post("/", opt={"roles": OWNERS}, operation_id="createSegment", status_code=201)
    async def create(self, data: JSONBody[SegmentIn], db: Db, principal: Caller) -> dict[str, Any]:
        """Save a segment (owned by the caller); its members are materialised now."""
        seg = await service.create_segment(db, principal, _name(data.name), data.purpose, data.tree)
        return await _view(db, seg, principal)

    @get("/", opt={"roles": READERS}, operation_id="listSegments")
    async def index(self, db: Db, principal: Caller) -> list[dict[str, Any]]:
        """Saved segments (definitions and last sizes)."""
        return [await _view(db, s, principal) for s in await service.live_segments(db)]

    @get("/{segment_id:str}", opt={"roles": READERS}, operation_id="getSegment")
    async def read(self, segment_id: FromPath[str], db: Db, principal: Caller) -> dict[str, Any]:
        """A segment with every version of its definition."""
        seg = await service.get_segment(db, segment_id)
        return {**await _view(db, seg, principal), "versions": await service.versions(db, seg.id)}

    @put("/{segment_id:str}", opt={"roles": OWNERS}, operation_id="updateSegment")
    async def update(
        self, segment_id: FromPath[str], data: JSONBody[SegmentIn], db: Db, principal: Caller
    ) -> dict[str, Any]:
        """A new version of the definition (owner or admin); members are materialised again."""
        seg = await service.update_segment(db, principal, segment_id, _name(data.name), data.purpose, data.tree)
        return await _view(db, seg, principal)

    @delete("/{segment_id:str}", opt={"roles": OWNERS}, operation_id="deleteSegment", status_code=204)
    async def remove(self, segment_id: FromPath[str], db: Db, principal: Caller) -> None:
        """Retire a segment (owner or admin); its memberships are removed."""
        await service.delete_segment(db, principal, segment_id)

    @get("/{segment_id:str}/members", opt={"roles": READERS}, operation_id="getSegmentMembers")
    async def members(
        self,
        segment_id: FromPath[str],
        db: Db,
        principal: Caller,
        after: Annotated[str, QueryParameter(max_length=64, description="last id of the previous page")] = "",
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 50,
    ) -> dict[str, Any]:
        """Members who may be used for the segment's purpose, a page at a time, as the role sees them."""
        return await service.members_page(db, principal, segment_id, after, limit)

    @get("/{segment_id:str}/sizes", opt={"roles": READERS}, operation_id="getSegmentSizes")
    async def sizes(
        self,
        segment_id: FromPath[str],
        db: Db,
        principal: Caller,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """The segment's size at each refresh, newest first."""
        return await service.sizes(db, principal, segment_id, limit)
