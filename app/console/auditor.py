"""The auditor's pages: the ledger with filters, verification in the browser against a pasted
tree head (``static/verify.js``) beside the standalone verifier's command, and an activity
report whose every number links to the ledger entries behind it."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from litestar import Controller, Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, QueryParameter
from litestar.response import Stream, Template

from app.console import auditor_ledger as ledger
from app.console.render import page, principal_of
from app.deps import Db
from app.errors import InvalidField

Form = Body(media_type=RequestEncodingType.URL_ENCODED)
PAGE_SIZE = 50
LEDGER_PATH = "/console/auditor/ledger"


def ledger_link(flt: ledger.LedgerFilter) -> str:
    """The ledger page listing the entries ``flt`` selects (never a subject in the URL)."""
    query = flt.query(exclude_subject=True)
    return f"{LEDGER_PATH}?{urlencode(query)}" if query else LEDGER_PATH


def _before(value: str | None) -> int | None:
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:
        raise InvalidField("must be an entry number", field="before")
    return int(value)


class AuditorController(Controller):
    path = "/auditor"
    include_in_schema = False

    async def _ledger(self, request: Request[Any, Any, Any], db: Db, values: dict[str, Any]) -> Template:
        flt = ledger.parse_filter(values)
        before = _before(values.get("before"))
        rows, next_before = await ledger.entries(db, flt, before=before, limit=PAGE_SIZE)
        total = await ledger.count(db, flt)
        raw = {name: values.get(name) or "" for name in ledger.FILTER_NAMES}
        next_link = None
        if next_before is not None and flt.subject is None:
            next_link = f"{LEDGER_PATH}?{urlencode({**flt.query(), 'before': next_before})}"
        return page(
            request,
            "auditor/ledger.html",
            rows=rows,
            total=total,
            values=raw,
            next_before=next_before,
            next_link=next_link,
            by_subject=flt.subject is not None,
        )

    @get("/ledger", name="console.ledger")
    async def ledger_page(self, request: Request[Any, Any, Any], db: Db) -> Template:
        """Entries, newest first, filtered by the query (time, actor, action, request id, purpose,
        decision reason, policy version); a subject is filtered by the form (POST), never a URL."""
        values = {k: v for k, v in request.query_params.items() if k != "subject"}
        return await self._ledger(request, db, values)

    @post("/ledger/filter", name="console.ledger_filter", status_code=200)
    async def ledger_filtered(
        self, request: Request[Any, Any, Any], db: Db, data: Annotated[dict[str, str], Form]
    ) -> Template:
        """The same page filtered by the form, which may name a subject."""
        return await self._ledger(request, db, data)

    @get("/ledger/stream", name="console.ledger_stream", media_type="application/x-ndjson")
    async def ledger_stream(self, request: Request[Any, Any, Any]) -> Stream:
        """The whole ledger for the in-browser verifier, as NDJSON (recorded as an export)."""
        principal = principal_of(request)
        assert principal is not None  # the console guard admits signed-in auditors only
        return Stream(
            ledger.verification_stream(principal),
            media_type="application/x-ndjson",
            headers={"cache-control": "no-store"},
        )

    @get("/verify", name="console.verify")
    async def verify(self, request: Request[Any, Any, Any]) -> Template:
        """Verify the ledger in the browser against a tree head the auditor pastes."""
        key, kid = ledger.public_key()
        origin = f"{request.url.scheme}://{request.url.netloc}"
        return page(request, "auditor/verify.html", public_key=key, key_id=kid, origin=origin)

    @get("/activity", name="console.activity")
    async def activity(
        self,
        request: Request[Any, Any, Any],
        db: Db,
        since: Annotated[str | None, QueryParameter(max_length=40)] = None,
        until: Annotated[str | None, QueryParameter(max_length=40)] = None,
    ) -> Template:
        """Counts of what happened between two times; each count links to its entries."""
        start, end = ledger.ledger_time(since, "since"), ledger.ledger_time(until, "until")
        figures = await ledger.activity(db, start, end)
        return page(
            request,
            "auditor/activity.html",
            figures=figures,
            link=ledger_link,
            since=since or "",
            until=until or "",
        )
