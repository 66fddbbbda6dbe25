"""The compliance officer's pages: the request queue and a request's page."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.response import Template

from app.console.render import page


class ComplianceController(Controller):
    path = "/compliance"
    include_in_schema = False

    @get("/requests", name="console.requests")
    async def queue(self, request: Request[Any, Any, Any]) -> Template:
        """The request queue (placeholder until the queue lands)."""
        return page(request, "compliance/queue.html", requests=[])
