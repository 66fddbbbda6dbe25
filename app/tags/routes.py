"""HTTP API for tags: the taxonomy with how many people carry each tag, and tagging by hand."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath, JSONBody

from app.deps import Caller, Db
from app.errors import InvalidField
from app.tags import service

READERS = ("admin", "compliance", "marketer")
TAGGERS = ("admin", "marketer")
MAX_IDS = 10_000


class TaggingIn(msgspec.Struct, forbid_unknown_fields=True):
    add: list[str] = []
    """Profile ids to give the tag to (merged-away ids count for their survivor)."""
    remove: list[str] = []
    """Profile ids to take the hand-given tag from (a rule or threshold may still give it)."""
    purpose: str | None = None
    """Why (default: the role's purpose); recorded in the ledger."""


def _ids(ids: list[str], field: str) -> list[str]:
    if len(ids) > MAX_IDS:
        raise InvalidField(f"at most {MAX_IDS} ids", field=field)
    for n, i in enumerate(ids):
        if not isinstance(i, str) or not 0 < len(i) <= 64:
            raise InvalidField("expects a profile id", field=f"{field}[{n}]")
    return ids


class TagController(Controller):
    path = "/v1/tags"
    tags = ["tags"]

    @get("/", opt={"roles": READERS}, operation_id="listTags")
    async def index(self, db: Db, principal: Caller) -> list[dict[str, Any]]:
        """The taxonomy (policies/tags.yaml, names in English and Chinese) by group, with how
        many people carry each tag (``<10`` below the threshold to roles that see masked values)."""
        return await service.taxonomy_view(db, principal)

    @post("/{tag:str}/people", opt={"roles": TAGGERS}, operation_id="tagPeople", status_code=200)
    async def tag_people(
        self, tag: FromPath[str], data: JSONBody[TaggingIn], db: Db, principal: Caller
    ) -> dict[str, Any]:
        """Give a tag to people or take it away, in bulk (one ledger entry naming everyone changed)."""
        add, remove = _ids(data.add, "add"), _ids(data.remove, "remove")
        if not add and not remove:
            service.known_tag(tag)
            raise InvalidField("give profile ids in add or remove", field="add")
        return await service.tag_by_hand(db, principal, tag, add, remove, data.purpose)
