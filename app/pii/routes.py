"""HTTP API: field names awaiting review, and reviewers' decisions (admin)."""

from __future__ import annotations

from datetime import datetime

import msgspec
from litestar import Controller, get, post
from litestar.params import FromQuery, JSONBody

from app.consent.policy import load_policies
from app.deps import Caller, Db
from app.pii.review import current_field_policy, decide_field, review_list
from app.settings import get_settings
from app.vault.keyring import key_material


class FieldOut(msgspec.Struct):
    key: str
    """Keyed hash of the normalised name: decisions can be taken by key."""
    name: str | None
    """The name as seen; null when the name itself looks like personal data."""
    seen: int
    where: dict[str, int]
    """Sightings by place: traits, properties, group_traits."""
    first_seen: datetime
    last_seen: datetime
    decision: str | None


class DecisionIn(msgspec.Struct):
    decision: str
    """``non_personal``, or a data category (``user.contact.email``, ``user.name``…)."""
    name: str | None = None
    key: str | None = None


class DecisionOut(msgspec.Struct):
    key: str
    name: str | None
    decision: str


class FieldReviewController(Controller):
    path = "/v1/fields/review"
    tags = ["fields"]
    opt = {"roles": ("admin",)}

    @get("/", operation_id="listFieldsForReview")
    async def list_fields(self, db: Db, include_decided: FromQuery[bool] = False) -> list[FieldOut]:
        """Field names sealed as ``user.unknown`` because no policy classifies them, most seen first."""
        return [FieldOut(**item) for item in await review_list(db, include_decided)]

    @post("/", operation_id="decideField", status_code=200)
    async def decide(self, db: Db, principal: Caller, data: JSONBody[DecisionIn]) -> DecisionOut:
        """Declare a field name non-personal or map it to a category; later payloads follow it."""
        settings = get_settings()
        fp = await current_field_policy(db, load_policies(settings.policy_dir), key_material(settings).index_key)
        out = await decide_field(db, principal, fp, data.decision, name=data.name, key=data.key)
        return DecisionOut(**out)
