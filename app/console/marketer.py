"""The marketer's pages: saved segments (size over time, overlap), the segment builder (a
condition tree edited as a form, its count refreshed by htmx as it changes, with usable
counts, exclusions by reason and a masked sample), destinations and activation runs (start
one, watch its report), journeys and their sends. Every figure and person comes from the
segments, reports, activation and journeys services called with the signed-in principal."""

from __future__ import annotations

import json
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.background_tasks import BackgroundTask
from litestar.params import FromPath
from litestar.response import Redirect, Response, Template

from app.access.service import Principal
from app.activation import service as activation
from app.console import marketer_builder as builder
from app.console import marketer_campaigns as campaigns
from app.console import marketer_segments as segs
from app.console.core import Form
from app.console.i18n import language, translate
from app.console.marketer_chart import points_of, size_chart
from app.console.render import page
from app.decisions.service import current_rules
from app.deps import Caller, Db
from app.errors import InvalidField
from app.segments import service as segments
from app.settings import get_settings
from app.tags.taxonomy import load_taxonomy
from app.traits.catalog import catalog

BASE = "/console/marketer"
FormData = Annotated[dict[str, str], Form]
Req = Request[Any, Any, Any]


def _choices(principal: Principal) -> dict[str, Any]:
    """What the builder's selects offer (names only: no person)."""
    return {
        "purposes": segs.usable_purposes(principal),
        "all_purposes": sorted(current_rules().purposes),
        "computed_traits": sorted(catalog().traits),
        "tags": sorted(load_taxonomy().tags),
        "ops": builder.OPS,
        "kinds": builder.LEAVES,
        "states": ("granted", "denied", "withdrawn", "none"),
    }


def _draft(data: dict[str, str]) -> dict[str, Any]:
    """The tree the builder's form describes (422 naming the form field when incomplete)."""
    return builder.to_tree(builder.read_form(data))


def _sample_columns(sample: list[dict[str, Any]]) -> list[str]:
    return sorted({k for person in sample for k in person["traits"]})[:8]


class MarketerController(Controller):
    path = "/marketer"
    include_in_schema = False

    # --- saved segments ---------------------------------------------------------------------

    @get("/segments")
    async def segment_list(self, request: Req, db: Db, principal: Caller) -> Template:
        """Saved segments with their last sizes."""
        return page(request, "marketer/segments.html", segments=await segs.saved_list(db, principal))

    @get("/segments/{segment_id:str}")
    async def segment(self, request: Req, segment_id: FromPath[str], db: Db, principal: Caller) -> Template:
        """A saved segment: its size over time (an SVG chart), definition, overlap and a run form."""
        seg = await segments.get_segment(db, segment_id)
        sizes = await segs.size_history(db, principal, seg.id)
        lang = language(request)
        labels = {
            "members": translate(lang, "mk.members"),
            "usable": translate(lang, "mk.usable"),
            "empty": translate(lang, "mk.chart.empty"),
            "masked": translate(lang, "mk.chart.masked"),
        }
        chart = size_chart(points_of(sizes), labels, translate(lang, "mk.segment.chart", name=seg.name))
        return page(
            request,
            "marketer/segment.html",
            segment=seg,
            sizes=sizes,
            chart=chart,
            definition=json.dumps(seg.tree, ensure_ascii=False, indent=2),
            others=[s for s in await segs.saved_list(db, principal) if s["id"] != seg.id],
            destinations=await campaigns.destinations(db),
        )

    @post("/segments/{segment_id:str}/overlap")
    async def segment_overlap(
        self, request: Req, segment_id: FromPath[str], data: FormData, db: Db, principal: Caller
    ) -> Template:
        """This segment against another: each, both, either (the reports service)."""
        other = data.get("other", "")
        if not other:
            raise InvalidField("choose a segment", field="other")
        figures = await segs.saved_overlap(db, principal, segment_id, other, None)
        return page(request, "marketer/_saved_overlap.html", figures=figures)

    # --- the builder --------------------------------------------------------------------------

    @get("/builder")
    async def builder_new(self, request: Req, db: Db, principal: Caller) -> Template:
        """An empty draft (an ``all`` group with one event condition to start from)."""
        box = builder.edit(builder.Box("all"), "add:t:event")
        return await self._builder(request, db, principal, box, None)

    @get("/builder/{segment_id:str}")
    async def builder_edit(self, request: Req, segment_id: FromPath[str], db: Db, principal: Caller) -> Template:
        """A saved segment's tree loaded into the builder (saving makes a new version)."""
        seg = await segments.get_segment(db, segment_id)
        return await self._builder(request, db, principal, builder.from_tree(seg.tree), seg)

    async def _builder(self, request: Req, db: Db, principal: Principal, box: builder.Box, seg: Any) -> Template:
        return page(
            request,
            "marketer/builder.html",
            box=box,
            fields=builder.fields_of(box),
            segment=seg,
            saved=await segs.saved_list(db, principal),
            **_choices(principal),
        )

    @post("/builder/edit")
    async def builder_change(self, request: Req, data: FormData, db: Db, principal: Caller) -> Template:
        """Add, remove, group or negate a condition: the tree part of the form again, and a
        ``tree-changed`` event so the count refreshes."""
        box = builder.edit(builder.read_form(data), data.get("act", ""))
        out = page(
            request,
            "marketer/_tree.html",
            box=box,
            saved=await segs.saved_list(db, principal),
            **_choices(principal),
        )
        out.headers["HX-Trigger-After-Settle"] = "tree-changed"  # once the new fields are in place
        return out

    @post("/builder/count")
    async def builder_count(self, request: Req, data: FormData, db: Db, principal: Caller) -> Template:
        """The draft's count: matching, usable for the purpose, excluded by reason, a masked
        sample (the segments service's preview). An incomplete draft says what to fill in."""
        try:
            tree = _draft(data)
            preview = await segs.draft_count(db, principal, tree, data.get("purpose", ""))
        except InvalidField as exc:
            return page(request, "marketer/_count.html", error=exc)
        return page(
            request,
            "marketer/_count.html",
            preview=preview,
            columns=_sample_columns(preview["sample"]),
            floor=get_settings().segment_min_count,
        )

    @post("/builder/overlap")
    async def builder_overlap(self, request: Req, data: FormData, db: Db, principal: Caller) -> Template:
        """How many of the draft's people are in a saved segment."""
        other = data.get("overlap", "")
        if not other:
            raise InvalidField("choose a segment", field="overlap")
        found = await segs.draft_overlap(db, principal, _draft(data), other, data.get("purpose", ""))
        return page(request, "marketer/_overlap.html", overlap=found)

    @post("/builder/save", status_code=200)
    async def builder_save(self, request: Req, data: FormData, db: Db, principal: Caller) -> Response[Any]:
        """Save the draft as a segment (or a new version of the one being edited), then go to its page."""
        sid = await segs.save(
            db, principal, data.get("segment_id") or None, data.get("name", ""), data.get("purpose", ""), _draft(data)
        )
        target = f"{BASE}/segments/{sid}"
        if request.headers.get("hx-request") == "true":
            return Response(b"", status_code=204, headers={"HX-Redirect": target})
        return Redirect(target, status_code=303)

    # --- activation ---------------------------------------------------------------------------

    @get("/activation")
    async def activation_page(self, request: Req, db: Db, principal: Caller) -> Template:
        """Destinations, the run form and the latest runs with their reports."""
        return page(
            request,
            "marketer/activation.html",
            destinations=await campaigns.destinations(db),
            runs=await campaigns.runs(db, principal),
            segments=await segs.saved_list(db, principal),
        )

    @post("/activation/runs", status_code=303)
    async def run_start(self, data: FormData, db: Db, principal: Caller) -> Redirect:
        """Send a segment to a destination now; consent is decided again at send time."""
        run_id = await campaigns.start(db, principal, data.get("segment_id", ""), data.get("destination_id", ""))
        await db.commit()
        return Redirect(
            f"{BASE}/activation/runs/{run_id}",
            status_code=303,
            background=BackgroundTask(activation.execute_run, run_id),
        )

    @get("/activation/runs/{run_id:str}")
    async def run_page(self, request: Req, run_id: FromPath[str], db: Db, principal: Caller) -> Template:
        """A run's report; while it runs, the report part refreshes itself."""
        return page(request, "marketer/run.html", run=await campaigns.run_report(db, principal, run_id))

    @get("/activation/runs/{run_id:str}/report")
    async def run_fragment(self, request: Req, run_id: FromPath[str], db: Db, principal: Caller) -> Template:
        return page(request, "marketer/_run_report.html", run=await campaigns.run_report(db, principal, run_id))

    # --- journeys -----------------------------------------------------------------------------

    @get("/journeys")
    async def journey_list(self, request: Req, db: Db) -> Template:
        """Journeys with their destination and waiting timers."""
        return page(request, "marketer/journeys.html", journeys=await campaigns.journey_list(db))

    @get("/journeys/{journey_id:str}")
    async def journey(self, request: Req, journey_id: FromPath[str], db: Db, principal: Caller) -> Template:
        """A journey's definition and its sends, newest first."""
        found = await campaigns.journey_sends(db, principal, journey_id)
        definition = json.dumps(found["journey"].definition, ensure_ascii=False, indent=2)
        return page(request, "marketer/journey.html", definition=definition, **found)
